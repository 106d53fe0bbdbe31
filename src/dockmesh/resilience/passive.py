"""Passive health's cluster-wide decisions: which results count against an upstream, how many
hosts may be out of the rotation at once, and when to stop trusting the verdicts (panic). Pure.

- **What counts**: a gateway failure (no status: connect refused, reset, timed out) and the
  statuses in `failure_statuses` (default 502, 503, 504: the upstream itself failing). An
  application's 500 says the request failed, not the host: one client asking for a path the
  app answers 500 must not take hosts out for everyone else. 500 counts only when configured.
- **The cap**: at most `max_ejection_percent` of the hosts (rounded down) may be out (breaker
  open or ejected) at once, and never the last one: with one upstream, nothing is ever taken out.
- **Panic** (as Envoy does): when fewer than `panic_threshold_percent` of the hosts remain
  available, the verdicts are set aside and requests are balanced over all of them, since a
  host that might fail beats a 503 that surely does.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

DEFAULT_FAILURE_STATUSES = frozenset((502, 503, 504))


@dataclass(frozen=True, slots=True)
class PassivePolicy:
    failure_statuses: frozenset[int] = DEFAULT_FAILURE_STATUSES
    max_ejection_percent: float = 50.0
    panic_threshold_percent: float = 50.0

    def __post_init__(self) -> None:
        if not all(500 <= s <= 599 for s in self.failure_statuses):
            raise ValueError("failure_statuses must be 5xx statuses")
        if not 0 <= self.max_ejection_percent <= 100:
            raise ValueError("max_ejection_percent must be in [0, 100]")
        if not 0 <= self.panic_threshold_percent <= 100:
            raise ValueError("panic_threshold_percent must be in [0, 100]")


def parse_statuses(text: str) -> frozenset[int]:
    """`"502,503,504"` as a set; ValueError (one line) when it is not a list of 5xx statuses."""
    out = set()
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        if not part.isdigit() or not 500 <= int(part) <= 599:
            raise ValueError(f"{part!r} is not a 5xx status")
        out.add(int(part))
    return frozenset(out)


def is_upstream_failure(status: int | None, failure_statuses: Iterable[int]) -> bool:
    """Whether a result counts against the upstream: a gateway failure (None) or a listed
    status."""
    return status is None or status in failure_statuses


def out_cap(hosts: int, max_percent: float) -> int:
    """How many of `hosts` may be out of the rotation at once: `max_percent` of them rounded
    down, and never all of them."""
    if hosts <= 1:
        return 0
    return min(int(hosts * max_percent // 100), hosts - 1)


def in_panic(hosts: int, available: int, threshold_percent: float) -> bool:
    """Whether so few of `hosts` remain `available` that all of them should be used."""
    return hosts > 0 and available * 100 < threshold_percent * hosts
