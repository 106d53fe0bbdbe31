"""What a compiled ruleset does with one packet, read off the data as the kernel would. Pure.

The oracle of the compiler's tests: for every pair of endpoints, the verdict walked here from
the `Ruleset` must equal `decide`'s. It knows exactly the matches `compile` writes: a packet
that entered a bridge through a container's port first meets the bridge table (which may mark
its source unconfirmed), then the inet forward chain."""

from __future__ import annotations

import fnmatch
import ipaddress
from dataclasses import dataclass
from functools import lru_cache

from dockmesh.policy.compile import (
    BRIDGE_CHAIN,
    BRIDGE_OUT_CHAIN,
    AddrSet,
    CtState,
    DPort,
    IfName,
    IfSet,
    InConcat,
    InSet,
    L4Proto,
    LinkLocal,
    Match,
    NeighbourDiscovery,
    NfProto,
    NftRule,
    Ruleset,
    Unconfirmed,
    VlanTagged,
)

ND_TYPE_NAMES = frozenset(
    {
        "nd-router-solicit",
        "nd-router-advert",
        "nd-neighbor-solicit",
        "nd-neighbor-advert",
        "nd-redirect",
    }
)


@dataclass(frozen=True, slots=True)
class Packet:
    saddr: str
    daddr: str
    protocol: str  # tcp, udp, sctp, icmp
    dport: int | None = None
    ct_state: str = "new"  # new, established, related
    dnat: bool = False
    # The bridge it is forwarded from and to (inet's iifname/oifname), and the bridge port
    # it entered by (None: it did not enter through a bridge port).
    iif: str | None = None
    oif: str | None = None
    port: str | None = None
    icmp_type: str | None = None  # for ICMPv6: e.g. nd-neighbor-advert
    hoplimit: int = 64
    hook: str = "forward"  # or "input": to the host itself (a published port, by the proxy)
    tagged: bool = False  # sent in a VLAN tag (by a container with a raw socket)
    out_port: str | None = None  # the bridge port it leaves by (None: not through a port)


@dataclass(frozen=True, slots=True)
class Outcome:
    verdict: str  # "accept" or "drop"; audit rules accept
    rule: NftRule | None  # the rule that decided; None: the chain's policy (accept)
    audited: bool = False
    unconfirmed: bool = False
    # The policy's rule (its index) behind the decision: the rule's own, or for a rule
    # between named containers, the one its matched set element stands for.
    policy_rule: int | None = None


def evaluate(rs: Ruleset, packet: Packet) -> Outcome:
    out = _evaluate(rs, packet)
    if out.verdict != "accept" or packet.out_port is None:
        return out
    family = ipaddress.ip_address(packet.saddr).version
    sets = {s.name: s for s in rs.sets}
    for r in rs.rules:
        if r.table_family != "bridge" or r.chain_name != BRIDGE_OUT_CHAIN:
            continue
        if r.family is not None and r.family != family:
            continue
        if all(_matches(m, packet, family, sets, False, egress=True) for m in r.matches):
            if r.action == "drop":
                return Outcome("drop", r, unconfirmed=out.unconfirmed)
            break
    return out


def _evaluate(rs: Ruleset, packet: Packet) -> Outcome:
    family = ipaddress.ip_address(packet.saddr).version
    sets = {s.name: s for s in rs.sets}
    mark = False
    if packet.port is not None:
        for r in rs.rules:
            if r.table_family != "bridge" or r.chain_name != BRIDGE_CHAIN:
                continue
            if r.family is not None and r.family != family:
                continue
            if all(_matches(m, packet, family, sets, mark, bridge=True) for m in r.matches):
                if r.action == "mark":
                    mark = True
                    continue
                if r.action == "drop":
                    return Outcome("drop", r, unconfirmed=mark)
                break  # accept: the bridge table is done with it
    for r in rs.rules:
        if r.table_family != "inet" or r.chain_name != packet.hook:
            continue
        if r.family is not None and r.family != family:
            continue
        if all(_matches(m, packet, family, sets, mark) for m in r.matches):
            index = _policy_rule(rs, r, packet, family, sets)
            if r.action == "drop":
                return Outcome("drop", r, unconfirmed=mark, policy_rule=index)
            audited = r.action == "audit"
            return Outcome("accept", r, audited, mark, index)
    return Outcome("accept", None, unconfirmed=mark)


