"""What a compiled ruleset does with one packet, read off the data as the kernel would. Pure.

The oracle of the compiler's tests: for every pair of endpoints, the verdict walked here from
the `Ruleset` must equal `decide`'s. It knows exactly the matches `compile` writes."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from functools import lru_cache

from dockmesh.policy.compile import (
    AddrSet,
    CtDnat,
    CtState,
    DPort,
    InSet,
    L4Proto,
    Match,
    NftRule,
    Ruleset,
)


@dataclass(frozen=True, slots=True)
class Packet:
    saddr: str
    daddr: str
    protocol: str  # tcp, udp, sctp, icmp
    dport: int | None = None
    ct_state: str = "new"  # new, established, related
    dnat: bool = False


@dataclass(frozen=True, slots=True)
class Outcome:
    verdict: str  # "accept" or "drop"; audit rules accept
    rule: NftRule | None  # the rule that decided; None: the chain's policy (accept)
    audited: bool = False


def evaluate(rs: Ruleset, packet: Packet) -> Outcome:
    family = ipaddress.ip_address(packet.saddr).version
    sets = {s.name: s for s in rs.sets}
    for r in rs.rules:
        if r.family is not None and r.family != family:
            continue
        if all(_matches(m, packet, family, sets) for m in r.matches):
            if r.action == "drop":
                return Outcome("drop", r)
            return Outcome("accept", r, audited=r.action == "audit")
    return Outcome("accept", None)


def _matches(m: Match, p: Packet, family: int, sets: dict[str, AddrSet]) -> bool:
    if isinstance(m, InSet):
        s = sets.get(m.set)
        if s is None or s.family != family:
            return False
        return _in(s, p.saddr if m.field == "saddr" else p.daddr)
    if isinstance(m, L4Proto):
        proto = p.protocol
        if proto == "icmp" and family == 6:
            proto = "ipv6-icmp"
        return proto == m.protocol
    if isinstance(m, DPort):
        return (
            p.protocol == m.protocol
            and p.dport is not None
            and any(a <= p.dport <= b for a, b in m.ranges)
        )
    if isinstance(m, CtState):
        return p.ct_state in m.states
    if isinstance(m, CtDnat):
        return p.dnat
    raise AssertionError(f"unknown match {m!r}")


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
