"""Docker Engine API JSON → model values. Pure: fed with what the API returned."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from dockmesh.model.topology import Attachment, Container, IpamPool, Network, PortBinding

Raw = Mapping[str, Any]


def network_from_api(raw: Raw, engine: str) -> Network:
    ipam = raw.get("IPAM") or {}
    pools = tuple(
        IpamPool(
            subnet=c.get("Subnet", ""),
            gateway=c.get("Gateway") or None,
            ip_range=c.get("IPRange") or None,
            aux_addresses=dict(c.get("AuxiliaryAddresses") or {}),
        )
        for c in ipam.get("Config") or ()
        if c.get("Subnet")
    )
    return Network(
        id=raw["Id"],
        name=raw["Name"],
        engine=engine,
        driver=raw.get("Driver") or "",
        scope=raw.get("Scope") or "local",
        internal=bool(raw.get("Internal")),
        attachable=bool(raw.get("Attachable")),
        ingress=bool(raw.get("Ingress")),
        enable_ipv6=bool(raw.get("EnableIPv6")),
        ipam=pools,
        options=dict(raw.get("Options") or {}),
        labels=dict(raw.get("Labels") or {}),
        engines=(engine,),
    )


def _ports(raw_ports: Raw | None) -> tuple[PortBinding, ...]:
    out: list[PortBinding] = []
    for key, bindings in (raw_ports or {}).items():
        port, _, proto = key.partition("/")
        if not bindings:
            out.append(PortBinding(int(port), proto or "tcp", None, None))
            continue
        for b in bindings:
            hp = b.get("HostPort")
            out.append(
                PortBinding(
                    int(port), proto or "tcp", b.get("HostIp") or None, int(hp) if hp else None
                )
            )
    return tuple(
        sorted(out, key=lambda p: (p.container_port, p.protocol, p.host_ip or "", p.host_port or 0))
    )


def container_from_api(raw: Raw, engine: str) -> Container:
    """From `GET /containers/{id}/json` (inspect)."""
    state = raw.get("State") or {}
    config = raw.get("Config") or {}
    settings = raw.get("NetworkSettings") or {}
    health = (state.get("Health") or {}).get("Status") or None
    attachments = tuple(
        Attachment(
            network_id=ep.get("NetworkID") or "",
            network=name,
            ipv4=ep.get("IPAddress") or None,
            ipv6=ep.get("GlobalIPv6Address") or None,
            mac=ep.get("MacAddress") or None,
            aliases=tuple(ep.get("Aliases") or ()),
            endpoint_id=ep.get("EndpointID") or "",
        )
        for name, ep in sorted((settings.get("Networks") or {}).items())
    )
    pid = state.get("Pid") or None
    return Container(
        id=raw["Id"],
        name=(raw.get("Name") or "").lstrip("/"),
        engine=engine,
        image=config.get("Image") or "",
        image_id=raw.get("Image") or "",
        state=state.get("Status") or "unknown",
        health=health,
        pid=pid if state.get("Running") else None,
        hostname=config.get("Hostname") or "",
        network_mode=(raw.get("HostConfig") or {}).get("NetworkMode") or "",
        attachments=attachments,
        # Live bindings while running; the configured ones otherwise.
        ports=_ports(settings.get("Ports") or (raw.get("HostConfig") or {}).get("PortBindings")),
        labels=dict(config.get("Labels") or {}),
    )


_HEALTH_IN_STATUS = re.compile(r"\((healthy|unhealthy|health: starting)\)")


def agrees_with_list(signature: tuple[Any, ...], c: Container) -> bool:
    """Whether an inspect's container is what the list's entry (`list_signature`) says: the
    same name, state, health and endpoints. They are two requests: a container that started
    or stopped between them is listed as one and inspected as the other, and a signature
    kept with the other would stand for it once the list shows that state again (an exited
    container has no endpoint ids to tell one exit from the next) — a dead container kept
    running, with its old pid and addresses, by every later snapshot."""
    names, state, health, endpoints = signature[:4]
    ours = tuple(
        sorted(
            (a.network, a.network_id, a.endpoint_id, a.ipv4 or "", a.ipv6 or "", a.mac or "")
            for a in c.attachments
        )
    )
    listed_health = "health: starting" if c.health == "starting" else c.health
    return (
        f"/{c.name}" in names and state == c.state and health == listed_health and endpoints == ours
    )


def list_signature(raw: Raw) -> tuple[Any, ...] | None:
    """What an entry of the containers' list (`GET /containers/json`) says of a container
    that its inspect would also say: name, state, health, each network's endpoint (id,
    addresses, MAC) and the published ports. Two equal signatures mean an inspect would find
    the same container — a restart makes new endpoints, a connect or disconnect changes
    them — so a snapshot re-inspects only what changed. None when the list cannot tell: a
    running container without an endpoint of its own (`network_mode: container:…`), whose
    restart would leave no trace here."""
    nets = (raw.get("NetworkSettings") or {}).get("Networks") or {}
    endpoints = tuple(
        sorted(
            (
                str(name),
                str(n.get("NetworkID") or ""),
                str(n.get("EndpointID") or ""),
                str(n.get("IPAddress") or ""),
                str(n.get("GlobalIPv6Address") or ""),
                str(n.get("MacAddress") or ""),
            )
            for name, n in nets.items()
        )
    )
    state = str(raw.get("State") or "")
    if state == "running" and not any(e[2] for e in endpoints):
        return None
    health = _HEALTH_IN_STATUS.search(str(raw.get("Status") or ""))
    ports = tuple(
        sorted(
            (
                str(p.get("IP") or ""),
                int(p.get("PrivatePort") or 0),
                int(p.get("PublicPort") or 0),
                str(p.get("Type") or ""),
            )
            for p in raw.get("Ports") or ()
        )
    )
    return (
        tuple(raw.get("Names") or ()),
        state,
        health.group(1) if health else None,
        endpoints,
        ports,
    )
