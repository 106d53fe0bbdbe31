"""Every drop named: the drop logs' sets (`compile.with_drop_log`) read back as flows, named by
the topology's containers, and counted for /metrics with bounded label cardinality. Pure.

A drop log element is one flow — (source address, destination address, protocol, port) — with
the packets and bytes the rule dropped (or, in audit mode, would have dropped) since the
kernel first recorded it, and how long until it is forgotten (`LOG_TIMEOUT_S` after its last
packet). So "last seen" is the timeout minus what is left of it.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from dockmesh.policy.compile import LOG_TIMEOUT_S, PORTED, DropLog, is_log_set

Verdict = Literal["drop", "would_drop"]
# At most this many (rule, source, destination) series in /metrics: past it, new pairs are
# counted under source and destination OTHER, so a scan of many addresses cannot grow the
# agent's memory or Prometheus's series without bound.
MAX_SERIES = 1000
OTHER = "_other"


@dataclass(frozen=True, slots=True)
class Flow:
    """One element of a drop log, as nft lists it."""

    log: str  # the set's name
    saddr: str
    daddr: str
    protocol: str  # nft's name (tcp, udp, icmp, ipv6-icmp) or the protocol's number
    port: int | None  # None: a protocol without ports
    packets: int
    bytes: int
    last_seen_s: float | None  # seconds since its last packet, when nft says

    @property
    def key(self) -> tuple[str, str, str, str, int | None]:
        return (self.log, self.saddr, self.daddr, self.protocol, self.port)


def parse_flows(doc: Any, table: str) -> list[Flow]:
    """`nft -j list table inet <table>` (or `list set`) → the flows in its drop logs. What is
    not a drop log's element is skipped, never an error: the listing is the kernel's."""
    out: list[Flow] = []
    items = doc.get("nftables", []) if isinstance(doc, Mapping) else []
    for item in items:
        s = item.get("set") if isinstance(item, Mapping) else None
        if not isinstance(s, Mapping) or s.get("table") != table:
            continue
        name = str(s.get("name"))
        if not is_log_set(name):
            continue
        timeout = s.get("timeout", LOG_TIMEOUT_S)
        for raw in s.get("elem") or ():
            flow = _flow(name, raw, timeout if isinstance(timeout, int | float) else None)
            if flow is not None:
                out.append(flow)
    return out


def _flow(log: str, raw: Any, timeout: float | None) -> Flow | None:
    elem: Mapping[str, Any] = {}
    if isinstance(raw, Mapping) and isinstance(raw.get("elem"), Mapping):
        elem = raw["elem"]
        raw = elem.get("val")
    if not isinstance(raw, Mapping) or not isinstance(raw.get("concat"), list):
        return None
    parts = raw["concat"]
    if len(parts) != 4:
        return None
    saddr, daddr, proto, port = parts
    try:
        saddr = str(ipaddress.ip_address(saddr))
        daddr = str(ipaddress.ip_address(daddr))
    except ValueError:
        return None
    protocol = str(proto)
    number: int | None = None
    if isinstance(port, int) and not isinstance(port, bool):
        number = port
    elif isinstance(port, str) and port.isdigit():
        number = int(port)
    if protocol not in PORTED:
        number = None
    raw_counter = elem.get("counter")
    counter: Mapping[str, Any] = raw_counter if isinstance(raw_counter, Mapping) else {}
    expires = elem.get("expires")
    last: float | None = None
    if timeout is not None and isinstance(expires, int | float) and not isinstance(expires, bool):
        last = max(0.0, float(timeout) - float(expires))
    return Flow(
        log,
        saddr,
        daddr,
        protocol,
        number,
        _count(counter.get("packets")),
        _count(counter.get("bytes")),
        last,
    )


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def port_text(protocol: str, port: int | None) -> str:
    """`8080/tcp`; `icmp` for ICMP of either family; the protocol alone for the rest."""
    if protocol in ("icmp", "ipv6-icmp"):
        return "icmp"
    if port is None:
        return protocol
    return f"{port}/{protocol}"


@dataclass(frozen=True, slots=True)
class NamedDrop:
    src: str  # the container's name; its address when no container holds it
    dst: str
    src_address: str
    dst_address: str
    port: str  # `8080/tcp`, `icmp`, `udp`...
    rule: str
    verdict: Verdict
    packets: int
    bytes: int
    last_seen_s: float | None

    def to_json(self) -> dict[str, Any]:
        return {
            "src": self.src,
            "dst": self.dst,
            "port": self.port,
            "rule": self.rule,
            "verdict": self.verdict,
            "src_address": self.src_address,
            "dst_address": self.dst_address,
            "packets": self.packets,
            "bytes": self.bytes,
            "last_seen_s": self.last_seen_s,
        }

    def line(self) -> str:
        """`SRC → DST:PORT/PROTO  dropped by RULE  N packets, last Xs ago`."""
        where = f"{self.dst} ({self.port})" if "/" not in self.port else f"{self.dst}:{self.port}"
        verb = "dropped by" if self.verdict == "drop" else "would drop (audit):"
        n = f"{self.packets} packet{'' if self.packets == 1 else 's'}"
        ago = "" if self.last_seen_s is None else f", last {self.last_seen_s:.0f}s ago"
        return f"{self.src} → {where}  {verb} {self.rule}  {n}{ago}"


def describe(logs: Iterable[DropLog]) -> dict[str, tuple[str, Verdict]]:
    """Each log's rule description and what its rule does to what it records."""
    return {lg.name: (lg.rule, "would_drop" if lg.action == "audit" else "drop") for lg in logs}


