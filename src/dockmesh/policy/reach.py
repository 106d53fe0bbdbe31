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

`reachable` is the packet's verdict (steps 1 to 5, and 7); a name that does not resolve is a
finding of its own, not a reason the address is unreachable.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from dockmesh.codecs.procnet import Listener
from dockmesh.model.labels import project_of
from dockmesh.model.policy import PortRange, parse_port_range
from dockmesh.model.topology import NO_DNS_NETWORKS, Attachment, Container, Network, Topology
from dockmesh.policy.decide import decide

HOST = "host"
ICC_OPTION = "com.docker.network.bridge.enable_icc"


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


def shared_networks(
    topo: Topology, src: Container, dst: Container
) -> list[tuple[Network, Attachment, Attachment]]:
    """Networks both are attached to, in DST's order, with both attachments (addresses)."""
    out: list[tuple[Network, Attachment, Attachment]] = []
    mine = {n.id: a for n, a in topo.attached_networks(src)}
    for n, da in topo.attached_networks(dst):
        sa = mine.get(n.id)
        if sa is not None and n.name not in ("host", "none"):
            out.append((n, sa, da))
    return out


def analyze(
    topo: Topology,
    policy: Any,
    src_name: str,
    dst_name: str,
    port: PortRange | None = None,
    observed: Observations | None = None,
    *,
    with_dns: bool = True,
) -> Analysis:
    """The steps for SRC → DST (`policy`: a `Policy`, or None when none is applied)."""
    observed = observed or Observations()
    if src_name == HOST:
        return _from_host(topo, dst_name, port, observed)
    steps: list[Step] = []
    src, dst = topo.container(src_name), topo.container(dst_name)

    def done(ok: bool, summary: str, **kw: Any) -> Analysis:
        return Analysis(src_name, dst_name, port, ok, tuple(steps), summary, **kw)

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
    if src_ns is not src or dst_ns is not dst:
        return _joined(topo, policy, (src, src_ns), (dst, dst_ns), port, observed, with_dns)
    if src.network_mode == "host":
        return _from_host(topo, dst_name, port, observed, src)
    if src.id == dst.id:
        steps.append(Step("running", True, f"{src.name} runs"))
        address = next((a.ipv4 or a.ipv6 for a in dst.attachments if a.ipv4 or a.ipv6), None)
        steps.append(
            Step(
                "self",
                True,
                f"{src.name} is both ends: traffic to itself stays in its own namespace and "
                "never crosses the forward hook (no network, icc or policy decides it)",
            )
        )
        listen = _listening_step(dst, address, port, observed)
        if listen is not None:
            steps.append(listen)
        ok = all(s.ok for s in steps)
        why_not = next((st.detail for st in steps if not st.ok), "")
        summary = f"{src.name} can reach itself" if ok else f"{src.name} cannot: {why_not}"
        return done(ok, summary, address=address)
    steps.append(Step("running", True, f"both run ({src.name}, {dst.name})"))

    shared = [(n, sa, da) for n, sa, da in shared_networks(topo, src, dst) if da.ipv4 or da.ipv6]
    if not shared:
        detail = (
            f"no network in common: {src.name} is on {_nets(src)}; {dst.name} is on {_nets(dst)}"
            " (Docker isolates networks from each other)"
        )
        steps.append(Step("shared_network", False, detail))
        if with_dns:
            steps.append(_dns_step(topo, src, dst, [], observed))
        return done(False, f"{src.name} cannot reach {dst.name}: they share no network")
    names = ", ".join(n.name for n, _, _ in shared)
    steps.append(Step("shared_network", True, f"both are on {names}"))

    proto, number = _protocol(port)
    # The connection travels on the first shared network that lets it through (else the
    # first): what a client that picks any of DST's addresses finds at best.
    verdicts = []
    for n, sa, da in shared:
        d = decide(policy, src, dst, n.name, proto, number)
        verdicts.append((not _icc_off(n) and d.allowed, n, sa, da, d))
    chosen = next((v for v in verdicts if v[0]), verdicts[0])
    _, net, _sa, da, decision = chosen
    address = da.ipv4 or da.ipv6
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
    if _icc_off(net):
        steps.append(
            Step(
                "icc",
                False,
                f"enable_icc=false on {net.name}: Docker drops traffic between its containers",
            )
        )
    else:
        steps.append(Step("icc", True, f"containers on {net.name} may talk to each other (icc)"))
    what = port.text() if port else "ping (ICMP)"
    pol_detail = decision.text(policy) + f" ({what} on {net.name})"
    if observed.policy_note and policy is None and observed.policy_stale:
        pol_detail = f"{observed.policy_note}; but {observed.policy_stale}: the kernel decides"
    elif observed.policy_note and policy is None:
        pol_detail = observed.policy_note + ": Docker's rules only"
    elif observed.policy_stale:
        pol_detail += f"; but {observed.policy_stale}: the kernel may decide otherwise"
    steps.append(Step("policy", decision.allowed, pol_detail))
    dns_names: tuple[str, ...] = ()
    if with_dns:
        dns = _dns_step(topo, src, dst, shared, observed)
        steps.append(dns)
        dns_names = _names(topo, dst, shared)
    listen = _listening_step(dst, address, port, observed)
    if listen is not None:
        steps.append(listen)
    packet = [
        s for s in steps if s.check in ("running", "shared_network", "icc", "policy", "listening")
    ]
    ok = all(s.ok for s in packet)
    target = f"{dst.name} ({address} on {net.name})"
    if ok:
        summary = f"{src.name} can reach {target}" + (f" on {port.text()}" if port else "")
    else:
        first = next(s for s in packet if not s.ok)
        summary = f"{src.name} cannot reach {target}: {first.detail}"
    return done(ok, summary, network=net.name, address=address, names=dns_names)


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


