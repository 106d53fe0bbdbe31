"""A validated spec → the networks and containers that should exist, as typed values.

Each desired object is a `NetworkConfig` / `ContainerConfig` (the engine's request) and the
hash of its canonical JSON. `up` stamps both on what it creates (labels `dockmesh.spec.hash`,
`dockmesh.spec.config`), so a later plan compares like with like, can say which fields
changed, and an object can be re-created from its labels alone. A container's hash includes
the hashes of its networks: replacing a network replaces what is attached to it.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from dataclasses import dataclass, replace

from dockmesh.model.canonical import digest
from dockmesh.model.config import (
    ContainerConfig,
    EndpointConfig,
    HealthcheckConfig,
    IpamConfig,
    MountConfig,
    NetworkConfig,
    VolumeConfig,
)
from dockmesh.model.durations import grace_s
from dockmesh.model.httproute import decode_fields, encode_labels
from dockmesh.model.ipam import parse_address, parse_subnet
from dockmesh.model.labels import (
    LABEL_PROJECT,
    LABEL_REPLICA,
    LABEL_SERVICE,
    Discovery,
    DiscoveryCheck,
    encode_discovery,
    stamp,
)
from dockmesh.model.signals import parse_stop_signal
from dockmesh.projectfile.parse import (
    VolumeMount,
    parse_bytes,
    parse_cpus,
    parse_duration_ns,
    parse_port,
    parse_restart,
    parse_volume,
    split_command,
    substitute,
)
from dockmesh.projectfile.schema import (
    Healthcheck,
    NetworkSpec,
    ServiceNetwork,
    ServiceSpec,
    Spec,
    VolumeSpec,
    per_family,
)


@dataclass(frozen=True, slots=True)
class DesiredNetwork:
    key: str  # the file's short name
    config: NetworkConfig  # its labels: the user's and the project's, not the stamp
    hash: str

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def driver(self) -> str:
        return self.config.driver

    def stamped(self) -> NetworkConfig:
        """What to ask the engine for: the configuration with its stamp in its labels."""
        return replace(
            self.config, labels=stamp(self.config.labels, self.config.to_json(), self.hash)
        )


@dataclass(frozen=True, slots=True)
class DesiredContainer:
    service: str
    replica: int
    config: ContainerConfig
    depends_on: tuple[str, ...]  # service names
    hash: str
    # Containers that must be healthy before this one is created (`condition: service_healthy`).
    wait_for: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def static_addresses(self) -> bool:
        return any(e.ipv4_address or e.ipv6_address for e in self.config.networks)

    def stamped(self) -> ContainerConfig:
        return replace(
            self.config, labels=stamp(self.config.labels, self.config.to_json(), self.hash)
        )


def network_hash(config: NetworkConfig) -> str:
    return digest(config.to_json())


def container_hash(config: ContainerConfig, network_hashes: Mapping[str, str]) -> str:
    return digest({"config": config.to_json(), "networks": dict(sorted(network_hashes.items()))})


@dataclass(frozen=True, slots=True)
class Desired:
    project: str
    networks: tuple[DesiredNetwork, ...]
    containers: tuple[DesiredContainer, ...]  # in start order (depends_on first)
    volumes: tuple[VolumeConfig, ...] = ()  # named volumes: made when missing, kept by `up`


def volume_name(project: str, key: str) -> str:
    return f"{project}_{key}"


def volume_config(project: str, key: str, vol: VolumeSpec) -> VolumeConfig:
    return VolumeConfig(
        name=volume_name(project, key),
        driver=vol.driver,
        options=dict(sorted(vol.driver_opts.items())),
        labels={**dict(sorted(vol.labels.items())), LABEL_PROJECT: project},
    )


def desired_state(spec: Spec, project: str) -> Desired:
    """Assumes `validate` found no problems."""
    networks = tuple(
        DesiredNetwork(key, c, network_hash(c))
        for key, c in (
            (key, network_config(project, key, net or NetworkSpec()))
            for key, net in spec.networks.items()
        )
    )
    by_key = {n.key: n for n in networks}
    containers: list[DesiredContainer] = []
    for svc_name in start_order(spec):
        svc = spec.services[svc_name]
        wait_for = tuple(
            f"{project}-{dep}-{n}"
            for dep in svc.healthy_dependencies
            if dep in spec.services
            for n in range(1, spec.services[dep].replicas + 1)
        )
        for r in range(1, svc.replicas + 1):
            made = _container(project, svc_name, svc, r, by_key)
            containers.append(replace(made, wait_for=wait_for) if wait_for else made)
    volumes = tuple(
        volume_config(project, key, vol or VolumeSpec()) for key, vol in spec.volumes.items()
    )
    return Desired(project, networks, tuple(containers), volumes)


def pins_an_address(svc: ServiceSpec) -> bool:
    return any(
        a is not None and (a.ipv4_address is not None or a.ipv6_address is not None)
        for a in svc.networks.values()
    )


def start_order(spec: Spec) -> list[str]:
    """Services with what they depend on first. Where depends_on leaves a choice, services
    with a static address start first, each with what it depends on, the one with the
    fewest of those first (ties in file order); then the rest, in file order. The engine
    hands pool addresses to containers as they start: one that started earlier could hold
    an address a later one pins. Assumes no cycles (validation refuses them); on one, the
    order is still total and ends."""
    names = list(spec.services)
    index = {n: i for i, n in enumerate(names)}
    deps = {
        n: [d for d in dict.fromkeys(spec.services[n].dependencies) if d in index and d != n]
        for n in names
    }
    order: list[str] = []
    entered: set[str] = set()

    def place(root: str) -> None:
        """`root` after what it depends on, depth first (iterative: chains can be long)."""
        if root in entered:
            return
        entered.add(root)
        stack = [(root, iter(deps[root]))]
        while stack:
            node, rest = stack[-1]
            for d in rest:
                if d not in entered:
                    entered.add(d)
                    stack.append((d, iter(deps[d])))
                    break
            else:
                stack.pop()
                order.append(node)

    def waiting_for(name: str) -> int:
        seen: set[str] = set()
        todo = [name]
        while todo:
            for d in deps[todo.pop()]:
                if d not in seen and d not in entered:
                    seen.add(d)
                    todo.append(d)
        return len(seen)

    pinned = [n for n in names if pins_an_address(spec.services[n])]
    while pinned:
        first = min(pinned, key=lambda n: (waiting_for(n), index[n]))
        pinned.remove(first)
        place(first)
    for name in names:
        place(name)
    return order


def network_config(project: str, key: str, net: NetworkSpec) -> NetworkConfig:
    """What the engine is asked to create for one network of the file. Addresses are written
    in their canonical form, as the engine reports them back, so that a later plan compares
    like with like (`FD00:0::/64` is read back as `fd00::/64`)."""
    options = {
        k: (str(v).lower() if isinstance(v, bool) else str(v)) for k, v in net.options.items()
    }
    if net.parent is not None:
        options["parent"] = net.parent
    subnets = sorted((parse_subnet(t) for t in per_family(net.subnet)), key=lambda n: n.version)
    gateways = {a.version: str(a) for a in map(parse_address, per_family(net.gateway))}
    ranges = {r.version: str(r) for r in map(parse_subnet, per_family(net.ip_range))}
    ipam = tuple(
        IpamConfig(
            str(sub),
            gateways.get(sub.version),
            ranges.get(sub.version),
            {
                k: str(a)
                for k, a in ((k, parse_address(v)) for k, v in sorted(net.aux_addresses.items()))
                if a.version == sub.version
            },
        )
        for sub in subnets
    )
    has_v6 = any(sub.version == 6 for sub in subnets)
    return NetworkConfig(
        name=f"{project}_{key}",
        driver=net.driver,
        ipam=ipam,
        internal=net.internal,
        attachable=net.attachable,
        enable_ipv6=has_v6 if net.enable_ipv6 is None else net.enable_ipv6,
        options=dict(sorted(options.items())),
        labels={**dict(sorted(net.labels.items())), LABEL_PROJECT: project},
    )


def _argv(value: str | list[str] | None, values: Mapping[str, str]) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, str):
        # Substituted before splitting, so that `{{ name }}` is one word: the values are
        # names and numbers, which hold no spaces or quotes.
        return tuple(split_command(substitute(value, values)))
    return tuple(substitute(p, values) for p in value)


HEALTHCHECK_FORMS = ("CMD", "CMD-SHELL", "NONE")


def healthcheck_test(hc: Healthcheck) -> list[str]:
    """A Docker HEALTHCHECK test. `test:` is taken in Docker's and Compose's forms (a list
    starting with CMD, CMD-SHELL or NONE; a string is CMD-SHELL). http and tcp checks work in
    both offline images: the Debian image has python3; busybox has nc (its wget segfaults,
    statically linked, so it is not used)."""
    timeout_s = max(1, parse_duration_ns(hc.timeout) // 1_000_000_000)
    if hc.test is not None:
        return ["CMD-SHELL", hc.test] if isinstance(hc.test, str) else list(hc.test)
    if hc.http is not None:
        # The path travels as an argument, never inside code or a format string: validation
        # keeps it to printable ASCII, and quoting keeps the shell's hands off it.
        url = f"http://127.0.0.1:{hc.port}{hc.http}"
        py = f"import sys,urllib.request; urllib.request.urlopen(sys.argv[1], timeout={timeout_s})"
        request = "GET %s HTTP/1.0\\r\\nHost: 127.0.0.1\\r\\n\\r\\n"
        return [
            "CMD-SHELL",
            f"if command -v python3 >/dev/null 2>&1; then python3 -c {shlex.quote(py)} "
            f"{shlex.quote(url)}; else printf {shlex.quote(request)} {shlex.quote(hc.http)} "
            f"| nc -w {timeout_s} 127.0.0.1 {hc.port} | head -n1 | grep -q ' [23][0-9][0-9] '; fi",
        ]
    py = (
        f"import socket; socket.create_connection(('127.0.0.1', {hc.port}), "
        f"timeout={timeout_s}).close()"
    )
    return [
        "CMD-SHELL",
        f"if command -v python3 >/dev/null 2>&1; then python3 -c {shlex.quote(py)}; "
        f"else nc -w {timeout_s} 127.0.0.1 {hc.port} </dev/null; fi",
    ]


def _healthcheck(hc: Healthcheck | None) -> HealthcheckConfig | None:
    if hc is None:
        return None
    return HealthcheckConfig(
        test=tuple(healthcheck_test(hc)),
        interval_ns=parse_duration_ns(hc.interval),
        timeout_ns=parse_duration_ns(hc.timeout),
        retries=hc.retries,
        start_period_ns=parse_duration_ns(hc.start_period),
    )


def expose_fields(svc: ServiceSpec) -> dict[str, str]:
    """A service's `expose:` as the route's fields' text (`model.httproute.decode_fields`)."""
    e = svc.expose
    if e is None:
        return {}
    out = {"path": e.path or "/"}
    if e.host is not None:
        out["host"] = e.host if isinstance(e.host, str) else ",".join(e.host)
    if e.strip_prefix is not False:
        out["strip_prefix"] = "true" if e.strip_prefix is True else str(e.strip_prefix)
    if e.middlewares:
        out["middlewares"] = ",".join(e.middlewares)
    # Without a discovery: section the port is the registration's (`discovery_of`).
    if e.port is not None and svc.discovery is not None:
        out["port"] = str(e.port)
    return out


