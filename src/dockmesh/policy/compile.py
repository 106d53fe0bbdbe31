"""Policy + topology → an nftables ruleset, as data. Pure.

Theory of operation
-------------------
- Two tables of the same name (`dockmesh` by default). `inet dockmesh` holds the decisions:
  one base chain on the forward hook at priority `filter - 10`, before Docker's filter
  chains, so a drop here is final whatever Docker's rules say, while an accept here only
  means "no objection" (Docker's own chains still see the packet). That is how the policy
  never opens what Docker closes. `bridge dockmesh` binds identity to the wire: each address
  an allow rule may accept as a container's is bound to that container's bridge port (its
  host-side veth), and a frame that carries it from any other port is marked unconfirmed
  (`UNCONFIRMED`, one bit of the packet mark). Both sides of allow rules are bound (a
  destination's replies are accepted as established). A frame in a VLAN tag from a
  container's port is dropped: neither br_netfilter nor an `ip saddr` match reads inside the
  tag, but the receiving kernel does. A frame to a bound address leaves by that port only
  (the bridge table's postrouting chain): an address stolen by ARP or neighbour discovery
  receives nothing. An unconfirmed packet matches no allow rule:
  a forged source, or a new container on a removed one's address before the agent has seen
  it, gets what the network's default says and nothing more.
- The chain's rules depend on the policy and the mode alone; the topology only fills sets.
  So when containers come and go the kernel gets set element updates (`element_delta`), and
  only a new policy replaces the tables. `Ruleset.structure_hash` tells the two apart; it is
  kept in the first rule's comment so that a new process can tell whether the live table is
  the structure it would write.
- The order of the forward chain: established/related (return traffic, from a confirmed
  source: a forged packet into a flow of others is judged as a new one); IPv6 neighbour
  discovery (hop limit 255, so never routed); Docker's isolation applied to IPv6 as Docker
  applies it to IPv4 (Docker 20.10 writes no ip6tables rules): between networks, out of an
  internal network, inside an `enable_icc=false` network; link-local IPv6 on a denied
  network; the deny rules; the allow rules; the per-network defaults; the policy's default.
  A deny rule therefore wins over any allow rule, whatever their order in the file.
- A rule between named containers or services is not a rule in the chain but elements of
  concatenated sets (`saddr . daddr`, `saddr . daddr . l4proto`, `saddr . daddr . l4proto .
  dport` with port ranges): one hash or interval lookup decides whatever the number of
  rules, and each element counts its packets. A rule over a broad side (every container, a
  network, a label, a project) or over addresses (`cidr`, `world`) stays a rule with a set
  per side, so that no rule multiplies into |sources| times |destinations| elements.
- Selector sets hold the addresses of running containers (a container that starts is
  allowed once it is added: fail closed). Default sets hold the networks' subnets, so a deny
  covers a container the moment it starts, before anyone has seen it; a policy default of
  deny also covers every bridge Docker names `br-*`, so a network created while no agent
  runs is denied too.
- Audit mode writes `counter log accept` where enforce writes `counter drop`: the accept ends
  our chain only, so the packet meets Docker's rules as if no policy existed.
- Every drop is named (`with_drop_log`, the compiler's last step): a drop or audit rule goes
  (`goto`) to a chain of its own that records the packet's (source, destination, protocol,
  port) in a set of its own — filled by the kernel, bounded, with a counter per element and a
  timeout — and then drops (or logs and accepts). The record is a rule of its own before the
  verdict, so a packet that cannot be recorded (a set full, a transport header too short to
  read a port from) is dropped all the same. `dockmesh policy log` and the agent's /metrics
  read those sets; they are not topology sets (`elements`, `element_delta` leave them out).
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from dockmesh.model.labels import SERVICE_LABELS
from dockmesh.model.policy import Policy, PortRange, Rule, Selector, Side, Verdict, side_text
from dockmesh.model.topology import Container, Network, Topology
from dockmesh.policy.decide import decide_published

DEFAULT_TABLE = "dockmesh"
CHAIN = "forward"
INPUT_CHAIN = "input"
BRIDGE_CHAIN = "prerouting"
BRIDGE_OUT_CHAIN = "postrouting"
PRIORITY = -10  # filter - 10: before Docker's filter chains (priority 0)
BRIDGE_PRIORITY = -10  # before br_netfilter (0) hands the frame to the inet hooks
AUDIT_PREFIX = "dockmesh-audit"
HASH_TAG = "dockmesh policy "
# The packet mark bit that says "this source address is not the port's own".
UNCONFIRMED = 0x00100000
# Docker names a user network's bridge br-<12 hex digits of its id>.
DOCKER_BRIDGES = "br-*"
# Docker names a container's host-side port veth<7 hex digits>.
DOCKER_PORTS = "veth*"
ND_TYPES = (
    "nd-router-solicit",
    "nd-router-advert",
    "nd-neighbor-solicit",
    "nd-neighbor-advert",
    "nd-redirect",
)

Mode = Literal["enforce", "audit"]
MODES: tuple[Mode, ...] = ("enforce", "audit")
Family = Literal[4, 6]
FAMILIES: tuple[Family, Family] = (4, 6)
Action = Literal["accept", "drop", "audit", "mark"]
TableFamily = Literal["inet", "bridge"]
JSON = dict[str, Any]
# (container id, network name) → the host-side name of the container's port on that network.
PortMap = Mapping[tuple[str, str], str]
Field = Literal["saddr", "daddr", "l4proto", "dport", "iifname", "oifname"]
_KEY_TYPE: dict[str, str] = {
    "l4proto": "inet_proto",
    "dport": "inet_service",
    "iifname": "ifname",
    "oifname": "ifname",
}


@dataclass(frozen=True, slots=True)
class AddrSet:
    """A named set. Its elements are texts: an address, a `net/len` prefix, or for a
    concatenation (`fields` given) the parts joined by " . " (a port part may be `a-b`)."""

    name: str
    family: Family
    interval: bool  # prefixes or ranges allowed
    elements: frozenset[str]
    meaning: str  # what it holds, in the policy's words
    fields: tuple[Field, ...] = ()  # () : one address
    counter: bool = False  # a counter per element
    table_family: TableFamily = "inet"

    def types(self) -> list[str]:
        addr = "ipv4_addr" if self.family == 4 else "ipv6_addr"
        if not self.fields:
            return [addr]
        return [_KEY_TYPE.get(f, addr) for f in self.fields]


@dataclass(frozen=True, slots=True)
class InSet:
    field: Literal["saddr", "daddr"]
    set: str
    negate: bool = False


@dataclass(frozen=True, slots=True)
class InConcat:
    fields: tuple[Field, ...]
    set: str
    negate: bool = False


@dataclass(frozen=True, slots=True)
class L4Proto:
    protocol: str  # nft's name: tcp, udp, sctp, icmp, ipv6-icmp


@dataclass(frozen=True, slots=True)
class DPort:
    protocol: str
    ranges: tuple[tuple[int, int], ...]


@dataclass(frozen=True, slots=True)
class CtState:
    states: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Unconfirmed:
    """The packet's source was not confirmed on its port (`is_set`), or was."""

    is_set: bool


