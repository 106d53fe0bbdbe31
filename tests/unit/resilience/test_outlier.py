"""Outlier ejection, driven by hypothesis on a fake clock."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from dockmesh.resilience.outlier import OutlierDetector, OutlierPolicy
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
        assert len(ejected) < n  # never the last host
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
        # 500 counted on purpose here (it is not by default): the reset is what is tested.
        OutlierPolicy(
            consecutive_5xx=2,
            consecutive_gateway_failures=9,
            max_ejection_percent=50,  # one of two may go (the default 10% of 2 is none)
            failure_statuses=frozenset({500, 502, 503, 504}),
        ),
        ManualClock(),
    )
    d.set_hosts(["a", "b"])
    d.record("a", 500)
    d.record("a", 200)
    assert not d.record("a", 500)
    assert d.record("a", 500)


def test_an_application_500_never_ejects_by_default() -> None:
    d = OutlierDetector(OutlierPolicy(consecutive_5xx=2, max_ejection_percent=50), ManualClock())
    d.set_hosts(["a", "b"])
    assert not any(d.record("a", 500) for _ in range(100))


def test_the_last_host_is_never_ejected() -> None:
    d = OutlierDetector(OutlierPolicy(max_ejection_percent=100), ManualClock())
    d.set_hosts(["a"])
    assert not any(d.record("a", None) for _ in range(100))
    assert d.cap() == 0
