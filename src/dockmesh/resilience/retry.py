"""When a failed request may be tried again: the safety rule, what follows a failed attempt,
and the budget. Pure; the clock is injected.

The rule (`may_retry`): a request that never reached an upstream (the connection was refused
or timed out, or a breaker refused it) may always be sent elsewhere: nothing was done. One that
reached an upstream is retried only when its method is idempotent (RFC 9110 9.2.2) and either
no answer came at all (the connection closed or broke before the first byte of a response:
`status` None) or the answer was 502, 503 or 504 — a gateway's "I did not do it" — and only
while its body can be sent again (the caller knows: a streamed body cannot).

What follows a failed attempt (`after_failure`) is the rule plus the facts of the attempt:

- RESEND: the attempt went out on a pooled connection that the upstream had closed before
  answering (`stale`): the pool's age, not the upstream's failure. The request goes again on
  another connection, outside the budget and the attempt count, when all of it can be sent
  again and either it never left (`unsent`: the connection was closing when it was written)
  or its method is idempotent.
- RETRY: `may_retry` says it is safe, fewer than `max_attempts` attempts were made, and for
  an answer (a status) another upstream exists to ask. The caller then asks the budget.
- FAIL: anything else.

Which failures may be retried at all is a route's choice (`RetryPolicy.on`, default all of
them): `connect` (nothing reached the upstream: refused, timed out, or its breaker refused),
`reset` (the request went out and no answer came: closed, reset) and the statuses 502, 503,
504. The rule above still holds inside that choice: `on` can only narrow it.

The budget (`RetryBudget`), as Envoy's and Linkerd's: retries may add at most `ratio` of the
requests seen over the last `window_s`, plus `min_per_s` retries a second so a quiet service can
still retry. When a whole fleet fails, retries cannot multiply the load by more than
1 + ratio. Invariant (tested with hypothesis): over any window, granted retries
<= ratio * requests + min_per_s * window_s.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from dockmesh.resilience.window import SlidingCounts

IDEMPOTENT = frozenset((b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"))
# The only answers the rule may have tried again: a caller may pass any other status on
# without asking (`after_failure` would say FAIL).
RETRYABLE_STATUSES = frozenset((502, 503, 504))
MAX_ATTEMPTS = 3
# What follows a failed attempt (`after_failure`).
FAIL, RETRY, RESEND = 0, 1, 2
# The kinds of failure a route may retry (`RetryPolicy.on`).
CONNECT, RESET = "connect", "reset"
RETRY_ON: frozenset[str | int] = frozenset((CONNECT, RESET, *RETRYABLE_STATUSES))


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """A route's retries: at most `attempts` attempts per request (1: none tried again), on
    the failures named in `on`, within a budget of `budget_ratio` of the requests plus
    `min_per_s` retries a second."""

    attempts: int = MAX_ATTEMPTS
    on: frozenset[str | int] = RETRY_ON
    budget_ratio: float = 0.2
    min_per_s: float = 10.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError("attempts must be >= 1")
        if not self.on <= RETRY_ON:
            raise ValueError(f"retry on: {sorted(map(str, self.on - RETRY_ON))} not retryable")
        if self.budget_ratio < 0 or self.min_per_s < 0:
            raise ValueError("budget_ratio >= 0 and min_per_s >= 0")


def failure_kind(reached_upstream: bool, status: int | None) -> str | int:
    """The kind of a failure, as `RetryPolicy.on` names it."""
    if not reached_upstream:
        return CONNECT
    return RESET if status is None else status


def may_retry(
    method: bytes,
    reached_upstream: bool,
    status: int | None,
    replayable: bool,
    on: frozenset[str | int] = RETRY_ON,
) -> bool:
    if failure_kind(reached_upstream, status) not in on:
        return False
    if not reached_upstream:
        return replayable
    return replayable and method in IDEMPOTENT and (status is None or status in RETRYABLE_STATUSES)


def after_failure(
    method: bytes,
    reached_upstream: bool,
    status: int | None,
    replayable: bool,
    attempts: int,
    *,
    others: bool = True,
    stale: bool = False,
    unsent: bool = False,
    max_attempts: int = MAX_ATTEMPTS,
    on: frozenset[str | int] = RETRY_ON,
) -> int:
    """FAIL, RETRY or RESEND for an attempt that failed (see the module's docstring).
    `attempts`: the attempts made so far, this one included; `others`: the cluster has an
    upstream besides this one."""
    if stale and replayable and (unsent or method in IDEMPOTENT):
        return RESEND
    if attempts >= max_attempts or (status is not None and not others):
        return FAIL
    return RETRY if may_retry(method, reached_upstream, status, replayable, on) else FAIL


class RetryBudget:
    def __init__(
        self,
        clock: Callable[[], float],
        ratio: float = 0.2,
        min_per_s: float = 10.0,
        window_s: float = 10.0,
    ) -> None:
        if ratio < 0 or min_per_s < 0 or window_s <= 0:
            raise ValueError("ratio >= 0, min_per_s >= 0, window_s > 0")
        self.ratio = ratio
        self.min_per_s = min_per_s
        self.window_s = window_s
        self._clock = clock
        self._counts = SlidingCounts(window_s, 10, 2)  # [requests, retries]
        self.granted = 0
        self.refused = 0
        self.pending = 0  # requests not yet in the window (see `tick`)

    def request(self) -> None:
        """Counts one original request (a deposit). One increment: the request path calls it;
        the count joins the window at the next `tick` or `try_retry`."""
        self.pending += 1

    def tick(self, now: float | None = None) -> None:
        if self.pending:
            self._counts.add(self._clock() if now is None else now, 0, self.pending)
            self.pending = 0

    def try_retry(self) -> bool:
        """True (and the retry is counted) when the budget allows one more retry now."""
        now = self._clock()
        self.tick(now)
        requests, retries = self._counts.read(now)
        if retries + 1 > self.ratio * requests + self.min_per_s * self.window_s:
            self.refused += 1
            return False
        self._counts.add(now, 1)
        self.granted += 1
        return True
