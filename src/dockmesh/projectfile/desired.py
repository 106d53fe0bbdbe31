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
    NetworkConfig,
)
from dockmesh.model.labels import (
    LABEL_PROJECT,
    LABEL_REPLICA,
    LABEL_SERVICE,
    Discovery,
    DiscoveryCheck,
    encode_discovery,
    stamp,
)
from dockmesh.projectfile.parse import parse_duration_ns, parse_port
from dockmesh.projectfile.schema import Healthcheck, NetworkSpec, ServiceNetwork, ServiceSpec, Spec


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


def desired_state(spec: Spec, project: str) -> Desired:
    """Assumes `validate` found no problems."""
    networks = tuple(
        _network(project, key, net or NetworkSpec()) for key, net in spec.networks.items()
    )
    by_key = {n.key: n for n in networks}
    containers: list[DesiredContainer] = []
    for svc_name in start_order(spec):
        svc = spec.services[svc_name]
        for r in range(1, svc.replicas + 1):
            containers.append(_container(project, svc_name, svc, r, by_key))
    return Desired(project, networks, tuple(containers))


def start_order(spec: Spec) -> list[str]:
    """Services with what they depend on first; ties in file order. Assumes no cycles."""
    order: list[str] = []
    done: set[str] = set()

    def visit(name: str) -> None:
        if name in done:
            return
        done.add(name)
        for dep in spec.services[name].depends_on:
            if dep in spec.services:
                visit(dep)
        order.append(name)

    for name in spec.services:
        visit(name)
    return order


def _network(project: str, key: str, net: NetworkSpec) -> DesiredNetwork:
    options = {
        k: (str(v).lower() if isinstance(v, bool) else str(v)) for k, v in net.options.items()
    }
    if net.parent is not None:
        options["parent"] = net.parent
    ipam: tuple[IpamConfig, ...] = ()
    if net.subnet is not None:
        ipam = (IpamConfig(net.subnet, net.gateway, net.ip_range, dict(net.aux_addresses)),)
    config = NetworkConfig(
        name=f"{project}_{key}",
        driver=net.driver,
        ipam=ipam,
        internal=net.internal,
        attachable=net.attachable,
        enable_ipv6=net.enable_ipv6,
        options=dict(sorted(options.items())),
        labels={**dict(sorted(net.labels.items())), LABEL_PROJECT: project},
    )
    return DesiredNetwork(key, config, network_hash(config))


def _substitute(text: str, values: Mapping[str, str]) -> str:
    for k, v in values.items():
        text = text.replace("{{" + k + "}}", v).replace("{{ " + k + " }}", v)
    return text


def _argv(value: str | list[str] | None, values: Mapping[str, str]) -> tuple[str, ...] | None:
    if value is None:
        return None
    parts = shlex.split(value) if isinstance(value, str) else value
    return tuple(_substitute(p, values) for p in parts)


def healthcheck_test(hc: Healthcheck) -> list[str]:
    """A Docker HEALTHCHECK test that works in both offline images: the Debian image has
    python3; busybox has nc (its wget segfaults, statically linked, so it is not used)."""
    timeout_s = max(1, parse_duration_ns(hc.timeout) // 1_000_000_000)
    if hc.test is not None:
        return ["CMD-SHELL", hc.test] if isinstance(hc.test, str) else ["CMD", *hc.test]
    if hc.http is not None:
        url = f"http://127.0.0.1:{hc.port}{hc.http}"
        py = f"import sys,urllib.request; urllib.request.urlopen(sys.argv[1], timeout={timeout_s})"
        request = f"GET {hc.http} HTTP/1.0\\r\\nHost: 127.0.0.1\\r\\n\\r\\n"
        return [
            "CMD-SHELL",
            f"if command -v python3 >/dev/null 2>&1; then python3 -c {shlex.quote(py)} "
            f"{shlex.quote(url)}; else printf {shlex.quote(request)} | nc -w {timeout_s} "
            f"127.0.0.1 {hc.port} | head -n1 | grep -q ' [23][0-9][0-9] '; fi",
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


def discovery_of(project: str, svc_name: str, svc: ServiceSpec) -> Discovery | None:
    d = svc.discovery
    if d is None:
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
    )


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
        k: _substitute(
            "" if v is None else (str(v).lower() if isinstance(v, bool) else str(v)), values
        )
        for k, v in sorted(svc.environment.items())
    }
    endpoints = tuple(
        EndpointConfig(networks[k].name, tuple(a.aliases), a.ipv4_address)
        for k, a in ((k, a or ServiceNetwork()) for k, a in svc.networks.items())
    )
    discovery = discovery_of(project, svc_name, svc)
    labels = {
        **dict(sorted(svc.labels.items())),
        **(encode_discovery(discovery) if discovery is not None else {}),
        LABEL_PROJECT: project,
        LABEL_SERVICE: svc_name,
        LABEL_REPLICA: str(replica),
    }
    config = ContainerConfig(
        name=name,
        image=svc.image,
        command=_argv(svc.command, values),
        entrypoint=_argv(svc.entrypoint, values),
        environment=env,
        hostname=_substitute(svc.hostname, values) if svc.hostname else name,
        networks=endpoints,
        network_mode=svc.network_mode,
        ports=tuple(parse_port(p) for p in svc.ports),
        healthcheck=_healthcheck(svc.healthcheck),
        labels=labels,
    )
    network_hashes = {networks[k].name: networks[k].hash for k in svc.networks}
    return DesiredContainer(
        service=svc_name,
        replica=replica,
        config=config,
        depends_on=tuple(svc.depends_on),
        hash=container_hash(config, network_hashes),
    )
