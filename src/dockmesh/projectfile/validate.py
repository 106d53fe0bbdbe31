"""Everything that can be wrong with a parsed dockmesh.yaml, found at once, before anything is
touched. Pure: a `Spec`, the project name and the `EngineContext` (what the engine and host
hold) in; problems, each naming its field, out.

The aim is that a file that validates clean also applies: whatever the engine would refuse
halfway through `up` (an address already taken, a pool too small for the replicas drawing
from it, a host port published twice, a name too long for a hostname, a duration beyond what
the engine holds, a command that does not split) is refused here instead.
"""

from __future__ import annotations

import contextlib
import ipaddress
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field

from dockmesh.model.durations import MAX_GRACE_S, grace_s
from dockmesh.model.httproute import FIELDS, decode_fields
from dockmesh.model.ipam import (
    IPAddress,
    IpamError,
    IPNetwork,
    first_free,
    never_handed_out,
    overlaps,
    parse_address,
    parse_subnet,
)
from dockmesh.model.labels import DISCOVERY_LABELS, HTTP_PREFIX, LABEL_PROJECT, STAMP_PREFIX
from dockmesh.model.signals import parse_stop_signal
from dockmesh.projectfile.context import EngineContext
from dockmesh.projectfile.desired import (
    HEALTHCHECK_FORMS,
    expose_fields,
    network_config,
    network_hash,
    start_order,
)
from dockmesh.projectfile.parse import (
    TEMPLATE_VARIABLES,
    PortMapping,
    http_path_problem,
    image_reference_problem,
    parse_bytes,
    parse_cpus,
    parse_duration_ns,
    parse_port,
    parse_restart,
    parse_volume,
    split_command,
    substitute,
    template_names,
)
from dockmesh.projectfile.pools import room
from dockmesh.projectfile.problems import Path, Problem
from dockmesh.projectfile.schema import (
    Healthcheck,
    NetworkSpec,
    PerFamily,
    ServiceNetwork,
    ServiceSpec,
    Spec,
)
from dockmesh.projectfile.suggest import did_you_mean

# fullmatch, never match with `$`: `$` also matches before a trailing newline.
NAME = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]*")
PROJECT = re.compile(r"[a-z0-9][a-z0-9_-]*")
_LABEL = r"[a-zA-Z0-9](?:[a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?"
ALIAS = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")
ENV_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
CAPABILITY = re.compile(r"(?:CAP_)?[A-Z][A-Z0-9_]*|ALL", re.IGNORECASE)
MEMORY_MIN = 6 * 1024 * 1024  # the engine refuses a smaller memory limit
# A hostname the kernel and Docker's DNS both take: one DNS label's length at most.
HOSTNAME = re.compile(r"[a-zA-Z0-9](?:[a-zA-Z0-9_.-]{0,61}[a-zA-Z0-9])?")
HOSTNAME_MAX = 63
DNS_NAME_MAX = 253

_BOOL_OPTIONS = {
    "com.docker.network.bridge.enable_icc",
    "com.docker.network.bridge.enable_ip_masquerade",
    "com.docker.network.bridge.default_bridge",
}
_BRIDGE_NAME = "com.docker.network.bridge.name"
_MTU = "com.docker.network.driver.mtu"
_IPV6_MIN_MTU = 1280  # below it the kernel turns IPv6 off on the interface
_ADDRESS_FIELD = {4: "ipv4_address", 6: "ipv6_address"}


def validate(
    spec: Spec, project: str, context: EngineContext, left_out: frozenset[str] = frozenset()
) -> list[Problem]:
    """`left_out`: names of networks and services whose shape was wrong (already reported):
    references to them are not reported again."""
    v = _Validator(spec, project, context, left_out)
    v.run()
    return v.problems


@dataclass(slots=True)
class _Family:
    """One address family of one network, as far as it checked out."""

    subnet: IPNetwork
    subnet_path: Path
    ip_range: IPNetwork | None = None
    range_path: Path | None = None
    gateway: IPAddress | None = None  # the one named, or where the engine will put it
    gateway_path: Path | None = None  # where the file names it
    held: dict[IPAddress, str] = field(default_factory=dict)  # address → what holds it
    usable: bool = True  # False: too small, or its gateway or range was wrong

    @property
    def pool(self) -> IPNetwork:
        return self.ip_range if self.ip_range is not None else self.subnet

    @property
    def pool_path(self) -> Path:
        return self.range_path if self.range_path is not None else self.subnet_path


@dataclass(frozen=True, slots=True)
class _Pinned:
    service: str
    address: IPAddress
    path: Path


@dataclass(frozen=True, slots=True)
class _Binding:
    path: Path
    mapping: PortMapping


