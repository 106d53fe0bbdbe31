"""The doctor's decisions (pure): what to check for a container, and the findings over what
was gathered.

`plan_checks` reads the topology only: the container's networks (with the gateway and the MTU
each should have), its peers, the names Docker's DNS should answer and what each should
resolve to. The gatherer (`diagnose.doctor`) fills `Evidence` from the host — the namespace's
links, routes, listening sockets, resolv.conf, DNS answers, echo replies — and `findings`
turns them into findings, each with a severity and a fix. Nothing here does I/O.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

from dockmesh.catalog.containers import collision_of
from dockmesh.codecs.procnet import Listener, Route
from dockmesh.codecs.resolvconf import ResolvConf
from dockmesh.model.catalog import Collision
from dockmesh.model.labels import (
    COMPOSE_SERVICE,
    LABEL_DISCOVERY_PORT,
    LABEL_SERVICE,
    project_of,
)
from dockmesh.model.policy import Policy, selects
from dockmesh.model.topology import (
    DOCKER_DNS,
    NO_DNS_NETWORKS,
    Container,
    Network,
    Topology,
)

ERROR, WARNING, INFO = "error", "warning", "info"
MTU_OPTION = "com.docker.network.driver.mtu"


@dataclass(frozen=True, slots=True)
class Finding:
    severity: str
    code: str
    message: str
    fix: str = ""

    def to_json(self) -> dict[str, str]:
        return {
            "severity": self.severity,
            "code": self.code,
            "message": self.message,
            "fix": self.fix,
        }


@dataclass(frozen=True, slots=True)
class AttachedNetwork:
    """One of the container's networks as the topology describes it: the container's
    addresses there, the subnet, the gateway and the MTU its interface should have (what the
    gathered interfaces and routes are held against)."""

    name: str
    driver: str
    internal: bool
    ipv4: str | None
    ipv6: str | None
    mac: str | None
    subnet: str | None
    gateway: str | None
    mtu: int | None  # what the network's interfaces should have; None: unknown

    def to_json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "driver": self.driver,
            "internal": self.internal,
            "ipv4": self.ipv4,
            "ipv6": self.ipv6,
            "mac": self.mac,
            "subnet": self.subnet,
            "gateway": self.gateway,
            "mtu": self.mtu,
        }


@dataclass(frozen=True, slots=True)
class Link:
    name: str
    mac: str | None
    mtu: int
    state: str
    addresses: tuple[str, ...]  # CIDR

    def to_json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "mac": self.mac,
            "mtu": self.mtu,
            "state": self.state,
            "addresses": list(self.addresses),
        }


@dataclass(frozen=True, slots=True)
class Peer:
    name: str
    project: str | None
    shared: tuple[str, ...]  # networks both are on
    address: str | None  # its IPv4 address on the first shared network
    # Strangers only: a project file (dockmesh's or Compose's) made both, so the networks
    # each is on are the file's choice; and what the applied policy says of the two
    # ("allows": a rule lets one reach the other; "denies": its default denies; "": nothing).
    by_file: bool = False
    policy: str = ""
    network: str | None = None  # where `address` is
    # Every shared network has enable_icc=false: Docker drops IPv4 between the two.
    icc_off: bool = False

    def to_json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "project": self.project,
            "shared_networks": list(self.shared),
            "address": self.address,
            "network": self.network,
        }


@dataclass(frozen=True, slots=True)
class DnsQuestion:
    name: str
    expected: tuple[str, ...]  # IPv4 addresses Docker's DNS should answer with
    holders: tuple[tuple[str, str | None], ...]  # (container, project) that carry the name


@dataclass(frozen=True, slots=True)
class DnsAnswer:
    question: DnsQuestion
    answers: tuple[str, ...] | None  # None: no answer came
    rcode: str = ""

    def to_json(self) -> dict[str, object]:
        return {
            "name": self.question.name,
            "expected": list(self.question.expected),
            "answers": None if self.answers is None else list(self.answers),
            "rcode": self.rcode,
            "holders": [{"container": c, "project": p} for c, p in self.question.holders],
        }


@dataclass(frozen=True, slots=True)
class Ping:
    kind: str  # gateway | peer
    target: str
    address: str
    rtt_ms: float | None

    def to_json(self) -> dict[str, object]:
        rtt = None if self.rtt_ms is None else round(self.rtt_ms, 4)
        return {
            "kind": self.kind,
            "target": self.target,
            "address": self.address,
            "reachable": rtt is not None,
            "rtt_ms": rtt,
        }


@dataclass(frozen=True, slots=True)
class CheckPlan:
    networks: tuple[AttachedNetwork, ...]
    peers: tuple[Peer, ...]  # containers on a shared network
    strangers: tuple[Peer, ...]  # same project, no shared network
    questions: tuple[DnsQuestion, ...]
    pings: tuple[tuple[str, str, str], ...]  # (kind, target, address)
    # The container whose network namespace this one lives in (`--network container:X`),
    # and the containers that joined this one's namespace (or its owner's).
    owner: str | None = None
    sharers: tuple[str, ...] = ()
    # Its catalog name, when other projects register that short name too (a warning).
    name_collision: Collision | None = None


@dataclass(slots=True)
class Evidence:
    """What the doctor gathered about one container from the host, beside the plan it
    followed; `errors` says what could not be gathered (the rest is still judged)."""

    container: Container
    plan: CheckPlan
    links: tuple[Link, ...] = ()
    routes: tuple[Route, ...] = ()
    resolv: ResolvConf | None = None
    listeners: tuple[Listener, ...] = ()
    dns: tuple[DnsAnswer, ...] = ()
    pings: tuple[Ping, ...] = ()
    errors: list[str] = field(default_factory=list)  # what could not be gathered, and why


def network_mtu(n: Network, host_mtus: Mapping[str, int]) -> int | None:
    """The MTU the network gives its interfaces: its driver option, else what the host's
    side (its bridge) has, as the gatherer read it (by network id)."""
    value = n.options.get(MTU_OPTION)
    if value and value.isdigit() and int(value) > 0:
        return int(value)
    return host_mtus.get(n.id)


JOINED_PREFIX = "container:"
ICC_OPTION = "com.docker.network.bridge.enable_icc"


def _icc_off(n: Network) -> bool:
    return n.driver == "bridge" and str(n.options.get(ICC_OPTION, "true")).lower() == "false"


def namespace_owner(topo: Topology, c: Container) -> Container | None:
    """The container whose network namespace `c` lives in (itself, or X for `--network
    container:X`, followed); None when that container is not in the topology."""
    seen = {c.id}
    while c.network_mode.startswith(JOINED_PREFIX):
        owner = topo.container(c.network_mode[len(JOINED_PREFIX) :])
        if owner is None or owner.id in seen:
            return None
        seen.add(owner.id)
        c = owner
    return c


def _made_by_file(c: Container) -> bool:
    """Created from a project file (`dockmesh up` stamps its service; Compose labels it):
    the networks it is on are the file's choice."""
    return bool(c.labels.get(LABEL_SERVICE) or c.labels.get(COMPOSE_SERVICE))


