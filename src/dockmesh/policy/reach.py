"""Why A can or cannot reach B: the ordered steps a packet and a name lookup go through. Pure.

`analyze` walks what Docker and the policy do with a connection from SRC to DST, in the order
they do it, over the topology, the applied policy and what the caller observed in the
namespaces and the kernel (the sockets DST listens on, what SRC's resolver answered, how the
applied policy stands):

1. running       both containers run (a stopped container has no address)
2. shared_network the networks both are on (none: Docker isolates networks from each other)
3. internal      whether that network is internal (between its containers it changes nothing)
4. icc           `enable_icc=false` on a bridge: Docker drops traffic between its containers
5. policy        the applied policy's verdict and the rule (or default) that decided it
6. dns           which of DST's names SRC's resolver (Docker's embedded DNS) answers, on which
                 network, to which address; aliases that several projects use are flagged
7. listening     whether DST listens on the port on that address (127.0.0.1 only: a finding)

With SRC `host`, the host's own view: DST's published ports, and its address on each bridge
(the host reaches every bridge network directly; the policy does not decide host traffic).
The other paths are analysed as the kernel sees them: SRC and DST in one network namespace
(a container to itself, `--network container:X` either way, two host-network containers)
talk over loopback with no hook in between; a host-network DST is the host, reached at SRC's
gateway through the host's input hook (not forward: neither Docker's network rules nor the
policy decide it).

Both families: where SRC and DST both have IPv6, IPv4 and IPv6 are analysed each on its own
(`family`), and the verdict is the worse. Docker 20.10 writes no ip6tables rules, so for IPv6
neither `enable_icc=false` nor its isolation between networks drop anything (IPv6 is routed
between bridges through the host): only what the applied policy's compiled table drops
(`policy.evaluate` over `policy.compile`) is said to drop it, unless the caller observed that
Docker writes IPv6 rules (`Observations.docker_ip6tables`).

DST's address is the one its name resolves to from SRC when the caller asked SRC's resolver
(`Observations.target` and `resolved`): a container on several networks is reached on the
network Docker's DNS answers for, not on any shared one.

`reachable` is the packet's verdict (steps 1 to 5, and 7); a name that does not resolve is a
finding of its own, not a reason the address is unreachable.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from dockmesh.codecs.procnet import Listener
from dockmesh.model.labels import project_of
from dockmesh.model.policy import PortRange, parse_port_range
from dockmesh.model.topology import NO_DNS_NETWORKS, Attachment, Container, Network, Topology
from dockmesh.policy.compile import bridge_name
from dockmesh.policy.decide import decide

HOST = "host"
ICC_OPTION = "com.docker.network.bridge.enable_icc"
LOOPBACK = {4: "127.0.0.1", 6: "::1"}
# The checks that make the packet's verdict (the others are findings beside it).
PACKET_CHECKS = frozenset(
    {"running", "shared_network", "icc", "policy", "listening", "host_network", "self"}
)


@dataclass(frozen=True, slots=True)
class Step:
    check: str
    ok: bool
    detail: str

    def to_json(self) -> dict[str, Any]:
        return {"check": self.check, "ok": self.ok, "detail": self.detail}


@dataclass(frozen=True, slots=True)
class Analysis:
    src: str
    dst: str
    port: PortRange | None
    reachable: bool
    steps: tuple[Step, ...]
    summary: str
    network: str | None = None  # the network the connection travels on
    address: str | None = None  # DST's address there (what a probe targets)
    names: tuple[str, ...] = ()  # DST's names SRC's resolver answers
    family: int = 4  # the IP version analysed (of the first family, when `families`)
    # Both families where both exist: one analysis each (IPv4 first); `reachable` is the worse.
    families: tuple[Analysis, ...] = ()

    @property
    def per_family(self) -> tuple[Analysis, ...]:
        return self.families or (self,)

    def to_json(self) -> dict[str, Any]:
        return {
            "src": self.src,
            "dst": self.dst,
            "port": self.port.text() if self.port else None,
            "reachable": self.reachable,
            "summary": self.summary,
            "network": self.network,
            "address": self.address,
            "steps": [s.to_json() for s in self.steps],
            "families": [
                {
                    "family": a.family,
                    "reachable": a.reachable,
                    "summary": a.summary,
                    "network": a.network,
                    "address": a.address,
                    "steps": [s.to_json() for s in a.steps],
                }
                for a in self.per_family
            ],
        }


@dataclass(frozen=True, slots=True)
class Observations:
    """What the caller observed outside the topology: in the namespaces (DST's sockets, SRC's
    resolver) and in the kernel (how the applied policy stands); None: not looked at."""

    listening: Sequence[Listener] | None = None  # the sockets DST listens on (or has bound)
    # name → addresses SRC's resolver gave (an empty list: NXDOMAIN or no answer)
    resolved: Mapping[str, Sequence[str]] | None = None
    policy_note: str = ""  # how the policy stands in the kernel ("no policy applied", ...)
    # non-empty: why the kernel's table may differ from the model (it is not in sync)
    policy_stale: str = ""
    extra: Mapping[str, str] = field(default_factory=dict)
    # The name SRC uses for DST (its container name, an alias, a service): the address it
    # resolves to from SRC (`resolved`) is where the connection goes.
    target: str = ""
    # Docker writes IPv6 rules too (daemon `ip6tables: true`): it isolates IPv6 as IPv4.
    docker_ip6tables: bool = False


def parse_port(text: str) -> PortRange | str:
    """`8080/tcp`, `53/udp`, `8080` (TCP): one port. A range or a bare protocol is refused:
    a probe needs one port."""
    p = parse_port_range(text)
    if isinstance(p, str):
        return p
    if p.first is None or p.first != p.last:
        return f"{text!r}: one port, such as 8080/tcp"
    return p


def _protocol(port: PortRange | None) -> tuple[str, int | None]:
    return ("icmp", None) if port is None else (port.protocol, port.first)


def _icc_off(n: Network) -> bool:
    return n.driver == "bridge" and str(n.options.get(ICC_OPTION, "true")).lower() == "false"


def _ip(a: Attachment, family: int) -> str | None:
    return a.ipv6 if family == 6 else a.ipv4


def _same_ip(a: str, b: str) -> bool:
    try:
        return ipaddress.ip_address(a) == ipaddress.ip_address(b)
    except ValueError:
        return a == b


def shared_networks(
    topo: Topology, src: Container, dst: Container
) -> list[tuple[Network, Attachment, Attachment]]:
    """Networks both are attached to, in DST's order, with both attachments (addresses); a
    swarm's ingress network last (every task of a service with published ports is on it,
    but it is the routing mesh's: tasks talk over their own overlay)."""
    out: list[tuple[Network, Attachment, Attachment]] = []
    mine = {n.id: a for n, a in topo.attached_networks(src)}
    for n, da in topo.attached_networks(dst):
        sa = mine.get(n.id)
        if sa is not None and n.name not in ("host", "none"):
            out.append((n, sa, da))
    out.sort(key=lambda x: x[0].ingress)  # stable: DST's order otherwise
    return out