def name_flow(
    f: Flow,
    logs: Mapping[str, tuple[str, Verdict]],
    who: Callable[[str], str | None],
    audit: bool = False,
) -> NamedDrop:
    """A flow with its containers and rule. `who` names the container at an address (None:
    none known now). A log the policy does not describe (a table another version wrote) is
    named by its set, with the verdict of the table's mode."""
    rule, verdict = logs.get(f.log, (f.log, "would_drop" if audit else "drop"))
    return NamedDrop(
        who(f.saddr) or f.saddr,
        who(f.daddr) or f.daddr,
        f.saddr,
        f.daddr,
        port_text(f.protocol, f.port),
        rule,
        verdict,
        f.packets,
        f.bytes,
        f.last_seen_s,
    )


def name_flows(
    flows: Iterable[Flow],
    logs: Mapping[str, tuple[str, Verdict]],
    who: Callable[[str], str | None],
    audit: bool = False,
) -> list[NamedDrop]:
    """`name_flow` of each, the most recent first."""
    out = [name_flow(f, logs, who, audit) for f in flows]
    far = float("inf")
    out.sort(key=lambda d: (far if d.last_seen_s is None else d.last_seen_s, d.src, d.dst, d.port))
    return out


def news(
    seen: Mapping[tuple[str, str, str, str, int | None], int], flows: Iterable[Flow]
) -> list[Flow]:
    """The flows `--follow` prints: new ones, and those with more packets than `seen` says
    (one forgotten and recorded again counts from nothing: it has fewer, so it is new too)."""
    return [f for f in flows if f.packets != seen.get(f.key)]


@dataclass(slots=True)
class DropTally:
    """Packets dropped per (rule, source container, destination container, verdict), counted
    up from successive readings of the drop logs: a reading adds what each element gained
    since the last one (all of it for an element not seen before, or forgotten and recorded
    again). Exact as long as each flow is read at least once before it is forgotten
    (`LOG_TIMEOUT_S` after its last packet) and is absent from one reading before it is
    recorded again; a flow forgotten and recorded again between two readings with at least
    as many packets as before counts only what it has past that number. At most
    `MAX_SERIES` series (see there)."""

    max_series: int = MAX_SERIES
    totals: dict[tuple[str, str, str, str], int] = field(default_factory=dict)
    _last: dict[tuple[str, str, str, str, int | None], int] = field(default_factory=dict)

    def observe(self, flows: Iterable[Flow], name: Callable[[Flow], NamedDrop]) -> None:
        """One reading of the drop logs; `name` gives a flow's containers and rule."""
        last: dict[tuple[str, str, str, str, int | None], int] = {}
        for f in flows:
            last[f.key] = f.packets
            before = self._last.get(f.key)
            gained = f.packets - before if before is not None and f.packets >= before else f.packets
            if gained <= 0:
                continue
            d = name(f)
            series = (d.rule, d.src, d.dst, d.verdict)
            if series not in self.totals and len(self.totals) >= self.max_series:
                series = (d.rule, OTHER, OTHER, d.verdict)
            self.totals[series] = self.totals.get(series, 0) + gained
        self._last = last
