"""Containers → catalog instances, from their `dockmesh.*` labels. Pure.

An instance's address is the container's IP on the network its `dockmesh.network` label
names, else on its only network; a container on several networks without that label is not
guessed at (Registrator's classic bug: it registered the wrong IP) — it is left out with a
warning naming the label to set. Only running containers register. A container with a Docker
HEALTHCHECK gets a check that mirrors Docker's verdict (passing only while Docker says
healthy); a `dockmesh.check.*` label adds an HTTP or TCP check that the agent runs from
inside the container's network namespace, on the registered address.
"""

from __future__ import annotations

from dataclasses import dataclass

from dockmesh.model.catalog import CheckSpec, Instance, Status
from dockmesh.model.durations import parse_duration_ns
from dockmesh.model.labels import (
    COMPOSE_PROJECT,
    COMPOSE_SERVICE,
    LABEL_DISCOVERY_NETWORK,
    Discovery,
    decode_discovery,
)
from dockmesh.model.topology import Container, Topology

DOCKER_HEALTH: dict[str, Status] = {
    "healthy": "passing",
    "starting": "critical",
    "unhealthy": "critical",
}


@dataclass(frozen=True, slots=True)
class Derived:
    instance: Instance
    checks: tuple[CheckSpec, ...]


def instance_id(c: Container, local_engine: str) -> str:
    return c.name if c.engine == local_engine else f"{c.engine}.{c.name}"


def _address(c: Container, d: Discovery) -> tuple[str, str] | str:
    """(network, address) or a warning."""
    usable = [a for a in c.attachments if a.ipv4]
    if d.network is not None:
        for a in usable:
            if a.network == d.network:
                return a.network, a.ipv4 or ""
        on = ", ".join(a.network for a in c.attachments) or "none"
        return f"{LABEL_DISCOVERY_NETWORK}={d.network!r} is not one of its networks ({on})"
    if len(usable) == 1:
        return usable[0].network, usable[0].ipv4 or ""
    if not usable:
        return "it has no address on any network (network_mode host or none?)"
    names = ", ".join(a.network for a in usable)
    return (
        f"it is on several networks ({names}): set {LABEL_DISCOVERY_NETWORK} to the one to register"
    )


def _seconds(text: str) -> float:
    return parse_duration_ns(text) / 1e9


def compose_discovery(c: Container) -> Discovery | None:
    """`--register-compose`: a Compose service whose container exposes exactly one port
    registers under the Compose service's name, tagged with the Compose project."""
    service = c.labels.get(COMPOSE_SERVICE)
    ports = {p.container_port for p in c.ports if p.protocol == "tcp"}
    if not service or len(ports) != 1:
        return None
    project = c.labels.get(COMPOSE_PROJECT)
    return Discovery(service, ports.pop(), tags=(project,) if project else ())


def derive(
    c: Container, local_engine: str, register_compose: bool = False
) -> tuple[Derived | None, list[str]]:
    """The instance a container's labels ask for (None: none), and warnings about them."""
    d, problems = decode_discovery(c.labels)
    warnings = [f"{c.name}: {p}" for p in problems]
    if d is None and not problems and register_compose:
        d = compose_discovery(c)
    if d is None or not c.running:
        return None, warnings
    where = _address(c, d)
    if isinstance(where, str):
        return None, [*warnings, f"{c.name}: not registered: {where}"]
    network, address = where
    iid = instance_id(c, local_engine)
    inst = Instance(
        id=iid,
        service=d.service,
        address=address,
        port=d.port,
        tags=d.tags,
        meta={"container": c.name, "engine": c.engine, "network": network},
        weight=d.weight,
        source="container",
        container=c.name,
        container_id=c.id,
        engine=c.engine,
        network=network,
        pid=c.pid,
    )
    checks: list[CheckSpec] = []
    if c.health is not None:
        checks.append(
            CheckSpec(
                id=f"docker:{iid}",
                name=f"Docker HEALTHCHECK of {c.name}",
                kind="docker",
                service_id=iid,
                initial_status=DOCKER_HEALTH.get(c.health, "critical"),
            )
        )
    if d.check is not None and (d.check.http is not None or d.check.tcp):
        target = f"{address}:{d.port}"
        http = f"http://{target}{d.check.http}" if d.check.http is not None else None
        checks.append(
            CheckSpec(
                id=f"service:{iid}",
                name=f"HTTP GET {d.check.http}" if http else f"TCP {target}",
                kind="http" if http else "tcp",
                service_id=iid,
                http=http,
                tcp=None if http else target,
                interval_s=_seconds(d.check.interval),
                timeout_s=_seconds(d.check.timeout),
                netns_pid=c.pid,
            )
        )
    return Derived(inst, tuple(checks)), warnings


def derive_all(
    topo: Topology, engine: str, local_engine: str, register_compose: bool = False
) -> tuple[list[Derived], list[str]]:
    """Every instance the containers of `engine` ask for, and every warning, sorted."""
    found: list[Derived] = []
    warnings: list[str] = []
    for c in topo.containers:
        if c.engine != engine:
            continue
        derived, w = derive(c, local_engine, register_compose)
        warnings += w
        if derived is not None:
            found.append(derived)
    return found, warnings


def docker_health_status(c: Container) -> Status | None:
    return None if c.health is None else DOCKER_HEALTH.get(c.health, "critical")