def _side_families(topo: Topology, name: str) -> set[int]:
    if name == HOST:
        return {4, 6}
    c = topo.container(name)
    owner = None if c is None else namespace_owner(topo, c)
    if owner is None:
        return {4}
    if owner.network_mode == "host":
        return {4, 6}
    return {f for a in owner.attachments for f in (4, 6) if _ip(a, f)}


def _namespace_key(topo: Topology, name: str) -> str | None:
    """Which network namespace `name` lives in: an owner's id, HOST, or None (unknown)."""
    if name == HOST:
        return HOST
    c = topo.container(name)
    owner = None if c is None else namespace_owner(topo, c)
    if owner is None:
        return None
    return HOST if owner.network_mode == "host" else owner.id


def families_of(topo: Topology, src_name: str, dst_name: str) -> tuple[int, ...]:
    """The IP versions both ends have (the host has both): IPv4 alone when they share none
    (the analysis then says why), and in one namespace, where loopback is the one path."""
    here = _namespace_key(topo, src_name)
    if here is not None and here == _namespace_key(topo, dst_name):
        return (4,)
    both = _side_families(topo, src_name) & _side_families(topo, dst_name)
    return tuple(sorted(both)) or (4,)


def analyze(
    topo: Topology,
    policy: Any,
    src_name: str,
    dst_name: str,
    port: PortRange | None = None,
    observed: Observations | None = None,
    *,
    with_dns: bool = True,
    family: int | None = None,
    ruleset: Any = None,
) -> Analysis:
    """The steps for SRC → DST (`policy`: a `Policy`, or None when none is applied). `family`
    None: each family both ends have, the worse verdict; 4 or 6: that one alone. `ruleset`:
    the policy compiled over `topo` (compiled here when an IPv6 verdict needs it)."""
    observed = observed or Observations()
    if family is None:
        fams = families_of(topo, src_name, dst_name)
        if len(fams) == 1:
            return _analyze(
                topo, policy, src_name, dst_name, port, observed, with_dns, fams[0], ruleset
            )
        if ruleset is None and policy is not None:
            ruleset = _compile(policy, topo)
        each = tuple(
            _analyze(topo, policy, src_name, dst_name, port, observed, with_dns, f, ruleset)
            for f in fams
        )
        return _combined(each)
    return _analyze(topo, policy, src_name, dst_name, port, observed, with_dns, family, ruleset)


def _compile(policy: Any, topo: Topology) -> Any:
    from dockmesh.policy.compile import compile_policy

    return compile_policy(policy, topo)


def _combined(each: tuple[Analysis, ...]) -> Analysis:
    """One analysis per family → one: the first family's steps and address, a step per other
    family with its verdict, and the worse verdict."""
    first = each[0]
    steps = list(first.steps)
    for a in each[1:]:
        steps.append(Step(f"ipv{a.family}", a.reachable, a.summary))
    ok = all(a.reachable for a in each)
    summary = "; ".join(f"IPv{a.family}: {a.summary}" for a in each)
    return Analysis(
        first.src,
        first.dst,
        first.port,
        ok,
        tuple(steps),
        summary,
        network=first.network,
        address=first.address,
        names=first.names,
        family=first.family,
        families=each,
    )