def expose_labels(svc: ServiceSpec) -> dict[str, str]:
    """The `dockmesh.http.*` labels of a service's `expose:` (none when it is wrong: the
    validation reports it)."""
    route, _ = decode_fields(expose_fields(svc)) if svc.expose is not None else (None, [])
    return encode_labels(route) if route is not None else {}


def discovery_of(project: str, svc_name: str, svc: ServiceSpec) -> Discovery | None:
    d = svc.discovery
    if d is None:
        if svc.expose is not None and svc.expose.port is not None:
            # Exposed without a discovery: section: registered under its own name, so the
            # proxy has an instance to send to.
            return Discovery(service=svc_name, port=svc.expose.port)
        return None
    check = None
    if d.check is not None:
        check = DiscoveryCheck(d.check.http, d.check.tcp, d.check.interval, d.check.timeout)
    return Discovery(
        service=d.name or svc_name,
        port=d.port,
        tags=tuple(d.tags),
        weight=d.weight,
        network=f"{project}_{d.network}" if d.network is not None else None,
        check=check,
        # A name given explicitly claims the short name too, where projects share it.
        short_name=d.name is not None,
    )


def _mount(project: str, m: VolumeMount) -> MountConfig:
    """A bind's source is absolute by now (the loader resolves it against the file's
    folder); a named volume's is the project's volume."""
    source = volume_name(project, m.source) if m.kind == "volume" and m.source else m.source
    return MountConfig(m.kind, source, m.target, m.read_only)


