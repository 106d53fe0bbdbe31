"""What one DNS client may take of the server: the limits (`DnsLimits`, what the agent's
command line sets) and two small pure state machines enforcing them. Time comes from an
injected clock; nothing here touches a socket (`dockmesh.dns.server` does).

- `SourceRate`: UDP queries per source address, a token bucket each (`rate` a second, bursts
  of `burst`). Kept as GCRA, one float per source (the instant its bucket would be full
  again), so a source that has been quiet for `burst / rate` seconds is the same as one never
  seen and its entry can go: the table holds at most `max_sources` entries.
- `TcpSlots`: TCP connections per source address and in all. A new connection that would go
  over a cap first makes room by closing the connection idle the longest (of its own source
  for the per-source cap, of anyone for the total), the way Unbound and BIND make room. When
  the total is full of busy connections (a query or an answer under way), the oldest of the
  source holding the most goes, if that source holds more than the newcomer's would then
  have: a client keeps each of its connections busy for the price of a query a second or
  two, so "never close a busy one" let 64 sources of 16 (or one exempt source: the host, a
  host-network container) lock every other client out. Only when no source holds more is
  the new one refused. With a per-source cap below the total, one source never fills the
  server, and many sources fill it only until a lighter one connects.

Why per source and not one shared limit: a shared limit is what one client reaches for
everyone (256 connections held from one container used to lock every other client out).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)

# Float sums of 1/rate drift by a few ulps: a client sending exactly at the rate must pass.
_SLACK = 1e-9

REASON_PER_SOURCE = "tcp_per_source"
REASON_TOTAL = "tcp_total"


@dataclass(frozen=True, slots=True)
class DnsLimits:
    """What one DNS client may take of the server. The defaults are generous: no client
    that asks and reads its answers comes near them."""

    tcp_per_source: int = 16  # TCP connections from one source address
    max_tcp_connections: int = 1024  # TCP connections in all (kept below the fd limit)
    tcp_idle_timeout_s: float = 10.0  # closed after this long without a query (RFC 7766)
    tcp_slow_timeout_s: float = 2.0  # a message's bytes, or its answer's draining, within
    tcp_pipeline: int = 64  # queries of one connection answered per turn of the loop
    max_tcp_query: int = 16384  # a larger length prefix closes the connection
    udp_rate: float = 1000.0  # UDP queries a second per source (0: no limit)
    udp_burst: int = 2000  # … and the bucket's size
    udp_sources: int = 65536  # sources the UDP limiter remembers
    limit_loopback: bool = False  # loopback sources too (they share one address: the host)

    def problems(self) -> list[str]:
        """What is wrong with these values, as phrases (empty: nothing)."""
        out = []
        for name in ("tcp_per_source", "max_tcp_connections", "tcp_pipeline", "udp_burst"):
            if getattr(self, name) < 1:
                out.append(f"{name} must be at least 1")
        for name in ("tcp_idle_timeout_s", "tcp_slow_timeout_s"):
            value = getattr(self, name)
            if not (value > 0 and math.isfinite(value)):
                out.append(f"{name} must be a positive number of seconds")
        if not (self.udp_rate >= 0 and math.isfinite(self.udp_rate)):
            out.append("udp_rate must be 0 (no limit) or more")
        if self.max_tcp_query < 12:
            out.append("max_tcp_query must hold a DNS header (12 bytes)")
        return out


class SourceRate:
    """A token bucket of `burst` tokens refilled at `rate` a second, per source.

    `allow(source)` takes a token from the source's bucket and says whether there was one.
    Sources are any hashable (the server uses the address string). `refused` counts the
    refusals. The table is bounded: when a new source would make it hold more than
    `max_sources`, the sources whose bucket is full again are forgotten (nothing is lost:
    a full bucket is what a new source gets), then, if that is not enough, the sources seen
    first, down to three quarters of the bound (a flood of distinct, maybe spoofed, sources
    then costs the forgotten ones a fresh burst, never another source's answers).
    """

    def __init__(
        self,
        rate: float,
        burst: int,
        clock: Callable[[], float],
        *,
        max_sources: int = 65536,
    ) -> None:
        if not rate > 0:
            raise ValueError(f"a rate must be above 0, not {rate!r}")
        if burst < 1:
            raise ValueError(f"a burst must be at least 1, not {burst!r}")
        self.rate = float(rate)
        self.burst = int(burst)
        self.max_sources = max(1, int(max_sources))
        self._clock = clock
        self._interval = 1.0 / self.rate
        # How far ahead of now a source's full-again instant may be and still take a token.
        self._tolerance = (self.burst - 1) * self._interval + _SLACK
        self._full_at: dict[Hashable, float] = {}
        self.refused = 0

    def __len__(self) -> int:
        return len(self._full_at)

    def allow(self, source: Hashable) -> bool:
        now = self._clock()
        table = self._full_at
        full_at = table.get(source)
        if full_at is None:
            if len(table) >= self.max_sources:
                self._shrink(now)
            full_at = now
        elif full_at < now:
            full_at = now
        if full_at - now > self._tolerance:
            self.refused += 1
            return False
        table[source] = full_at + self._interval
        return True

    def tokens(self, source: Hashable) -> float:
        """The tokens `source` has now (for tests and introspection)."""
        now = self._clock()
        full_at = self._full_at.get(source, now)
        return self.burst - max(0.0, full_at - now) * self.rate

    def _shrink(self, now: float) -> None:
        table = self._full_at
        for source in [s for s, t in table.items() if t <= now]:
            del table[source]
        target = self.max_sources * 3 // 4
        if len(table) > target:
            for source in list(table)[: len(table) - target]:
                del table[source]


class TcpSlots(Generic[K]):
    """Which TCP connections are open, from which source, and which may make room.

    `idle_since(key)` tells when a connection became idle (no message under way in either
    direction), or None while it is busy; the connection idle the longest (smallest value)
    is the one closed to make room. Sources for which `exempt(source)` holds have no
    per-source cap (the total still holds them).

    `open(key, source)` returns (admitted, victim, reason): `victim` is a connection removed
    from the slots to make room (idle the longest, or when all are busy and the total is in
    the way, the oldest of the source holding the most), which the caller closes; `reason`
    names the cap that was in the way (`tcp_per_source`, `tcp_total`) when a victim was
    taken or the new one refused.
    `close(key)` forgets a connection (again is fine).
    """

    def __init__(
        self,
        per_source: int,
        total: int,
        idle_since: Callable[[K], float | None],
        exempt: Callable[[str], bool] = lambda source: False,
    ) -> None:
        if per_source < 1 or total < 1:
            raise ValueError("connection caps must be at least 1")
        self.per_source = per_source
        self.total = total
        self._idle_since = idle_since
        self._exempt = exempt
        self._source: dict[K, str] = {}
        self._by_source: dict[str, dict[K, None]] = {}

    def __len__(self) -> int:
        return len(self._source)

    def count(self, source: str) -> int:
        return len(self._by_source.get(source, ()))

    def open(self, key: K, source: str) -> tuple[bool, K | None, str | None]:
        if key in self._source:
            return True, None, None
        victim: K | None = None
        reason: str | None = None
        mine = self._by_source.get(source)
        if mine is not None and len(mine) >= self.per_source and not self._exempt(source):
            reason = REASON_PER_SOURCE
            victim = self._longest_idle(mine)
            if victim is None:
                return False, None, reason
            self.close(victim)
        elif len(self._source) >= self.total:
            reason = REASON_TOTAL
            victim = self._longest_idle(self._source)
            if victim is None:
                victim = self._of_the_heaviest(source)
            if victim is None:
                return False, None, reason
            self.close(victim)
        self._source[key] = source
        self._by_source.setdefault(source, {})[key] = None
        return True, victim, reason

    def close(self, key: K) -> None:
        source = self._source.pop(key, None)
        if source is None:
            return
        mine = self._by_source[source]
        del mine[key]
        if not mine:
            del self._by_source[source]

    def _of_the_heaviest(self, source: str) -> K | None:
        """The oldest connection of the source holding the most, busy or not, when that is
        more than `source` would hold with one more (else None: moving one changes nothing)."""
        mine = self.count(source)
        heaviest = max(self._by_source.values(), key=len, default=None)
        if heaviest is None or len(heaviest) <= mine + 1:
            return None
        return next(iter(heaviest))

    def _longest_idle(self, keys: Iterable[K]) -> K | None:
        best: K | None = None
        best_since = 0.0
        for key in keys:
            since = self._idle_since(key)
            if since is not None and (best is None or since < best_since):
                best, best_since = key, since
        return best