class _Validator:
    def __init__(
        self, spec: Spec, project: str, context: EngineContext, left_out: frozenset[str]
    ) -> None:
        self.spec, self.project, self.context, self.left_out = spec, project, context, left_out
        self.problems: list[Problem] = []
        self.families: dict[str, dict[int, _Family]] = {}  # network → IP version → family
        self.pinned: dict[tuple[str, int], list[_Pinned]] = {}  # (network, version) → …
        self.bindings: list[_Binding] = []
        self.bad_networks: set[str] = set()

    def err(self, path: Path, message: str) -> None:
        self.problems.append(Problem(path, message))

    def run(self) -> None:
        if not PROJECT.fullmatch(self.project):
            self.err(("project",), f"{self.project!r}: lowercase letters, digits, '-' and '_' only")
        for name, net in self.spec.networks.items():
            before = len(self.problems)
            self.network(name, net or NetworkSpec())
            if len(self.problems) > before:
                self.bad_networks.add(name)
        self.overlaps()
        self.volumes()
        for name in self.spec.services:
            self.service(name)
        cycles = self.cycles()
        self.capacity()
        if not cycles:
            self.pinned_after_pool_users()
        self.host_ports()
        self.container_names()

    # --- networks --------------------------------------------------------------------------

    def network(self, name: str, net: NetworkSpec) -> None:
        base: Path = ("networks", name)
        if not NAME.fullmatch(name):
            self.err(
                base,
                f"{name!r} is not a valid network name (letters, digits, '_', '.', '-', "
                "starting with a letter or digit)",
            )
        full = f"{self.project}_{name}"
        for f in self.context.networks:
            if f.name == full and f.project != self.project:
                self.err(
                    base,
                    f"the engine already has a network {full!r} that this project did not create",
                )
        if net.driver == "ipvlan" and not self.context.ipvlan_available:
            self.err(
                (*base, "driver"),
                "ipvlan: this kernel has no ipvlan support "
                "(module not built); use macvlan or bridge",
            )
        if net.driver == "overlay" and not self.context.swarm_active:
            self.err(
                (*base, "driver"),
                "overlay needs the engine to be in a swarm (docker swarm init); this engine is not",
            )
        if net.driver in ("macvlan", "ipvlan"):
            parent = net.parent or str(net.options.get("parent") or "") or None
            if parent is None:
                self.err((*base, "parent"), f"{net.driver} needs a parent interface")
            elif parent not in self.context.interfaces:
                self.err((*base, "parent"), f"interface {parent!r} does not exist on this host")
        elif net.parent is not None:
            self.err((*base, "parent"), f"parent is for macvlan and ipvlan, not {net.driver}")
        self.labels((*base, "labels"), net.labels, discovery=False)
        families = self.addresses(base, net)
        self.families[name] = families
        self.options(base, net, 6 in families)

    def addresses(self, base: Path, net: NetworkSpec) -> dict[int, _Family]:
        """The network's subnets, gateways, ranges and auxiliary addresses, family by family,
        reserved in the engine's order: gateway first, auxiliary addresses next."""
        families = self.subnets(base, net)
        self.ipv6(base, net, families)
        if net.subnet is None:
            for fname in ("gateway", "ip_range"):
                if getattr(net, fname) is not None:
                    self.err((*base, fname), f"{fname} needs a subnet")
            if net.aux_addresses:
                self.err((*base, "aux_addresses"), "aux_addresses need a subnet")
            return families
        self.gateways(base, net, families)
        self.ip_ranges(base, net, families)
        for fam in families.values():
            if fam.gateway_path is not None or not fam.usable:
                continue
            fam.gateway = first_free(fam.subnet, fam.pool)
            if fam.gateway is None:
                fam.usable = False
                self.err(
                    fam.pool_path,
                    f"ip_range {fam.pool} leaves no address for the gateway (the engine "
                    "puts it on the range's first free address; name one with gateway:)",
                )
            else:
                fam.held[fam.gateway] = "the gateway"
        self.aux_addresses(base, net, families)
        return families

    def subnets(self, base: Path, net: NetworkSpec) -> dict[int, _Family]:
        families: dict[int, _Family] = {}
        for path, text in _entries((*base, "subnet"), net.subnet, "subnet"):
            if path is None:
                self.err((*base, "subnet"), text)
                continue
            try:
                subnet = parse_subnet(text)
            except IpamError as e:
                self.err(path, str(e))
                continue
            if subnet.version in families:
                self.err(path, f"a second IPv{subnet.version} subnet: give one of each family")
                continue
            fam = families[subnet.version] = _Family(subnet, path)
            if first_free(subnet, subnet) is None:
                fam.usable = False
                kept = (
                    "network and broadcast addresses" if subnet.version == 4 else "network address"
                )
                self.err(
                    path,
                    f"{subnet} is too small: no address is left for the gateway (the engine "
                    f"keeps the {kept}); a /{subnet.max_prefixlen - 2} holds the gateway and "
                    "1 container",
                )
        return families

    def ipv6(self, base: Path, net: NetworkSpec, families: dict[int, _Family]) -> None:
        versions = {_version_of(t) for t in _texts(net.subnet)}
        given_v6 = 6 in versions
        if given_v6 and 4 not in versions:
            v6 = families.get(6)
            self.err(
                v6.subnet_path if v6 is not None else (*base, "subnet"),
                "an IPv6 subnet needs an IPv4 subnet beside it (subnet: [10.x.y.0/24, "
                f"{v6.subnet if v6 else 'fd00:…/64'}]): the engine would add an IPv4 subnet of "
                "its own choosing, which the file could not pin",
            )
        if net.enable_ipv6 is True and not given_v6:
            self.err(
                (*base, "enable_ipv6"),
                "needs an IPv6 subnet (subnet: [10.x.y.0/24, fd00:…/64]): the engine has no "
                "IPv6 pool of its own to pick one from",
            )
        elif net.enable_ipv6 is False and given_v6:
            self.err(
                (*base, "enable_ipv6"),
                "is false but the network has an IPv6 subnet: the engine would ignore the subnet "
                "(leave enable_ipv6 out, it follows the subnets)",
            )

    def gateways(self, base: Path, net: NetworkSpec, families: dict[int, _Family]) -> None:
        for path, text in _entries((*base, "gateway"), net.gateway, "gateway"):
            if path is None:
                self.err((*base, "gateway"), text)
                continue
            try:
                gw = parse_address(text)
            except IpamError as e:
                self.err(path, str(e))
                continue
            fam = self._family_of(path, families, gw.version, f"gateway {gw}")
            if fam is None:
                continue
            if fam.gateway_path is not None:
                self.err(path, f"a second IPv{gw.version} gateway: give one of each family")
                continue
            fam.gateway_path = path
            why = _host_problem(gw, fam.subnet, "gateway")
            if why:
                self.err(path, why)
                fam.usable = False
                continue
            fam.gateway = gw
            fam.held[gw] = "the gateway"

    def ip_ranges(self, base: Path, net: NetworkSpec, families: dict[int, _Family]) -> None:
        for path, text in _entries((*base, "ip_range"), net.ip_range, "ip_range"):
            if path is None:
                self.err((*base, "ip_range"), text)
                continue
            try:
                rng = parse_subnet(text)
            except IpamError as e:
                self.err(path, str(e))
                continue
            fam = self._family_of(path, families, rng.version, f"ip_range {rng}")
            if fam is None:
                continue
            if fam.range_path is not None:
                self.err(path, f"a second IPv{rng.version} ip_range: give one of each family")
                continue
            fam.range_path = path
            if not rng.subnet_of(fam.subnet):  # type: ignore[arg-type]
                self.err(path, f"ip_range {rng} is outside the subnet {fam.subnet}")
                fam.usable = False
            else:
                fam.ip_range = rng

    def aux_addresses(self, base: Path, net: NetworkSpec, families: dict[int, _Family]) -> None:
        for aux_name, text in net.aux_addresses.items():
            path = (*base, "aux_addresses", aux_name)
            try:
                addr = parse_address(text)
            except IpamError as e:
                self.err(path, str(e))
                continue
            fam = self._family_of(path, families, addr.version, f"aux address {addr}")
            if fam is None:
                continue
            why = _host_problem(addr, fam.subnet, f"aux address {aux_name}")
            if why:
                self.err(path, why)
            elif addr in fam.held:
                self.err(path, f"aux address {addr} is already {fam.held[addr]}")
            else:
                fam.held[addr] = f"aux address {aux_name!r}"

    def _family_of(
        self, path: Path, families: dict[int, _Family], version: int, what: str
    ) -> _Family | None:
        fam = families.get(version)
        if fam is None and families:
            others = ", ".join(str(f.subnet) for f in families.values())
            self.err(
                path,
                f"{what} is IPv{version} but the network has no IPv{version} subnet "
                f"(its subnet: {others})",
            )
        return fam

    def options(self, base: Path, net: NetworkSpec, ipv6: bool) -> None:
        for key, value in net.options.items():
            path = (*base, "options", key)
            text = str(value).lower() if isinstance(value, bool) else str(value)
            if key in _BOOL_OPTIONS and text not in ("true", "false"):
                self.err(path, f"must be true or false, not {value!r}")
            elif key == _MTU:
                low = _IPV6_MIN_MTU if ipv6 else 68
                # ASCII digits: str.isdigit() also takes Arabic-Indic and full-width digits.
                if isinstance(value, bool) or not re.fullmatch(r"[0-9]{1,5}", text):
                    self.err(path, f"MTU must be a number between {low} and 65535, not {value!r}")
                elif not low <= int(text) <= 65535:
                    why = " (IPv6 needs 1280 at least)" if ipv6 and int(text) >= 68 else ""
                    self.err(path, f"MTU must be between {low} and 65535, not {text}{why}")
            elif key == _BRIDGE_NAME:
                if net.driver != "bridge":
                    self.err(path, "a bridge name is for the bridge driver")
                elif not re.fullmatch(r"[a-zA-Z0-9_.-]{1,15}", text):
                    self.err(path, f"{text!r} is not a valid interface name (1-15 characters)")
                elif text in self.context.interfaces and not self._own_network_exists(base[-1]):
                    self.err(path, f"interface {text!r} already exists on this host")

    def _own_network_exists(self, name: str | int) -> bool:
        full = f"{self.project}_{name}"
        return any(f.name == full and f.project == self.project for f in self.context.networks)

    def overlaps(self) -> None:
        engine_nets, routes = self._foreign_subnets()
        mine = [
            (name, fam.subnet_path, fam.subnet)
            for name, fams in self.families.items()
            for fam in fams.values()
        ]
        for i, (a, path, sa) in enumerate(mine):
            for b, _, sb in mine[:i]:
                if b != a and overlaps(sa, sb):
                    self.err(path, f"{sa} overlaps the subnet {sb} of network {b!r}")
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
        for f in self.context.networks:
            engine_subnets.update(f.subnets)
            if f.project == self.project and f.name.startswith(own_prefix):
                continue  # ours: kept or replaced by this plan
            engine_nets += [(f.name, n) for n in _subnets(f.subnets)]
        routes = [
            (r.device, dest)
            for r in self.context.routes
            if r.destination not in engine_subnets  # a bridge's route: judged above
            for dest in _subnets([r.destination])
            if dest.prefixlen > 0  # the default route conflicts with nothing
        ]
        return engine_nets, routes

    def _network_kept(self, name: str) -> bool:
        """Does `up` keep the live network `name` as it is (and with it, what its endpoints
        hold)? Only when it is this project's and its configuration is the file's."""
        if name in self.bad_networks:
            return False
        full = f"{self.project}_{name}"
        live = next((f for f in self.context.networks if f.name == full), None)
        if live is None or live.project != self.project or live.spec_hash is None:
            return False
        net = self.spec.networks.get(name) or NetworkSpec()
        return live.spec_hash == network_hash(network_config(self.project, name, net))

    # --- services --------------------------------------------------------------------------

    def service(self, name: str) -> None:
        svc = self.spec.services[name]
        base: Path = ("services", name)
        if not NAME.fullmatch(name):
            self.err(
                base,
                f"{name!r} is not a valid service name (letters, digits, '_', '.', '-', "
                "starting with a letter or digit)",
            )
        why = image_reference_problem(svc.image)
        if why:
            self.err((*base, "image"), why)
        elif svc.image in self.context.images and self.context.images[svc.image] is None:
            hint = " (run: dockmesh images build)" if svc.image.startswith("dockmesh/") else ""
            self.err((*base, "image"), f"image {svc.image!r} is not on the engine{hint}")
        if svc.network_mode is not None and svc.networks:
            self.err(
                (*base, "network_mode"),
                f"network_mode {svc.network_mode} cannot be combined with networks",
            )
        for key, value in svc.environment.items():
            path = (*base, "environment", key)
            if not ENV_KEY.fullmatch(key):
                self.err(path, f"{key!r} is not a valid variable name")
            elif isinstance(value, str):
                self.text(path, value, templates=True)
        self.command((*base, "command"), svc.command)
        self.command((*base, "entrypoint"), svc.entrypoint)
        self.hostname(base, name, svc)
        self.labels((*base, "labels"), svc.labels, discovery=svc.discovery is not None)
        for net_name, attach in svc.networks.items():
            self.attachment(base, name, svc, net_name, attach or ServiceNetwork())
        self.ports(base, name, svc)
        for i, dep in enumerate(svc.dependencies):
            at: Path = (*base, "depends_on", i if isinstance(svc.depends_on, list) else dep)
            if dep not in self.spec.services:
                if dep not in self.left_out:
                    self.err(at, f"unknown service {dep!r}{did_you_mean(dep, self.spec.services)}")
            elif dep == name:
                self.err(at, "a service cannot depend on itself")
        for dep in svc.healthy_dependencies:
            other = self.spec.services.get(dep)
            if other is not None and other.replicas == 0 and svc.replicas == 0:
                pass  # both scaled to nothing (a stack stopped in its file): nothing waits
            elif other is not None and other.replicas == 0:
                # It neither waited nor said anything: nothing of it runs to become healthy.
                self.err(
                    (*base, "depends_on", dep, "condition"),
                    f"service_healthy: {dep!r} has replicas: 0, so none of it can be healthy; "
                    "give it a replica, or use service_started",
                )
            elif other is not None and other.healthcheck is None:
                self.err(
                    (*base, "depends_on", dep, "condition"),
                    f"service_healthy: {dep!r} has no healthcheck: here (its image's is not "
                    "known before it runs); give it one, or use service_started",
                )
            elif other is not None and other.healthcheck is not None:
                test = other.healthcheck.test
                if isinstance(test, list) and test[:1] == ["NONE"]:
                    # It passed here and failed at `up`, once the dependency had been made.
                    self.err(
                        (*base, "depends_on", dep, "condition"),
                        f"service_healthy: {dep!r} turns its healthcheck off (test: [NONE]); "
                        "give it one, or use service_started",
                    )
        if svc.healthcheck is not None:
            self.healthcheck((*base, "healthcheck"), svc.healthcheck)
        self.host_settings(base, svc)
        self.mounts(base, svc)
        if svc.expose is not None:
            self.expose(base, svc)
        if svc.discovery is not None:
            d = svc.discovery
            dp: Path = (*base, "discovery")
            if d.network is not None and d.network not in svc.networks:
                self.err((*dp, "network"), f"{d.network!r} is not one of this service's networks")
            elif d.network is None and len(svc.networks) >= 2:
                # The agent would register no address at all (it never guesses which).
                self.err(
                    dp,
                    f"the service is on {len(svc.networks)} networks "
                    f"({', '.join(svc.networks)}): set network: to the one whose address "
                    "to register",
                )
            if d.check is not None:
                if d.check.http is not None and d.check.tcp:
                    self.err((*dp, "check"), "give http or tcp, not both")
                if d.check.http is not None:
                    why = http_path_problem(d.check.http)
                    if why:
                        self.err((*dp, "check", "http"), why)
                self.duration((*dp, "check", "interval"), d.check.interval)
                self.duration((*dp, "check", "timeout"), d.check.timeout)
            for i, tag in enumerate(d.tags):
                if "," in tag or not tag:
                    self.err((*dp, "tags", i), f"{tag!r}: tags are non-empty and without commas")

    def host_settings(self, base: Path, svc: ServiceSpec) -> None:
        if svc.stop_signal is not None:
            try:
                parse_stop_signal(svc.stop_signal)
            except ValueError as e:
                self.err((*base, "stop_signal"), str(e))
        if svc.stop_grace_period is not None:
            grace = svc.stop_grace_period
            self.duration((*base, "stop_grace_period"), grace, allow_zero=True)
            with contextlib.suppress(ValueError):  # said by duration()
                if grace_s(grace) > MAX_GRACE_S:
                    self.err(
                        (*base, "stop_grace_period"),
                        f"{grace!r} is longer than a stop may wait (at most 24h, as down -t)",
                    )
        if svc.restart is not None:
            try:
                parse_restart(svc.restart)
            except ValueError as e:
                self.err((*base, "restart"), str(e))
        if svc.user == "":
            self.err((*base, "user"), "an empty user (leave user: out for the image's)")
        elif svc.user is not None:
            self.text((*base, "user"), svc.user, templates=False)
        if svc.working_dir is not None and not svc.working_dir.startswith("/"):
            self.err((*base, "working_dir"), f"{svc.working_dir!r}: an absolute path, like /app")
        for key in ("cap_add", "cap_drop"):
            for i, cap in enumerate(getattr(svc, key)):
                if not CAPABILITY.fullmatch(cap):
                    self.err(
                        (*base, key, i),
                        f"{cap!r} is not a capability name (like NET_ADMIN, or ALL)",
                    )
        tmpfs = [svc.tmpfs] if isinstance(svc.tmpfs, str) else svc.tmpfs
        for i, t in enumerate(tmpfs):
            at: Path = (*base, "tmpfs") if isinstance(svc.tmpfs, str) else (*base, "tmpfs", i)
            if not t.startswith("/") or "\0" in t or " " in t:
                self.err(
                    at, f"{t!r}: an absolute path in the container, like /run or /tmp:size=64m"
                )
        limits = svc.deploy.resources.limits if svc.deploy and svc.deploy.resources else None
        for key, value, other in (
            ("mem_limit", svc.mem_limit, limits.memory if limits else None),
            ("cpus", svc.cpus, limits.cpus if limits else None),
        ):
            deploy_key = "memory" if key == "mem_limit" else "cpus"
            deploy_path: Path = (*base, "deploy", "resources", "limits", deploy_key)
            if value is not None and other is not None:
                self.err(
                    (*base, key), f"give {key} or deploy.resources.limits.{deploy_key}, not both"
                )
            for path, v in (((*base, key), value), (deploy_path, other)):
                if v is None:
                    continue
                if key == "mem_limit":
                    self.memory(path, v)
                else:
                    self.cpus(path, v)

    def memory(self, path: Path, value: str | int | float) -> None:
        try:
            n = parse_bytes(value) if not isinstance(value, float) else -1
        except ValueError as e:
            self.err(path, str(e))
            return
        if n < MEMORY_MIN:
            self.err(path, f"{value!r}: the engine takes at least 6m (6 MiB) of memory")

    def cpus(self, path: Path, value: str | int | float) -> None:
        try:
            n = parse_cpus(value)
        except ValueError as e:
            self.err(path, str(e))
            return
        if not 0.01 <= n <= 1024:
            self.err(path, f"{value!r}: a number of CPUs between 0.01 and 1024")

    def mounts(self, base: Path, svc: ServiceSpec) -> None:
        targets: dict[str, int] = {}
        for i, text in enumerate(svc.volumes):
            path: Path = (*base, "volumes", i)
            try:
                m = parse_volume(text)
            except ValueError as e:
                self.err(path, str(e))
                continue
            if "\0" in text:
                self.err(path, "contains a NUL character")
                continue
            unknown = m.kind == "volume" and m.source and m.source not in self.spec.volumes
            if unknown and m.source not in self.left_out:
                hint = did_you_mean(m.source, self.spec.volumes)
                where = "not under the top-level volumes:"
                self.err(path, f"unknown volume {m.source!r} ({where}){hint}")
            if m.target in targets:
                self.err(path, f"{m.target} is already mounted by volumes.{targets[m.target]}")
            targets.setdefault(m.target, i)

    def volumes(self) -> None:
        for name, vol in self.spec.volumes.items():
            base: Path = ("volumes", name)
            if not NAME.fullmatch(name):
                self.err(
                    base,
                    f"{name!r} is not a valid volume name (letters, digits, '_', '.', '-', "
                    "starting with a letter or digit)",
                )
            if vol is not None:
                self.labels((*base, "labels"), vol.labels, discovery=False)

    def text(self, path: Path, value: str, templates: bool) -> bool:
        """Checks a value handed to a process: no NUL (an argv or environment entry cannot
        hold one) and only known template variables. True when it is fine."""
        if "\0" in value:
            self.err(path, "contains a NUL character, which no command or variable can hold")
            return False
        if templates:
            unknown = [n for n in template_names(value) if n not in TEMPLATE_VARIABLES]
            if unknown:
                known = ", ".join("{{" + v + "}}" for v in TEMPLATE_VARIABLES)
                self.err(path, f"unknown template variable {unknown[0]!r} (known: {known})")
                return False
        return True

    def command(self, path: Path, value: str | list[str] | None) -> None:
        if value is None:
            return
        if isinstance(value, list):
            for i, arg in enumerate(value):
                self.text((*path, i), arg, templates=True)
            return
        if not self.text(path, value, templates=True):
            return
        try:
            split_command(value)
        except ValueError as e:
            self.err(path, str(e))

    def hostname(self, base: Path, name: str, svc: ServiceSpec) -> None:
        if svc.hostname is None:
            return
        path = (*base, "hostname")
        if not self.text(path, svc.hostname, templates=True):
            return
        # The longest name a replica gets: the last replica's.
        last = max(svc.replicas, 1)
        values = {
            "replica": str(last),
            "service": name,
            "project": self.project,
            "name": f"{self.project}-{name}-{last}",
        }
        host = substitute(svc.hostname, values)
        if len(host) > HOSTNAME_MAX:
            self.err(path, f"{host!r} is {len(host)} characters; a hostname has {HOSTNAME_MAX}")
        elif not HOSTNAME.fullmatch(host):
            self.err(
                path,
                f"{host!r} is not a valid hostname (letters, digits, '-', '_', '.'; "
                "starting and ending with a letter or digit)",
            )

    def expose(self, base: Path, svc: ServiceSpec) -> None:
        ep: Path = (*base, "expose")
        _, problems = decode_fields(expose_fields(svc))
        for p in problems:
            field_name = p.split(":", 1)[0].split("=", 1)[0].split(" ", 1)[0]
            at = (*ep, field_name) if field_name in FIELDS else ep
            self.err(at, p)
        if svc.discovery is None and (svc.expose is None or svc.expose.port is None):
            self.err(ep, "needs port: (the port to send to), or a discovery: section")
        for key in svc.labels:
            if key.startswith(HTTP_PREFIX):
                self.err((*base, "labels", key), f"{key!r} is written by this service's expose:")

    def labels(self, path: Path, labels: dict[str, str], discovery: bool) -> None:
        for key, value in labels.items():
            p = (*path, key)
            if not key or not key.isprintable() or any(ch.isspace() for ch in key) or "=" in key:
                self.err(p, f"{key!r} is not a valid label key (no spaces, '=' or controls)")
            # Labels `up` writes itself: a file's value would be overwritten, or would lie.
            elif key == LABEL_PROJECT or key.startswith(STAMP_PREFIX):
                self.err(p, f"{key!r} is a label dockmesh writes itself")
            elif discovery and key in DISCOVERY_LABELS:
                self.err(p, f"{key!r} is written by this service's discovery: give it there")
            elif "\0" in value:
                self.err(p, "contains a NUL character")

    def healthcheck(self, hp: Path, hc: Healthcheck) -> None:
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
        if hc.http is not None:
            why = http_path_problem(hc.http)
            if why:
                self.err((*hp, "http"), why)
        if hc.test is not None:
            self.healthcheck_test((*hp, "test"), hc.test)
        for f in ("interval", "timeout", "start_period"):
            self.duration((*hp, f), getattr(hc, f), allow_zero=f == "start_period")

    def healthcheck_test(self, path: Path, test: str | list[str]) -> None:
        if isinstance(test, str):
            if not test.strip():
                self.err(path, "an empty test (leave the healthcheck out, or test: [NONE])")
            else:
                self.text(path, test, templates=False)
            return
        if not test:
            self.err(path, "an empty test: give [CMD, prog, args…], [CMD-SHELL, cmd] or [NONE]")
            return
        form, args = test[0], test[1:]
        for i, arg in enumerate(test):
            if not self.text((*path, i), arg, templates=False):
                return
        if form not in HEALTHCHECK_FORMS:
            self.err(
                (*path, 0),
                f"{form!r}: a test list starts with CMD, CMD-SHELL or NONE "
                "(a string is run by the shell)",
            )
        elif form == "CMD" and (not args or not args[0]):
            self.err(path, "CMD needs a program to run: [CMD, prog, args…]")
        elif form == "CMD-SHELL" and (len(args) != 1 or not args[0].strip()):
            self.err(path, "CMD-SHELL takes one command string: [CMD-SHELL, 'cmd args…']")
        elif form == "NONE" and args:
            self.err(path, "NONE stands alone: [NONE] turns the image's healthcheck off")

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
        self, base: Path, svc_name: str, svc: ServiceSpec, net_name: str, attach: ServiceNetwork
    ) -> None:
        path: Path = (*base, "networks", net_name)
        if net_name not in self.spec.networks:
            if net_name not in self.left_out:
                self.err(path, f"unknown network {net_name!r} (not under networks:)")
            return
        for i, alias in enumerate(attach.aliases):
            if not ALIAS.fullmatch(alias) or len(alias) > DNS_NAME_MAX:
                self.err((*path, "aliases", i), f"{alias!r} is not a valid DNS name")
        for version, fname in _ADDRESS_FIELD.items():
            text = getattr(attach, fname)
            if text is not None:
                self.static_address((*path, fname), svc_name, svc, net_name, version, text)

    def static_address(
        self, ip_path: Path, svc_name: str, svc: ServiceSpec, net_name: str, version: int, text: str
    ) -> None:
        if svc.replicas > 1:
            self.err(ip_path, f"a static address cannot be shared by {svc.replicas} replicas")
        try:
            addr = parse_address(text)
        except IpamError as e:
            self.err(ip_path, str(e))
            return
        if addr.version != version:
            other = _ADDRESS_FIELD[addr.version]
            self.err(ip_path, f"{addr} is an IPv{addr.version} address: give it as {other}")
            return
        if isinstance(addr, ipaddress.IPv6Address) and addr.scope_id is not None:
            self.err(ip_path, f"{text!r}: the engine takes no zone index (%…) in an address")
            return
        fams = self.families.get(net_name, {})
        fam = fams.get(version)
        if fam is None:
            net_spec = self.spec.networks[net_name] or NetworkSpec()
            if net_spec.subnet is None:
                self.err(
                    ip_path,
                    f"a static address needs the network {net_name!r} to declare its subnet",
                )
            elif not any(_version_of(t) == version for t in _texts(net_spec.subnet)):
                self.err(
                    ip_path,
                    f"a static IPv{version} address needs the network {net_name!r} to declare "
                    f"an IPv{version} subnet",
                )
            return
        why = _host_problem(addr, fam.subnet, "address")
        if why:
            self.err(ip_path, why)
            return
        if addr in fam.held:
            self.err(ip_path, f"address {addr} is already {fam.held[addr]}")
            return
        mine = f"{self.project}-{svc_name}-1"
        holder = self._live_holder(net_name, addr)
        if holder is not None and holder != mine:
            owner = self.context.containers.get(holder)
            if owner != self.project:
                self.err(
                    ip_path,
                    f"address {addr} is held on the engine by container {holder!r}, "
                    "which is not of this project",
                )
                return
            if self._keeps_pool_address(holder, net_name, version):
                self.err(
                    ip_path,
                    f"address {addr} is held on the engine by container {holder!r}, which "
                    "draws its address from the pool and is kept unless its configuration "
                    "changes (run `dockmesh down` first, or pick another address)",
                )
                return
        if svc.replicas == 0:
            return  # no container: nothing holds it
        fam.held[addr] = f"the address of service {svc_name!r}"
        self.pinned.setdefault((net_name, version), []).append(_Pinned(svc_name, addr, ip_path))

    def _live_holder(self, net_name: str, addr: IPAddress) -> str | None:
        if not self._network_kept(net_name):
            return None  # created or replaced: it starts empty
        held = self.context.endpoints.get(f"{self.project}_{net_name}", {})
        return held.get(str(addr))

    def _keeps_pool_address(self, container: str, net_name: str, version: int) -> bool:
        """Is `container` (this project's) one the file still makes, drawing its address on
        `net_name` from the pool? (A container the file no longer makes is removed first; one
        whose address the file now pins has a new configuration and is replaced.)"""
        for name, svc in self.spec.services.items():
            for r in range(1, svc.replicas + 1):
                if f"{self.project}-{name}-{r}" == container:
                    attach = svc.networks.get(net_name, ServiceNetwork()) or ServiceNetwork()
                    return (
                        net_name in svc.networks
                        and getattr(attach, _ADDRESS_FIELD[version]) is None
                    )
        return False

    def ports(self, base: Path, svc_name: str, svc: ServiceSpec) -> None:
        for i, p in enumerate(svc.ports):
            path = (*base, "ports", i)
            try:
                m: PortMapping = parse_port(p)
            except ValueError as e:
                self.err(path, str(e))
                continue
            if svc.network_mode is not None:
                self.err(path, f"ports cannot be published with network_mode {svc.network_mode}")
                continue
            if m.host_port is None or svc.replicas == 0:
                continue
            if svc.replicas > 1:
                self.err(
                    path,
                    f"host port {m.host_port} cannot be published by {svc.replicas} "
                    "replicas (leave the host port out to let the engine pick)",
                )
            self.bindings.append(_Binding(path, m))

    def cycles(self) -> bool:
        graph = {
            n: [d for d in s.dependencies if d in self.spec.services and d != n]
            for n, s in self.spec.services.items()
        }
        found = False
        for cycle in _find_cycles(graph):
            found = True
            first = cycle[0]
            self.err(
                ("services", first, "depends_on"),
                "depends_on cycle: " + " -> ".join([*cycle, first]),
            )
        return found

    # --- across services -------------------------------------------------------------------

    def _drawing(self, net_name: str, version: int) -> list[tuple[str, int]]:
        """(service, replicas) of the services whose containers take an address of this
        family on `net_name` from the pool."""
        out = []
        for name, svc in self.spec.services.items():
            if net_name not in svc.networks or svc.network_mode is not None:
                continue
            attach = svc.networks[net_name] or ServiceNetwork()
            if getattr(attach, _ADDRESS_FIELD[version]) is None and svc.replicas > 0:
                out.append((name, svc.replicas))
        return out

    def capacity(self) -> None:
        for net_name, fams in self.families.items():
            kept = self._network_kept(net_name)
            live = self.context.endpoints.get(f"{self.project}_{net_name}", {}) if kept else {}
            for version, fam in fams.items():
                if not fam.usable:
                    continue
                drawing = self._drawing(net_name, version)
                asked = sum(n for _, n in drawing)
                if not asked:
                    continue
                foreign = [
                    (a, f"held by {c!r}")
                    for a, c in _live_addresses(live, version)
                    if self.context.containers.get(c) != self.project
                ]
                r = room(fam.subnet, fam.ip_range, [*fam.held.items(), *foreign])
                if r.free >= asked:
                    continue
                less = f", less {_and([what for _, what in r.taken])}" if r.taken else ""
                who = ", ".join(f"{s!r}: {n}" for s, n in drawing)
                self.err(
                    fam.pool_path,
                    f"the pool {r.pool} has room for {r.free} container"
                    f"{'' if r.free == 1 else 's'} ({r.size} addresses{less}); "
                    f"{asked} containers draw from it ({who})",
                )

    def pinned_after_pool_users(self) -> None:
        """A pinned address inside the pool is safe only if its container starts before any
        container that draws from that pool: the engine hands out the lowest free address."""
        order = start_order(self.spec)
        position = {n: i for i, n in enumerate(order)}
        for (net_name, version), pins in self.pinned.items():
            fam = self.families[net_name][version]
            drawing = [s for s, _ in self._drawing(net_name, version)]
            for pin in pins:
                if pin.address not in fam.pool:
                    continue
                before = [d for d in drawing if position[d] < position[pin.service]]
                if not before:
                    continue
                ancestors = self._ancestors(pin.service)
                first = before[0]
                why = (
                    f"{pin.service!r} depends on it"
                    if first in ancestors
                    else "the order depends_on sets"
                )
                self.err(
                    pin.path,
                    f"{pin.address} lies in the dynamic pool {fam.pool} of network "
                    f"{net_name!r}, and service {first!r}, which draws from that pool, starts "
                    f"first ({why}): the engine may give it this address. Pin an address "
                    f"outside the pool (ip_range), or give {first!r} a static address",
                )

    def _ancestors(self, name: str) -> set[str]:
        seen: set[str] = set()
        stack = [name]
        while stack:
            for d in self.spec.services[stack.pop()].dependencies:
                if d in self.spec.services and d not in seen:
                    seen.add(d)
                    stack.append(d)
        return seen

    def host_ports(self) -> None:
        for i, b in enumerate(self.bindings):
            m = b.mapping
            for earlier in self.bindings[:i]:
                e = earlier.mapping
                if (e.host_port, e.protocol) == (m.host_port, m.protocol) and _same_address(
                    e.host_ip, m.host_ip
                ):
                    where = ".".join(str(x) for x in earlier.path)
                    self.err(
                        b.path,
                        f"host port {_binding(m)} is already published by {where} ({_binding(e)})",
                    )
                    break
            else:
                for pub in self.context.published:
                    if (
                        pub.project != self.project
                        and (pub.host_port, pub.protocol) == (m.host_port, m.protocol)
                        and _same_address(pub.host_ip, m.host_ip)
                    ):
                        self.err(
                            b.path,
                            f"host port {_binding(m)} is already published by the running "
                            f"container {pub.container!r} ({pub.host_ip or '*'}:{pub.host_port}"
                            f"/{pub.protocol}), which is not of this project",
                        )
                        break

    def container_names(self) -> None:
        made: dict[str, str] = {}
        for name, svc in self.spec.services.items():
            if svc.replicas > 0:
                longest = f"{self.project}-{name}-{svc.replicas}"
                if len(longest) > HOSTNAME_MAX:
                    self.err(
                        ("services", name),
                        f"container name {longest!r} is {len(longest)} characters: a "
                        f"container's name is its hostname and DNS name, at most "
                        f"{HOSTNAME_MAX} (shorten the project or service name)",
                    )
            for r in range(1, svc.replicas + 1):
                cname = f"{self.project}-{name}-{r}"
                if cname in made:
                    self.err(
                        ("services", name),
                        f"container name {cname!r} is also made by service {made[cname]!r}",
                    )
                made[cname] = name
                owner = self.context.containers.get(cname, self.project)
                if cname in self.context.containers and owner != self.project:
                    self.err(
                        ("services", name),
                        f"the engine already has a container {cname!r} "
                        "that this project did not create",
                    )


