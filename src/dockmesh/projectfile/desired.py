"""A validated spec → the networks and containers that should exist, as the engine names them.

Each desired object carries a canonical `config` (plain JSON) and its hash. Both are written
onto what `up` creates (labels `dockmesh.spec.hash`, `dockmesh.spec.config`), so a later plan
compares like with like and can say which fields changed. A container's hash includes the
hashes of its networks: replacing a network replaces what is attached to it.
"""

from __future__ import annotations

import hashlib
import json
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from dockmesh.model.labels import (
    LABEL_CONFIG,
    LABEL_HASH,
    LABEL_PROJECT,
    LABEL_REPLICA,
    LABEL_SERVICE,
)
from dockmesh.projectfile.parse import PortMapping, parse_duration_ns, parse_port
from dockmesh.projectfile.schema import Healthcheck, NetworkSpec, ServiceNetwork, ServiceSpec, Spec


def _hash(config: Mapping[str, Any]) -> str:
    blob = json.dumps(config, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class DesiredNetwork:
    key: str  # the file's short name
    name: str  # the engine's name: <project>_<key>
    config: Mapping[str, Any]
    hash: str
    labels: Mapping[str, str]

    @property
    def driver(self) -> str:
        return str(self.config["driver"])


@dataclass(frozen=True, slots=True)
class NetworkAttachment:
    network: str  # engine name
    aliases: tuple[str, ...] = ()
    ipv4_address: str | None = None


@dataclass(frozen=True, slots=True)
class DesiredContainer:
    name: str
    service: str
    replica: int
    image: str
    command: tuple[str, ...] | None
    entrypoint: tuple[str, ...] | None
    environment: Mapping[str, str]
    hostname: str
    networks: tuple[NetworkAttachment, ...]
    network_mode: str | None
    ports: tuple[PortMapping, ...]
    healthcheck: Mapping[str, Any] | None
    depends_on: tuple[str, ...]  # service names
    config: Mapping[str, Any] = field(repr=False)
    hash: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)


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
    config: dict[str, Any] = {
        "driver": net.driver,
        "subnet": net.subnet,
        "gateway": net.gateway,
        "ip_range": net.ip_range,
        "aux_addresses": dict(sorted(net.aux_addresses.items())),
        "internal": net.internal,
        "attachable": net.attachable,
        "enable_ipv6": net.enable_ipv6,
        "options": dict(sorted(options.items())),
        "labels": dict(sorted(net.labels.items())),
    }
    h = _hash(config)
    labels = {
        **net.labels,
        LABEL_PROJECT: project,
        LABEL_HASH: h,
        LABEL_CONFIG: json.dumps(config, sort_keys=True, separators=(",", ":")),
    }
    return DesiredNetwork(key, f"{project}_{key}", config, h, labels)


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


def _healthcheck(hc: Healthcheck | None) -> dict[str, Any] | None:
    if hc is None:
        return None
    return {
        "test": healthcheck_test(hc),
        "interval": parse_duration_ns(hc.interval),
        "timeout": parse_duration_ns(hc.timeout),
        "retries": hc.retries,
        "start_period": parse_duration_ns(hc.start_period),
    }


def discovery_labels(project: str, svc_name: str, svc: ServiceSpec) -> dict[str, str]:
    d = svc.discovery
    if d is None:
        return {}
    labels = {
        "dockmesh.service": d.name or svc_name,
        "dockmesh.port": str(d.port),
        "dockmesh.weight": str(d.weight),
    }
    if d.tags:
        labels["dockmesh.tags"] = ",".join(d.tags)
    if d.network is not None:
        labels["dockmesh.network"] = f"{project}_{d.network}"
    if d.check is not None:
        if d.check.http is not None:
            labels["dockmesh.check.http"] = d.check.http
        if d.check.tcp:
            labels["dockmesh.check.tcp"] = "true"
        labels["dockmesh.check.interval"] = d.check.interval
        labels["dockmesh.check.timeout"] = d.check.timeout
    return labels


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
    attachments = tuple(
        NetworkAttachment(networks[k].name, tuple(a.aliases), a.ipv4_address)
        for k, a in ((k, a or ServiceNetwork()) for k, a in svc.networks.items())
    )
    ports = tuple(parse_port(p) for p in svc.ports)
    hc = _healthcheck(svc.healthcheck)
    hostname = _substitute(svc.hostname, values) if svc.hostname else name
    command = _argv(svc.command, values)
    entrypoint = _argv(svc.entrypoint, values)
    config: dict[str, Any] = {
        "image": svc.image,
        "command": list(command) if command is not None else None,
        "entrypoint": list(entrypoint) if entrypoint is not None else None,
        "environment": env,
        "hostname": hostname,
        "networks": [[a.network, list(a.aliases), a.ipv4_address] for a in attachments],
        "network_hashes": {networks[k].name: networks[k].hash for k in svc.networks},
        "network_mode": svc.network_mode,
        "ports": [[p.container_port, p.protocol, p.host_ip, p.host_port] for p in ports],
        "healthcheck": hc,
        "labels": dict(sorted(svc.labels.items())),
        "discovery": discovery_labels(project, svc_name, svc),
    }
    h = _hash(config)
    shown = {k: v for k, v in config.items() if k != "network_hashes"}
    labels = {
        **svc.labels,
        **config["discovery"],
        LABEL_PROJECT: project,
        LABEL_SERVICE: svc_name,
        LABEL_REPLICA: str(replica),
        LABEL_HASH: h,
        LABEL_CONFIG: json.dumps(shown, sort_keys=True, separators=(",", ":")),
    }
    return DesiredContainer(
        name=name,
        service=svc_name,
        replica=replica,
        image=svc.image,
        command=command,
        entrypoint=entrypoint,
        environment=env,
        hostname=hostname,
        networks=attachments,
        network_mode=svc.network_mode,
        ports=ports,
        healthcheck=hc,
        depends_on=tuple(svc.depends_on),
        config=config,
        hash=h,
        labels=labels,
    )
