"""When a failed request may be tried again: the safety rule, what follows a failed attempt
(the rule the proxy's exchanges all ask), and the budget on a fake clock."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dockmesh.resilience.retry import (
    FAIL,
    IDEMPOTENT,
    MAX_ATTEMPTS,
    RESEND,
    RETRY,
    RETRY_ON,
    RETRYABLE_STATUSES,
    RetryBudget,
    RetryPolicy,
    after_failure,
    failure_kind,
    may_retry,
)
from dockmesh.testing.clock import ManualClock


@given(
    st.floats(0, 1),
    st.floats(0, 5),
    st.lists(st.tuples(st.sampled_from(["req", "retry"]), st.floats(0, 0.5)), max_size=400),
)
def test_retries_stay_within_the_budget(
    ratio: float, min_per_s: float, steps: list[tuple[str, float]]
) -> None:
    """Each retry granted keeps the window's retries within ratio x its requests plus the
    floor. (Checked when granted: later, a window that slid past the requests but not yet
    past the retries they paid for may show more retries than that, as in any sliding
    budget; hypothesis found such a sequence for the old check, made after every step.)"""
    clock = ManualClock()
    budget = RetryBudget(clock, ratio=ratio, min_per_s=min_per_s, window_s=10)
    for kind, dt in steps:
        clock.t += dt
        if kind == "req":
            budget.request()
        elif budget.try_retry():
            requests, retries = budget._counts.read(clock.t)
            assert retries <= ratio * requests + min_per_s * 10 + 1e-9


def test_a_window_that_slid_past_the_requests_may_show_more_retries_than_they_paid_for() -> None:
    """The sequence that broke the old per-step check: 5 requests at 0, 5 retries at 9.5
    (ratio 1, no floor), then the requests' bucket leaves the window first."""
    clock = ManualClock()
    budget = RetryBudget(clock, ratio=1.0, min_per_s=0.0, window_s=10)
    for _ in range(5):
        budget.request()
    budget.tick()
    clock.t = 9.5
    assert sum(budget.try_retry() for _ in range(6)) == 5
    clock.t = 10.5
    requests, retries = budget._counts.read(clock.t)
    assert (requests, retries) == (0, 5)
    assert not budget.try_retry()  # and nothing more is granted until requests come


def test_a_quiet_service_may_still_retry_and_a_failing_fleet_may_not_multiply() -> None:
    clock = ManualClock()
    budget = RetryBudget(clock, ratio=0.2, min_per_s=0.1, window_s=10)
    assert budget.try_retry()  # min_per_s * window_s = 1 retry without any request
    assert not budget.try_retry()
    for _ in range(100):
        budget.request()
    granted = sum(budget.try_retry() for _ in range(100))
    assert granted == 20  # 0.2 of 100 requests, the one already taken counted within
    assert budget.refused == 81


def test_the_safety_rule() -> None:
    assert may_retry(b"POST", reached_upstream=False, status=None, replayable=True)
    assert not may_retry(b"POST", reached_upstream=True, status=503, replayable=True)
    assert may_retry(b"GET", reached_upstream=True, status=503, replayable=True)
    assert not may_retry(b"GET", reached_upstream=True, status=500, replayable=True)
    assert may_retry(b"GET", reached_upstream=True, status=None, replayable=True)  # no answer
    assert not may_retry(b"POST", reached_upstream=True, status=None, replayable=True)
    assert not may_retry(b"PUT", reached_upstream=True, status=502, replayable=False)


methods = st.sampled_from([b"GET", b"HEAD", b"PUT", b"DELETE", b"POST", b"PATCH"])
statuses = st.sampled_from([None, 200, 404, 500, 502, 503, 504])


