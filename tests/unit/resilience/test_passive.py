"""Passive health's cluster-wide decisions against their theory of operation."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dockmesh.resilience.breaker import BreakerPolicy, CircuitBreaker
from dockmesh.resilience.passive import (
    PassivePolicy,
    in_panic,
    is_upstream_failure,
    out_cap,
    parse_statuses,
)
from dockmesh.testing.clock import ManualClock


def test_only_the_upstreams_failures_count_by_default() -> None:
    statuses = PassivePolicy().failure_statuses
    assert is_upstream_failure(None, statuses)
    assert all(is_upstream_failure(s, statuses) for s in (502, 503, 504))
    assert not any(is_upstream_failure(s, statuses) for s in (200, 404, 500, 501, 505))


@given(st.integers(0, 200), st.floats(0, 100))
def test_the_cap_never_takes_the_last_host_nor_more_than_the_share(n: int, pct: float) -> None:
    cap = out_cap(n, pct)
    assert 0 <= cap <= max(0, n - 1)
    assert cap <= n * pct / 100


def test_the_cap_as_envoy_counts_it() -> None:
    assert out_cap(1, 50) == 0 and out_cap(1, 100) == 0
    assert out_cap(2, 50) == 1 and out_cap(3, 50) == 1 and out_cap(10, 50) == 5
    assert out_cap(10, 100) == 9


@given(st.integers(1, 100), st.data())
def test_panic_below_the_threshold_only(n: int, data: st.DataObject) -> None:
    available = data.draw(st.integers(0, n))
    assert in_panic(n, available, 50) is (available / n < 0.5)
    assert not in_panic(n, available, 0)
    assert in_panic(n, available, 100) is (available < n)


def test_statuses_parse() -> None:
    assert parse_statuses("502, 503,504") == frozenset({502, 503, 504})
    assert parse_statuses("") == frozenset()
    for bad in ("200", "5xx", "600"):
        with pytest.raises(ValueError, match="is not a 5xx status"):
            parse_statuses(bad)
    with pytest.raises(ValueError, match="5xx"):
        PassivePolicy(failure_statuses=frozenset({404}))


@given(
    st.integers(2, 8),
    st.lists(st.tuples(st.integers(0, 7), st.sampled_from(["fail", "ok", "wait"])), max_size=200),
)
def test_breakers_asked_before_opening_never_exceed_the_cap(
    n: int, events: list[tuple[int, str]]
) -> None:
    # The state machine the cluster runs: a closed breaker may open only while fewer than the
    # cap are out; however failures, successes and time interleave, the cap holds.
    clock = ManualClock()
    policy = BreakerPolicy(consecutive_failures=2, open_base_s=1)
    breakers = [CircuitBreaker(policy, clock) for _ in range(n)]
    cap = out_cap(n, 50)
    for i, event in events:
        b = breakers[i % n]
        if event == "wait":
            clock.t += 0.7
            continue
        ticket = b.admit()
        if ticket is None:
            continue
        if event == "fail":
            out = sum(not x.closed for x in breakers)
            b.failure(ticket, not b.closed or out < cap)
        else:
            b.success(ticket)
        assert sum(not x.closed for x in breakers) <= cap
