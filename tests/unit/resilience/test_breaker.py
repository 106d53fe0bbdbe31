"""The circuit breaker against its theory of operation, driven by hypothesis on a fake clock."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dockmesh.resilience.breaker import BreakerOpen, BreakerPolicy, BreakerState, CircuitBreaker
from dockmesh.testing.clock import ManualClock


def state(b: CircuitBreaker) -> BreakerState:
    # A call, not the property: mypy would narrow the property across the clock's moves.
    return b.state


policies = st.builds(
    BreakerPolicy,
    consecutive_failures=st.integers(1, 5),
    failure_ratio=st.floats(0.1, 1.0),
    window_s=st.floats(1, 20),
    min_requests=st.integers(1, 20),
    open_base_s=st.floats(0.1, 5),
    open_multiplier=st.floats(1, 3),
    open_max_s=st.just(60.0),
    half_open_probes=st.integers(1, 4),
    close_after=st.integers(1, 4),
)
actions = st.lists(
    st.tuples(st.sampled_from(["admit", "ok", "fail", "release", "wait"]), st.floats(0, 10)),
    max_size=200,
)


@given(policies, actions)
def test_invariants_hold_whatever_happens(
    policy: BreakerPolicy, steps: list[tuple[str, float]]
) -> None:
    clock = ManualClock(1000.0)
    b = CircuitBreaker(policy, clock)
    tickets: list[int] = []
    for action, x in steps:
        before = b.state
        if action == "admit":
            t = b.admit()
            if before is BreakerState.CLOSED:
                assert t == b.epoch  # closed: the ticket is the epoch, for nothing
            if before is BreakerState.OPEN:
                assert t is None  # open admits nothing before its backoff has passed
            if t is not None:
                tickets.append(t)
        elif action == "wait":
            clock.t += x
        elif tickets:
            t = tickets.pop(int(x) % len(tickets))
            {"ok": b.success, "fail": b.failure, "release": b.release}[action](t)
        assert 0 <= b.probes <= policy.half_open_probes
        # The flag `admit` answers from first mirrors the state it was last moved to.
        assert b.closed is (b._state is BreakerState.CLOSED)
        if b.state is BreakerState.OPEN:
            assert b.open_until - clock.t <= policy.open_max_s + 1e-9


def test_trips_after_consecutive_failures_and_backs_off_longer_each_time() -> None:
    clock = ManualClock(1000.0)
    b = CircuitBreaker(
        BreakerPolicy(consecutive_failures=3, open_base_s=1, open_multiplier=2, close_after=1),
        clock,
    )
    for _ in range(3):
        b.failure(b.admit() or 0)
    assert state(b) is BreakerState.OPEN
    assert b.admit() is None
    clock.t += 1.0
    assert state(b) is BreakerState.HALF_OPEN
    probe = b.admit()
    assert probe is not None
    assert b.admit() is None  # one probe at a time
    b.failure(probe)
    assert state(b) is BreakerState.OPEN
    clock.t += 1.5
    assert state(b) is BreakerState.OPEN  # the second backoff is 2 s
    clock.t += 0.5
    probe = b.admit()
    assert probe is not None
    b.success(probe)
    assert state(b) is BreakerState.CLOSED
    assert b.trips == 0


def test_trips_on_the_failure_ratio_over_the_window() -> None:
    clock = ManualClock(1000.0)
    b = CircuitBreaker(
        BreakerPolicy(consecutive_failures=100, failure_ratio=0.5, min_requests=10), clock
    )
    for i in range(10):
        t = b.admit()
        assert t is not None
        (b.failure if i % 2 else b.success)(t)
        clock.t += 0.1
    assert state(b) is BreakerState.OPEN


def test_old_failures_leave_the_window() -> None:
    clock = ManualClock(1000.0)
    b = CircuitBreaker(
        BreakerPolicy(consecutive_failures=100, failure_ratio=0.7, min_requests=4, window_s=10),
        clock,
    )
    for _ in range(3):
        b.failure(b.admit() or 0)
        b.success(b.admit() or 0)
    clock.t += 30
    b.failure(b.admit() or 0)
    assert state(b) is BreakerState.CLOSED


def test_a_stale_result_does_not_count_as_a_probe() -> None:
    clock = ManualClock(1000.0)
    b = CircuitBreaker(BreakerPolicy(consecutive_failures=1, open_base_s=1), clock)
    old = b.admit()
    assert old is not None
    b.failure(b.admit() or 0)
    clock.t += 1
    assert state(b) is BreakerState.HALF_OPEN
    b.success(old)  # admitted while closed: says nothing about the half-open probes
    assert b.successes == 0


def test_call_wrappers_sync_and_async() -> None:
    clock = ManualClock(1000.0)
    b = CircuitBreaker(BreakerPolicy(consecutive_failures=1), clock)
    assert b.call(lambda: 42) == 42

    def boom() -> int:
        raise RuntimeError("down")

    with pytest.raises(RuntimeError):
        b.call(boom)
    with pytest.raises(BreakerOpen):
        b.call(lambda: 1)

    async def ok() -> int:
        return 7

    clock.t += 10
    assert asyncio.run(b.call_async(ok)) == 7
