"""Upstreams and the clusters they form: the proxy's live view of where requests may go.

A `Cluster` holds its upstreams (address → `Upstream`) and the resilience objects that decide
over them: a balancer, an outlier detector, a breaker per upstream, a retry budget. Members
come from `--backend` (with the proxy's own active checks flipping `healthy`) or from the
agent's catalog (passing instances only). Removing a member never disturbs requests it is
serving: they hold their `Upstream` and finish; only its idle pooled connections are closed.

Eligibility (healthy, not ejected, breaker admitting) is computed once per change, not per
request: the hot path reads a cached tuple while every breaker is closed and nobody is
ejected, and rebuilds it per pick only while something is degraded.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

from dockmesh.resilience.balance import Balancer, make_balancer
from dockmesh.resilience.breaker import BreakerPolicy, BreakerState, CircuitBreaker
from dockmesh.resilience.outlier import OutlierDetector, OutlierPolicy
from dockmesh.resilience.retry import RetryBudget

if TYPE_CHECKING:
    from dockmesh.proxy.server import UpstreamConn


class Upstream:
    __slots__ = (
        "addr",
        "breaker",
        "connections",
        "failures",
        "failures_in_row",
        "healthy",
        "host",
        "idle",
        "in_flight",
        "name",
        "port",
        "removed",
        "requests",
        "weight",
    )

    def __init__(
        self, host: str, port: int, weight: int, breaker: CircuitBreaker, healthy: bool = True
    ) -> None:
        self.host = host
        self.port = port
        self.name = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self.addr = self.name
        self.weight = weight
        self.breaker = breaker
        self.healthy = healthy
        self.removed = False
        self.idle: list[UpstreamConn] = []
        self.connections = 0  # open, idle or busy
        self.in_flight = 0
        self.requests = 0
        self.failures = 0
        self.failures_in_row = 0


def split_hostport(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


class Cluster:
    def __init__(
        self,
        name: str,
        balance: str,
        *,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        breaker_policy: BreakerPolicy | None = None,
        outlier_policy: OutlierPolicy | None = None,
        max_connections_per_upstream: int = 1024,
    ) -> None:
        self.name = name
        self.balance = balance
        self.clock = clock
        self.balancer: Balancer = make_balancer(balance, rng or random.Random())
        self.breaker_policy = breaker_policy or BreakerPolicy()
        self.outlier = OutlierDetector(
            outlier_policy or OutlierPolicy(max_ejection_percent=50.0), clock
        )
        self.budget = RetryBudget(clock)
        self.upstreams: dict[str, Upstream] = {}
        self.max_connections_per_upstream = max_connections_per_upstream
        self._eligible: tuple[str, ...] = ()
        self.degraded = False
        self.retries = 0
        self.ejections = 0
        # Set by the discovery watch once it has heard from the agent: until then "no
        # upstream" means "not known yet", which the 503 says.
        self.known = True

    # --- membership -----------------------------------------------------------------------

    def set_members(self, members: Mapping[str, int], healthy: bool = True) -> list[Upstream]:
        """Makes the members exactly `members` (address → weight); returns those removed."""
        removed = []
        for addr in list(self.upstreams):
            if addr not in members:
                up = self.upstreams.pop(addr)
                up.removed = True
                removed.append(up)
        for addr, weight in members.items():
            known = self.upstreams.get(addr)
            if known is None:
                host, port = split_hostport(addr)
                breaker = CircuitBreaker(self.breaker_policy, self.clock)
                self.upstreams[addr] = Upstream(host, port, weight, breaker, healthy)
            else:
                known.weight = weight
        self.balancer.update({a: u.weight for a, u in self.upstreams.items()})
        self.outlier.set_hosts(self.upstreams)
        self.changed()
        return removed

    def set_healthy(self, up: Upstream, healthy: bool) -> None:
        if up.healthy != healthy:
            up.healthy = healthy
            self.changed()

    def changed(self) -> None:
        """Something that decides eligibility changed: rebuild the cached choice."""
        ups = self.upstreams
        self._eligible = tuple(a for a, u in ups.items() if u.healthy)
        self.degraded = bool(self.outlier.ejected()) or any(
            u.breaker.state is not BreakerState.CLOSED for u in ups.values()
        )

    # --- the hot path ---------------------------------------------------------------------

    def eligible(self) -> Sequence[str]:
        if not self.degraded:
            return self._eligible
        self.changed()
        if not self.degraded:
            return self._eligible
        ups, outlier = self.upstreams, self.outlier
        return [
            a for a in self._eligible if ups[a].breaker.would_admit() and not outlier.is_ejected(a)
        ]

    def pick_one(self) -> Upstream | None:
        """`pick(None)`, the request path's common call, with one call less."""
        if self.degraded:
            return self.pick(None)
        name = self.balancer.pick(self._eligible, None)
        return None if name is None else self.upstreams[name]

    def pick(self, key: bytes | None, tried: Sequence[Upstream] = ()) -> Upstream | None:
        eligible = self.eligible()
        if tried:
            others = [a for a in eligible if all(t.addr != a for t in tried)]
            # Every eligible one tried already: trying one again beats failing.
            eligible = others or eligible
        name = self.balancer.pick(eligible, key)
        return None if name is None else self.upstreams[name]

    def tick(self, now: float) -> None:
        """Periodic bookkeeping (the server's sweep): batched counts into their windows."""
        self.budget.tick(now)
        for u in self.upstreams.values():
            u.breaker.tick(now)

    def no_upstream_reason(self) -> str:
        if not self.known:
            return f"no instances of {self.name} known yet"
        if not self.upstreams:
            return f"no healthy upstream for {self.name}: it has no instances"
        if not self._eligible:
            return f"no healthy upstream for {self.name}: every instance fails its checks"
        return f"no healthy upstream for {self.name}: every circuit is open or ejected"

    # --- results --------------------------------------------------------------------------

    def record(self, up: Upstream, ticket: int | None, status: int | None) -> None:
        """One attempt's result: a status, or None for a gateway failure (connect refused,
        reset, timed out). Feeds the breaker, the outlier detector and the counters."""
        failed = status is None or status >= 500
        if failed:
            up.failures += 1
            up.failures_in_row += 1
            if ticket is not None:
                up.breaker.failure(ticket)
            if self.outlier.record(up.addr, status):
                self.ejections += 1
            if ticket is not None or self.outlier.ejected():
                self.changed()
        else:
            breaker = up.breaker
            if ticket is not None:
                if self.degraded:
                    before = breaker.state
                    breaker.success(ticket)
                    if before is not breaker.state:
                        self.changed()
                else:
                    breaker.success(ticket)
            if up.failures_in_row:
                up.failures_in_row = 0
                self.outlier.record(up.addr, status)