@dataclass(frozen=True, slots=True)
class IfName:
    field: Literal["iifname", "oifname"]
    name: str  # may end in * (a prefix)


@dataclass(frozen=True, slots=True)
class IfSet:
    field: Literal["iifname", "oifname"]
    set: str


@dataclass(frozen=True, slots=True)
class NfProto:
    family: Family


@dataclass(frozen=True, slots=True)
class NeighbourDiscovery:
    """ICMPv6 neighbour discovery with hop limit 255: link-local by construction."""


@dataclass(frozen=True, slots=True)
class LinkLocal:
    """An IPv6 link-local source (fe80::/10)."""


@dataclass(frozen=True, slots=True)
class VlanTagged:
    """A frame with an 802.1Q or 802.1ad tag (bridge family)."""


Match = (
    InSet
    | InConcat
    | L4Proto
    | DPort
    | CtState
    | Unconfirmed
    | IfName
    | IfSet
    | NfProto
    | NeighbourDiscovery
    | LinkLocal
    | VlanTagged
)


@dataclass(frozen=True, slots=True)
class NftRule:
    family: Family | None  # None: no address match, both families
    matches: tuple[Match, ...]
    action: Action
    comment: str
    counter: bool = True
    # Where it comes from: ("rule", i), ("network", name), ("default", ""), ("docker", what)
    # or ("base", "").
    origin: tuple[str, int | str] = ("base", "")
    table_family: TableFamily = "inet"
    chain: str = ""  # "": the family's chain (forward, prerouting)
    # The drop log (`with_drop_log`) it records what it drops in, by name: the rule then goes
    # to that log's chain, which records and gives the verdict. None: no log.
    log: str | None = None

    @property
    def chain_name(self) -> str:
        return self.chain or (CHAIN if self.table_family == "inet" else BRIDGE_CHAIN)


@dataclass(frozen=True, slots=True)
class Ruleset:
    """One policy's nftables ruleset as data: the inet table's forward chain and the bridge
    table's prerouting chain. Its rules depend on the policy alone and its sets' elements on
    the topology alone, so `structure_hash` (of everything but the elements) tells whether a
    live table can be brought up to date by set element updates. `attribution` says, for the
    concatenated sets, which policy rule each element stands for (its counters are that
    rule's)."""

    table: str
    mode: Mode
    sets: tuple[AddrSet, ...]
    rules: tuple[NftRule, ...]
    priority: int = PRIORITY
    _hash: str = field(default="", compare=False)
    attribution: Mapping[str, Mapping[str, int]] = field(default_factory=dict, compare=False)
    logs: tuple[DropLog, ...] = ()  # `with_drop_log`'s: one per drop or audit rule

    @property
    def structure_hash(self) -> str:
        return self._hash

    @property
    def tables(self) -> tuple[tuple[TableFamily, str], ...]:
        return (("inet", self.table), ("bridge", self.table))

    def set(self, name: str) -> AddrSet | None:
        for s in self.sets:
            if s.name == name:
                return s
        return None

    def elements(self) -> dict[str, frozenset[str]]:
        return {s.name: s.elements for s in self.sets}


# --- compiling ---------------------------------------------------------------------------------

_NARROW = ("service", "container")


def _narrow(side: Side) -> bool:
    """A side that names containers or services: few addresses, worth flattening."""
    return all(not s.is_address and (s.service or s.container) for s in side)


@dataclass(slots=True)
class _Builder:
    policy: Policy
    topo: Topology
    ports: PortMap | None
    deny: Action
    index: _Index
    sets: list[AddrSet] = field(default_factory=list)
    rules: list[NftRule] = field(default_factory=list)
    attribution: dict[str, dict[str, int]] = field(default_factory=dict)

    def add_set(self, s: AddrSet) -> str:
        self.sets.append(s)
        return s.name

    def set(self, name: str) -> AddrSet | None:
        return next((s for s in self.sets if s.name == name), None)


def compile_policy(
    policy: Policy,
    topo: Topology,
    mode: Mode = "enforce",
    table: str = DEFAULT_TABLE,
    ports: PortMap | None = None,
) -> Ruleset:
    """The ruleset that enforces `policy` over `topo`'s running containers. `ports` names
    each container's port on each bridge network (host-side veth); an endpoint without one
    is unconfirmed — its packets match no allow rule — until it is known."""
    running = [c for c in topo.containers if c.running]
    b = _Builder(policy, topo, ports, "drop" if mode == "enforce" else "audit", _Index(running))
    bridges = _bridges(topo)
    _bridge_table(b, running)

    b.rules += [
        # Established only from a confirmed source: conntrack knows a flow by its addresses and
        # ports, which anyone can forge from a raw socket into a flow of others.
        NftRule(
            None,
            (CtState(("established", "related")), Unconfirmed(False)),
            "accept",
            "",
            counter=False,
        ),
        NftRule(
            6,
            (NeighbourDiscovery(),),
            "accept",
            "IPv6 neighbour discovery",
            counter=False,
        ),
    ]
    _docker_isolation6(b, bridges)
    _link_local6(b, bridges)
    for action in ("deny", "allow"):
        _policy_rules(b, action, running)
    _network_defaults(b)
    if policy.default == "deny":
        _policy_default(b)
    _published(b, running)
    digest = _structure_digest(table, mode, b.sets, b.rules)
    bridge_rules = [r for r in b.rules if r.table_family == "bridge"]
    inet_rules = [r for r in b.rules if r.table_family == "inet"]
    inet_rules[0] = NftRule(None, inet_rules[0].matches, "accept", HASH_TAG + digest, counter=False)
    return with_drop_log(
        Ruleset(
            table,
            mode,
            tuple(b.sets),
            tuple(inet_rules + bridge_rules),
            PRIORITY,
            digest,
            {k: dict(v) for k, v in b.attribution.items()},
        )
    )