# --- helpers ------------------------------------------------------------------------------


def _entries(path: Path, value: PerFamily | None, what: str) -> list[tuple[Path | None, str]]:
    """A per-family field's values with their paths; (None, message) when the list itself
    is wrong."""
    if value is None:
        return []
    if isinstance(value, str):
        return [(path, value)]
    if not value:
        return [(None, f"an empty list: give one {what}, or one per family")]
    if len(value) > 2:
        return [(None, f"at most two: one IPv4 {what} and one IPv6 {what}")]
    return [((*path, i), v) for i, v in enumerate(value)]


def _texts(value: PerFamily | None) -> list[str]:
    return [t for p, t in _entries((), value, "") if p is not None]


def _version_of(text: str) -> int | None:
    try:
        return parse_subnet(text).version
    except IpamError:
        return None


def _host_problem(addr: IPAddress, net: IPNetwork, what: str) -> str | None:
    """Why a host (gateway, container) cannot take `addr` in `net`, as the engine sees it."""
    if addr.version != net.version:
        return f"{what} {addr} is IPv{addr.version} but the subnet {net} is IPv{net.version}"
    if addr not in net:
        return f"{what} {addr} is outside the subnet {net}"
    if addr in never_handed_out(net):
        kind = "network" if addr == net.network_address else "broadcast"
        return f"{what} {addr} is the {kind} address of {net}"
    return None


