"""A network policy as values: who may talk to whom between containers. Pure.

The policy lives here, below `dockmesh.projectfile`, and not in `dockmesh.policy`, because a
topology file's `policy:` section is validated with the rest of the file (FILE:LINE before
anything is touched) and the file's reader sits below the policy layer. The compiler, the
reachability analysis and the kernel adapter are in `dockmesh.policy`; the semantics are
written down there (`dockmesh.policy.__doc__`).

Two ways to write one, one shape once read:
- a topology file's `policy:` section, where network and service names are the file's own
  short names (`backend` is the engine's `<project>_backend`; `service: api` is the project's
  service `api`);
- a policy file alone (a document holding `policy:` only, or the section's keys at the top),
  where names are the engine's.

`parse_policy` turns either into a `Policy` whose names are the engine's, every problem named by
its path in the document, so that the caller can say `FILE:LINE: path: what is wrong`.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from dockmesh.model.labels import PROJECT_LABELS, SERVICE_LABELS
from dockmesh.model.topology import Container

Verdict = Literal["allow", "deny"]
VERDICTS: tuple[Verdict, ...] = ("allow", "deny")
Path = tuple[str | int, ...]
PathProblem = tuple[Path, str]

SELECTOR_KINDS = ("service", "container", "network", "label", "project")
# Addresses rather than containers: a CIDR, or `world` (every address outside the networks
# of the engines the topology covers). Each stands alone in its selector.
ADDRESS_KINDS = ("cidr", "world")
ALL_KINDS = SELECTOR_KINDS + ADDRESS_KINDS
ACTIONS = ("allow", "deny")
RULE_KEYS = ("action", "from", "to", "ports")
PROTOCOLS = ("tcp", "udp", "sctp", "icmp")
PORTED = ("tcp", "udp", "sctp")

_PORT = re.compile(r"(?P<first>[0-9]{1,5})(?:-(?P<last>[0-9]{1,5}))?(?:/(?P<proto>[a-z]+))?")
_LABEL_KEY = re.compile(r"[^=\s]+")


@dataclass(frozen=True, slots=True)
class PortRange:
    """`8080/tcp`, `8000-8100/udp`, `tcp` (every TCP port), `icmp`. `first`/`last` are None
    for a protocol without ports (or all of them)."""

    protocol: str
    first: int | None = None
    last: int | None = None

    def covers(self, protocol: str, port: int | None) -> bool:
        if protocol != self.protocol:
            return False
        if self.first is None:
            return True
        return port is not None and self.first <= port <= (self.last or self.first)

    def text(self) -> str:
        if self.first is None:
            return self.protocol
        if self.last is None or self.last == self.first:
            return f"{self.first}/{self.protocol}"
        return f"{self.first}-{self.last}/{self.protocol}"


@dataclass(frozen=True, slots=True)
class Selector:
    """Containers (their addresses) chosen by what they are. Every key given must hold (AND);
    no key at all chooses every container. `network` chooses a container's address on that
    network only: the address traffic on that network carries."""

    service: str | None = None
    container: str | None = None
    network: str | None = None
    # (key, value) pairs that must all be on the container; value None: the key alone.
    labels: tuple[tuple[str, str | None], ...] = ()
    project: str | None = None
    # An address selector (chooses no container): a network in CIDR form, or the world.
    cidr: str | None = None
    world: bool = False

    @property
    def is_address(self) -> bool:
        return self.cidr is not None or self.world

    def matches(self, c: Container) -> bool:
        """Whether the container is chosen, whatever its network (`network` is checked on the
        address, by the caller). An address selector chooses no container as such: which of
        a container's addresses it covers is the compiler's to say (`covers_address`)."""
        if self.is_address:
            return False
        if self.container is not None and c.name != self.container:
            return False
        # Any of the labels that name a project (or a service) may carry the one asked for.
        if self.project is not None and not any(
            c.labels.get(k) == self.project for k in PROJECT_LABELS
        ):
            return False
        if self.service is not None and not any(
            c.labels.get(k) == self.service for k in SERVICE_LABELS
        ):
            return False
        for k, v in self.labels:
            have = c.labels.get(k)
            if have is None or (v is not None and have != v):
                return False
        return True

    def matches_endpoint(self, c: Container, network: str) -> bool:
        return (self.network is None or self.network == network) and self.matches(c)

    def covers_address(self, address: str) -> bool:
        """Whether a `cidr` selector covers the address (False for every other kind)."""
        if self.cidr is None:
            return False
        try:
            ip = ipaddress.ip_address(address)
            net = ipaddress.ip_network(self.cidr, strict=False)
        except ValueError:
            return False
        return ip.version == net.version and ip in net

    def text(self) -> str:
        parts = [f"{k}={v}" for k, v in self._items()]
        return ",".join(parts) or "*"

    def _items(self) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        if self.cidr is not None:
            out.append(("cidr", self.cidr))
        if self.world:
            out.append(("world", "true"))
        for kind in ("project", "service", "container", "network"):
            v = getattr(self, kind)
            if v is not None:
                out.append((kind, v))
        out += [("label", k if v is None else f"{k}={v}") for k, v in self.labels]
        return out

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {k: v for k, v in self._items() if k not in ("label", "world")}
        if self.world:
            doc["world"] = True
        if self.labels:
            doc["label"] = [k if v is None else f"{k}={v}" for k, v in self.labels]
        return doc


Side = tuple[Selector, ...]  # a union: any of them


def side_text(side: Side) -> str:
    return " | ".join(s.text() for s in side)


@dataclass(frozen=True, slots=True)
class Rule:
    """Allows (or, `action` deny, denies) traffic from any `sources` address to any
    `destinations` address on `ports` (every protocol and port when empty). A deny rule wins
    over every allow rule, whatever their order."""

    sources: Side
    destinations: Side
    ports: tuple[PortRange, ...] = ()
    action: Verdict = "allow"

    def covers(self, protocol: str, port: int | None) -> bool:
        return not self.ports or any(p.covers(protocol, port) for p in self.ports)

    def text(self) -> str:
        ports = ", ".join(p.text() for p in self.ports) or "any port"
        deny = "deny " if self.action == "deny" else ""
        return f"{deny}{side_text(self.sources)} -> {side_text(self.destinations)} ({ports})"

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "from": [s.to_json() for s in self.sources],
            "to": [s.to_json() for s in self.destinations],
        }
        if self.ports:
            doc["ports"] = [p.text() for p in self.ports]
        if self.action != "allow":
            doc["action"] = self.action
        return doc


@dataclass(frozen=True, slots=True)
class Policy:
    """Names are the engine's. `networks` holds per-network defaults, sorted by name."""

    default: Verdict = "allow"
    networks: tuple[tuple[str, Verdict], ...] = ()
    rules: tuple[Rule, ...] = ()

    def network_default(self, network: str) -> Verdict | None:
        for name, v in self.networks:
            if name == network:
                return v
        return None

    def to_json(self) -> dict[str, Any]:
        return {
            "default": self.default,
            "networks": {n: {"default": v} for n, v in self.networks},
            "rules": [r.to_json() for r in self.rules],
        }