@given(
    methods,
    st.booleans(),
    statuses,
    st.booleans(),
    st.integers(1, 5),
    st.booleans(),
    st.booleans(),
    st.booleans(),
)
def test_what_follows_a_failed_attempt(
    method: bytes,
    reached: bool,
    status: int | None,
    replayable: bool,
    attempts: int,
    others: bool,
    stale: bool,
    unsent: bool,
) -> None:
    if not reached:
        status = None  # an answer comes only from an upstream the request reached
    verdict = after_failure(
        method, reached, status, replayable, attempts, others=others, stale=stale, unsent=unsent
    )
    if verdict == RESEND:
        # A pooled connection closed under the request: only what can go whole again, and
        # only what never left or may be done twice.
        assert stale and replayable and (unsent or method in IDEMPOTENT)
    elif verdict == RETRY:
        assert may_retry(method, reached, status, replayable)
        # An answer outside RETRYABLE_STATUSES is never tried again: callers rely on it.
        assert status is None or status in RETRYABLE_STATUSES
        assert attempts < MAX_ATTEMPTS
        assert status is None or others  # an answer is asked of another upstream only
    else:
        assert verdict == FAIL
        assert not (stale and replayable and (unsent or method in IDEMPOTENT))
        assert (
            not may_retry(method, reached, status, replayable)
            or attempts >= MAX_ATTEMPTS
            or (status is not None and not others)
        )


def test_what_follows_a_failed_attempt_examples() -> None:
    # Nothing reached the upstream: whatever the method.
    assert after_failure(b"POST", False, None, True, 1) == RETRY
    # A reset after a GET went out: again; after a POST: no.
    assert after_failure(b"GET", True, None, True, 1) == RETRY
    assert after_failure(b"POST", True, None, True, 1) == FAIL
    # A 503 is asked elsewhere only when there is an elsewhere.
    assert after_failure(b"GET", True, 503, True, 1, others=True) == RETRY
    assert after_failure(b"GET", True, 503, True, 1, others=False) == FAIL
    # The attempts run out.
    assert after_failure(b"GET", True, None, True, MAX_ATTEMPTS) == FAIL
    # A stale pooled connection: a GET goes again whatever the count; a POST only unsent;
    # a request whose body went out never.
    assert after_failure(b"GET", True, None, True, MAX_ATTEMPTS, stale=True) == RESEND
    assert after_failure(b"POST", True, None, True, 1, stale=True) == FAIL
    assert after_failure(b"POST", False, None, True, 1, stale=True, unsent=True) == RESEND
    assert after_failure(b"PUT", True, None, False, 1, stale=True) == FAIL


@given(
    st.sampled_from([b"GET", b"POST"]),
    st.booleans(),
    st.sampled_from([None, 502, 503, 504]),
    st.sets(st.sampled_from(sorted(RETRY_ON, key=str))),
    st.integers(1, 5),
    st.integers(1, 5),
)
def test_a_routes_retry_policy_only_narrows_the_rule(
    method: bytes,
    reached: bool,
    status: int | None,
    on: set[str | int],
    attempts: int,
    max_attempts: int,
) -> None:
    if not reached:
        status = None
    verdict = after_failure(
        method, reached, status, True, attempts, max_attempts=max_attempts, on=frozenset(on)
    )
    if verdict == RETRY:
        assert after_failure(method, reached, status, True, 1) == RETRY  # the rule allows it
        assert failure_kind(reached, status) in on
        assert attempts < max_attempts


def test_retry_policy_examples() -> None:
    only_connect = frozenset({"connect"})
    assert after_failure(b"GET", False, None, True, 1, on=only_connect) == RETRY
    assert after_failure(b"GET", True, None, True, 1, on=only_connect) == FAIL
    assert after_failure(b"GET", True, 502, True, 1, on=frozenset({502})) == RETRY
    assert after_failure(b"GET", True, 503, True, 1, on=frozenset({502})) == FAIL
    assert after_failure(b"GET", False, None, True, 1, max_attempts=1) == FAIL
    with pytest.raises(ValueError, match="not retryable"):
        RetryPolicy(on=frozenset({500}))
    with pytest.raises(ValueError, match="attempts"):
        RetryPolicy(attempts=0)