def _analyze(
    topo: Topology,
    policy: Any,
    src_name: str,
    dst_name: str,
    port: PortRange | None,
    observed: Observations,
    with_dns: bool,
    family: int,
    ruleset: Any,
) -> Analysis:
    if src_name == HOST:
        dst = topo.container(dst_name)
        owner = None if dst is None else namespace_owner(topo, dst)
        if dst is not None and owner is not None and owner.running and owner.network_mode == "host":
            return _same_namespace(topo, None, dst, port, observed, family)
        if dst is not None and owner is not None and owner is not dst and dst.running:
            # In another container's namespace: the host reaches it at that one's addresses.
            inner = _from_host(topo, owner.id, port, observed, family=family)
            note = f"{dst.name} lives in {owner.name}'s network namespace: its addresses"
            return replace(inner, dst=dst.name, summary=f"{note}; {inner.summary}")
        return _from_host(topo, dst_name, port, observed, family=family)
    steps: list[Step] = []
    src, dst = topo.container(src_name), topo.container(dst_name)

    def done(ok: bool, summary: str, **kw: Any) -> Analysis:
        return Analysis(src_name, dst_name, port, ok, tuple(steps), summary, family=family, **kw)

    if src is None or dst is None:
        missing = src_name if src is None else dst_name
        steps.append(Step("running", False, f"no container named {missing}"))
        return done(False, f"{missing} does not exist")
    not_running = [c.name for c in (src, dst) if not c.running]
    if not_running:
        what = " and ".join(not_running)
        steps.append(Step("running", False, f"{what} is not running (state {_states(src, dst)})"))
        return done(False, f"{src.name} cannot reach {dst.name}: {what} is not running")
    src_ns, dst_ns = namespace_owner(topo, src), namespace_owner(topo, dst)
    broken = _owner_problem(src, src_ns) or _owner_problem(dst, dst_ns)
    if broken:
        steps.append(Step("running", False, broken))
        return done(False, broken)
    assert src_ns is not None and dst_ns is not None
    if src.id == dst.id:
        return _self(src, port, observed, family)
    host_pair = src_ns.network_mode == "host" and dst_ns.network_mode == "host"
    if src_ns.id == dst_ns.id or host_pair:
        return _same_namespace(topo, src, dst, port, observed, family)
    if src_ns is not src or dst_ns is not dst:
        return _joined(
            topo, policy, (src, src_ns), (dst, dst_ns), port, observed, with_dns, family, ruleset
        )
    if src.network_mode == "host":
        return _from_host(topo, dst_name, port, observed, src, family)
    if dst.network_mode == "host":
        return _to_host(topo, src, dst, port, observed, family)
    steps.append(Step("running", True, f"both run ({src.name}, {dst.name})"))

    six = family == 6
    shared = [
        (n, sa, da)
        for n, sa, da in shared_networks(topo, src, dst)
        if _ip(da, family) and (_ip(sa, family) or not six)
    ]
    by_name = _by_name(topo, dst, shared, observed, family)
    if by_name is not None:
        chosen_nets, said = by_name
        if chosen_nets:
            shared = chosen_nets
    else:
        said = ""
    if not shared:
        routed = _routed6(topo, src, dst) if six and not observed.docker_ip6tables else None
        if routed is None:
            detail = (
                f"no network in common: {src.name} is on {_nets(src)}; {dst.name} is on "
                f"{_nets(dst)} (Docker isolates networks from each other)"
            )
            if six and not observed.docker_ip6tables:
                detail = (
                    f"no network in common over IPv6 and no IPv6 route between them: "
                    f"{src.name} is on {_nets(src)}; {dst.name} is on {_nets(dst)} (each needs "
                    "an IPv6 network that is not internal, for its default route)"
                )
            steps.append(Step("shared_network", False, detail))
            if with_dns:
                steps.append(_dns_step(topo, src, dst, [], observed))
            return done(False, f"{src.name} cannot reach {dst.name}: they share no network")
        return _routed_analysis(src, dst, routed, policy, ruleset, port, observed, steps, done)
    names = ", ".join(n.name for n, _, _ in shared)
    steps.append(Step("shared_network", True, f"both are on {names}" + said))

    proto, number = _protocol(port)
    # The connection travels on the first shared network that lets it through (else the
    # first): what a client that picks any of DST's addresses finds at best. A name SRC
    # resolves narrowed `shared` to the network its answer is on.
    verdicts = []
    for n, sa, da in shared:
        icc_drops = _icc_off(n) and (not six or observed.docker_ip6tables)
        br = bridge_name(n)
        d = _policy_verdict(policy, ruleset, src, dst, n, sa, da, family, proto, number, (br, br))
        verdicts.append((not icc_drops and d[0], n, sa, da, d))
    chosen = next((v for v in verdicts if v[0]), verdicts[0])
    _, net, _sa, da, (allowed, pol_text) = chosen
    address = _ip(da, family) or da.ipv4 or da.ipv6
    if net.internal:
        steps.append(
            Step(
                "internal",
                True,
                f"{net.name} is internal: its containers reach each other, "
                "nothing outside the machine",
            )
        )
    else:
        steps.append(Step("internal", True, f"{net.name} is not internal"))
    if _icc_off(net) and (not six or observed.docker_ip6tables):
        steps.append(
            Step(
                "icc",
                False,
                f"enable_icc=false on {net.name}: Docker drops traffic between its containers",
            )
        )
    elif _icc_off(net):
        steps.append(
            Step(
                "icc",
                True,
                f"enable_icc=false on {net.name} drops IPv4 only: Docker (20.10) writes no "
                "ip6tables rules, so IPv6 between its containers is not dropped by Docker",
            )
        )
    else:
        steps.append(Step("icc", True, f"containers on {net.name} may talk to each other (icc)"))
    what = port.text() if port else "ping (ICMP)"
    pol_detail = pol_text + f" ({what} on {net.name}" + (", IPv6" if six else "")
    pol_detail += _overlay_where(net, src, dst, policy) + ")"
    pol_detail = _policy_notes(pol_detail, policy, observed)
    steps.append(Step("policy", allowed, pol_detail))
    dns_names: tuple[str, ...] = ()
    if with_dns:
        dns = _dns_step(topo, src, dst, shared, observed)
        steps.append(dns)
        dns_names = _names(topo, dst, shared)
    listen = _listening_step(dst, address, port, observed)
    if listen is not None:
        steps.append(listen)
    ok, summary = _verdict(src, f"{dst.name} ({address} on {net.name})", port, steps)
    return done(ok, summary, network=net.name, address=address, names=dns_names)