def bridge_name(n: Network) -> str | None:
    """The host's name of a bridge network's bridge (None: not a local bridge)."""
    if n.driver != "bridge":
        return None
    named = n.options.get("com.docker.network.bridge.name")
    if named:
        return named
    return f"br-{n.id[:12]}" if n.id else None


def _bridges(topo: Topology) -> list[tuple[Network, str]]:
    """The bridges that carry IPv6 (the others forward none: there is nothing of Docker's
    isolation to add for them)."""
    out: list[tuple[Network, str]] = []
    for n in topo.networks:
        name = bridge_name(n)
        if name and (n.enable_ipv6 or n.pool(6) is not None):
            out.append((n, name))
    return out


def _bridge_table(b: _Builder, running: list[Container]) -> None:
    """Binds the addresses an allow rule may accept as a container's to that container's
    port, and marks unconfirmed a frame that carries one of them from any other port. Only
    those addresses are claimed: another source matches no allow rule by what it is anyway,
    and another policy's table (its own claims) is left alone. An endpoint whose port is not
    known (not on a bridge, or not readable) is matched by its address alone."""
    chosen: set[tuple[str, str]] = set()
    for r in b.policy.rules:
        if r.action == "allow":
            # Both sides: an allowed flow's replies are accepted as established, and a
            # forged one must not be (it is marked, and established needs no mark).
            chosen |= b.index.endpoints_chosen(r.sources)
            chosen |= b.index.endpoints_chosen(r.destinations)
    bound: dict[Family, set[str]] = {4: set(), 6: set()}
    claimed: dict[Family, set[str]] = {4: set(), 6: set()}
    ports = b.ports or {}
    for c in running:
        for a in c.attachments:
            if (c.id, a.network) not in chosen:
                continue
            port = ports.get((c.id, a.network))
            if not port:
                continue
            for f, address in ((4, a.ipv4), (6, a.ipv6)):
                if address:
                    bound[f].add(f"{port} . {_canonical(address)}")  # type: ignore[index]
                    claimed[f].add(_canonical(address))  # type: ignore[index]
    for f in FAMILIES:
        b.add_set(
            AddrSet(
                f"port_{f}",
                f,
                False,
                frozenset(bound[f]),
                "each chosen container's port and its own address",
                ("iifname", "saddr"),
                table_family="bridge",
            )
        )
        b.add_set(
            AddrSet(
                f"claimed_{f}",
                f,
                False,
                frozenset(claimed[f]),
                "addresses bound to a port",
                table_family="bridge",
            )
        )
    # An IP packet in a VLAN tag is no IP packet to the rules below, nor to br_netfilter
    # (bridge-nf-filter-vlan-tagged is 0 by default: no inet hook sees it), yet the receiving
    # kernel takes a VLAN id 0 (priority) tag off and reads the packet: a container would walk
    # past every rule, Docker's too. No Docker container's port carries tagged frames.
    b.rules.append(
        NftRule(
            None,
            (IfName("iifname", DOCKER_PORTS), VlanTagged()),
            b.deny,
            "VLAN-tagged frame from a container",
            origin=("docker", "vlan"),
            table_family="bridge",
        )
    )
    for f in FAMILIES:
        b.rules.append(
            NftRule(
                f,
                (InConcat(("iifname", "saddr"), f"port_{f}"),),
                "accept",
                f"confirmed source (IPv{f})",
                counter=False,
                table_family="bridge",
            )
        )
    for f in FAMILIES:
        b.rules.append(
            NftRule(
                f,
                (InSet("saddr", f"claimed_{f}"),),
                "mark",
                f"unconfirmed source (IPv{f})",
                table_family="bridge",
            )
        )
    # And the other way: a frame to a bound address leaves by its port only. A container
    # that claims another's address (ARP, neighbour discovery) to the host or a peer would
    # otherwise receive what is sent to it, replies the policy accepts as established too.
    for f in FAMILIES:
        b.rules.append(
            NftRule(
                f,
                (
                    InSet("daddr", f"claimed_{f}"),
                    InConcat(("oifname", "daddr"), f"port_{f}", negate=True),
                ),
                b.deny,
                f"bound address on another port (IPv{f})",
                origin=("bound", ""),
                table_family="bridge",
                chain=BRIDGE_OUT_CHAIN,
            )
        )


def _docker_isolation6(b: _Builder, bridges: list[tuple[Network, str]]) -> None:
    """Docker's IPv4 isolation, for IPv6: its bridges do not forward to each other, an
    internal network's bridge forwards to nothing else, an icc=false bridge not to itself."""
    names = frozenset(name for _, name in bridges)
    same = frozenset(f"{x} . {x}" for x in names)
    internal = frozenset(name for n, name in bridges if n.internal)
    no_icc = frozenset(
        f"{name} . {name}"
        for n, name in bridges
        if n.options.get("com.docker.network.bridge.enable_icc") == "false"
    )
    b.add_set(AddrSet("br6", 6, False, names, "Docker's bridges", ("iifname",)))
    b.add_set(AddrSet("br6_same", 6, False, same, "a bridge to itself", ("iifname", "oifname")))
    b.add_set(AddrSet("br6_internal", 6, False, internal, "internal networks", ("iifname",)))
    b.add_set(AddrSet("br6_noicc", 6, False, no_icc, "enable_icc=false", ("iifname", "oifname")))
    pair = InConcat(("iifname", "oifname"), "br6_same", negate=True)
    for matches, what in (
        ((IfSet("iifname", "br6"), IfSet("oifname", "br6"), pair), "between networks"),
        ((IfSet("iifname", "br6_internal"), pair), "out of an internal network"),
        ((IfSet("oifname", "br6_internal"), pair), "into an internal network"),
        ((InConcat(("iifname", "oifname"), "br6_noicc"),), "inside an icc=false network"),
    ):
        b.rules.append(
            NftRule(
                6,
                (NfProto(6), *matches),
                b.deny,
                f"Docker isolation for IPv6: {what}",
                origin=("docker", what),
            )
        )


