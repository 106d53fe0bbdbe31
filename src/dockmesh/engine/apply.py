"""Carries out a plan on one engine, in the plan's order. On a failure it removes what this run
created (containers, then networks) and re-raises: nothing half-done is left behind. What the
run removed in order to replace it (a replace is a remove, then a create) is not restored."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import docker.errors

from dockmesh.engine.client import EngineClient
from dockmesh.errors import EngineError
from dockmesh.projectfile.desired import DesiredContainer, DesiredNetwork
from dockmesh.projectfile.plan import Plan, Step

Progress = Callable[[Step], None]


def _ipam(net: DesiredNetwork) -> Any:
    cfg = net.config
    if cfg["subnet"] is None:
        return None
    pool = docker.types.IPAMPool(
        subnet=cfg["subnet"],
        gateway=cfg["gateway"],
        iprange=cfg["ip_range"],
        aux_addresses=cfg["aux_addresses"] or None,
    )
    return docker.types.IPAMConfig(pool_configs=[pool])


def create_network(api: Any, net: DesiredNetwork) -> str:
    cfg = net.config
    res = api.create_network(
        net.name,
        driver=cfg["driver"],
        options=cfg["options"] or None,
        ipam=_ipam(net),
        internal=cfg["internal"],
        attachable=cfg["attachable"] or None,
        enable_ipv6=cfg["enable_ipv6"] or None,
        labels=dict(net.labels),
        check_duplicate=True,
    )
    return str(res["Id"])


def create_container(api: Any, c: DesiredContainer) -> str:
    port_bindings: dict[str, list[tuple[str, int] | tuple[str] | int | None]] = {}
    exposed: list[tuple[int, str]] = []
    for p in c.ports:
        exposed.append((p.container_port, p.protocol))
        binding: tuple[str, int] | tuple[str] | int | None
        if p.host_ip is not None:
            binding = (p.host_ip, p.host_port) if p.host_port else (p.host_ip,)
        else:
            binding = p.host_port
        port_bindings.setdefault(p.key(), []).append(binding)
    first = c.networks[0] if c.networks else None
    # No networks and no network_mode: the engine's default bridge, as with `docker run`.
    network_mode = c.network_mode or (first.network if first else "bridge")
    host_config = api.create_host_config(
        port_bindings=port_bindings or None, network_mode=network_mode
    )
    networking = None
    if first is not None:
        networking = api.create_networking_config(
            {
                first.network: api.create_endpoint_config(
                    aliases=list(first.aliases) or None, ipv4_address=first.ipv4_address
                )
            }
        )
    hc = None
    if c.healthcheck is not None:
        hc = docker.types.Healthcheck(**c.healthcheck)
    res = api.create_container(
        c.image,
        command=list(c.command) if c.command is not None else None,
        entrypoint=list(c.entrypoint) if c.entrypoint is not None else None,
        name=c.name,
        hostname=c.hostname if c.network_mode != "host" else None,
        environment=dict(c.environment),
        labels=dict(c.labels),
        detach=True,
        ports=[(p, proto) if proto != "tcp" else p for p, proto in exposed] or None,
        host_config=host_config,
        networking_config=networking,
        healthcheck=hc,
    )
    cid = str(res["Id"])
    # The engine creates a container on one network; the others are joined before start.
    for a in c.networks[1:]:
        api.connect_container_to_network(
            cid, a.network, aliases=list(a.aliases) or None, ipv4_address=a.ipv4_address
        )
    api.start(cid)
    return cid


def remove_container(api: Any, ref: str) -> None:
    with contextlib.suppress(docker.errors.NotFound):
        api.remove_container(ref, force=True, v=True)


def remove_network(api: Any, ref: str) -> None:
    try:
        info = api.inspect_network(ref)
    except docker.errors.NotFound:
        return
    # Containers the project did not make may have joined: let them go, or the engine refuses.
    for cid in info.get("Containers") or {}:
        with contextlib.suppress(docker.errors.NotFound):
            api.disconnect_container_from_network(cid, ref, force=True)
    with contextlib.suppress(docker.errors.NotFound):
        api.remove_network(ref)


def apply_plan(client: EngineClient, plan: Plan, progress: Progress | None = None) -> None:
    api = client.api
    made_containers: list[str] = []
    made_networks: list[str] = []
    step: Step | None = None
    try:
        for step in plan.steps:
            if progress:
                progress(step)
            if step.op == "remove_container":
                remove_container(api, step.live_id or step.name)
            elif step.op == "remove_network":
                remove_network(api, step.live_id or step.name)
            elif step.op == "create_network":
                assert step.network is not None
                made_networks.append(create_network(api, step.network))
            else:
                assert step.container is not None
                try:
                    made_containers.append(create_container(api, step.container))
                except Exception:
                    # created but failed to connect or start: it is ours to remove
                    made_containers.append(step.container.name)
                    raise
    except (docker.errors.DockerException, OSError) as e:
        for cid in reversed(made_containers):
            remove_container(api, cid)
        for nid in reversed(made_networks):
            remove_network(api, nid)
        what = f"{step.op.replace('_', ' ')} {step.name}" if step else "apply"
        detail = getattr(e, "explanation", None) or str(e)
        raise EngineError(f"{what}: {detail} (rolled back what this run created)") from e