def _overlay_where(net: Network, src: Container, dst: Container, policy: Any) -> str:
    """Where an overlay's policy judges the packet: the overlay's own namespace on each
    host the packet passes (the source's, and the destination's when it is another)."""
    if policy is None or net.driver != "overlay":
        return ""
    hosts = src.engine if src.engine == dst.engine else f"{src.engine} and {dst.engine}"
    return f"; judged in {net.name}'s namespace on {hosts}"


def _policy_notes(detail: str, policy: Any, observed: Observations) -> str:
    if observed.policy_note and policy is None and observed.policy_stale:
        return f"{observed.policy_note}; but {observed.policy_stale}: the kernel decides"
    if observed.policy_note and policy is None:
        return observed.policy_note + ": Docker's rules only"
    if observed.policy_stale:
        return detail + f"; but {observed.policy_stale}: the kernel may decide otherwise"
    return detail


def _verdict(
    src: Container, target: str, port: PortRange | None, steps: list[Step]
) -> tuple[bool, str]:
    """Whether every step a packet meets passes, and the summary that says so (or the
    first one that fails)."""
    packet = [s for s in steps if s.check in PACKET_CHECKS]
    ok = all(s.ok for s in packet)
    if ok:
        return ok, f"{src.name} can reach {target}" + (f" on {port.text()}" if port else "")
    first = next(s for s in packet if not s.ok)
    return ok, f"{src.name} cannot reach {target}: {first.detail}"


def _policy_verdict(
    policy: Any,
    ruleset: Any,
    src: Container,
    dst: Container,
    net: Network | None,
    sa: Attachment | None,
    da: Attachment,
    family: int,
    proto: str,
    number: int | None,
    bridges: tuple[str | None, str | None] = (None, None),
) -> tuple[bool, str]:
    """(allowed, why) from the applied policy. IPv4 on one network: the policy's model
    (`decide`). IPv6, and traffic routed between networks: what the compiled table does
    with the packet (`evaluate`), which is also where Docker's missing IPv6 isolation shows
    or is made up for."""
    if policy is None:
        return True, "no policy is applied (Docker's rules only)"
    if family == 4 and net is not None:
        d = decide(policy, src, dst, net.name, proto, number)
        return d.allowed, d.text(policy)
    saddr, daddr = (None if sa is None else _ip(sa, family)), _ip(da, family)
    if ruleset is None or saddr is None or daddr is None:
        d = decide(policy, src, dst, net.name if net else "", proto, number)
        return d.allowed, d.text(policy)
    from dockmesh.policy.evaluate import Packet, evaluate

    iif, oif = bridges
    outcome = evaluate(ruleset, Packet(saddr, daddr, proto, number, iif=iif, oif=oif))
    allowed = outcome.verdict == "accept"
    return allowed, _outcome_text(policy, outcome, allowed)


def _outcome_text(policy: Any, outcome: Any, allowed: bool) -> str:
    audited = bool(getattr(outcome, "audited", False))
    verb = "would drop" if audited else "allows" if allowed else "drops"
    rule = outcome.rule
    if rule is None:
        return "no rule of the policy's table matches it (its chain accepts)"
    kind, value = getattr(rule, "origin", ("base", ""))
    audit = " (audit mode: logged, not dropped)" if audited else ""
    index = getattr(outcome, "policy_rule", None)
    if kind == "rule" and isinstance(value, int):
        index = value
    if index is not None and index < len(policy.rules):
        return f"rule {index + 1} {verb} it: {policy.rules[index].text()}" + audit
    if kind == "docker":
        return f"the policy's table {verb} it: Docker's isolation, for IPv6 ({value})" + audit
    if kind == "network":
        return f"no rule allows it; network {value}'s default {verb} it" + audit
    if kind == "default":
        return f"no rule allows it; the policy's default {verb} it" + audit
    return f"the policy's table {verb} it ({rule.comment or 'a rule of its own'})" + audit


@dataclass(frozen=True, slots=True)
class _Route6:
    """IPv6 between two networks, routed by the host: SRC leaves on its default route's
    network, DST's address is on `dst_net`, DST answers through its own default route."""

    src_net: Network
    src_att: Attachment
    dst_net: Network
    dst_att: Attachment