def policy_between(policy: Policy | None, a: Container, b: Container) -> str:
    """What `policy` says of traffic between `a` and `b`, either way, on any of their
    networks: "allows" (a rule lets one reach the other), "denies" (no rule does and the
    default denies), "" (no policy, or its default allows)."""
    if policy is None:
        return ""
    nets = {c.id: [x.network for x in c.attachments] or [""] for c in (a, b)}
    for rule in policy.rules:
        if getattr(rule, "action", "allow") not in ("allow", "accept"):
            continue
        for x, y in ((a, b), (b, a)):
            if any(selects(rule.sources, x, n) for n in nets[x.id]) and any(
                selects(rule.destinations, y, n) for n in nets[y.id]
            ):
                return "allows"
    return "denies" if policy.default == "deny" else ""


def plan_checks(
    topo: Topology,
    c: Container,
    host_mtus: Mapping[str, int] | None = None,
    max_peers: int = 64,
    policy: Policy | None = None,
) -> CheckPlan:
    host_mtus = host_mtus or {}
    # A container in another's namespace has that one's networks, peers and names.
    owner = namespace_owner(topo, c)
    net_c = owner or c
    same_ns = {
        o.id
        for o in topo.containers
        if o.id == net_c.id or (owner is not None and namespace_owner(topo, o) is owner)
    }
    host_mode = net_c.network_mode == "host"
    networks: list[AttachedNetwork] = []
    mine: dict[str, Network] = {}
    for n, a in topo.attached_networks(net_c):
        pool = n.pool(4)
        subnet = None if pool is None else pool.network()
        mine[n.id] = n
        networks.append(
            AttachedNetwork(
                n.name,
                n.driver,
                n.internal,
                a.ipv4,
                a.ipv6,
                a.mac,
                None if subnet is None else str(subnet),
                n.gateway(4),
                network_mtu(n, host_mtus),
            )
        )
    peers: dict[str, Peer] = {}
    names: dict[str, dict[str, tuple[str, str | None]]] = {}  # name → address → holder
    own: dict[str, set[str]] = {}  # the names this namespace's containers answer to → addresses
    for n in mine.values():
        if n.name in ("host", "none"):
            continue  # the host's network has no peers to ping: they are the host itself
        for ep in topo.endpoints_of(n):
            other = topo.container(ep.container_id)
            if other is None:
                continue
            if other.id in same_ns:
                if n.name not in NO_DNS_NETWORKS and ep.ipv4:
                    for dns_name in ep.dns_names:
                        own.setdefault(dns_name, set()).add(ep.ipv4)
                continue
            if other.id not in peers:
                peers[other.id] = Peer(other.name, project_of(other.labels), (), None, icc_off=True)
            p = peers[other.id]
            # The address to ping: one on a network where icc lets it through, if any.
            better = ep.ipv4 and (p.address is None or (p.icc_off and not _icc_off(n)))
            peers[other.id] = replace(
                p,
                shared=(*p.shared, n.name),
                address=ep.ipv4 if better else p.address,
                network=n.name if better else p.network,
                icc_off=p.icc_off and _icc_off(n),
            )
            if n.name in NO_DNS_NETWORKS or not ep.ipv4 or not other.running:
                continue
            for dns_name in ep.dns_names:
                if dns_name == other.id[:12]:
                    continue  # every container answers to its short id: nothing to learn
                names.setdefault(dns_name, {})[ep.ipv4] = (other.name, project_of(other.labels))
    # A name this container (or its namespace) answers to as well: Docker's DNS rightly
    # answers its own address too. Its own name or hostname is no collision; an alias it
    # shares (replicas of one service) makes it one of the name's holders.
    personal = {c.name, c.hostname, net_c.name, net_c.hostname}
    for name, held in names.items():
        for address in own.get(name, ()):
            if name not in personal:
                held[address] = (net_c.name, project_of(net_c.labels))
    project = project_of(c.labels)
    strangers: list[Peer] = []
    if project is not None and not host_mode:
        for other in topo.containers:
            if (
                other.id in same_ns
                or other.id in peers
                or project_of(other.labels) != project
                or other.network_mode == "host"  # reached through the host: no network to share
                or other.network_mode.startswith(JOINED_PREFIX)  # its owner speaks for it
            ):
                continue
            strangers.append(
                Peer(
                    other.name,
                    project,
                    (),
                    None,
                    by_file=_made_by_file(net_c) and _made_by_file(other),
                    policy=policy_between(policy, net_c, other),
                )
            )
    expected_extra = {name: own.get(name, set()) for name in names}
    questions = tuple(
        DnsQuestion(
            name,
            tuple(sorted(set(held) | expected_extra[name])),
            tuple(sorted(set(held.values()), key=str)),
        )
        for name, held in sorted(names.items())
    )[:max_peers]
    pings: list[tuple[str, str, str]] = []
    if c.running:
        for nf in networks:
            if nf.gateway and nf.driver == "bridge":
                pings.append(("gateway", f"gateway of {nf.name}", nf.gateway))
        for p in list(peers.values())[:max_peers]:
            if p.address:
                pings.append(("peer", p.name, p.address))
    sharers = tuple(
        sorted(o.name for o in topo.containers if o.id in same_ns and o.id not in (c.id, net_c.id))
    )
    return CheckPlan(
        tuple(networks),
        tuple(peers.values()),
        tuple(strangers),
        questions,
        tuple(pings),
        owner=net_c.name if net_c is not c else None,
        sharers=sharers,
        name_collision=collision_of(topo, c),
    )