def _joined(
    topo: Topology,
    policy: Any,
    src: tuple[Container, Container | None],
    dst: tuple[Container, Container | None],
    port: PortRange | None,
    observed: Observations,
    with_dns: bool,
) -> Analysis:
    """SRC or DST lives in another container's network namespace: it has no address or
    network of its own, its packets are that container's (the kernel, the policy's sets and
    Docker's DNS all see the owner), so the analysis is the owners'."""
    (s, s_ns), (d, d_ns) = src, dst
    notes: list[str] = []
    for c, owner in (src, dst):
        if owner is c:
            continue
        ref = c.network_mode[len(JOINED_PREFIX) :]
        if owner is None:
            detail = f"{c.name} uses network_mode container:{ref[:12]}, which does not exist"
            step = Step("running", False, detail)
            return Analysis(s.name, d.name, port, False, (step,), detail)
        if not owner.running:
            detail = (
                f"{c.name} lives in {owner.name}'s network namespace, and {owner.name} "
                f"is not running (state {owner.state})"
            )
            step = Step("running", False, detail)
            return Analysis(s.name, d.name, port, False, (step,), detail)
        notes.append(
            f"{c.name} lives in {owner.name}'s network namespace (network_mode container:): "
            f"its traffic is {owner.name}'s"
        )
    assert s_ns is not None and d_ns is not None
    inner = analyze(topo, policy, s_ns.id, d_ns.id, port, observed, with_dns=with_dns)
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
    wild = [x for x in mine if x.address in ("0.0.0.0", "::")]
    exact = [x for x in mine if x.address == address]
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
) -> Analysis:
    """From the host; or from `src`, a container with network_mode host: it shares the
    host's network namespace, so it is the host as far as the network goes."""
    steps: list[Step] = []
    who = "the host"
    if src is not None:
        who = f"{src.name} (network_mode host)"
        if not src.running:
            detail = f"{src.name} is not running (state {src.state})"
            steps.append(Step("running", False, detail))
            return Analysis(src.name, dst_name, port, False, tuple(steps), detail)
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
        return Analysis(HOST, dst_name, port, False, tuple(steps), detail)
    steps.append(Step("running", True, f"{dst.name} runs"))
    bridges = [(n, a) for n, a in topo.attached_networks(dst) if n.driver == "bridge" and a.ipv4]
    if bridges:
        n, a = bridges[0]
        steps.append(
            Step(
                "shared_network",
                True,
                f"the host reaches {a.ipv4} on {n.name} "
                "directly (its bridge); the policy does not decide host traffic",
            )
        )
        address: str | None = a.ipv4
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
    return Analysis(name, dst_name, port, ok, tuple(steps), summary, network, address)