def _routed6(topo: Topology, src: Container, dst: Container) -> _Route6 | None:
    """The path Docker leaves open for IPv6 between networks (no ip6tables rules): SRC and
    DST each need an IPv6 bridge network that is not internal (Docker gives a default route
    only there), and DST an IPv6 address on a bridge (the host has a route to it)."""

    def outward(c: Container) -> tuple[Network, Attachment] | None:
        return next(
            (
                (n, a)
                for n, a in topo.attached_networks(c)
                if n.driver == "bridge" and not n.internal and a.ipv6 and n.gateway(6)
            ),
            None,
        )

    s_out, d_out = outward(src), outward(dst)
    if s_out is None or d_out is None:
        return None
    d_net, d_att = next(
        ((n, a) for n, a in topo.attached_networks(dst) if n.driver == "bridge" and a.ipv6),
        d_out,
    )
    return _Route6(s_out[0], s_out[1], d_net, d_att)


def _routed_analysis(
    src: Container,
    dst: Container,
    route: _Route6,
    policy: Any,
    ruleset: Any,
    port: PortRange | None,
    observed: Observations,
    steps: list[Step],
    done: Any,
) -> Analysis:
    address = route.dst_att.ipv6
    steps.append(
        Step(
            "shared_network",
            True,
            f"no network in common over IPv6, but Docker (20.10) writes no ip6tables rules, "
            f"so it does not isolate IPv6 between networks: the host routes {src.name}'s "
            f"packets (via {route.src_net.gateway(6)} on {route.src_net.name}) to {address} "
            f"on {route.dst_net.name}",
        )
    )
    steps.append(
        Step(
            "internal",
            True,
            f"{route.dst_net.name} is internal, which Docker enforces for IPv4 only"
            if route.dst_net.internal
            else f"{route.dst_net.name} is not internal",
        )
    )
    proto, number = _protocol(port)
    bridges = (bridge_name(route.src_net), bridge_name(route.dst_net))
    allowed, text = _policy_verdict(
        policy, ruleset, src, dst, None, route.src_att, route.dst_att, 6, proto, number, bridges
    )
    what = port.text() if port else "ping (ICMP)"
    detail = _policy_notes(
        f"{text} ({what}, IPv6 from {route.src_net.name} to {route.dst_net.name})",
        policy,
        observed,
    )
    steps.append(Step("policy", allowed, detail))
    listen = _listening_step(dst, address, port, observed)
    if listen is not None:
        steps.append(listen)
    target = f"{dst.name} ({address} on {route.dst_net.name}, routed)"
    ok, summary = _verdict(src, target, port, steps)
    result: Analysis = done(ok, summary, network=route.dst_net.name, address=address)
    return result


def _by_name(
    topo: Topology,
    dst: Container,
    shared: list[tuple[Network, Attachment, Attachment]],
    observed: Observations,
    family: int,
) -> tuple[list[tuple[Network, Attachment, Attachment]], str] | None:
    """The shared networks on which DST has the address its name resolved to from SRC, and
    words for the shared_network step; None when SRC's resolver was not asked."""
    name = observed.target
    if not name or observed.resolved is None or name not in observed.resolved:
        return None
    answers = [a for a in observed.resolved[name] if (":" in a) == (family == 6)]
    kind = "AAAA" if family == 6 else "A"
    if not answers:
        if not shared:
            return [], ""
        return [], (
            f"; {name} has no {kind} answer from the source's resolver: "
            "analysed at its address on the first shared network"
        )
    hits = [
        (n, sa, da)
        for n, sa, da in shared
        if any(_same_ip(_ip(da, family) or "", a) for a in answers)
    ]
    if hits:
        n, _, da = hits[0]
        return hits[:1], (
            f"; {name} resolves from the source to {_ip(da, family)} (on {n.name}): "
            "the connection by name goes there"
        )
    return [], (
        f"; {name} resolves from the source to {', '.join(answers)}, none of them "
        f"{dst.name}'s address on a shared network"
    )


JOINED_PREFIX = "container:"


def namespace_owner(topo: Topology, c: Container) -> Container | None:
    """The container whose network namespace `c` lives in: itself, or for `network_mode
    container:X` (`docker run --network container:X`), X (followed while X joined another);
    None when that container is not in the topology."""
    seen = {c.id}
    while c.network_mode.startswith(JOINED_PREFIX):
        owner = topo.container(c.network_mode[len(JOINED_PREFIX) :])
        if owner is None or owner.id in seen:
            return None
        seen.add(owner.id)
        c = owner
    return c


def _owner_problem(c: Container, owner: Container | None) -> str:
    """Why `c`'s namespace cannot carry anything ('' when it can)."""
    if owner is c:
        return ""
    ref = c.network_mode[len(JOINED_PREFIX) :]
    if owner is None:
        return f"{c.name} uses network_mode container:{ref[:12]}, which does not exist"
    if not owner.running:
        return (
            f"{c.name} lives in {owner.name}'s network namespace, and {owner.name} "
            f"is not running (state {owner.state})"
        )
    return ""


