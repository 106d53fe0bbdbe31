"""A circuit breaker for one upstream: results in, admission decisions out. Pure; the clock is
injected (a `now()` callable), so it runs the same in a test, a thread or an event loop.

Theory of operation
-------------------
Three states, as in the classic pattern, with the transitions below and nothing else:

- **closed**: every call is admitted. It trips to *open* after `consecutive_failures` failures
  in a row, or when, over the last `window_s`, at least `min_requests` results were seen and
  the share of failures among them reached `failure_ratio`.
- **open**: nothing is admitted until the backoff has passed. The backoff is
  `open_base_s * open_multiplier ** (trips - 1)`, capped at `open_max_s`, where `trips` counts
  the times it opened since it was last closed: an upstream that keeps failing its probes is
  left alone for longer each time.
- **half_open** (reached when the backoff has passed, decided lazily on the next question):
  at most `half_open_probes` calls are admitted *at the same time*; the rest are refused.
  `close_after` successes in a row close it (and forget the trips); one failure opens it
  again with a longer backoff.

Successes while closed are counted in a plain integer and moved into the window when a
failure is recorded or `tick()` is called (a server calls it every fraction of a second):
the request path then costs one increment. Successes are dated by that move, at most one
tick late.

Every admission returns a ticket: the breaker's epoch, which changes on every transition. A
result carrying an older epoch (a call admitted while closed that ends after the breaker
opened) is ignored, so a half-open breaker counts only its own probes. A probe that ends with
no verdict (the client went away) gives its slot back with `release`.

Invariants (tested with hypothesis): in half_open, the probes in flight never exceed
`half_open_probes`; open admits nothing before its backoff has passed; closed admits all.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from dockmesh.resilience.window import SlidingCounts

T = TypeVar("T")


class BreakerState(enum.StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True, slots=True)
class BreakerPolicy:
    consecutive_failures: int = 5
    failure_ratio: float = 0.5
    window_s: float = 10.0
    min_requests: int = 20
    open_base_s: float = 1.0
    open_multiplier: float = 2.0
    open_max_s: float = 30.0
    half_open_probes: int = 1
    close_after: int = 2

    def __post_init__(self) -> None:
        if self.consecutive_failures < 1 or self.half_open_probes < 1 or self.close_after < 1:
            raise ValueError("consecutive_failures, half_open_probes, close_after must be >= 1")
        if not 0 < self.failure_ratio <= 1:
            raise ValueError("failure_ratio must be in (0, 1]")
        if self.open_base_s <= 0 or self.open_multiplier < 1 or self.open_max_s < self.open_base_s:
            raise ValueError("open_base_s > 0, open_multiplier >= 1, open_max_s >= open_base_s")

    def backoff(self, trips: int) -> float:
        return float(min(self.open_base_s * self.open_multiplier ** (trips - 1), self.open_max_s))


class BreakerOpen(Exception):
    """A call refused by an open (or saturated half-open) breaker."""


Ticket = int


class CircuitBreaker:
    __slots__ = (
        "_clock",
        "_counts",
        "_state",
        "closed",
        "consecutive",
        "epoch",
        "open_until",
        "pending_ok",
        "policy",
        "probes",
        "successes",
        "trips",
    )

    def __init__(self, policy: BreakerPolicy, clock: Callable[[], float]) -> None:
        self.policy = policy
        self._clock = clock
        self._state = BreakerState.CLOSED
        # `_state is CLOSED`, kept as a flag a caller can read for nothing: while it holds,
        # `admit()` is `epoch`.
        self.closed = True
        self._counts = SlidingCounts(policy.window_s, 10, 2)  # [results, failures]
        self.epoch = 0
        self.consecutive = 0  # failures in a row while closed
        self.pending_ok = 0  # successes not yet in the window
        self.trips = 0
        self.open_until = 0.0
        self.probes = 0  # half-open probes in flight
        self.successes = 0  # half-open successes in a row

    @property
    def state(self) -> BreakerState:
        if self._state is BreakerState.OPEN and self._clock() >= self.open_until:
            self._to(BreakerState.HALF_OPEN)
        return self._state

    def _to(self, state: BreakerState) -> None:
        self._state = state
        self.closed = state is BreakerState.CLOSED
        self.epoch += 1
        self.probes = 0
        self.successes = 0
        if state is BreakerState.OPEN:
            self.trips += 1
            self.open_until = self._clock() + self.policy.backoff(self.trips)
        elif state is BreakerState.CLOSED:
            self.trips = 0
            self.consecutive = 0
            self.pending_ok = 0
            self._counts.reset()

    def admit(self) -> Ticket | None:
        """A ticket when the call may go ahead, None when it is refused."""
        if self.closed:  # first, and a flag: the request path's common case costs little
            return self.epoch
        if self.state is BreakerState.HALF_OPEN and self.probes < self.policy.half_open_probes:
            self.probes += 1
            return self.epoch
        return None

    def would_admit(self) -> bool:
        """Whether `admit` would say yes now, without taking a probe slot."""
        state = self.state
        return state is BreakerState.CLOSED or (
            state is BreakerState.HALF_OPEN and self.probes < self.policy.half_open_probes
        )

    def success(self, ticket: Ticket) -> None:
        if ticket != self.epoch:
            return
        if self.closed:
            self.consecutive = 0
            self.pending_ok += 1
        elif self._state is BreakerState.HALF_OPEN:
            self.probes -= 1
            self.successes += 1
            if self.successes >= self.policy.close_after:
                self._to(BreakerState.CLOSED)

    def failure(self, ticket: Ticket, may_open: bool = True) -> None:
        """A failed call. With `may_open` False (its cluster has as many hosts out as it may),
        a closed breaker counts the failure but stays closed; it trips on a later failure once
        it may."""
        if ticket != self.epoch:
            return
        if self._state is BreakerState.CLOSED:
            now = self._clock()
            self.tick(now)
            self.consecutive += 1
            self._counts.add(now, 0)
            self._counts.add(now, 1)
            results, failures = self._counts.totals
            p = self.policy
            if may_open and (
                self.consecutive >= p.consecutive_failures
                or (results >= p.min_requests and failures >= p.failure_ratio * results)
            ):
                self._to(BreakerState.OPEN)
        elif self._state is BreakerState.HALF_OPEN:
            self._to(BreakerState.OPEN)

    def tick(self, now: float | None = None) -> None:
        """Moves the successes counted since the last tick into the window."""
        if self.pending_ok:
            self._counts.add(self._clock() if now is None else now, 0, self.pending_ok)
            self.pending_ok = 0

    def release(self, ticket: Ticket) -> None:
        """The admitted call ended with no verdict: its probe slot is free again."""
        if ticket == self.epoch and self._state is BreakerState.HALF_OPEN and self.probes > 0:
            self.probes -= 1

    # Library use: wrap a call. An exception is a failure; a return is a success.
    def call(self, fn: Callable[[], T]) -> T:
        ticket = self.admit()
        if ticket is None:
            raise BreakerOpen(f"circuit {self.state}")
        try:
            result = fn()
        except Exception:
            self.failure(ticket)
            raise
        except BaseException:
            self.release(ticket)
            raise
        self.success(ticket)
        return result

    async def call_async(self, fn: Callable[[], Awaitable[T]]) -> T:
        ticket = self.admit()
        if ticket is None:
            raise BreakerOpen(f"circuit {self.state}")
        try:
            result = await fn()
        except Exception:
            self.failure(ticket)
            raise
        except BaseException:
            # Cancelled: that says nothing about the upstream.
            self.release(ticket)
            raise
        self.success(ticket)
        return result