def policy_from_json(doc: Any) -> Policy:
    """A policy back from `Policy.to_json` (names already the engine's). ValueError when the
    document is not one."""
    policy, problems = parse_policy(doc)
    if policy is None or problems:
        first = problems[0] if problems else ((), "unreadable")
        raise ValueError(f"not a policy document: {'.'.join(map(str, first[0]))}: {first[1]}")
    return policy


@dataclass(frozen=True, slots=True)
class Scope:
    """How a topology file's short names become the engine's: `project`'s networks and
    services. `networks`/`services`: the names the file defines (None: do not check)."""

    project: str
    networks: frozenset[str] | None = None
    services: frozenset[str] | None = None


@dataclass(slots=True)
class _Parser:
    scope: Scope | None
    problems: list[PathProblem] = field(default_factory=list)

    def err(self, path: Path, message: str) -> None:
        self.problems.append((path, message))

    def verdict(self, value: Any, path: Path) -> Verdict | None:
        if value in VERDICTS:
            return value  # type: ignore[no-any-return]
        self.err(path, f"must be allow or deny, not {value!r}")
        return None

    def policy(self, data: Any, base: Path) -> Policy | None:
        if data is None:
            return Policy()
        if not isinstance(data, Mapping):
            self.err(base, "must be a mapping (default, networks, rules)")
            return None
        for key in data:
            if key not in ("default", "networks", "rules"):
                self.err((*base, str(key)), "unknown key (default, networks, rules)")
        default = self.verdict(data.get("default", "allow"), (*base, "default")) or "allow"
        networks = self.networks(data.get("networks"), (*base, "networks"))
        rules = self.rules(data.get("rules"), (*base, "rules"))
        return Policy(default, networks, rules)

    def networks(self, data: Any, base: Path) -> tuple[tuple[str, Verdict], ...]:
        if data is None:
            return ()
        if not isinstance(data, Mapping):
            self.err(base, "must be a mapping of network name to {default: allow|deny}")
            return ()
        out: dict[str, Verdict] = {}
        for name, value in data.items():
            path = (*base, str(name))
            engine_name = self.network_name(str(name), None, path)
            if not isinstance(value, Mapping):
                self.err(path, "must be a mapping: {default: allow|deny}")
                continue
            for key in value:
                if key != "default":
                    self.err((*path, str(key)), "unknown key (default)")
            if "default" not in value:
                self.err((*path, "default"), "is required")
                continue
            v = self.verdict(value["default"], (*path, "default"))
            if v is not None and engine_name is not None:
                out[engine_name] = v
        return tuple(sorted(out.items()))

    def network_name(self, name: str, project: str | None, path: Path) -> str | None:
        if not name:
            self.err(path, "a network name cannot be empty")
            return None
        scope = self.scope
        if scope is None:
            return name
        if project is None and scope.networks is not None and name not in scope.networks:
            known = ", ".join(sorted(scope.networks)) or "none"
            self.err(path, f"unknown network {name!r} (this file's networks: {known})")
            return None
        return f"{project or scope.project}_{name}"

    def rules(self, data: Any, base: Path) -> tuple[Rule, ...]:
        if data is None:
            return ()
        if not isinstance(data, list):
            self.err(base, "must be a list of rules ({from: ..., to: ..., ports: [...]})")
            return ()
        out: list[Rule] = []
        for i, item in enumerate(data):
            r = self.rule(item, (*base, i))
            if r is not None:
                out.append(r)
        return tuple(out)

    def rule(self, data: Any, path: Path) -> Rule | None:
        if not isinstance(data, Mapping):
            self.err(path, "must be a mapping ({from: ..., to: ..., ports: [...]})")
            return None
        for key in data:
            if key not in RULE_KEYS:
                self.err((*path, str(key)), "unknown key (action, from, to, ports)")
        ok = True
        action: Verdict = "allow"
        if "action" in data:
            if data["action"] in ACTIONS:
                action = data["action"]
            else:
                self.err((*path, "action"), f"must be allow or deny, not {data['action']!r}")
                ok = False
        sides: list[Side] = []
        for key in ("from", "to"):
            if key not in data:
                self.err((*path, key), "is required (a selector; {} chooses every container)")
                ok = False
                continue
            side = self.side(data[key], (*path, key))
            ok = ok and side is not None
            sides.append(side or ())
        ports = self.ports(data.get("ports"), (*path, "ports"))
        if not ok or ports is None:
            return None
        return Rule(sides[0], sides[1], ports, action)

    def side(self, data: Any, path: Path) -> Side | None:
        if isinstance(data, list):
            if not data:
                self.err(path, "an empty list chooses nothing: write {} for every container")
                return None
            picked = [self.selector(x, (*path, i)) for i, x in enumerate(data)]
            if any(s is None for s in picked):
                return None
            return tuple(dict.fromkeys(s for s in picked if s is not None))
        s = self.selector(data, path)
        return None if s is None else (s,)

    def selector(self, data: Any, path: Path) -> Selector | None:
        if data is None:
            data = {}
        if data == "world":
            data = {"world": True}
        if not isinstance(data, Mapping):
            kinds = ", ".join(ALL_KINDS)
            self.err(path, f"must be a mapping with any of {kinds} (or the word world)")
            return None
        if any(k in data for k in ADDRESS_KINDS):
            return self.address_selector(data, path)
        before = len(self.problems)
        values: dict[str, str] = {}
        labels: list[tuple[str, str | None]] = []
        for key, value in data.items():
            kp = (*path, str(key))
            if key not in SELECTOR_KINDS:
                self.err(kp, f"unknown selector (one of {', '.join(ALL_KINDS)})")
            elif key == "label":
                labels += self.labels(value, kp)
            elif not isinstance(value, str) or not value:
                self.err(kp, "must be a non-empty string")
            else:
                values[key] = value
        if len(self.problems) > before:
            return None
        project = values.get("project")
        network = values.get("network")
        service = values.get("service")
        scope = self.scope
        if network is not None:
            network = self.network_name(network, project, (*path, "network"))
            if network is None:
                return None
        if scope is not None and service is not None:
            if project is None and scope.services is not None and service not in scope.services:
                known = ", ".join(sorted(scope.services)) or "none"
                self.err((*path, "service"), f"unknown service {service!r} (services: {known})")
                return None
            # A short service name means this project's service.
            project = project or scope.project
        return Selector(
            service=service,
            container=values.get("container"),
            network=network,
            labels=tuple(sorted(set(labels), key=lambda kv: (kv[0], kv[1] or ""))),
            project=project,
        )

    def address_selector(self, data: Mapping[Any, Any], path: Path) -> Selector | None:
        """`{cidr: 10.0.0.0/8}` or `{world: true}`: alone in their selector."""
        if len(data) != 1:
            others = ", ".join(sorted(str(k) for k in data if k not in ADDRESS_KINDS))
            what = others or "cidr and world"
            self.err(path, f"cidr and world stand alone in a selector (not with {what})")
            return None
        ((key, value),) = data.items()
        if key == "world":
            if value is not True:
                self.err((*path, "world"), f"must be true, not {value!r}")
                return None
            return Selector(world=True)
        if not isinstance(value, str) or not value:
            self.err((*path, "cidr"), "must be an address or ADDRESS/LENGTH (a string)")
            return None
        try:
            net = ipaddress.ip_network(value.strip(), strict=False)
        except ValueError:
            self.err((*path, "cidr"), f"{value!r} is not an address or ADDRESS/LENGTH")
            return None
        # What the kernel would match differs from what was written: refused, not guessed.
        problem = _cidr_problem(value.strip(), net)
        if problem:
            self.err((*path, "cidr"), f"{value!r}: {problem}")
            return None
        return Selector(cidr=str(net))

    def labels(self, value: Any, path: Path) -> list[tuple[str, str | None]]:
        items = value if isinstance(value, list) else [value]
        out: list[tuple[str, str | None]] = []
        for i, item in enumerate(items):
            p = (*path, i) if isinstance(value, list) else path
            if not isinstance(item, str) or not item:
                self.err(p, "must be KEY=VALUE or KEY (a string)")
                continue
            k, sep, v = item.partition("=")
            if not _LABEL_KEY.fullmatch(k):
                self.err(p, f"{item!r}: the label key must be non-empty, without spaces")
                continue
            out.append((k, v if sep else None))
        return out

    def ports(self, data: Any, path: Path) -> tuple[PortRange, ...] | None:
        if data is None:
            return ()
        if not isinstance(data, list):
            self.err(path, "must be a list such as [8080/tcp, 53/udp, 9000-9100/tcp, icmp]")
            return None
        out: list[PortRange] = []
        ok = True
        for i, item in enumerate(data):
            p = parse_port_range(item)
            if isinstance(p, str):
                self.err((*path, i), p)
                ok = False
            else:
                out.append(p)
        if ok and not out:
            self.err(path, "an empty list allows nothing: leave ports out for every port")
            return None
        return tuple(sorted(set(out), key=_port_key)) if ok else None


