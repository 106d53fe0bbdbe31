"""Policy + topology → an nftables ruleset, as data. Pure.

Theory of operation
-------------------
- One table (`inet dockmesh` by default) holds address sets and one base chain on the forward
  hook at priority `filter - 10`: before Docker's filter chains, so a drop here is final
  whatever Docker's rules say, while an accept here only means "no objection" (Docker's own
  chains still see the packet). That is how the policy never opens what Docker closes.
- The chain's rules depend on the policy and the mode alone; the topology only fills sets.
  So when containers come and go the kernel gets set element updates (`element_delta`), and
  only a new policy replaces the table. `Ruleset.structure_hash` tells the two apart; it is
  kept in the first rule's comment so that a new process can tell whether the live table is
  the structure it would write.
- The order of the chain: established/related (return traffic) first; then packets whose
  connection was DNAT-ed (published ports: Docker's rules decide); then one accept per rule,
  protocol and family; then the per-network defaults; then the policy's default when it is
  deny. Every decision rule counts.
- Selector sets hold the addresses of running containers (a container that starts is
  allowed once it is added: fail closed). Default sets hold the networks' subnets, so a deny
  covers a container the moment it starts, before anyone has seen it.
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

import hashlib
import ipaddress
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from dockmesh.model.policy import Policy, PortRange, Side, Verdict, selects, side_text
from dockmesh.model.topology import Topology

DEFAULT_TABLE = "dockmesh"
CHAIN = "forward"
PRIORITY = -10  # filter - 10: before Docker's filter chains (priority 0)
AUDIT_PREFIX = "dockmesh-audit"
HASH_TAG = "dockmesh policy "

Mode = Literal["enforce", "audit"]
MODES: tuple[Mode, ...] = ("enforce", "audit")
Family = Literal[4, 6]
FAMILIES: tuple[Family, Family] = (4, 6)
Action = Literal["accept", "drop", "audit"]
JSON = dict[str, Any]


@dataclass(frozen=True, slots=True)
class AddrSet:
    name: str
    family: Family
    interval: bool  # prefixes allowed (the defaults' subnets)
    elements: frozenset[str]  # addresses, and "net/len" prefixes in interval sets
    meaning: str  # what it holds, in the policy's words


@dataclass(frozen=True, slots=True)
class InSet:
    field: Literal["saddr", "daddr"]
    set: str


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
class CtDnat:
    pass


Match = InSet | L4Proto | DPort | CtState | CtDnat


@dataclass(frozen=True, slots=True)
class NftRule:
    family: Family | None  # None: no address match, both families
    matches: tuple[Match, ...]
    action: Action
    comment: str
    counter: bool = True
    # Where it comes from: ("rule", i), ("network", name), ("default", "") or ("base", "").
    origin: tuple[str, int | str] = ("base", "")
    # The drop log (`with_drop_log`) it records what it drops in, by name: the rule then goes
    # to that log's chain, which records and gives the verdict. None: no log.
    log: str | None = None


@dataclass(frozen=True, slots=True)
class Ruleset:
    """One table's nftables ruleset as data. Its rules depend on the policy alone and its
    sets' elements on the topology alone, so `structure_hash` (of everything but the
    elements) tells whether a live table can be brought up to date by set element updates."""

    table: str
    mode: Mode
    sets: tuple[AddrSet, ...]
    rules: tuple[NftRule, ...]
    priority: int = PRIORITY
    _hash: str = field(default="", compare=False)
    logs: tuple[DropLog, ...] = ()  # `with_drop_log`'s: one per drop or audit rule

    @property
    def structure_hash(self) -> str:
        return self._hash

    def set(self, name: str) -> AddrSet | None:
        for s in self.sets:
            if s.name == name:
                return s
        return None

    def elements(self) -> dict[str, frozenset[str]]:
        return {s.name: s.elements for s in self.sets}


def compile_policy(
    policy: Policy, topo: Topology, mode: Mode = "enforce", table: str = DEFAULT_TABLE
) -> Ruleset:
    """The ruleset that enforces `policy` over `topo`'s running containers."""
    sides: dict[Side, int] = {}
    for r in policy.rules:
        for side in (r.sources, r.destinations):
            sides.setdefault(side, len(sides))
    sets: list[AddrSet] = []
    members = _side_members(topo, list(sides))
    for side, i in sides.items():
        for f in FAMILIES:
            sets.append(AddrSet(f"s{i}_{f}", f, False, members[i][f], side_text(side)))
    for j, (name, _) in enumerate(policy.networks):
        space = _network_space(topo, {name})
        for f in FAMILIES:
            sets.append(AddrSet(f"n{j}_{f}", f, True, space[f], f"network {name}"))
    if policy.default == "deny":
        space = _network_space(topo, None)
        for f in FAMILIES:
            sets.append(AddrSet(f"all_{f}", f, True, space[f], "every network"))

    deny: Action = "drop" if mode == "enforce" else "audit"
    rules: list[NftRule] = [
        NftRule(None, (CtState(("established", "related")),), "accept", "", counter=False),
        NftRule(
            None,
            (CtDnat(),),
            "accept",
            "published ports: Docker's rules decide",
            counter=False,
        ),
    ]
    for i, r in enumerate(policy.rules):
        src, dst = sides[r.sources], sides[r.destinations]
        for f in FAMILIES:
            base: tuple[Match, ...] = (InSet("saddr", f"s{src}_{f}"), InSet("daddr", f"s{dst}_{f}"))
            for l4 in _l4_matches(r.ports, f):
                rules.append(NftRule(f, base + l4, "accept", f"rule {i + 1}", origin=("rule", i)))
    for j, (name, verdict) in enumerate(policy.networks):
        action: Action = "accept" if verdict == "allow" else deny
        for f in FAMILIES:
            rules.append(
                NftRule(
                    f,
                    (InSet("saddr", f"n{j}_{f}"), InSet("daddr", f"n{j}_{f}")),
                    action,
                    _clip(f"network {name} default {verdict}"),
                    origin=("network", name),
                )
            )
    if policy.default == "deny":
        for f in FAMILIES:
            rules.append(
                NftRule(
                    f,
                    (InSet("saddr", f"all_{f}"), InSet("daddr", f"all_{f}")),
                    deny,
                    "default deny",
                    origin=("default", ""),
                )
            )
    digest = _structure_digest(table, mode, sets, rules)
    rules[0] = NftRule(None, rules[0].matches, "accept", HASH_TAG + digest, counter=False)
    return with_drop_log(Ruleset(table, mode, tuple(sets), tuple(rules), PRIORITY, digest))


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


