"""Containers → catalog instances, from their `dockmesh.*` labels. Pure.

An instance's address is the container's IP on the network its `dockmesh.network` label
names (the engine's name, or the project's own: Compose's `side` is the network labelled
`com.docker.compose.network=side` of the container's Compose project, a dockmesh project's
`side` is `<project>_side`), else on its only network; a container on several networks
without that label is not guessed at (Registrator's classic bug: it registered the wrong IP)
— it is left out with a warning naming the label to set. Only running containers register.
A container with a Docker HEALTHCHECK gets a check that mirrors Docker's verdict (passing
only while Docker says healthy); a `dockmesh.check.*` label adds an HTTP or TCP check that
the agent runs from inside the container's network namespace, on the registered address.

A swarm task's container (`com.docker.swarm.*` labels, `model.swarm`) registers the same way,
named after its swarm service unless `dockmesh.service` says otherwise, at its address on its
own network (never the ingress network's or `docker_gwbridge`'s), with `Meta.swarm-service`,
`swarm-task` and `swarm-node`. Each agent derives only its own engine's containers, so a task
is checked from the host it runs on, inside its own namespace.

A container of a project (`dockmesh.project`, else `com.docker.compose.project`) carries it in
its instance's `Meta.project`: the catalog answers `<service>.<project>` with that project's
instances only, and the short name only where it is not shared (`catalog.state`).
`dockmesh.short-name=true` (`Meta.short-name`) claims the short name where it is.

The HTTP route labels (`dockmesh.http.*`, `model.httproute`) ride along in the instance's Meta
as written, for `dockmesh proxy --project` to read from the catalog; what is wrong with them
is warned about here too, and the proxy leaves that route out (the instance still registers:
its DNS name and its other routes do not depend on a bad label).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from dockmesh.model.catalog import (
    META_PROJECT,
    META_SHORT_NAME,
    CheckSpec,
    Collision,
    Instance,
    Status,
    name_collisions,
)
from dockmesh.model.durations import parse_duration_ns
from dockmesh.model.httproute import decode_labels, meta_of_labels
from dockmesh.model.labels import (
    COMPOSE_NETWORK,
    COMPOSE_PROJECT,
    COMPOSE_SERVICE,
    LABEL_DISCOVERY_NETWORK,
    Discovery,
    decode_discovery,
    project_of,
)
from dockmesh.model.swarm import discovery_labels, routable, task_of
from dockmesh.model.topology import Attachment, Container, Network, Topology

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


def _named(c: Container, a: Attachment, wanted: str, networks: Mapping[str, Network]) -> bool:
    """Whether `wanted` (a `dockmesh.network` value) names attachment `a`: the engine's name,
    the Compose file's own name within the container's Compose project, or `<project>_<name>`
    of its project."""
    if a.network == wanted:
        return True
    net = networks.get(a.network_id)
    compose = c.labels.get(COMPOSE_PROJECT)
    if (
        net is not None
        and compose
        and net.labels.get(COMPOSE_NETWORK) == wanted
        and net.labels.get(COMPOSE_PROJECT) == compose
    ):
        return True
    project = project_of(c.labels)
    return project is not None and a.network == f"{project}_{wanted}"


def _address(c: Container, d: Discovery, networks: Mapping[str, Network]) -> tuple[str, str] | str:
    """(network, address) or a warning. A swarm task's ingress and gateway-bridge addresses
    are not candidates (`model.swarm.routable`)."""
    usable = [a for a in c.attachments if a.ipv4 and routable(a, networks.get(a.network_id))]
    if d.network is not None:
        # The engine's name first: a network literally named `side` beats a project's `side`.
        for exact in (True, False):
            for a in usable:
                if a.network == d.network if exact else _named(c, a, d.network, networks):
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
    c: Container,
    local_engine: str,
    register_compose: bool = False,
    networks: Mapping[str, Network] | None = None,
) -> tuple[Derived | None, list[str]]:
    """The instance a container's labels ask for (None: none), and warnings about them."""
    # A swarm task is named after its service unless it says otherwise (`model.swarm`).
    d, problems = decode_discovery(discovery_labels(c.labels))
    warnings = [f"{c.name}: {p}" for p in problems]
    route, http_problems = decode_labels(c.labels)
    warnings += [f"{c.name}: {p}: not routed" for p in http_problems]
    if d is None and not problems and register_compose:
        d = compose_discovery(c)
    if d is None and route is not None:
        warnings.append(
            f"{c.name}: its dockmesh.http.* route needs dockmesh.service and dockmesh.port "
            "(the catalog instance the proxy sends to): not routed"
        )
    if d is None or not c.running:
        return None, warnings
    where = _address(c, d, networks or {})
    if isinstance(where, str):
        return None, [*warnings, f"{c.name}: not registered: {where}"]
    network, address = where
    iid = instance_id(c, local_engine)
    meta = {"container": c.name, "engine": c.engine, "network": network}
    project = project_of(c.labels)
    if project is not None:
        meta[META_PROJECT] = project
    if d.short_name:
        meta[META_SHORT_NAME] = "true"
    task = task_of(c.labels)
    if task is not None:
        meta.update(task.meta())
    meta.update(meta_of_labels(c.labels))
    inst = Instance(
        id=iid,
        service=d.service,
        address=address,
        port=d.port,
        tags=d.tags,
        meta=meta,
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
                netns_container=c.id,
            )
        )
    return Derived(inst, tuple(checks)), warnings


def derive_all(
    topo: Topology, engine: str, local_engine: str, register_compose: bool = False
) -> tuple[list[Derived], list[str]]:
    """Every instance the containers of `engine` ask for, and every warning, sorted."""
    found: list[Derived] = []
    warnings: list[str] = []
    networks = {n.id: n for n in topo.networks}
    for c in topo.containers:
        if c.engine != engine:
            continue
        derived, w = derive(c, local_engine, register_compose, networks)
        warnings += w
        if derived is not None:
            found.append(derived)
    return found, warnings


def collision_of(topo: Topology, c: Container, register_compose: bool = False) -> Collision | None:
    """The collision (`catalog.state.name_collisions`) on the name `c` registers under, as the
    topology's containers register: what the agent reports, read without it."""
    networks = {n.id: n for n in topo.networks}
    mine, _ = derive(c, "", register_compose, networks)
    if mine is None or mine.instance.project is None:
        return None
    same = [mine.instance]
    for other in topo.containers:
        if other.id == c.id:
            continue
        d, _ = derive(other, "", register_compose, networks)
        if d is not None and d.instance.service == mine.instance.service:
            same.append(d.instance)
    found = name_collisions(same)
    return found[0] if found else None


def docker_health_status(c: Container) -> Status | None:
    return None if c.health is None else DOCKER_HEALTH.get(c.health, "critical")
