"""Rates and deltas between two counter samples (pure; the interval is given, not read).

Counters are matched by (container id, interface name): a container that restarted, or an
interface that appeared, between the samples has no earlier value and is left out rather
than shown with its whole history as one interval's traffic. A counter that went down (the
interface was recreated) restarts from zero the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from dockmesh.codecs.procnet import IfaceCounters
from dockmesh.observe.counters import ContainerStats

_FIELDS = (
    "rx_bytes",
    "tx_bytes",
    "rx_packets",
    "tx_packets",
    "rx_errors",
    "tx_errors",
    "rx_dropped",
    "tx_dropped",
)


@dataclass(frozen=True, slots=True)
class RateRow:
    container: str
    interface: str
    network: str | None
    rx_bytes_s: float
    tx_bytes_s: float
    rx_packets_s: float
    tx_packets_s: float
    errors_s: float  # errors and drops, both directions


@dataclass(frozen=True, slots=True)
class Delta:
    container: str
    interface: str
    network: str | None
    counts: dict[str, int]  # _FIELDS → growth over the interval

    def to_json(self, seconds: float) -> dict[str, object]:
        doc: dict[str, object] = {
            "container": self.container,
            "interface": self.interface,
            "network": self.network,
            **self.counts,
        }
        if seconds > 0:
            doc["rx_bits_per_second"] = round(self.counts["rx_bytes"] * 8 / seconds, 1)
            doc["tx_bits_per_second"] = round(self.counts["tx_bytes"] * 8 / seconds, 1)
        return doc


def _growth(before: IfaceCounters, after: IfaceCounters) -> dict[str, int] | None:
    out: dict[str, int] = {}
    for f in _FIELDS:
        d = getattr(after, f) - getattr(before, f)
        if d < 0:
            return None
        out[f] = d
    return out


def deltas(before: Sequence[ContainerStats], after: Sequence[ContainerStats]) -> list[Delta]:
    """What each interface carried between the samples, in `after`'s order."""
    earlier = {(c.id, i.counters.name): i.counters for c in before for i in c.interfaces}
    out: list[Delta] = []
    for c in after:
        for i in c.interfaces:
            prev = earlier.get((c.id, i.counters.name))
            if prev is None:
                continue
            growth = _growth(prev, i.counters)
            if growth is not None:
                out.append(Delta(c.name, i.counters.name, i.network, growth))
    return out


SORT_KEYS: dict[str, Callable[[RateRow], Any]] = {
    "total": lambda r: -(r.rx_bytes_s + r.tx_bytes_s),
    "rx": lambda r: -r.rx_bytes_s,
    "tx": lambda r: -r.tx_bytes_s,
    "packets": lambda r: -(r.rx_packets_s + r.tx_packets_s),
    "errors": lambda r: -r.errors_s,
    "name": lambda r: (r.container, r.interface),
}


def rates(
    before: Sequence[ContainerStats],
    after: Sequence[ContainerStats],
    seconds: float,
    sort: str = "total",
) -> list[RateRow]:
    """Per-second rates over `seconds`, sorted by `sort` (a SORT_KEYS name); ties keep the
    order by container and interface so the view does not jump between refreshes."""
    if seconds <= 0:
        return []
    rows = [
        RateRow(
            d.container,
            d.interface,
            d.network,
            d.counts["rx_bytes"] / seconds,
            d.counts["tx_bytes"] / seconds,
            d.counts["rx_packets"] / seconds,
            d.counts["tx_packets"] / seconds,
            sum(d.counts[f] for f in _FIELDS[4:]) / seconds,
        )
        for d in deltas(before, after)
    ]
    rows.sort(key=lambda r: (r.container, r.interface))
    rows.sort(key=SORT_KEYS[sort])
    return rows