def _side_members(topo: Topology, sides: list[Side]) -> list[dict[Family, frozenset[str]]]:
    found: list[tuple[set[str], set[str]]] = [(set(), set()) for _ in sides]
    for c in topo.containers:
        if not c.running:
            continue
        for a in c.attachments:
            if a.ipv4 is None and a.ipv6 is None:
                continue
            for i, side in enumerate(sides):
                if selects(side, c, a.network):
                    if a.ipv4:
                        found[i][0].add(_canonical(a.ipv4))
                    if a.ipv6:
                        found[i][1].add(_canonical(a.ipv6))
    return [{4: frozenset(v4), 6: frozenset(v6)} for v4, v6 in found]


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
        "priority": PRIORITY,
        "sets": [[s.name, s.family, s.interval] for s in sets],
        "rules": [render_rule(table, r)["rule"] for r in rules],
    }
    text = json.dumps(doc, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# --- nft's JSON ------------------------------------------------------------------------------


def _addr_key(family: Family, field_: str) -> JSON:
    return {"payload": {"protocol": "ip" if family == 4 else "ip6", "field": field_}}


def _match(left: JSON, right: Any, op: str = "==") -> JSON:
    return {"match": {"op": op, "left": left, "right": right}}


def render_match(m: Match, family: Family | None) -> JSON:
    if isinstance(m, InSet):
        assert family is not None
        return _match(_addr_key(family, m.field), "@" + m.set)
    if isinstance(m, L4Proto):
        return _match({"meta": {"key": "l4proto"}}, m.protocol)
    if isinstance(m, DPort):
        values: list[Any] = [a if a == b else {"range": [a, b]} for a, b in m.ranges]
        right: Any = values[0] if len(values) == 1 else {"set": values}
        return _match({"payload": {"protocol": m.protocol, "field": "dport"}}, right)
    if isinstance(m, CtState):
        return _match({"ct": {"key": "state"}}, list(m.states), "in")
    return _match({"ct": {"key": "status"}}, "dnat", "in")


def render_rule(table: str, r: NftRule) -> JSON:
    expr: list[JSON] = [render_match(m, r.family) for m in r.matches]
    if r.counter:
        expr.append({"counter": None})
    if r.log is not None:
        expr.append({"goto": {"target": r.log}})  # the log's chain gives the verdict
    elif r.action == "audit":
        expr.append({"log": {"prefix": _clip(f"{AUDIT_PREFIX} {r.comment}: ", 120)}})
        expr.append({"accept": None})
    else:
        expr.append({r.action: None})
    rule: JSON = {"family": "inet", "table": table, "chain": CHAIN, "expr": expr}
    if r.comment:
        rule["comment"] = r.comment
    return {"rule": rule}


def render_element(text: str) -> Any:
    if "/" in text:
        addr, _, length = text.partition("/")
        return {"prefix": {"addr": addr, "len": int(length)}}
    return text


def _set_json(table: str, s: AddrSet) -> JSON:
    doc: JSON = {
        "family": "inet",
        "table": table,
        "name": s.name,
        "type": "ipv4_addr" if s.family == 4 else "ipv6_addr",
    }
    if s.interval:
        doc["flags"] = ["interval"]
    return doc


def _elements_cmd(verb: str, table: str, name: str, elements: Iterable[str]) -> JSON:
    elem = [render_element(e) for e in sorted(elements)]
    return {verb: {"element": {"family": "inet", "table": table, "name": name, "elem": elem}}}


def full_transaction(rs: Ruleset) -> list[JSON]:
    """Commands that make the table exactly `rs`, whatever was there, in one transaction:
    the old table and the new one never coexist and no moment is without either."""
    t = {"family": "inet", "name": rs.table}
    cmds: list[JSON] = [{"add": {"table": dict(t)}}, {"delete": {"table": dict(t)}}]
    cmds.append({"add": {"table": dict(t)}})
    for s in rs.sets:
        cmds.append({"add": {"set": _set_json(rs.table, s)}})
        if s.elements:
            cmds.append(_elements_cmd("add", rs.table, s.name, s.elements))
    chain = {
        "family": "inet",
        "table": rs.table,
        "name": CHAIN,
        "type": "filter",
        "hook": "forward",
        "prio": rs.priority,
        "policy": "accept",
    }
    cmds.append({"add": {"chain": chain}})
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
        if gone:
            deletes.append(_elements_cmd("delete", rs.table, name, gone))
        if new:
            adds.append(_elements_cmd("add", rs.table, name, new))
    return deletes + adds


def remove_transaction(table: str) -> list[JSON]:
    """Removes the table, and nothing else; no error when it is not there."""
    t = {"family": "inet", "name": table}
    return [{"add": {"table": dict(t)}}, {"delete": {"table": dict(t)}}]


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
PORTED = ("tcp", "udp", "sctp", "udplite", "dccp")
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
        if r.action in ("drop", "audit") and r.family is not None:
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
    return Ruleset(rs.table, rs.mode, rs.sets, tuple(rules), rs.priority, digest, tuple(logs))


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