# --- findings -------------------------------------------------------------------------------


def _covered(address: str, routes: Sequence[Route]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return True
    for r in routes:
        try:
            if ip in ipaddress.ip_network(r.destination, strict=False):
                return True
        except (ValueError, TypeError):
            continue
    return False


def _is_docker_dns(x: Listener) -> bool:
    # Docker's embedded DNS listens inside every container on a user network, on 127.0.0.11
    # at random ports (the namespace's NAT sends port 53 there): not the container's own.
    return x.address == DOCKER_DNS


def _reachable_listener(listeners: Sequence[Listener], proto: str, port: int) -> bool:
    return any(x.proto == proto and x.port == port and not x.loopback_only for x in listeners)


def findings(f: Evidence) -> list[Finding]:
    c = f.container
    out: list[Finding] = []
    if not c.running:
        out.append(
            Finding(
                ERROR,
                "not-running",
                f"{c.name} is not running ({c.state})",
                f"docker start {c.name}; docker logs {c.name} says why it stopped",
            )
        )
        return out
    if c.health == "unhealthy":
        out.append(
            Finding(
                ERROR,
                "unhealthy",
                f"{c.name}'s healthcheck fails (unhealthy)",
                f"docker inspect --format '{{{{json .State.Health}}}}' {c.name} shows the "
                "failing probes' output; fix the service or the check",
            )
        )
    for e in f.errors:
        out.append(Finding(WARNING, "not-gathered", e, "run as root on the container's host"))
    own = [x for x in f.listeners if not _is_docker_dns(x)]
    published = {(p.container_port, p.protocol): p for p in c.ports if p.host_port is not None}
    port_label = c.labels.get(LABEL_DISCOVERY_PORT, "").strip()
    declared = {int(port_label)} if port_label.isascii() and port_label.isdigit() else set()
    for x in own:
        if not x.loopback_only or _reachable_listener(own, x.proto, x.port):
            continue
        if x.proto == "udp":
            continue
        needed = (x.port, x.proto) in published or x.port in declared
        out.append(
            Finding(
                ERROR if needed else WARNING,
                "loopback-only",
                f"listens on {x.address}:{x.port} only ({x.proto}): other containers"
                + (" and the published port" if (x.port, x.proto) in published else "")
                + " cannot reach it",
                f"make the service bind 0.0.0.0:{x.port} (or its address on the network) "
                f"instead of {x.address}",
            )
        )
    for (port, proto), binding in sorted(published.items()):
        if _reachable_listener(own, proto, port) or any(
            x.loopback_only and x.port == port and x.proto == proto for x in own
        ):
            continue
        host = f"{binding.host_ip or '0.0.0.0'}:{binding.host_port}"
        out.append(
            Finding(
                ERROR,
                "published-not-listening",
                f"port {host} is published to {port}/{proto}, where nothing listens",
                f"start the service on port {port}, or publish the port it listens on "
                f"(listening: {', '.join(sorted({str(x.port) for x in own})) or 'none'})",
            )
        )
    if not own and f.links:
        out.append(
            Finding(
                INFO,
                "no-listeners",
                f"{c.name} listens on no port",
                "expected for a pure client; a server has not started",
            )
        )
    by_mac = {(x.mac or "").lower(): x for x in f.links if x.mac}
    for n in f.plan.networks:
        link = by_mac.get((n.mac or "").lower()) if n.mac else None
        if link is None:
            if f.links and n.mac:
                out.append(
                    Finding(
                        ERROR,
                        "no-interface",
                        f"no interface has {n.name}'s address {n.mac} ({n.ipv4})",
                        f"docker network disconnect {n.name} {c.name}; "
                        f"docker network connect {n.name} {c.name}",
                    )
                )
            continue
        if link.state not in ("up", "unknown"):
            out.append(
                Finding(
                    ERROR,
                    "interface-down",
                    f"{link.name} ({n.name}) is {link.state}",
                    f"reconnect it: docker network connect {n.name} {c.name}",
                )
            )
        if n.mtu is not None and link.mtu != n.mtu:
            out.append(
                Finding(
                    WARNING,
                    "mtu-mismatch",
                    f"{link.name} ({n.name}) has MTU {link.mtu}, its network {n.mtu}: "
                    "large packets are dropped or fragmented",
                    f"recreate the network with -o {MTU_OPTION}={min(link.mtu, n.mtu)} "
                    "or leave the interface's MTU to Docker",
                )
            )
    if f.links or f.routes:
        if not any(r.is_default for r in f.routes):
            if c.network_mode == "none":
                # No connect advice: the engine refuses to connect a --network none container.
                out.append(
                    Finding(
                        INFO,
                        "network-none",
                        f"{c.name} runs with --network none: loopback only, as asked",
                        "to give it a network, create it again with --network NETWORK",
                    )
                )
            elif f.plan.networks and all(n.internal for n in f.plan.networks):
                out.append(
                    Finding(
                        INFO,
                        "no-default-route",
                        "no default route (internal networks only): expected",
                        "connect a non-internal network if it must reach further",
                    )
                )
            else:
                out.append(
                    Finding(
                        WARNING,
                        "no-default-route",
                        "no default route: only its own networks are reachable",
                        f"docker network connect bridge {c.name}, or check "
                        "the routes the image sets at start",
                    )
                )
        for peer in f.plan.peers:
            if peer.address and not _covered(peer.address, f.routes):
                out.append(
                    Finding(
                        ERROR,
                        "no-route",
                        f"no route to {peer.name} ({peer.address})",
                        "its network's interface or route is missing: reconnect "
                        f"with docker network connect {peer.shared[0]} {c.name}",
                    )
                )
    user_networks = [n for n in f.plan.networks if n.name not in NO_DNS_NETWORKS]
    if f.resolv is not None and user_networks and DOCKER_DNS not in f.resolv.nameservers:
        out.append(
            Finding(
                WARNING,
                "resolv-conf",
                f"resolv.conf names {', '.join(f.resolv.nameservers) or 'no server'}, not "
                f"Docker's DNS ({DOCKER_DNS}): container names will not resolve",
                "do not mount your own /etc/resolv.conf; use --dns to forward instead",
            )
        )
    for d in f.dns:
        q = d.question
        if d.answers is None or not d.answers:
            out.append(
                Finding(
                    ERROR,
                    "dns-unresolved",
                    f"{q.name} does not resolve through Docker's DNS"
                    + (f" ({d.rcode})" if d.rcode else " (no answer)"),
                    f"check that {q.name} runs and shares a user-defined network with {c.name}",
                )
            )
            continue
        projects = sorted({p or "(no project)" for _, p in q.holders})
        if len(projects) > 1:
            who = ", ".join(f"{n} ({p or 'no project'})" for n, p in q.holders)
            out.append(
                Finding(
                    WARNING,
                    "dns-ambiguous",
                    f"{q.name} resolves to containers of several projects: {who}",
                    "give the services distinct names or aliases, or keep the projects "
                    "on separate networks",
                )
            )
        elif not set(d.answers) <= set(q.expected):
            out.append(
                Finding(
                    WARNING,
                    "dns-unexpected",
                    f"{q.name} resolves to {', '.join(d.answers)}, expected "
                    f"{', '.join(q.expected)}",
                    "another network or an old record answers",
                )
            )
    # Peers every shared network of which drops their traffic (icc off): shared networks.
    quiet = {p.name: p.shared for p in f.plan.peers if p.icc_off}
    for ping in f.pings:
        if ping.rtt_ms is not None:
            continue
        if ping.kind == "gateway":
            out.append(
                Finding(
                    WARNING,
                    "gateway-unreachable",
                    f"the {ping.target} ({ping.address}) does not answer ICMP",
                    "the host's firewall may drop it; check the bridge is up",
                )
            )
        elif ping.target in quiet:
            out.append(
                Finding(
                    INFO,
                    "peer-unreachable",
                    f"{ping.target} ({ping.address}) does not answer ICMP: enable_icc=false on "
                    f"{', '.join(quiet[ping.target])} makes Docker drop IPv4 between their "
                    "containers",
                    "expected by the network's setting; put both on another network if they "
                    "must talk",
                )
            )
        else:
            out.append(
                Finding(
                    WARNING,
                    "peer-unreachable",
                    f"{ping.target} ({ping.address}) does not answer ICMP",
                    f"a policy or firewall rule may block {c.name} → {ping.target}; "
                    f"try dockmesh bench latency {c.name} {ping.target} --mode tcp",
                )
            )
    out += _namespace_findings(f)
    out += _stranger_findings(f)
    clash = f.plan.name_collision
    if clash is not None:
        scoped = " or ".join(f"{clash.service}.{p}.service.dockmesh" for p in clash.projects)
        out.append(
            Finding(
                WARNING,
                "name-collision",
                clash.warning(),
                f"ask for {scoped} (HTTP: /v1/health/service/{clash.service}.<project>), or "
                "give one project's service an explicit discovery.name "
                "(label dockmesh.short-name=true)",
            )
        )
    order = {ERROR: 0, WARNING: 1, INFO: 2}
    return sorted(out, key=lambda x: order[x.severity])


def _namespace_findings(f: Evidence) -> list[Finding]:
    """The host's network, and namespaces shared with `--network container:`: said once,
    by name, as what they are (not as missing networks)."""
    c, plan = f.container, f.plan
    out: list[Finding] = []
    if c.network_mode == "host":
        out.append(
            Finding(
                INFO,
                "host-network",
                f"{c.name} uses the host's network (network_mode host): no namespace of its "
                "own; it reaches containers at their addresses through the host, and they "
                "reach it at their networks' gateways",
                "nothing to connect: networks do not apply to it (a policy does not decide "
                "its traffic either)",
            )
        )
    if plan.owner is not None:
        also = list(plan.sharers)
        out.append(
            Finding(
                INFO,
                "shared-namespace",
                f"{c.name} lives in {plan.owner}'s network namespace (--network "
                f"container:{plan.owner}): its interfaces, addresses, routes and ports are "
                f"{plan.owner}'s" + (f", shared with {', '.join(also)} too" if also else ""),
                f"diagnose the namespace as {plan.owner}'s; to give {c.name} a network of its "
                "own, create it again with --network NETWORK",
            )
        )
    elif plan.sharers:
        out.append(
            Finding(
                INFO,
                "shared-namespace",
                f"{', '.join(plan.sharers)} {'lives' if len(plan.sharers) == 1 else 'live'} in "
                f"{c.name}'s network namespace (--network "
                f"container:{c.name}): they share its interfaces, addresses and ports (a port "
                "one of them binds is taken for all)",
                "",
            )
        )
    return out


def _stranger_findings(f: Evidence) -> list[Finding]:
    """Project members that share no network with the container. Advice to connect a
    network only where nothing says the separation is meant: not where the project file
    put them apart (or the policy denies them anyway)."""
    c = f.container
    out: list[Finding] = []
    meant: list[Peer] = []
    for s in f.plan.strangers:
        if s.policy == "allows":
            out.append(
                Finding(
                    WARNING,
                    "no-shared-network",
                    f"{s.name} shares no network with {c.name}, though the applied policy "
                    "allows traffic between them",
                    "put them on a network both are on in the project file (and up)"
                    if s.by_file
                    else f"docker network connect NETWORK {s.name} (a network {c.name} is "
                    "on), or drop the policy's rule",
                )
            )
        elif s.by_file or s.policy == "denies":
            meant.append(s)
        else:
            out.append(
                Finding(
                    WARNING,
                    "no-shared-network",
                    f"{s.name} is in project {s.project} too but shares no network with {c.name}",
                    f"docker network connect NETWORK {s.name} (a network "
                    f"{c.name} is on) if they must talk",
                )
            )
    if meant:
        why = (
            "the project file puts them on networks of their own"
            if all(s.by_file for s in meant)
            else "the project file or the applied policy keeps them apart"
        )
        out.append(
            Finding(
                INFO,
                "separated",
                f"{', '.join(s.name for s in meant)} "
                f"{'shares' if len(meant) == 1 else 'share'} no network with {c.name}: {why}",
                "",
            )
        )
    return out


def sections(f: Evidence) -> dict[str, object]:
    c = f.container
    return {
        "state": {
            "state": c.state,
            "health": c.health,
            "pid": c.pid,
            "image": c.image,
            "engine": c.engine,
            "network_mode": c.network_mode,
        },
        "networks": [n.to_json() for n in f.plan.networks],
        "ports": [p.to_json() for p in c.ports],
        "interfaces": [x.to_json() for x in f.links],
        "routes": [r.to_json() for r in f.routes],
        "resolv_conf": None if f.resolv is None else f.resolv.to_json(),
        "listening": [x.to_json() for x in f.listeners if not _is_docker_dns(x)],
        "dns": [d.to_json() for d in f.dns],
        "connectivity": [p.to_json() for p in f.pings],
        "peers": [p.to_json() for p in f.plan.peers],
        "namespace": {"owner": f.plan.owner, "shared_with": list(f.plan.sharers)},
        "errors": list(f.errors),
    }