def _live_addresses(held: Mapping[str, str], version: int) -> Iterator[tuple[IPAddress, str]]:
    for text, container in held.items():
        try:
            addr = ipaddress.ip_address(text)
        except ValueError:
            continue  # what the engine reports is not ours to judge
        if addr.version == version:
            yield addr, container


# What a host address binds: a specific address, or every address of one family ("*").
_Scope = tuple[str, int]


def _scopes(host_ip: str | None) -> set[_Scope]:
    if host_ip is None:  # no address: the engine binds 0.0.0.0 and [::]
        return {("*", 4), ("*", 6)}
    try:
        addr = ipaddress.ip_address(host_ip)
    except ValueError:
        return {(host_ip, 0)}
    if addr.is_unspecified:
        return {("*", addr.version)}
    return {(str(addr), addr.version)}


def _same_address(a: str | None, b: str | None) -> bool:
    """Would binding the same port on `a` and on `b` collide? A wildcard takes every address
    of its family (measured: 0.0.0.0 and [::] do not collide with each other on 20.10; no
    address at all binds both)."""
    return any(
        x == y or (x[0] == "*" and x[1] == y[1]) or (y[0] == "*" and y[1] == x[1])
        for x in _scopes(a)
        for y in _scopes(b)
    )


def _binding(m: PortMapping) -> str:
    host = "" if m.host_ip is None else (f"[{m.host_ip}]:" if ":" in m.host_ip else f"{m.host_ip}:")
    return f"{host}{m.host_port}/{m.protocol}"


def _and(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


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
    state: dict[str, int] = {}  # 1: on the path, 2: done
    # Iterative: a chain of 1 500 services, each depending on the next, was a RecursionError.
    for root in sorted(graph):
        if state.get(root) is not None:
            continue
        path: list[str] = [root]
        todo: list[Iterator[str]] = [iter(graph.get(root, []))]
        state[root] = 1
        while todo:
            d = next(todo[-1], None)
            if d is None:
                todo.pop()
                state[path.pop()] = 2
            elif state.get(d) == 1:
                cyc = path[path.index(d) :]
                k = cyc.index(min(cyc))
                canon = tuple(cyc[k:] + cyc[:k])
                if canon not in seen:
                    seen.add(canon)
                    yield list(canon)
            elif state.get(d) is None:
                state[d] = 1
                path.append(d)
                todo.append(iter(graph.get(d, [])))