def _link_local6(b: _Builder, bridges: list[tuple[Network, str]]) -> None:
    """Link-local IPv6 between containers cannot be named by a rule: where the policy denies
    a network by default, it is dropped (neighbour discovery was accepted before)."""
    if b.policy.default == "deny":
        denied = frozenset(name for _, name in bridges)
    else:
        deny = {n for n, v in b.policy.networks if v == "deny"}
        denied = frozenset(name for n, name in bridges if n.name in deny)
    b.add_set(AddrSet("ll6_denied", 6, False, denied, "denied networks' bridges", ("iifname",)))
    b.rules.append(
        NftRule(
            6,
            (LinkLocal(), IfSet("iifname", "ll6_denied")),
            b.deny,
            "link-local IPv6 on a denied network",
            origin=("link-local", ""),
        )
    )
    if b.policy.default == "deny":
        b.rules.append(
            NftRule(
                6,
                (LinkLocal(), IfName("iifname", DOCKER_BRIDGES)),
                b.deny,
                "link-local IPv6 on a new network",
                origin=("link-local", ""),
            )
        )


def _policy_rules(b: _Builder, action: Verdict, running: list[Container]) -> None:
    flat: list[tuple[int, Rule]] = []
    wide: list[tuple[int, Rule]] = []
    for i, r in enumerate(b.policy.rules):
        if r.action == action:
            (flat if _narrow(r.sources) and _narrow(r.destinations) else wide).append((i, r))
    act: Action = "accept" if action == "allow" else b.deny
    confirm: tuple[Match, ...] = (Unconfirmed(False),) if action == "allow" else ()
    tag = "a" if action == "allow" else "d"
    if flat:
        _flat_rules(b, tag, act, confirm, flat, running)
    for i, r in wide:
        _wide_rule(b, act, confirm, i, r, running)


class _Index:
    """Running containers by name and by service label, so that a selector that names one
    looks at its few candidates instead of every container (3,000 rules over 1,000
    containers), and each side's endpoints computed once."""

    def __init__(self, running: list[Container]) -> None:
        self.running = running
        self.by_name: dict[str, list[Container]] = {}
        self.by_service: dict[str, list[Container]] = {}
        for c in running:
            self.by_name.setdefault(c.name, []).append(c)
            for value in {c.labels.get(k) for k in SERVICE_LABELS} - {None}:
                self.by_service.setdefault(str(value), []).append(c)
        # By the side's identity: the policy holds its sides for the whole compile, and
        # hashing a tuple of selectors 15,000 times was a third of a 3,000-rule compile.
        self.memo: dict[int, dict[Family, dict[str, None]]] = {}
        self.chosen: dict[int, set[tuple[str, str]]] = {}

    def candidates(self, sel: Selector) -> list[Container]:
        if sel.container is not None:
            return self.by_name.get(sel.container, [])
        if sel.service is not None:
            return self.by_service.get(sel.service, [])
        return self.running

    def endpoints(self, side: Side) -> dict[Family, dict[str, None]]:
        got = self.memo.get(id(side))
        if got is not None:
            return got
        out: dict[Family, dict[str, None]] = {4: {}, 6: {}}
        chosen: set[tuple[str, str]] = set()
        for sel in side:
            if sel.is_address:
                continue
            for c in self.candidates(sel):
                if not sel.matches(c):
                    continue
                for a in c.attachments:
                    if sel.network is None or sel.network == a.network:
                        chosen.add((c.id, a.network))
                        if a.ipv4:
                            out[4][_canonical(a.ipv4)] = None
                        if a.ipv6:
                            out[6][_canonical(a.ipv6)] = None
        self.memo[id(side)] = out
        self.chosen[id(side)] = chosen
        return out

    def endpoints_chosen(self, side: Side) -> set[tuple[str, str]]:
        """(container id, network) of each endpoint the side chooses."""
        self.endpoints(side)
        return self.chosen[id(side)]


def _flat_rules(
    b: _Builder,
    tag: str,
    act: Action,
    confirm: tuple[Match, ...],
    rules: list[tuple[int, Rule]],
    running: list[Container],
) -> None:
    # Hash sets where every part is exact (one lookup, and an update costs the elements it
    # changes); an interval set only for port ranges (nft clones such a set on every update).
    kinds = ("any", "l4", "port", "range")
    fields: dict[str, tuple[Field, ...]] = {
        "any": ("saddr", "daddr"),
        "l4": ("saddr", "daddr", "l4proto"),
        "port": ("saddr", "daddr", "l4proto", "dport"),
        "range": ("saddr", "daddr", "l4proto", "dport"),
    }
    present: set[str] = set()
    for _, r in rules:
        if not r.ports:
            present.add("any")
        for p in r.ports:
            if p.first is None or p.protocol == "icmp":
                present.add("l4")
            else:
                present.add("port" if (p.last or p.first) == p.first else "range")
    sides = [
        (i, r, b.index.endpoints(r.sources), b.index.endpoints(r.destinations)) for i, r in rules
    ]
    for f in FAMILIES:
        elems: dict[str, dict[str, int]] = {k: {} for k in kinds}
        # (saddr, daddr, proto) → merged port ranges, and the first rule behind each span.
        spans: dict[tuple[str, str, str], list[tuple[int, int, int]]] = {}
        for i, r, from_, to in sides:
            srcs, dsts = from_[f], to[f]
            if not srcs or not dsts:
                continue
            for s in srcs:
                for d in dsts:
                    if not r.ports:
                        elems["any"].setdefault(f"{s} . {d}", i)
                    for p in r.ports:
                        proto = _proto(p.protocol, f)
                        if p.first is None or p.protocol == "icmp":
                            elems["l4"].setdefault(f"{s} . {d} . {proto}", i)
                        elif (p.last or p.first) == p.first:
                            elems["port"].setdefault(f"{s} . {d} . {proto} . {p.first}", i)
                        else:
                            last = p.last or p.first
                            spans.setdefault((s, d, proto), []).append((p.first, last, i))
        for (s, d, proto), ranges in spans.items():
            for first, last, i in _merge_spans(ranges):
                elems["range"][f"{s} . {d} . {proto} . {first}-{last}"] = i
        for k in kinds:
            if k not in present:
                continue
            name = f"{tag}_{k}_{f}"
            b.add_set(
                AddrSet(
                    name,
                    f,
                    k == "range",
                    frozenset(elems[k]),
                    f"{'allowed' if tag == 'a' else 'denied'} pairs ({k})",
                    fields[k],
                    counter=True,
                )
            )
            b.attribution[name] = elems[k]
            verb = "allow" if tag == "a" else "deny"
            b.rules.append(
                NftRule(
                    f,
                    (*confirm, InConcat(fields[k], name)),
                    act,
                    f"{verb} rules ({k}, IPv{f})",
                    counter=False,
                    origin=("rules", f"{tag}_{k}"),
                )
            )