def _self(c: Container, port: PortRange | None, observed: Observations, family: int) -> Analysis:
    steps = [Step("running", True, f"{c.name} runs")]
    address = next((_ip(a, family) for a in c.attachments if _ip(a, family)), None)
    address = address or next((a.ipv4 or a.ipv6 for a in c.attachments if a.ipv4 or a.ipv6), None)
    steps.append(
        Step(
            "self",
            True,
            f"{c.name} is both ends: traffic to itself stays in its own namespace and "
            "never crosses the forward hook (no network, icc or policy decides it)",
        )
    )
    listen = _listening_step(c, address, port, observed)
    if listen is not None:
        steps.append(listen)
    ok = all(s.ok for s in steps)
    why_not = next((st.detail for st in steps if not st.ok), "")
    summary = f"{c.name} can reach itself" if ok else f"{c.name} cannot: {why_not}"
    return Analysis(c.name, c.name, port, ok, tuple(steps), summary, address=address, family=family)


def _same_namespace(
    topo: Topology,
    src: Container | None,
    dst: Container,
    port: PortRange | None,
    observed: Observations,
    family: int,
) -> Analysis:
    """SRC and DST in one network namespace (`--network container:X` either way, or both on
    the host's network; `src` None: the host): the connection goes over loopback, in that
    namespace, through no forward hook at all."""
    src_name = HOST if src is None else src.name
    owner = namespace_owner(topo, dst) or dst
    if owner.network_mode == "host":
        where = "the host's network namespace (network_mode host)"
    else:
        where = f"{owner.name}'s network namespace"
    how = []
    for c in (src, dst):
        if c is None:
            continue
        if c.network_mode.startswith(JOINED_PREFIX):
            how.append(f"{c.name} joined it with --network container:")
        elif c.network_mode == "host":
            how.append(f"{c.name} uses network_mode host")
    address = LOOPBACK[family]
    if port is not None and observed.listening is not None:
        # Over loopback a client takes whichever family the server listens on.
        on = [x for x in observed.listening if x.proto == port.protocol and x.port == port.first]
        if on and all(":" in x.address for x in on):
            address = LOOPBACK[6]
        elif on and all(":" not in x.address for x in on):
            address = LOOPBACK[4]
    steps = [
        Step("running", True, f"both run ({src_name}, {dst.name})"),
        Step(
            "shared_namespace",
            True,
            f"{src_name} and {dst.name} share one network namespace, {where}"
            + (f" ({'; '.join(how)})" if how else "")
            + f": the connection stays inside it over loopback ({address}); no network, "
            "icc or policy decides it (no forward hook)",
        ),
    ]
    listen = _listening_step(dst, address, port, observed)
    if listen is not None:
        steps.append(listen)
    ok = all(s.ok for s in steps)
    if ok:
        summary = (
            f"{src_name} can reach {dst.name} over loopback ({address}): one network namespace"
        )
    else:
        summary = f"{src_name} cannot reach {dst.name}: " + next(
            s.detail for s in steps if not s.ok
        )
    return Analysis(
        src_name, dst.name, port, ok, tuple(steps), summary, address=address, family=family
    )


def _joined(
    topo: Topology,
    policy: Any,
    src: tuple[Container, Container],
    dst: tuple[Container, Container],
    port: PortRange | None,
    observed: Observations,
    with_dns: bool,
    family: int,
    ruleset: Any,
) -> Analysis:
    """SRC or DST lives in another container's network namespace: it has no address or
    network of its own, its packets are that container's (the kernel, the policy's sets and
    Docker's DNS all see the owner), so the analysis is the owners'."""
    (s, s_ns), (d, d_ns) = src, dst
    notes = [
        f"{c.name} lives in {owner.name}'s network namespace (network_mode container:): "
        f"its traffic is {owner.name}'s"
        for c, owner in (src, dst)
        if owner is not c
    ]
    inner = _analyze(topo, policy, s_ns.id, d_ns.id, port, observed, with_dns, family, ruleset)
    note = "; ".join(notes)
    steps = list(inner.steps)
    if steps and steps[0].check == "running" and steps[0].ok:
        steps[0] = Step("running", True, f"both run ({s.name}, {d.name}); {note}")
    else:
        steps.insert(0, Step("running", True, f"both run ({s.name}, {d.name}); {note}"))
    return Analysis(
        s.name,
        d.name,
        port,
        inner.reachable,
        tuple(steps),
        f"{note}: {inner.summary}",
        network=inner.network,
        address=inner.address,
        names=inner.names,
        family=family,
    )


def _states(*cs: Container) -> str:
    return ", ".join(f"{c.name}: {c.state}" for c in cs)


def _nets(c: Container) -> str:
    return ", ".join(a.network for a in c.attachments) or "no network"


def _names(
    topo: Topology, dst: Container, shared: Sequence[tuple[Network, Attachment, Attachment]]
) -> tuple[str, ...]:
    out: list[str] = []
    for n, _, _ in shared:
        if n.name in NO_DNS_NETWORKS:
            continue
        for ep in topo.endpoints_of(n):
            if ep.container_id == dst.id:
                out += [x for x in ep.dns_names if x not in out]
    return tuple(out)