def _port_key(p: PortRange) -> tuple[str, int, int]:
    return (p.protocol, p.first or 0, p.last or 0)


def _cidr_problem(text: str, net: ipaddress.IPv4Network | ipaddress.IPv6Network) -> str:
    """Why a parsed `cidr` would not mean what it says ('' when it does)."""
    address = text.partition("/")[0]
    if isinstance(net, ipaddress.IPv6Network):
        if "%" in address:
            return "a zone (%name) has no place in a rule for every interface"
        if net.prefixlen >= 96 and net.network_address.ipv4_mapped is not None:
            return "an IPv4-mapped IPv6 address never matches IPv4 traffic: write the IPv4 one"
    if "/" in text and ipaddress.ip_address(address) != net.network_address:
        return f"host bits are set (the network is {net}; one address is {address})"
    return ""


def parse_port_range(item: Any) -> PortRange | str:
    """`8080`, `8080/tcp`, `8000-8100/udp`, `tcp`, `icmp` → PortRange, or what is wrong."""
    if isinstance(item, bool) or not isinstance(item, int | str):
        return "must be PORT[/PROTOCOL], FIRST-LAST[/PROTOCOL] or a protocol"
    text = str(item).strip().lower()
    if text in PROTOCOLS:
        return PortRange(text)
    m = _PORT.fullmatch(text)
    if m is None:
        return f"{item!r} is not PORT[/PROTOCOL], FIRST-LAST[/PROTOCOL] or one of {PROTOCOLS}"
    proto = m["proto"] or "tcp"
    if proto not in PORTED:
        return f"{item!r}: protocol must be one of {', '.join(PORTED)} (icmp has no ports)"
    first = int(m["first"])
    last = int(m["last"]) if m["last"] else first
    if not (1 <= first <= 65535 and 1 <= last <= 65535):
        return f"{item!r}: ports are 1 to 65535"
    if last < first:
        return f"{item!r}: the range ends before it starts"
    return PortRange(proto, first, last)