def _merge_spans(ranges: list[tuple[int, int, int]]) -> list[tuple[int, int, int]]:
    """Overlapping or adjacent port ranges as one (nft refuses overlapping elements), each
    credited to the first rule (lowest index) among those merged."""
    out: list[tuple[int, int, int]] = []
    for a, z, i in sorted(ranges):
        if out and a <= out[-1][1] + 1:
            pa, pz, pi = out[-1]
            out[-1] = (pa, max(pz, z), min(pi, i))
        else:
            out.append((a, z, i))
    return out


def _wide_rule(
    b: _Builder,
    act: Action,
    confirm: tuple[Match, ...],
    i: int,
    r: Rule,
    running: list[Container],
) -> None:
    """One rule with a set per side and family; a side that mixes containers and addresses
    is split (a set of container addresses, one of prefixes)."""
    verb = "" if r.action == "allow" else "deny "
    for src_part, src_sel in _split(r.sources):
        for dst_part, dst_sel in _split(r.destinations):
            for f in FAMILIES:
                src_match = _side_match(b, "saddr", src_sel, f, i, src_part, running)
                dst_match = _side_match(b, "daddr", dst_sel, f, i, dst_part, running)
                if src_match is None or dst_match is None:
                    continue
                # A CIDR or the world is about addresses, whoever sends from them; but an
                # address bound to one container's port, sent from another's, is a forgery
                # (marked unconfirmed), and accepted by no allow rule.
                need = confirm
                for l4 in _l4_matches(r.ports, f):
                    b.rules.append(
                        NftRule(
                            f,
                            (*need, *src_match, *dst_match, *l4),
                            act,
                            f"{verb}rule {i + 1}",
                            origin=("rule", i),
                        )
                    )


def _split(side: Side) -> list[tuple[str, tuple[Selector, ...]]]:
    """A side as its parts: containers ("c"), CIDRs ("n"), the world ("w")."""
    parts: list[tuple[str, tuple[Selector, ...]]] = []
    containers = tuple(s for s in side if not s.is_address)
    cidrs = tuple(s for s in side if s.cidr is not None)
    if containers:
        parts.append(("c", containers))
    if cidrs:
        parts.append(("n", cidrs))
    if any(s.world for s in side):
        parts.append(("w", ()))
    return parts


def _side_match(
    b: _Builder,
    field_: Literal["saddr", "daddr"],
    side: tuple[Selector, ...],
    f: Family,
    i: int,
    part: str,
    running: list[Container],
) -> tuple[Match, ...] | None:
    """The match for one part of a side in one family (None: the part has no address of
    that family, for a CIDR of the other family: the rule does not apply to it)."""
    name = f"r{i}_{field_[0]}{part}_{f}"
    if part == "w":
        return (InSet(field_, _all_nets(b, f), negate=True),)
    if part == "n":
        nets = []
        for s in side:
            net = ipaddress.ip_network(s.cidr or "", strict=False)
            if net.version == f:
                nets.append(net)
        if not nets:
            return None
        coll = ipaddress.collapse_addresses(nets)  # type: ignore[type-var]
        elems = frozenset(_element(n) for n in coll)
        b.add_set(AddrSet(name, f, True, elems, side_text(side)))
        return (InSet(field_, name),)
    elems = frozenset(b.index.endpoints(side)[f])
    b.add_set(AddrSet(name, f, False, elems, side_text(side)))
    return (InSet(field_, name),)


def _all_nets(b: _Builder, f: Family) -> str:
    name = f"all_{f}"
    if b.set(name) is None:
        space = _network_space(b.topo, None)
        b.add_set(AddrSet(name, f, True, space[f], "every network"))
    return name


def _network_defaults(b: _Builder) -> None:
    for j, (name, verdict) in enumerate(b.policy.networks):
        space = _network_space(b.topo, {name})
        action: Action = "accept" if verdict == "allow" else b.deny
        for f in FAMILIES:
            b.add_set(AddrSet(f"n{j}_{f}", f, True, space[f], f"network {name}"))
            b.rules.append(
                NftRule(
                    f,
                    (InSet("saddr", f"n{j}_{f}"), InSet("daddr", f"n{j}_{f}")),
                    action,
                    _clip(f"network {name} default {verdict}"),
                    origin=("network", name),
                )
            )


def _policy_default(b: _Builder) -> None:
    for f in FAMILIES:
        name = _all_nets(b, f)
        b.rules.append(
            NftRule(
                f,
                (InSet("saddr", name), InSet("daddr", name)),
                b.deny,
                "default deny",
                origin=("default", ""),
            )
        )
    # A bridge Docker made while no agent ran: its subnet is in no set yet, its name is.
    b.rules.append(
        NftRule(
            None,
            (IfName("iifname", DOCKER_BRIDGES), IfName("oifname", DOCKER_BRIDGES)),
            b.deny,
            "default deny (new networks)",
            origin=("default", ""),
        )
    )