def _dns_step(
    topo: Topology,
    src: Container,
    dst: Container,
    shared: Sequence[tuple[Network, Attachment, Attachment]],
    observed: Observations,
) -> Step:
    if not shared:
        return Step(
            "dns",
            False,
            f"{dst.name}'s names do not resolve from {src.name}: Docker's "
            "DNS answers only for containers on a network both are on",
        )
    user = [(n, sa, da) for n, sa, da in shared if n.name not in NO_DNS_NETWORKS]
    if not user:
        return Step(
            "dns",
            False,
            f"the default bridge network has no DNS for container names: "
            f"use {dst.name}'s address, or put both on a user-defined network",
        )
    parts: list[str] = []
    notes: list[str] = []
    for n, _, da in user:
        eps = topo.endpoints_of(n)
        mine = next((e for e in eps if e.container_id == dst.id), None)
        if mine is None:
            continue
        shown = [x for x in mine.dns_names if x != dst.id[:12]]
        parts.append(f"{', '.join(shown)} → {da.ipv4 or da.ipv6} on {n.name}")
        for alias in mine.aliases:
            others = [e for e in eps if e.container_id != dst.id and alias in e.dns_names]
            if not others:
                continue
            projects = {_project(topo, e.container) for e in [mine, *others]}
            who = ", ".join(e.container for e in others)
            if len(projects) > 1:
                notes.append(
                    f"alias {alias!r} on {n.name} also names {who} of another project: "
                    "answers mix both projects' containers"
                )
            else:
                notes.append(f"alias {alias!r} also names {who} (answers rotate among them)")
    ok = bool(parts)
    detail = "Docker's DNS answers " + "; ".join(parts) if parts else "no name resolves"
    if observed.resolved is not None:
        got = []
        for name, addrs in observed.resolved.items():
            got.append(f"{name} → {', '.join(addrs) if addrs else 'no answer'}")
            if not addrs:
                ok = False
        detail += f" (asked from {src.name}: {'; '.join(got)})"
    if notes:
        detail += "; " + "; ".join(notes)
    return Step("dns", ok, detail)


def _project(topo: Topology, name: str) -> str | None:
    c = topo.container(name)
    return None if c is None else project_of(c.labels)


def _listening_step(
    dst: Container, address: str | None, port: PortRange | None, observed: Observations
) -> Step | None:
    if port is None or port.protocol not in ("tcp", "udp") or observed.listening is None:
        return None
    number = port.first
    mine = [x for x in observed.listening if x.proto == port.protocol and x.port == number]
    if not mine:
        return Step("listening", False, f"nothing in {dst.name} listens on {port.text()}")
    # `::` takes IPv4 too (unless IPV6_V6ONLY, which /proc does not show); 0.0.0.0 no IPv6.
    six = address is not None and ":" in address
    wild = [x for x in mine if x.address == "::" or (x.address == "0.0.0.0" and not six)]
    exact = [x for x in mine if address is not None and _same_ip(x.address, address)]
    if wild or exact:
        x = (wild or exact)[0]
        return Step("listening", True, f"{dst.name} listens on {_hostport(x.address, number)}")
    where = ", ".join(_hostport(x.address, number) for x in mine)
    loop = all(x.address.startswith("127.") or x.address == "::1" for x in mine)
    hint = ": only its own container can connect; bind 0.0.0.0 (or its address)" if loop else ""
    return Step("listening", False, f"{dst.name} listens on {where} only, not on {address}{hint}")


def _hostport(address: str, port: int | None) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def _from_host(
    topo: Topology,
    dst_name: str,
    port: PortRange | None,
    observed: Observations,
    src: Container | None = None,
    family: int = 4,
) -> Analysis:
    """From the host; or from `src`, a container with network_mode host: it shares the
    host's network namespace, so it is the host as far as the network goes (the host's
    output hook, then the bridge: not forward, so the policy does not decide it)."""
    steps: list[Step] = []
    who = "the host"
    if src is not None:
        who = f"{src.name} (network_mode host)"
        if not src.running:
            detail = f"{src.name} is not running (state {src.state})"
            steps.append(Step("running", False, detail))
            return Analysis(src.name, dst_name, port, False, tuple(steps), detail, family=family)
        steps.append(
            Step(
                "host_network",
                True,
                f"{src.name} uses network_mode host: it shares the host's network namespace, "
                "so its traffic is the host's",
            )
        )
    dst = topo.container(dst_name)
    if dst is None or not dst.running:
        detail = f"no container named {dst_name}" if dst is None else f"{dst.name} is not running"
        steps.append(Step("running", False, detail))
        return Analysis(HOST, dst_name, port, False, tuple(steps), detail, family=family)
    steps.append(Step("running", True, f"{dst.name} runs"))
    bridges = [
        (n, a) for n, a in topo.attached_networks(dst) if n.driver == "bridge" and _ip(a, family)
    ]
    if bridges:
        n, a = bridges[0]
        steps.append(
            Step(
                "shared_network",
                True,
                f"the host reaches {_ip(a, family)} on {n.name} "
                "directly (its bridge); the policy does not decide host traffic",
            )
        )
        address: str | None = _ip(a, family)
        network: str | None = n.name
    else:
        steps.append(
            Step("shared_network", False, f"{dst.name} is on no bridge network the host is part of")
        )
        address = network = None
    if port is not None:
        published = [
            p
            for p in dst.ports
            if p.container_port == port.first and p.protocol == port.protocol and p.host_port
        ]
        if published:
            where = ", ".join(f"{p.host_ip or '0.0.0.0'}:{p.host_port}" for p in published)
            steps.append(Step("published", True, f"{port.text()} is published on {where}"))
        else:
            steps.append(
                Step(
                    "published",
                    True,
                    f"{port.text()} is not published: from "
                    "outside the machine it is unreachable; the host reaches it on "
                    "the container's address",
                )
            )
    listen = _listening_step(dst, address, port, observed)
    if listen is not None:
        steps.append(listen)
    ok = all(s.ok for s in steps)
    if ok:
        summary = f"{who} can reach {dst.name} ({address})"
    else:
        summary = f"{who} cannot reach {dst.name}: " + next(s.detail for s in steps if not s.ok)
    name = src.name if src is not None else HOST
    return Analysis(
        name, dst_name, port, ok, tuple(steps), summary, network, address, family=family
    )