def parse_policy(
    data: Any, scope: Scope | None = None, base: Path = ()
) -> tuple[Policy | None, list[PathProblem]]:
    """A `policy:` section (its value) → Policy with the engine's names, and every problem
    with its path (`base` + the path inside the section). The policy is None only when the
    section cannot be read at all; with problems, it holds what was well formed."""
    p = _Parser(scope)
    policy = p.policy(data, base)
    return policy, p.problems


POLICY_KEYS = ("default", "networks", "rules")
TOPOLOGY_KEYS = frozenset({"project", "networks", "services"})


def policy_file_section(doc: Any) -> tuple[Any, Path, bool]:
    """Where a document keeps its policy: (the section, its path, whether the document is a
    topology file). A topology file has project/networks/services (and `policy:`); a policy
    file alone holds `policy:` only, or the section's own keys at the top."""
    if isinstance(doc, Mapping):
        keys = set(doc)
        if "policy" not in keys and not ({"project", "services"} & keys):
            return doc, (), False
        return doc.get("policy"), ("policy",), bool(TOPOLOGY_KEYS & keys)
    return doc, (), False


def policy_file_problems(doc: Any) -> list[PathProblem]:
    """What makes a document no policy at all (`parse_policy` reads an absent section as
    "allow everything", which a file must never silently mean): not a mapping, no policy
    key, an empty `policy:`, a topology file without `policy:`, a key that is neither."""
    what = "a policy (default, networks, rules) or a topology file with a policy: section"
    if not isinstance(doc, Mapping):
        return [((), f"is not a policy: expected {what}")]
    section, base, is_topology = policy_file_section(doc)
    if base == ():
        # The policy's own keys at the top: unknown ones are the parser's to name.
        if any(k in doc for k in POLICY_KEYS):
            return []
        unknown = "unknown key (a policy has default, networks, rules, or a policy: section)"
        return [((str(k),), unknown) for k in doc] or [((), f"is empty: expected {what}")]
    problems: list[PathProblem] = []
    if not is_topology:
        for key in doc:
            if key != "policy":
                problems.append(((str(key),), "unknown key (policy, or default/networks/rules)"))
    if "policy" not in doc:
        problems.append(((), "a topology file without a policy: section is not a policy"))
    elif section is None or (
        isinstance(section, Mapping) and not any(k in section for k in POLICY_KEYS)
    ):
        problems.append((base, "is empty: at least one of default, networks, rules"))
    return problems


def parse_selector_arg(text: str) -> Selector | str:
    """A command line's `KIND=VALUE` (`service=api`, `label=team=web`) → Selector (engine
    names), or what is wrong."""
    kind, sep, value = text.partition("=")
    if sep and kind in SELECTOR_KINDS and not value.strip():
        example = "KEY=VALUE" if kind == "label" else "NAME"
        return f"{text!r}: {kind}= needs a value ({kind}={example})"
    if not sep or kind not in SELECTOR_KINDS or not value:
        return f"{text!r}: a selector is KIND=VALUE with KIND one of {', '.join(SELECTOR_KINDS)}"
    p = _Parser(None)
    s = p.selector({kind: value}, ())
    if s is None:
        return f"{text!r}: {p.problems[0][1]}"
    return s


def selects(side: Sequence[Selector], c: Container, network: str) -> bool:
    return any(s.matches_endpoint(c, network) for s in side)


def union_text(selectors: Iterable[Selector]) -> str:
    return " | ".join(s.text() for s in selectors)