def _published(b: _Builder, running: list[Container]) -> None:
    """A port a container publishes, reached from another container at the host's address
    (Docker's proxy connects from the host: the forward chain never sees it), is judged on
    the input hook as the connection to the container itself would be (`decide_published`):
    each denied (source address, protocol, host port) is an element."""
    denied: dict[Family, set[str]] = {4: set(), 6: set()}
    for t in running:
        if not t.ports:
            continue
        # Only the rules whose destination may be t can decide (3,000 rules, few for t).
        mine = tuple(
            r
            for r in b.policy.rules
            if any(s.is_address for s in r.destinations)
            or any(cid == t.id for cid, _ in b.index.endpoints_chosen(r.destinations))
        )
        policy = Policy(b.policy.default, b.policy.networks, mine)
        for binding in t.ports:
            if binding.host_port is None or binding.protocol not in ("tcp", "udp", "sctp"):
                continue
            for s in running:
                if s.id == t.id:
                    continue
                for f in FAMILIES:
                    verdict = decide_published(
                        policy, s, t, binding.protocol, binding.container_port, f
                    )
                    if verdict.allowed:
                        continue
                    for a in s.attachments:
                        address = a.ipv4 if f == 4 else a.ipv6
                        if address:
                            denied[f].add(
                                f"{_canonical(address)} . {binding.protocol} . {binding.host_port}"
                            )
    for f in FAMILIES:
        name = f"pub_{f}"
        b.add_set(
            AddrSet(
                name,
                f,
                False,
                frozenset(denied[f]),
                "denied sources of published ports",
                ("saddr", "l4proto", "dport"),
            )
        )
        b.rules.append(
            NftRule(
                f,
                (CtState(("new",)), InConcat(("saddr", "l4proto", "dport"), name)),
                b.deny,
                f"published port, denied (IPv{f})",
                origin=("published", ""),
                chain=INPUT_CHAIN,
            )
        )


def _proto(protocol: str, f: Family) -> str:
    return "ipv6-icmp" if protocol == "icmp" and f == 6 else protocol


def _clip(text: str, limit: int = 120) -> str:
    """nft keeps at most 128 bytes of a comment."""
    data = text.encode()
    return text if len(data) <= limit else data[: limit - 3].decode(errors="ignore") + "..."


def _l4_matches(ports: tuple[PortRange, ...], family: Family) -> list[tuple[Match, ...]]:
    """One match list per protocol the rule names (one empty list: every protocol)."""
    if not ports:
        return [()]
    by_proto: dict[str, list[PortRange]] = {}
    for p in ports:
        by_proto.setdefault(p.protocol, []).append(p)
    out: list[tuple[Match, ...]] = []
    for proto in sorted(by_proto):
        ranges = by_proto[proto]
        if proto == "icmp":
            out.append((L4Proto("icmp" if family == 4 else "ipv6-icmp"),))
        elif any(p.first is None for p in ranges):
            out.append((L4Proto(proto),))
        else:
            spans = tuple(sorted((p.first or 0, p.last or p.first or 0) for p in ranges))
            out.append((DPort(proto, _merge(spans)),))
    return out


def _merge(spans: Iterable[tuple[int, int]]) -> tuple[tuple[int, int], ...]:
    """Overlapping or adjacent port ranges as one: nft refuses overlapping set elements."""
    out: list[tuple[int, int]] = []
    for a, b in sorted(spans):
        if out and a <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return tuple(out)


@functools.lru_cache(maxsize=65536)
def _canonical(address: str) -> str:
    """The kernel's text for an address (so that live and wanted elements compare)."""
    try:
        return str(ipaddress.ip_address(address))
    except ValueError:
        return address


def _network_space(topo: Topology, names: set[str] | None) -> dict[Family, frozenset[str]]:
    """The address space of the networks named (every network: None): their subnets, and the
    addresses of endpoints that lie outside any of them (a network without IPAM)."""
    nets: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
    for n in topo.networks:
        if names is not None and n.name not in names:
            continue
        for pool in n.ipam:
            try:
                nets.append(ipaddress.ip_network(pool.subnet, strict=False))
            except ValueError:
                continue
    for c in topo.containers:
        if not c.running:
            continue
        for a in c.attachments:
            if names is not None and a.network not in names:
                continue
            for text in (a.ipv4, a.ipv6):
                if not text:
                    continue
                try:
                    ip = ipaddress.ip_address(text)
                except ValueError:
                    continue
                if not any(ip.version == n.version and ip in n for n in nets):
                    nets.append(ipaddress.ip_network(ip))
    v4 = [n for n in nets if isinstance(n, ipaddress.IPv4Network)]
    v6 = [n for n in nets if isinstance(n, ipaddress.IPv6Network)]
    return {
        4: frozenset(_element(n) for n in ipaddress.collapse_addresses(v4)),
        6: frozenset(_element(n) for n in ipaddress.collapse_addresses(v6)),
    }


def _element(n: ipaddress.IPv4Network | ipaddress.IPv6Network) -> str:
    if n.prefixlen == n.max_prefixlen:
        return str(n.network_address)
    return str(n)