def _to_host(
    topo: Topology,
    src: Container,
    dst: Container,
    port: PortRange | None,
    observed: Observations,
    family: int,
) -> Analysis:
    """To `dst`, a container with network_mode host: its sockets are the host's, so SRC
    reaches it at a host address, its gateway on the bridge it is on. Such a packet is for
    the host itself: the host's input hook (and output for the answer), never forward, so
    neither Docker's isolation nor icc nor the policy decide it (the host's own firewall may)."""
    steps = [Step("running", True, f"both run ({src.name}, {dst.name})")]
    via = next(
        (
            (n, n.gateway(family))
            for n, a in topo.attached_networks(src)
            if n.driver == "bridge" and _ip(a, family) and n.gateway(family)
        ),
        None,
    )
    if via is None:
        detail = (
            f"{dst.name} uses network_mode host (its sockets are the host's), and {src.name} "
            f"is on no bridge network with an IPv{family} gateway, the host's address it "
            "could reach"
        )
        steps.append(Step("host_network", False, detail))
        return Analysis(
            src.name, dst.name, port, False, tuple(steps), f"{src.name} cannot reach "
            f"{dst.name}: {detail}", family=family
        )  # fmt: skip
    net, address = via
    steps.append(
        Step(
            "host_network",
            True,
            f"{dst.name} uses network_mode host: its sockets are the host's, which "
            f"{src.name} reaches at {address} (the gateway of {net.name}, the host's address "
            "on that bridge); the packet is for the host itself: its input hook, not "
            "forward, so Docker's network rules, icc and the policy do not decide it (the "
            "host's own firewall may)",
        )
    )
    listen = _listening_step(dst, address, port, observed)
    if listen is not None:
        steps.append(listen)
    ok = all(s.ok for s in steps)
    target = f"{dst.name} (the host, at {address} on {net.name})"
    if ok:
        summary = f"{src.name} can reach {target}" + (f" on {port.text()}" if port else "")
    else:
        summary = f"{src.name} cannot reach {target}: " + next(s.detail for s in steps if not s.ok)
    return Analysis(
        src.name, dst.name, port, ok, tuple(steps), summary, net.name, address, family=family
    )


# --- what a command line's SRC and DST name ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class Named:
    """A command line's SRC or DST: the argument, what it named (`host`, `container`, `alias`
    — a network alias Docker's DNS answers for —, `service` — a catalog, dockmesh or Compose
    service —, or `unknown`) and the containers it stands for."""

    argument: str
    kind: str
    containers: tuple[Container, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "argument": self.argument,
            "kind": self.kind,
            "containers": [c.name for c in self.containers],
        }


def resolve_name(topo: Topology, name: str, near: Container | None = None) -> Named:
    """What `name` stands for: `host`; a container (name or id); else the containers that
    carry it as a network alias or as their service's name (running ones, when any run),
    in name order; `unknown` when nothing does. `near`: the container that would ask for
    the name — an alias is a name on a network, so only the containers that carry it on a
    network `near` is on answer for it (all of them when none does)."""
    from dockmesh.model.labels import SERVICE_LABELS

    if name == HOST:
        return Named(name, HOST)
    c = topo.container(name)
    if c is not None:
        return Named(name, "container", (c,))
    aliased = [c for c in topo.containers if any(name in a.aliases for a in c.attachments)]
    if near is not None:
        mine = {a.network_id for a in near.attachments}
        local = [
            c
            for c in aliased
            if any(name in a.aliases and a.network_id in mine for a in c.attachments)
        ]
        aliased = local or aliased
    served = [c for c in topo.containers if any(c.labels.get(k) == name for k in SERVICE_LABELS)]
    found = {c.id: c for c in [*aliased, *served]}
    if not found:
        return Named(name, "unknown")
    running = [c for c in found.values() if c.running]
    chosen = sorted(running or found.values(), key=lambda c: c.name)
    return Named(name, "alias" if aliased else "service", tuple(chosen))


def holders_of(topo: Topology, addresses: Sequence[str]) -> tuple[Container, ...]:
    """The containers that hold any of `addresses` (what a name resolved to), in name order."""
    found: dict[str, Container] = {}
    for address in addresses:
        try:
            address = str(ipaddress.ip_address(address))
        except ValueError:
            continue
        for c, _ in topo.attachments_at(address):
            found[c.id] = c
    return tuple(sorted(found.values(), key=lambda c: c.name))
