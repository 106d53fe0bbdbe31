"""Outlier ejection and the retry budget, driven by hypothesis on a fake clock."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from dockmesh.resilience.outlier import OutlierDetector, OutlierPolicy
from dockmesh.resilience.retry import RetryBudget, may_retry
from dockmesh.testing.clock import ManualClock


@given(
    st.integers(1, 12),
    st.floats(0, 100),
    st.lists(
        st.tuples(
            st.integers(0, 11), st.sampled_from([None, 200, 404, 500, 502, 503]), st.floats(0, 20)
        ),
        max_size=300,
    ),
)
def test_ejections_never_exceed_the_cap(
    n: int, pct: float, steps: list[tuple[int, int | None, float]]
) -> None:
    clock = ManualClock()
    policy = OutlierPolicy(
        consecutive_5xx=2,
        consecutive_gateway_failures=2,
        base_ejection_s=5,
        max_ejection_percent=pct,
    )
    d = OutlierDetector(policy, clock)
    hosts = [f"h{i}" for i in range(n)]
    d.set_hosts(hosts)
    until: dict[str, float] = {}
    for i, status, dt in steps:
        clock.t += dt
        host = f"h{i}"
        if d.record(host, status):
            assert host in hosts
            until[host] = clock.t + policy.max_ejection_s
        ejected = d.ejected()
        assert len(ejected) <= d.cap()
        assert all(clock.t < until[h] for h in ejected)


def test_consecutive_gateway_failures_eject_and_time_brings_back() -> None:
    clock = ManualClock()
    d = OutlierDetector(
        OutlierPolicy(consecutive_gateway_failures=3, base_ejection_s=10, max_ejection_percent=50),
        clock,
    )
    d.set_hosts(["a", "b", "c", "d"])
    assert not d.record("a", 502)
    assert not d.record("a", None)
    assert d.record("a", 504)
    assert d.is_ejected("a")
    clock.t += 10
    assert not d.is_ejected("a")
    # A second ejection lasts twice as long.
    for _ in range(3):
        d.record("a", 503)
    clock.t += 15
    assert d.is_ejected("a")
    clock.t += 5
    assert not d.is_ejected("a")


def test_a_success_resets_the_count() -> None:
    d = OutlierDetector(
        OutlierPolicy(consecutive_5xx=2, consecutive_gateway_failures=9), ManualClock()
    )
    d.set_hosts(["a", "b"])
    d.record("a", 500)
    d.record("a", 200)
    assert not d.record("a", 500)
    assert d.record("a", 500)


@given(
    st.floats(0, 1),
    st.floats(0, 5),
    st.lists(st.tuples(st.sampled_from(["req", "retry"]), st.floats(0, 0.5)), max_size=400),
)
def test_retries_stay_within_the_budget(
    ratio: float, min_per_s: float, steps: list[tuple[str, float]]
) -> None:
    clock = ManualClock()
    budget = RetryBudget(clock, ratio=ratio, min_per_s=min_per_s, window_s=10)
    for kind, dt in steps:
        clock.t += dt
        if kind == "req":
            budget.request()
        else:
            budget.try_retry()
        requests, retries = budget._counts.read(clock.t)
        assert retries <= ratio * requests + min_per_s * 10 + 1e-9


def test_the_safety_rule() -> None:
    assert may_retry(b"POST", reached_upstream=False, status=None, replayable=True)
    assert not may_retry(b"POST", reached_upstream=True, status=503, replayable=True)
    assert may_retry(b"GET", reached_upstream=True, status=503, replayable=True)
    assert not may_retry(b"GET", reached_upstream=True, status=500, replayable=True)
    assert may_retry(b"GET", reached_upstream=True, status=None, replayable=True)  # no answer
    assert not may_retry(b"POST", reached_upstream=True, status=None, replayable=True)
    assert not may_retry(b"PUT", reached_upstream=True, status=502, replayable=False)
