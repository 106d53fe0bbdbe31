"""Everything that can be wrong with a parsed dockmesh.yaml, found at once, before anything is
touched. Pure: a `Spec`, the project name and `Facts` about the engine and host in; problems,
each naming its field, out."""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator

from dockmesh.model.ipam import (
    IPAddress,
    IpamError,
    IPNetwork,
    default_gateway,
    host_problem,
    overlaps,
    parse_address,
    parse_subnet,
)
from dockmesh.projectfile.facts import Facts
from dockmesh.projectfile.parse import PortMapping, parse_duration_ns, parse_port
from dockmesh.projectfile.problems import Path, Problem
from dockmesh.projectfile.schema import NetworkSpec, ServiceNetwork, Spec

NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]*$")
PROJECT = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
ALIAS = re.compile(
    r"^[a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?(\.[a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?)*$"
)
ENV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

_BOOL_OPTIONS = {
    "com.docker.network.bridge.enable_icc",
    "com.docker.network.bridge.enable_ip_masquerade",
    "com.docker.network.bridge.default_bridge",
}
_BRIDGE_NAME = "com.docker.network.bridge.name"
_MTU = "com.docker.network.driver.mtu"


def validate(
    spec: Spec, project: str, facts: Facts, left_out: frozenset[str] = frozenset()
) -> list[Problem]:
    """`left_out`: names of networks and services whose shape was wrong (already reported):
    references to them are not reported again."""
    v = _Validator(spec, project, facts, left_out)
    v.run()
    return v.problems


