"""Upstreams and the clusters they form: the proxy's live view of where requests may go. Pure:
the clock and the randomness are given to each cluster; connections are seen only through the
small `Pooled` protocol.

A `Cluster` holds its upstreams (address → `Upstream`) and the resilience objects that decide
over them: a balancer, an outlier detector, a breaker per upstream, a retry budget. Members
come from `--backend` (with the proxy's own active checks flipping `healthy`) or from the
agent's catalog (passing instances only). Removing a member never disturbs requests it is
serving: they hold their `Upstream` and finish; only its idle pooled connections are closed.

Eligibility (healthy, not ejected, breaker admitting) is computed once per change, not per
request: the hot path reads a cached tuple while every breaker is closed and nobody is
ejected, and rebuilds it per pick only while something is degraded.

Passive health (`resilience.passive`): only the upstream's failures count against a host; open
breakers and ejections share one cap (`max_ejection_percent` of the hosts, never the last);
while fewer than `panic_threshold_percent` of the healthy hosts are available, `eligible` gives
all of them (`panic`), and an attempt to a host whose breaker refuses goes ahead ticketless.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Generic, Protocol, TypeVar

from dockmesh.resilience.balance import Balancer, Rng, make_balancer
from dockmesh.resilience.breaker import BreakerPolicy, BreakerState, CircuitBreaker
from dockmesh.resilience.outlier import OutlierDetector, OutlierPolicy
from dockmesh.resilience.passive import PassivePolicy, in_panic, is_upstream_failure, out_cap
from dockmesh.resilience.retry import RetryBudget, RetryPolicy


class Pooled(Protocol):
    """What the pool and its sweep need of an idle connection to an upstream."""

    @property
    def idle_since(self) -> float: ...

    def close(self) -> None: ...


P = TypeVar("P", bound=Pooled)


class Upstream(Generic[P]):
    """One address requests may go to (`host:port`), as its cluster sees it: its weight, whether
    its checks pass (`healthy`), whether it left the cluster (`removed`), its circuit breaker,
    its idle connections (`idle`, a LIFO pool of `P`, so few stay warm) and the counters the
    status page shows. The cluster changes `weight`, `healthy` and `removed`; an attempt
    (`exchange.Exchange.begin_attempt`/`end_attempt`) changes `in_flight`, `requests` and
    `failures`; the server's connections change `connections` and the pool. A removed upstream
    takes no new request but is held by those it serves until they end: its idle connections
    are closed at once, its busy ones when they are released.
    """

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
        self.idle: list[P] = []
        self.connections = 0  # open, idle or busy
        self.in_flight = 0
        self.requests = 0
        self.failures = 0
        self.failures_in_row = 0

    def close_idle(self, older_than: float | None = None) -> None:
        """Closes the idle connections (those idle since before `older_than`, when given)."""
        idle = self.idle
        if older_than is None:
            closing = list(idle)
            idle.clear()
        else:
            if not idle or idle[0].idle_since >= older_than:
                return  # the oldest is at the bottom of the pool: nothing is that old
            closing = [c for c in idle if c.idle_since < older_than]
            idle[:] = [c for c in idle if c.idle_since >= older_than]
        for conn in closing:
            conn.close()


def split_hostport(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


class Cluster(Generic[P]):
    """The upstreams one route sends to, and the decisions over them: which are eligible now,
    which one takes the next attempt (the balancer), what a result does to an upstream (its
    breaker, the outlier detector) and whether a failed request may be tried again (the retry
    budget). Members are set whole (`set_members`, from the catalog or the flags) and flipped by
    active checks (`set_healthy`); both rebuild the cached eligible set, as does a breaker or an
    ejection changing (`changed`). `pick` is the request path's one question; a result comes
    back through `Exchange.end_attempt`, which tells the cluster when eligibility may have
    changed. `tick` (the server's sweep) moves the batched counts of the breakers and the budget
    into their windows. Pure: the clock and the randomness are given.
    """

    def __init__(
        self,
        name: str,
        balance: str,
        *,
        clock: Callable[[], float],
        rng: Rng,
        breaker_policy: BreakerPolicy | None = None,
        outlier_policy: OutlierPolicy | None = None,
        passive: PassivePolicy | None = None,
        retry: RetryPolicy | None = None,
    ) -> None:
        self.name = name
        # Requests go to the upstreams as HTTP/2 with prior knowledge (h2c), not HTTP/1.1:
        # what gRPC needs (its trailers). Set by the composition root from the route.
        self.upstream_h2 = False
        self.balance = balance
        self.clock = clock
        self.balancer: Balancer = make_balancer(balance, rng)
        self.breaker_policy = breaker_policy or BreakerPolicy()
        self.passive = passive = passive or PassivePolicy()
        self.failure_statuses = passive.failure_statuses
        self.outlier = OutlierDetector(
            outlier_policy
            or OutlierPolicy(
                max_ejection_percent=passive.max_ejection_percent,
                failure_statuses=passive.failure_statuses,
            ),
            clock,
        )
        # A route's retries (`retry:`): how many attempts, on what, and the budget's share.
        self.retry = retry = retry or RetryPolicy()
        self.budget = RetryBudget(clock, ratio=retry.budget_ratio, min_per_s=retry.min_per_s)
        self.upstreams: dict[str, Upstream[P]] = {}
        self._eligible: tuple[str, ...] = ()
        self.degraded = False
        # Set by `eligible` while too few hosts are available: every healthy one is used.
        self.panic = False
        self.panics = 0
        self.retries = 0
        self.ejections = 0
        # Set by the discovery watch once it has heard from the agent: until then "no
        # upstream" means "not known yet", which the 503 says.
        self.known = True

    # --- membership -----------------------------------------------------------------------

    def set_members(self, members: Mapping[str, int], healthy: bool = True) -> list[Upstream[P]]:
        """Makes the members exactly `members` (address → weight); returns those removed (their
        idle connections closed)."""
        removed = []
        for addr in list(self.upstreams):
            if addr not in members:
                up = self.upstreams.pop(addr)
                up.removed = True
                up.close_idle()
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

    def set_healthy(self, up: Upstream[P], healthy: bool) -> None:
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
        if not self.degraded:
            self.panic = False

    def counts_against(self, status: int | None) -> bool:
        """Whether a result is the upstream's failure (not the application's answer)."""
        return is_upstream_failure(status, self.failure_statuses)

    def may_take_out(self) -> bool:
        """Whether one more host may go out (its breaker open, or ejected) without more hosts
        out than the cap allows: breakers and ejections share the one cap."""
        ups = self.upstreams
        out = {a for a, u in ups.items() if not u.breaker.closed} | self.outlier.ejected()
        return len(out) < out_cap(len(ups), self.passive.max_ejection_percent)

    # --- the hot path ---------------------------------------------------------------------

    def eligible(self) -> Sequence[str]:
        if not self.degraded:
            return self._eligible
        self.changed()
        if not self.degraded:
            return self._eligible
        ups, outlier = self.upstreams, self.outlier
        available = [
            a for a in self._eligible if ups[a].breaker.would_admit() and not outlier.is_ejected(a)
        ]
        panic = in_panic(len(self._eligible), len(available), self.passive.panic_threshold_percent)
        if panic and not self.panic:
            self.panics += 1
        self.panic = panic
        return self._eligible if panic else available

    def pick(
        self, key: bytes | None = None, tried: Sequence[Upstream[P]] = ()
    ) -> Upstream[P] | None:
        """The upstream for the next attempt, avoiding those `tried` while others are eligible;
        None when none is eligible."""
        eligible = self.eligible() if self.degraded else self._eligible
        if tried:
            others = [a for a in eligible if all(t.addr != a for t in tried)]
            # Every eligible one tried already: trying one again beats failing.
            eligible = others or eligible
        name = self.balancer.pick(eligible, key)
        return None if name is None else self.upstreams[name]

    # --- periodic ---------------------------------------------------------------------------

    def tick(self, now: float, pool_idle_s: float) -> None:
        """The server's sweep: batched counts into their windows, pooled connections idle for
        longer than `pool_idle_s` closed."""
        self.budget.tick(now)
        for u in self.upstreams.values():
            u.breaker.tick(now)
            if u.idle:
                u.close_idle(older_than=now - pool_idle_s)

    def close(self) -> None:
        """Every idle connection closed (the proxy stops)."""
        for u in self.upstreams.values():
            u.close_idle()

    def no_upstream_reason(self) -> str:
        if not self.known:
            return f"no instances of {self.name} known yet"
        if not self.upstreams:
            return f"no healthy upstream for {self.name}: it has no instances"
        if not self._eligible:
            return f"no healthy upstream for {self.name}: every instance fails its checks"
        return f"no healthy upstream for {self.name}: every circuit is open or ejected"