def _canonical_address(text: str | None) -> str | None:
    return None if text is None else str(parse_address(text))


def _container(
    project: str,
    svc_name: str,
    svc: ServiceSpec,
    replica: int,
    networks: Mapping[str, DesiredNetwork],
) -> DesiredContainer:
    name = f"{project}-{svc_name}-{replica}"
    values = {"replica": str(replica), "service": svc_name, "project": project, "name": name}
    env = {
        k: substitute(
            "" if v is None else (str(v).lower() if isinstance(v, bool) else str(v)), values
        )
        for k, v in sorted(svc.environment.items())
    }
    endpoints = tuple(
        EndpointConfig(
            networks[k].name,
            tuple(a.aliases),
            _canonical_address(a.ipv4_address),
            _canonical_address(a.ipv6_address),
        )
        for k, a in ((k, a or ServiceNetwork()) for k, a in svc.networks.items())
    )
    discovery = discovery_of(project, svc_name, svc)
    labels = {
        **dict(sorted(svc.labels.items())),
        **(encode_discovery(discovery) if discovery is not None else {}),
        **expose_labels(svc),
        LABEL_PROJECT: project,
        LABEL_SERVICE: svc_name,
        LABEL_REPLICA: str(replica),
    }
    limits = svc.deploy.resources.limits if svc.deploy and svc.deploy.resources else None
    memory = svc.mem_limit if svc.mem_limit is not None else (limits.memory if limits else None)
    cpus = svc.cpus if svc.cpus is not None else (limits.cpus if limits else None)
    restart = None
    if svc.restart is not None:
        policy, count = parse_restart(svc.restart)
        restart = f"{policy}:{count}" if count else policy
    config = ContainerConfig(
        name=name,
        image=svc.image,
        command=_argv(svc.command, values),
        entrypoint=_argv(svc.entrypoint, values),
        environment=env,
        hostname=substitute(svc.hostname, values) if svc.hostname else name,
        networks=endpoints,
        network_mode=svc.network_mode,
        ports=tuple(parse_port(p) for p in svc.ports),
        healthcheck=_healthcheck(svc.healthcheck),
        labels=labels,
        restart=restart,
        user=svc.user,
        working_dir=svc.working_dir,
        cap_add=tuple(svc.cap_add),
        cap_drop=tuple(svc.cap_drop),
        tmpfs=(svc.tmpfs,) if isinstance(svc.tmpfs, str) else tuple(svc.tmpfs),
        init=svc.init,
        memory_bytes=None if memory is None else parse_bytes(memory),
        nano_cpus=None if cpus is None else round(parse_cpus(cpus) * 1e9),
        mounts=tuple(_mount(project, parse_volume(v)) for v in svc.volumes),
        stop_signal=None if svc.stop_signal is None else parse_stop_signal(svc.stop_signal),
        stop_grace_s=None if svc.stop_grace_period is None else grace_s(svc.stop_grace_period),
    )
    network_hashes = {networks[k].name: networks[k].hash for k in svc.networks}
    return DesiredContainer(
        service=svc_name,
        replica=replica,
        config=config,
        depends_on=tuple(svc.dependencies),
        hash=container_hash(config, network_hashes),
    )