class _Validator:
    def __init__(self, spec: Spec, project: str, facts: Facts, left_out: frozenset[str]) -> None:
        self.spec, self.project, self.facts, self.left_out = spec, project, facts, left_out
        self.problems: list[Problem] = []
        self.subnets: dict[str, IPNetwork] = {}
        self.ip_ranges: dict[str, IPNetwork] = {}
        self.reserved: dict[str, dict[IPAddress, str]] = {}  # network → address → what holds it
        self.host_ports: dict[tuple[str | None, int, str], list[Path]] = {}

    def err(self, path: Path, message: str) -> None:
        self.problems.append(Problem(path, message))

    def run(self) -> None:
        if not PROJECT.match(self.project):
            self.err(("project",), f"{self.project!r}: lowercase letters, digits, '-' and '_' only")
        for name, net in self.spec.networks.items():
            self.network(name, net or NetworkSpec())
        self.overlaps()
        for name in self.spec.services:
            self.service(name)
        self.cycles()
        self.shared_host_ports()
        self.container_names()

    # --- networks --------------------------------------------------------------------------

    def network(self, name: str, net: NetworkSpec) -> None:
        base: Path = ("networks", name)
        if not NAME.match(name):
            self.err(base, f"{name!r} is not a valid network name")
        full = f"{self.project}_{name}"
        for f in self.facts.networks:
            if f.name == full and f.project != self.project:
                self.err(
                    base,
                    f"the engine already has a network {full!r} that this project did not create",
                )
        if net.driver == "ipvlan" and not self.facts.ipvlan_available:
            self.err(
                (*base, "driver"),
                "ipvlan: this kernel has no ipvlan support "
                "(module not built); use macvlan or bridge",
            )
        if net.driver == "overlay" and not self.facts.swarm_active:
            self.err(
                (*base, "driver"),
                "overlay needs the engine to be in a swarm (docker swarm init); this engine is not",
            )
        if net.driver in ("macvlan", "ipvlan"):
            parent = net.parent or str(net.options.get("parent") or "") or None
            if parent is None:
                self.err((*base, "parent"), f"{net.driver} needs a parent interface")
            elif parent not in self.facts.interfaces:
                self.err((*base, "parent"), f"interface {parent!r} does not exist on this host")
        elif net.parent is not None:
            self.err((*base, "parent"), f"parent is for macvlan and ipvlan, not {net.driver}")
        self.options(base, net)

        subnet: IPNetwork | None = None
        if net.subnet is not None:
            try:
                subnet = parse_subnet(net.subnet)
                self.subnets[name] = subnet
            except IpamError as e:
                self.err((*base, "subnet"), str(e))
        else:
            for field in ("gateway", "ip_range"):
                if getattr(net, field) is not None:
                    self.err((*base, field), f"{field} needs a subnet")
            if net.aux_addresses:
                self.err((*base, "aux_addresses"), "aux_addresses need a subnet")
        if subnet is None:
            return
        held = self.reserved.setdefault(name, {})
        gateway: IPAddress | None = None
        if net.gateway is not None:
            try:
                gateway = parse_address(net.gateway)
                why = host_problem(gateway, subnet, "gateway")
                if why:
                    self.err((*base, "gateway"), why)
                    gateway = None
            except IpamError as e:
                self.err((*base, "gateway"), str(e))
        elif net.driver == "bridge":
            gateway = default_gateway(subnet)
        if gateway is not None:
            held[gateway] = "the gateway"
        if net.ip_range is not None:
            try:
                rng = parse_subnet(net.ip_range)
                if rng.version != subnet.version or not rng.subnet_of(subnet):  # type: ignore[arg-type]
                    self.err((*base, "ip_range"), f"ip_range {rng} is outside the subnet {subnet}")
                else:
                    self.ip_ranges[name] = rng
            except IpamError as e:
                self.err((*base, "ip_range"), str(e))
        for aux_name, text in net.aux_addresses.items():
            path = (*base, "aux_addresses", aux_name)
            try:
                addr = parse_address(text)
            except IpamError as e:
                self.err(path, str(e))
                continue
            why = host_problem(addr, subnet, f"aux address {aux_name}")
            if why:
                self.err(path, why)
            elif addr in held:
                self.err(path, f"aux address {addr} is already {held[addr]}")
            else:
                held[addr] = f"aux address {aux_name!r}"

    def options(self, base: Path, net: NetworkSpec) -> None:
        for key, value in net.options.items():
            path = (*base, "options", key)
            text = str(value).lower() if isinstance(value, bool) else str(value)
            if key in _BOOL_OPTIONS and text not in ("true", "false"):
                self.err(path, f"must be true or false, not {value!r}")
            elif key == _MTU and (not text.isdigit() or not 68 <= int(text) <= 65535):
                self.err(path, f"MTU must be a number between 68 and 65535, not {value!r}")
            elif key == _BRIDGE_NAME:
                if net.driver != "bridge":
                    self.err(path, "a bridge name is for the bridge driver")
                elif not re.fullmatch(r"[a-zA-Z0-9_.-]{1,15}", text):
                    self.err(path, f"{text!r} is not a valid interface name (1-15 characters)")
                elif text in self.facts.interfaces and not self._own_network_exists(base[-1]):
                    self.err(path, f"interface {text!r} already exists on this host")

    def _own_network_exists(self, name: str | int) -> bool:
        full = f"{self.project}_{name}"
        return any(f.name == full and f.project == self.project for f in self.facts.networks)

    def overlaps(self) -> None:
        engine_nets, routes = self._foreign_subnets()
        names = list(self.subnets)
        for i, a in enumerate(names):
            sa = self.subnets[a]
            path: Path = ("networks", a, "subnet")
            for b in names[:i]:
                if overlaps(sa, self.subnets[b]):
                    self.err(path, f"{sa} overlaps the subnet {self.subnets[b]} of network {b!r}")
            for owner, other in engine_nets:
                # a foreign network with this one's name is reported by network()
                if owner != f"{self.project}_{a}" and overlaps(sa, other):
                    self.err(path, f"{sa} overlaps {other} of the engine's network {owner!r}")
            for device, dest in routes:
                if overlaps(sa, dest):
                    self.err(path, f"{sa} overlaps the host's route to {dest} (dev {device})")

    def _foreign_subnets(
        self,
    ) -> tuple[list[tuple[str, IPNetwork]], list[tuple[str, IPNetwork]]]:
        """(engine network, subnet) of networks this plan does not own, and (device,
        destination) of host routes that are not a Docker bridge's own."""
        own_prefix = f"{self.project}_"
        engine_nets: list[tuple[str, IPNetwork]] = []
        engine_subnets: set[str] = set()
        for f in self.facts.networks:
            engine_subnets.update(f.subnets)
            if f.project == self.project and f.name.startswith(own_prefix):
                continue  # ours: kept or replaced by this plan
            engine_nets += [(f.name, n) for n in _subnets(f.subnets)]
        routes = [
            (r.device, dest)
            for r in self.facts.routes
            if r.destination not in engine_subnets  # a bridge's route: judged above
            for dest in _subnets([r.destination])
            if dest.prefixlen > 0  # the default route conflicts with nothing
        ]
        return engine_nets, routes

    # --- services --------------------------------------------------------------------------

    def service(self, name: str) -> None:
        svc = self.spec.services[name]
        base: Path = ("services", name)
        if not NAME.match(name):
            self.err(base, f"{name!r} is not a valid service name")
        if not svc.image.strip():
            self.err((*base, "image"), "must not be empty")
        elif svc.image in self.facts.images and self.facts.images[svc.image] is None:
            hint = " (run: dockmesh images build)" if svc.image.startswith("dockmesh/") else ""
            self.err((*base, "image"), f"image {svc.image!r} is not on the engine{hint}")
        if svc.network_mode is not None and svc.networks:
            self.err(
                (*base, "network_mode"),
                f"network_mode {svc.network_mode} cannot be combined with networks",
            )
        for key in svc.environment:
            if not ENV_KEY.match(key):
                self.err((*base, "environment", key), f"{key!r} is not a valid variable name")
        for net_name, attach in svc.networks.items():
            self.attachment(base, name, net_name, attach or ServiceNetwork(), svc.replicas)
        self.ports(base, svc.ports, svc.replicas, svc.network_mode)
        for i, dep in enumerate(svc.depends_on):
            if dep not in self.spec.services:
                if dep not in self.left_out:
                    self.err((*base, "depends_on", i), f"unknown service {dep!r}")
            elif dep == name:
                self.err((*base, "depends_on", i), "a service cannot depend on itself")
        if svc.healthcheck is not None:
            hc = svc.healthcheck
            hp: Path = (*base, "healthcheck")
            kinds = [
                k
                for k, on in (
                    ("http", hc.http is not None),
                    ("tcp", hc.tcp),
                    ("test", hc.test is not None),
                )
                if on
            ]
            if len(kinds) != 1:
                self.err(hp, "give exactly one of http, tcp or test")
            if (hc.http is not None or hc.tcp) and hc.port is None:
                self.err(hp, "http and tcp checks need a port")
            if hc.http is not None and not hc.http.startswith("/"):
                self.err((*hp, "http"), f"{hc.http!r}: a path starts with '/'")
            for f in ("interval", "timeout", "start_period"):
                self.duration((*hp, f), getattr(hc, f), allow_zero=f == "start_period")
        if svc.discovery is not None:
            d = svc.discovery
            dp: Path = (*base, "discovery")
            if d.network is not None and d.network not in svc.networks:
                self.err((*dp, "network"), f"{d.network!r} is not one of this service's networks")
            if d.check is not None:
                if d.check.http is not None and d.check.tcp:
                    self.err((*dp, "check"), "give http or tcp, not both")
                if d.check.http is not None and not d.check.http.startswith("/"):
                    self.err((*dp, "check", "http"), f"{d.check.http!r}: a path starts with '/'")
                self.duration((*dp, "check", "interval"), d.check.interval)
                self.duration((*dp, "check", "timeout"), d.check.timeout)
            for i, tag in enumerate(d.tags):
                if "," in tag or not tag:
                    self.err((*dp, "tags", i), f"{tag!r}: tags are non-empty and without commas")

    def duration(self, path: Path, text: str, allow_zero: bool = False) -> None:
        try:
            ns = parse_duration_ns(text)
        except ValueError as e:
            self.err(path, str(e))
            return
        if ns == 0 and not allow_zero:
            self.err(path, "must be more than zero")
        elif 0 < ns < 1_000_000:
            self.err(path, "must be at least 1ms")

    def attachment(
        self, base: Path, svc: str, net_name: str, attach: ServiceNetwork, replicas: int
    ) -> None:
        path: Path = (*base, "networks", net_name)
        if net_name not in self.spec.networks:
            if net_name not in self.left_out:
                self.err(path, f"unknown network {net_name!r} (not under networks:)")
            return
        for i, alias in enumerate(attach.aliases):
            if not ALIAS.match(alias):
                self.err((*path, "aliases", i), f"{alias!r} is not a valid DNS name")
        if attach.ipv4_address is None:
            return
        ip_path = (*path, "ipv4_address")
        if replicas > 1:
            self.err(ip_path, f"a static address cannot be shared by {replicas} replicas")
        try:
            addr = parse_address(attach.ipv4_address)
        except IpamError as e:
            self.err(ip_path, str(e))
            return
        net_spec = self.spec.networks[net_name] or NetworkSpec()
        subnet = self.subnets.get(net_name)
        if subnet is None:
            if net_spec.subnet is None:
                self.err(
                    ip_path,
                    f"a static address needs the network {net_name!r} to declare its subnet",
                )
            return
        why = host_problem(addr, subnet, "address")
        if why:
            self.err(ip_path, why)
            return
        rng = self.ip_ranges.get(net_name)
        if rng is not None and addr not in rng:
            self.err(ip_path, f"address {addr} is outside the network's ip_range {rng}")
            return
        held = self.reserved.setdefault(net_name, {})
        if addr in held:
            self.err(ip_path, f"address {addr} is already {held[addr]}")
        else:
            held[addr] = f"the address of service {svc!r}"

    def ports(
        self, base: Path, ports: list[str | int], replicas: int, network_mode: str | None
    ) -> None:
        seen: dict[tuple[str | None, int, str], int] = {}
        for i, p in enumerate(ports):
            path = (*base, "ports", i)
            try:
                m: PortMapping = parse_port(p)
            except ValueError as e:
                self.err(path, str(e))
                continue
            if network_mode is not None:
                self.err(path, f"ports cannot be published with network_mode {network_mode}")
            if m.host_port is None:
                continue
            if replicas > 1:
                self.err(
                    path,
                    f"host port {m.host_port} cannot be published by {replicas} "
                    "replicas (leave the host port out to let the engine pick)",
                )
            key = (m.host_ip, m.host_port, m.protocol)
            if key in seen:
                self.err(
                    path,
                    f"host port {m.host_port}/{m.protocol} is already published "
                    f"by ports[{seen[key]}]",
                )
            seen[key] = i
            self.host_ports.setdefault(key, []).append(path)

    def cycles(self) -> None:
        graph = {
            n: [d for d in s.depends_on if d in self.spec.services and d != n]
            for n, s in self.spec.services.items()
        }
        for cycle in _find_cycles(graph):
            first = cycle[0]
            self.err(
                ("services", first, "depends_on"),
                "depends_on cycle: " + " -> ".join([*cycle, first]),
            )

    def shared_host_ports(self) -> None:
        for paths in self.host_ports.values():
            services = {p[1] for p in paths}
            if len(services) > 1:
                for p in paths[1:]:
                    self.err(p, f"the same host port is published by {sorted(services)}")

    def container_names(self) -> None:
        made: dict[str, str] = {}
        for name, svc in self.spec.services.items():
            for r in range(1, svc.replicas + 1):
                cname = f"{self.project}-{name}-{r}"
                if cname in made:
                    self.err(
                        ("services", name),
                        f"container name {cname!r} is also made by service {made[cname]!r}",
                    )
                made[cname] = name
                owner = self.facts.containers.get(cname, self.project)
                if cname in self.facts.containers and owner != self.project:
                    self.err(
                        ("services", name),
                        f"the engine already has a container {cname!r} "
                        "that this project did not create",
                    )


def _subnets(texts: Iterable[str]) -> list[IPNetwork]:
    out: list[IPNetwork] = []
    for t in texts:
        try:
            out.append(parse_subnet(t))
        except IpamError:
            continue  # what the engine or kernel holds is not ours to judge
    return out


def _find_cycles(graph: dict[str, list[str]]) -> Iterator[list[str]]:
    """Each elementary cycle once, found by depth-first search, in a canonical rotation."""
    seen: set[tuple[str, ...]] = set()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> Iterator[list[str]]:
        state[n] = 1
        stack.append(n)
        for d in graph.get(n, []):
            if state.get(d) == 1:
                cyc = stack[stack.index(d) :]
                k = cyc.index(min(cyc))
                canon = tuple(cyc[k:] + cyc[:k])
                if canon not in seen:
                    seen.add(canon)
                    yield list(canon)
            elif state.get(d) is None:
                yield from visit(d)
        stack.pop()
        state[n] = 2

    for n in sorted(graph):
        if state.get(n) is None:
            yield from visit(n)
