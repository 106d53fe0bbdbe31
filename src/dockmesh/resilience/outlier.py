"""Passive outlier ejection, as Envoy does it: hosts that keep failing real requests are taken
out of the rotation for a while. Pure; the clock is injected.

Theory of operation
-------------------
Each host's results are reported with `record(host, status)`: an HTTP status, or None for a
gateway failure without a status (connect refused, reset, timed out). Two counters per host:

- consecutive failures (`consecutive_5xx`): a gateway failure or a status in
  `failure_statuses` (default 502, 503, 504: an application's 500 is not the host failing);
- consecutive gateway failures: 502, 503, 504 or a gateway failure.

Any other status resets both. When one reaches its threshold the host is ejected, unless
ejecting it would put the number of ejected hosts over the cap: `max_ejection_percent` of the
hosts, rounded down, and never the last host (`passive.out_cap`: with one upstream, nothing is
ejected, unlike Envoy, whose rule lets one host always go). An
ejected host stays out for `base_ejection_s * times_ejected` (capped at `max_ejection_s`), then
returns on its own (decided lazily, when asked after the time has passed); its counters start
again from zero. `times_ejected` goes back down by one for every `base_ejection_s * 2` a host
spends in rotation without being ejected, so a host that recovered for good is forgiven.

Invariants (tested with hypothesis): the number of ejected hosts never exceeds the cap;
a host is never ejected past its ejection time; a host that is not known is never ejected.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from dockmesh.resilience.passive import DEFAULT_FAILURE_STATUSES, is_upstream_failure, out_cap


@dataclass(frozen=True, slots=True)
class OutlierPolicy:
    consecutive_5xx: int = 5
    consecutive_gateway_failures: int = 3
    base_ejection_s: float = 30.0
    max_ejection_s: float = 300.0
    max_ejection_percent: float = 10.0
    failure_statuses: frozenset[int] = DEFAULT_FAILURE_STATUSES

    def __post_init__(self) -> None:
        if self.consecutive_5xx < 1 or self.consecutive_gateway_failures < 1:
            raise ValueError("thresholds must be >= 1")
        if not 0 <= self.max_ejection_percent <= 100 or self.base_ejection_s <= 0:
            raise ValueError("max_ejection_percent in [0, 100], base_ejection_s > 0")


@dataclass(slots=True)
class HostRecord:
    five_xx: int = 0
    gateway: int = 0
    times_ejected: int = 0
    ejected_until: float | None = None
    # When `times_ejected` was last lowered (or the host last came back).
    forgiven_at: float = 0.0
    ejections: int = field(default=0)  # total, for metrics


GATEWAY_STATUSES = frozenset((502, 503, 504))


class OutlierDetector:
    def __init__(self, policy: OutlierPolicy, clock: Callable[[], float]) -> None:
        self.policy = policy
        self._clock = clock
        self.hosts: dict[str, HostRecord] = {}
        self.ejections_total = 0

    def set_hosts(self, hosts: Iterable[str]) -> None:
        """The hosts now known; a removed host's record is forgotten."""
        now = self._clock()
        keep = set(hosts)
        self.hosts = {h: self.hosts.get(h) or HostRecord(forgiven_at=now) for h in keep}

    def cap(self) -> int:
        return out_cap(len(self.hosts), self.policy.max_ejection_percent)

    def _refresh(self, rec: HostRecord, now: float) -> None:
        if rec.ejected_until is not None and now >= rec.ejected_until:
            rec.ejected_until = None
            rec.five_xx = rec.gateway = 0
            rec.forgiven_at = now
        if rec.ejected_until is None and rec.times_ejected:
            period = self.policy.base_ejection_s * 2
            steps = int((now - rec.forgiven_at) // period)
            if steps > 0:
                rec.times_ejected = max(0, rec.times_ejected - steps)
                rec.forgiven_at += steps * period

    def is_ejected(self, host: str) -> bool:
        rec = self.hosts.get(host)
        if rec is None or rec.ejected_until is None:
            return False
        self._refresh(rec, self._clock())
        return rec.ejected_until is not None

    def ejected(self) -> set[str]:
        now = self._clock()
        out = set()
        for h, rec in self.hosts.items():
            self._refresh(rec, now)
            if rec.ejected_until is not None:
                out.add(h)
        return out

    def record(self, host: str, status: int | None, may_eject: bool = True) -> bool:
        """Reports one result; True when it ejected the host. With `may_eject` False (its
        cluster has as many hosts out as it may, counting open breakers), it is counted only."""
        rec = self.hosts.get(host)
        if rec is None:
            return False
        if not is_upstream_failure(status, self.policy.failure_statuses):
            rec.five_xx = rec.gateway = 0
            return False
        now = self._clock()
        self._refresh(rec, now)
        if rec.ejected_until is not None:
            return False
        rec.five_xx += 1
        if status is None or status in GATEWAY_STATUSES:
            rec.gateway += 1
        p = self.policy
        if rec.five_xx < p.consecutive_5xx and rec.gateway < p.consecutive_gateway_failures:
            return False
        if not may_eject or len(self.ejected()) >= self.cap():
            return False
        rec.times_ejected += 1
        rec.ejections += 1
        self.ejections_total += 1
        rec.ejected_until = now + min(p.base_ejection_s * rec.times_ejected, p.max_ejection_s)
        rec.five_xx = rec.gateway = 0
        return True
