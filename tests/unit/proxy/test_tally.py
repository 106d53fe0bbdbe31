"""The proxy's running counts."""

from __future__ import annotations

from dockmesh.proxy.tally import LATENCY_BUCKETS, Tally


def test_responses_latencies_retries_and_refusals_are_counted() -> None:
    t = Tally()
    t.observe(200, 0.0004)
    t.observe(200, 0.0005)  # on a bound: in that bucket (upper bounds are inclusive)
    t.observe(502, 99.0)  # past the last bound
    t.responded(400)
    t.retried("connect")
    t.retried("connect")
    t.reject("no_upstream")
    assert t.responses == {200: 2, 502: 1, 400: 1}
    assert t.latency_counts[0] == 2 and t.latency_counts[len(LATENCY_BUCKETS)] == 1
    assert sum(t.latency_counts) == 3  # a refusal is not a timed exchange
    assert abs(t.latency_sum - 99.0009) < 1e-9
    assert t.retries == {"connect": 2} and t.rejected == {"no_upstream": 1}