def _structure_digest(table: str, mode: Mode, sets: list[AddrSet], rules: list[NftRule]) -> str:
    doc = {
        "table": table,
        "mode": mode,
        "priority": [PRIORITY, BRIDGE_PRIORITY],
        "sets": [_set_json(table, s) for s in sets],
        "rules": [render_rule(table, r)["rule"] for r in rules],
    }
    text = json.dumps(doc, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# --- nft's JSON ------------------------------------------------------------------------------


def _addr_key(family: Family, field_: str) -> JSON:
    return {"payload": {"protocol": "ip" if family == 4 else "ip6", "field": field_}}


def _match(left: JSON, right: Any, op: str = "==") -> JSON:
    return {"match": {"op": op, "left": left, "right": right}}


def _field_key(f: Field, family: Family) -> JSON:
    if f in ("saddr", "daddr"):
        return _addr_key(family, f)
    if f == "l4proto":
        return {"meta": {"key": "l4proto"}}
    if f == "dport":
        return {"payload": {"protocol": "th", "field": "dport"}}
    return {"meta": {"key": f}}


def render_match(m: Match, family: Family | None) -> JSON:
    if isinstance(m, InSet):
        assert family is not None
        return _match(_addr_key(family, m.field), "@" + m.set, "!=" if m.negate else "==")
    if isinstance(m, InConcat):
        assert family is not None
        keys = [_field_key(f, family) for f in m.fields]
        left = keys[0] if len(keys) == 1 else {"concat": keys}
        return _match(left, "@" + m.set, "!=" if m.negate else "==")
    if isinstance(m, L4Proto):
        return _match({"meta": {"key": "l4proto"}}, m.protocol)
    if isinstance(m, DPort):
        values: list[Any] = [a if a == b else {"range": [a, b]} for a, b in m.ranges]
        right: Any = values[0] if len(values) == 1 else {"set": values}
        return _match({"payload": {"protocol": m.protocol, "field": "dport"}}, right)
    if isinstance(m, CtState):
        # One state is listed by nft as a value, several as a list: say it as nft does.
        states: Any = m.states[0] if len(m.states) == 1 else list(m.states)
        return _match({"ct": {"key": "state"}}, states, "in")
    if isinstance(m, Unconfirmed):
        masked = {"&": [{"meta": {"key": "mark"}}, UNCONFIRMED]}
        return _match(masked, UNCONFIRMED if m.is_set else 0)
    if isinstance(m, IfName):
        return _match({"meta": {"key": m.field}}, m.name)
    if isinstance(m, IfSet):
        return _match({"meta": {"key": m.field}}, "@" + m.set)
    if isinstance(m, NfProto):
        return _match({"meta": {"key": "nfproto"}}, "ipv4" if m.family == 4 else "ipv6")
    if isinstance(m, LinkLocal):
        return _match(_addr_key(6, "saddr"), {"prefix": {"addr": "fe80::", "len": 10}})
    if isinstance(m, VlanTagged):
        return _match(
            {"payload": {"protocol": "ether", "field": "type"}}, {"set": ["8021q", "8021ad"]}
        )
    return {"__nd__": None}  # expanded by render_rule: two matches


def _nd_matches() -> list[JSON]:
    return [
        _match({"payload": {"protocol": "icmpv6", "field": "type"}}, {"set": list(ND_TYPES)}),
        _match({"payload": {"protocol": "ip6", "field": "hoplimit"}}, 255),
    ]


def render_rule(table: str, r: NftRule) -> JSON:
    expr: list[JSON] = []
    for m in r.matches:
        if isinstance(m, NeighbourDiscovery):
            expr += _nd_matches()
        else:
            expr.append(render_match(m, r.family))
    if r.counter:
        expr.append({"counter": None})
    if r.log is not None:
        expr.append({"goto": {"target": r.log}})  # the log's chain gives the verdict
    elif r.action == "audit":
        expr.append({"log": {"prefix": _clip(f"{AUDIT_PREFIX} {r.comment}: ", 120)}})
        expr.append({"accept": None})
    elif r.action == "mark":
        mark = {"|": [{"meta": {"key": "mark"}}, UNCONFIRMED]}
        expr.append({"mangle": {"key": {"meta": {"key": "mark"}}, "value": mark}})
    else:
        expr.append({r.action: None})
    rule: JSON = {"family": r.table_family, "table": table, "chain": r.chain_name, "expr": expr}
    if r.comment:
        rule["comment"] = r.comment
    return {"rule": rule}


def render_element(text: str) -> Any:
    if " . " in text:
        return {"concat": [_render_part(p) for p in text.split(" . ")]}
    return _render_part(text)


def _render_part(text: str) -> Any:
    if "/" in text:
        addr, _, length = text.partition("/")
        return {"prefix": {"addr": addr, "len": int(length)}}
    if text.isdigit():
        return int(text)
    first, dash, last = text.partition("-")
    if dash and first.isdigit() and last.isdigit():
        return {"range": [int(first), int(last)]}
    return text


def _set_json(table: str, s: AddrSet) -> JSON:
    types = s.types()
    doc: JSON = {
        "family": s.table_family,
        "table": table,
        "name": s.name,
        "type": types[0] if len(types) == 1 else types,
    }
    if s.interval:
        doc["flags"] = ["interval"]
    if s.counter:
        doc["stmt"] = [{"counter": None}]
    return doc


def _elements_cmd(verb: str, table: str, s: AddrSet, elements: Iterable[str]) -> JSON:
    elem = [render_element(e) for e in sorted(elements)]
    return {
        verb: {"element": {"family": s.table_family, "table": table, "name": s.name, "elem": elem}}
    }


def _chains(rs: Ruleset) -> list[JSON]:
    return [
        {
            "family": "inet",
            "table": rs.table,
            "name": CHAIN,
            "type": "filter",
            "hook": "forward",
            "prio": rs.priority,
            "policy": "accept",
        },
        {
            "family": "inet",
            "table": rs.table,
            "name": INPUT_CHAIN,
            "type": "filter",
            "hook": "input",
            "prio": rs.priority,
            "policy": "accept",
        },
        {
            "family": "bridge",
            "table": rs.table,
            "name": BRIDGE_CHAIN,
            "type": "filter",
            "hook": "prerouting",
            "prio": BRIDGE_PRIORITY,
            "policy": "accept",
        },
        {
            "family": "bridge",
            "table": rs.table,
            "name": BRIDGE_OUT_CHAIN,
            "type": "filter",
            "hook": "postrouting",
            "prio": BRIDGE_PRIORITY,
            "policy": "accept",
        },
    ]


def full_transaction(rs: Ruleset) -> list[JSON]:
    """Commands that make the tables exactly `rs`, whatever was there, in one transaction:
    the old tables and the new ones never coexist and no moment is without either."""
    cmds: list[JSON] = remove_transaction(rs.table)
    for family, name in rs.tables:
        cmds.append({"add": {"table": {"family": family, "name": name}}})
    for s in rs.sets:
        cmds.append({"add": {"set": _set_json(rs.table, s)}})
        if s.elements:
            cmds.append(_elements_cmd("add", rs.table, s, s.elements))
    cmds += [{"add": {"chain": c}} for c in _chains(rs)]
    for lg in rs.logs:  # before the rules that go to them; their rules after (the marker first)
        cmds += [{"add": {"set": _log_set_json(rs.table, lg)}}]
        cmds += [{"add": {"chain": {"family": "inet", "table": rs.table, "name": lg.name}}}]
    cmds += [{"add": render_rule(rs.table, r)} for r in rs.rules]
    cmds += [{"add": x} for lg in rs.logs for x in render_log_rules(rs.table, lg)]
    return cmds


def element_delta(live: Mapping[str, frozenset[str]], rs: Ruleset) -> list[JSON] | None:
    """Set element updates from `live` (set name → elements) to `rs`; None when the sets are
    not the same ones (a new structure: replace the table). Deletions go first: in an
    interval set a prefix that grows must leave before its successor overlaps it."""
    want = rs.elements()
    if set(live) != set(want):
        return None
    deletes: list[JSON] = []
    adds: list[JSON] = []
    for name in sorted(want):
        gone = live[name] - want[name]
        new = want[name] - live[name]
        s = rs.set(name)
        assert s is not None
        if gone:
            deletes.append(_elements_cmd("delete", rs.table, s, gone))
        if new:
            adds.append(_elements_cmd("add", rs.table, s, new))
    return deletes + adds


def remove_transaction(table: str) -> list[JSON]:
    """Removes the tables (inet and bridge), and nothing else; no error when they are not
    there."""
    cmds: list[JSON] = []
    for family in ("inet", "bridge"):
        t = {"family": family, "name": table}
        cmds += [{"add": {"table": dict(t)}}, {"delete": {"table": dict(t)}}]
    return cmds


def document(cmds: list[JSON]) -> JSON:
    return {"nftables": [{"metainfo": {"json_schema_version": 1}}, *cmds]}


def verdict_word(v: Verdict) -> str:
    return "allowed" if v == "allow" else "denied"


# --- every drop named ------------------------------------------------------------------------

LOG_PREFIX = "log"  # a drop log's set and chain: log<k>_<family>
LOG_TIMEOUT_S = 60  # an element (a flow) is forgotten this long after its last packet
LOG_SIZE = 4096  # elements per log at most: the kernel adds no more while it is full
# Protocols whose transport header starts with ports; any other is recorded with port 0 (for
# ICMP the same bytes are its checksum: one element per packet, not per flow).
PORTED = ("tcp", "udp", "dccp", "sctp", "udplite")  # nft lists a set in protocol-number order
AUDIT_LOG_RATE = 10  # kernel log lines a second at most per audit rule


@dataclass(frozen=True, slots=True)
class DropLog:
    """Where one drop or audit rule records what it drops: a set (type saddr . daddr .
    inet_proto . inet_service, elements with counters and a timeout, filled by the kernel) and
    a chain of the same name that the rule goes to, which records and then gives the rule's
    verdict."""

    name: str
    family: Family
    rule: str  # the rule's description (its comment)
    action: Action  # drop or audit
    origin: tuple[str, int | str]


def is_log_set(name: str) -> bool:
    """Whether a set of the table is a drop log's (not a topology set)."""
    head, _, fam = name.rpartition("_")
    return head.startswith(LOG_PREFIX) and head[len(LOG_PREFIX) :].isdigit() and fam in "46"


def with_drop_log(rs: Ruleset) -> Ruleset:
    """`rs` with a drop log for each rule whose action is drop or audit and whose family is
    known (the record reads the family's addresses: in an inet chain a rule for both families
    would otherwise match one only). The structure hash covers the logs."""
    if rs.logs:
        return rs
    rules: list[NftRule] = []
    logs: list[DropLog] = []
    for r in rs.rules:
        if r.action in ("drop", "audit") and r.family is not None and r.table_family == "inet":
            lg = DropLog(
                f"{LOG_PREFIX}{len(logs)}_{r.family}", r.family, r.comment, r.action, r.origin
            )
            logs.append(lg)
            r = replace(r, log=lg.name)
        rules.append(r)
    if not logs:
        return rs
    doc = {
        "structure": rs.structure_hash,
        "logs": [[*render_log_rules(rs.table, lg), _log_set_json(rs.table, lg)] for lg in logs],
    }
    text = json.dumps(doc, sort_keys=True, separators=(",", ":"))
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    old = HASH_TAG + rs.structure_hash
    rules = [replace(r, comment=HASH_TAG + digest) if r.comment == old else r for r in rules]
    return Ruleset(
        rs.table, rs.mode, rs.sets, tuple(rules), rs.priority, digest, rs.attribution, tuple(logs)
    )


def _log_key(family: Family) -> list[JSON]:
    proto = "ip" if family == 4 else "ip6"
    return [
        {"payload": {"protocol": proto, "field": "saddr"}},
        {"payload": {"protocol": proto, "field": "daddr"}},
        {"meta": {"key": "l4proto"}},
    ]


def _log_set_json(table: str, lg: DropLog) -> JSON:
    addr = "ipv4_addr" if lg.family == 4 else "ipv6_addr"
    return {
        "family": "inet",
        "table": table,
        "name": lg.name,
        "type": [addr, addr, "inet_proto", "inet_service"],
        # nft -j refuses the "dynamic" flag; a set updated from the packet path is one anyway.
        "flags": ["timeout"],
        "timeout": LOG_TIMEOUT_S,
        "size": LOG_SIZE,
        "stmt": [{"counter": None}],
    }


def render_log_rules(table: str, lg: DropLog) -> list[JSON]:
    """The log's chain: record the packet (its port, or 0 for a protocol without ports), then
    the verdict. A record that fails (set full, header unreadable) ends its own rule only."""
    ported = {"set": list(PORTED)}
    l4 = {"meta": {"key": "l4proto"}}
    update = "@" + lg.name
    port = {"payload": {"protocol": "th", "field": "dport"}}

    def record(op: str, last: Any) -> JSON:
        return {
            "rule": {
                "family": "inet",
                "table": table,
                "chain": lg.name,
                "expr": [
                    _match(l4, ported, op),
                    {
                        "set": {
                            "op": "update",
                            "elem": {"concat": [*_log_key(lg.family), last]},
                            "set": update,
                        }
                    },
                ],
            }
        }

    def rule(*expr: JSON) -> JSON:
        return {"rule": {"family": "inet", "table": table, "chain": lg.name, "expr": list(expr)}}

    if lg.action != "audit":
        return [record("==", port), record("!=", 0), rule({"drop": None})]
    # The kernel log line of audit mode, rate-limited (the drop log counts every packet): a
    # rule of its own, so that a packet over the limit is accepted all the same.
    prefix = _clip(f"{AUDIT_PREFIX} {lg.rule}: ", 120)
    limit = {"limit": {"rate": AUDIT_LOG_RATE, "per": "second", "burst": AUDIT_LOG_RATE}}
    return [
        record("==", port),
        record("!=", 0),
        rule(limit, {"log": {"prefix": prefix}}),
        rule({"accept": None}),
    ]