def _policy_rule(
    rs: Ruleset, r: NftRule, p: Packet, family: int, sets: dict[str, AddrSet]
) -> int | None:
    kind, value = r.origin
    if kind == "rule" and isinstance(value, int):
        return value
    for m in r.matches:
        if isinstance(m, InConcat) and m.set in rs.attribution and not m.negate:
            values = [_field(f, p, family, False) for f in m.fields]
            owners = rs.attribution[m.set]
            for element in sets[m.set].elements:
                if element in owners and _element_has(element, m.fields, values):
                    return owners[element]
    return None


def _field(
    name: str, p: Packet, family: int, bridge: bool, egress: bool = False
) -> str | int | None:
    if name == "saddr":
        return p.saddr
    if name == "daddr":
        return p.daddr
    if name == "l4proto":
        return _proto(p.protocol, family)
    if name == "dport":
        return p.dport
    if name == "iifname":
        return p.port if bridge else p.iif
    if name == "oifname":
        return p.out_port if egress else p.oif
    raise AssertionError(name)


def _proto(protocol: str, family: int) -> str:
    return "ipv6-icmp" if protocol == "icmp" and family == 6 else protocol


def _matches(
    m: Match,
    p: Packet,
    family: int,
    sets: dict[str, AddrSet],
    mark: bool,
    bridge: bool = False,
    egress: bool = False,
) -> bool:
    if isinstance(m, InSet):
        s = sets.get(m.set)
        if s is None or s.family != family:
            return False
        return _in(s, p.saddr if m.field == "saddr" else p.daddr) != m.negate
    if isinstance(m, InConcat):
        s = sets.get(m.set)
        if s is None:
            return False
        if any(f in ("saddr", "daddr") for f in m.fields) and s.family != family:
            return False
        values = [_field(f, p, family, bridge, egress) for f in m.fields]
        if any(v is None for v in values):
            return m.negate
        if not s.interval:
            key = " . ".join(_text(f, v) for f, v in zip(m.fields, values, strict=True))
            return (key in s.elements) != m.negate
        found = any(_element_has(e, m.fields, values) for e in s.elements)
        return found != m.negate
    if isinstance(m, L4Proto):
        return _proto(p.protocol, family) == m.protocol
    if isinstance(m, DPort):
        return (
            p.protocol == m.protocol
            and p.dport is not None
            and any(a <= p.dport <= b for a, b in m.ranges)
        )
    if isinstance(m, CtState):
        return p.ct_state in m.states
    if isinstance(m, Unconfirmed):
        return mark == m.is_set
    if isinstance(m, IfName):
        have = _field(m.field, p, family, bridge)
        return isinstance(have, str) and fnmatch.fnmatchcase(have, m.name)
    if isinstance(m, IfSet):
        have = _field(m.field, p, family, bridge)
        s = sets.get(m.set)
        return s is not None and isinstance(have, str) and have in s.elements
    if isinstance(m, NfProto):
        return family == m.family
    if isinstance(m, LinkLocal):
        return family == 6 and ipaddress.ip_address(p.saddr) in _net("fe80::/10")
    if isinstance(m, NeighbourDiscovery):
        return family == 6 and p.icmp_type in ND_TYPE_NAMES and p.hoplimit == 255
    if isinstance(m, VlanTagged):
        return p.tagged
    raise AssertionError(f"unknown match {m!r}")


def _text(f: str, value: str | int | None) -> str:
    if f in ("saddr", "daddr"):
        return str(ipaddress.ip_address(str(value)))
    return str(value)


def _element_has(element: str, fields: tuple[str, ...], values: list[str | int | None]) -> bool:
    parts = element.split(" . ")
    if len(parts) != len(fields):
        return False
    for f, part, value in zip(fields, parts, values, strict=True):
        if value is None:
            return False
        if f in ("saddr", "daddr"):
            ip = ipaddress.ip_address(str(value))
            if "/" in part:
                if ip not in _net(part):
                    return False
            elif ip != ipaddress.ip_address(part):
                return False
        elif f == "dport":
            first, _, last = part.partition("-")
            if not int(first) <= int(value) <= int(last or first):
                return False
        elif part != str(value):
            return False
    return True


def _in(s: AddrSet, address: str) -> bool:
    ip = ipaddress.ip_address(address)
    if str(ip) in s.elements:
        return True
    if not s.interval:
        return False
    return any(ip in _net(e) for e in s.elements if "/" in e)


@lru_cache(maxsize=4096)
def _net(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    return ipaddress.ip_network(text)
