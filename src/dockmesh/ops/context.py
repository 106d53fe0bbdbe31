"""Gathers the `EngineContext` a topology file is validated against: what the engine and the
host hold now."""

from __future__ import annotations

import ipaddress

from dockmesh.engine.backend import EngineBackend
from dockmesh.host.machine import host_routes, ipvlan_available
from dockmesh.model.ipam import IPNetwork
from dockmesh.model.labels import LABEL_HASH, LABEL_PROJECT
from dockmesh.model.topology import Topology
from dockmesh.projectfile.context import EngineContext, ExistingNetwork, PublishedPort, Route
from dockmesh.projectfile.parse import image_reference_problem


def image_ids(backend: EngineBackend, names: set[str]) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in sorted(names):
        # A reference the engine cannot parse is validation's to report, not a failed lookup.
        info = backend.image(name) if image_reference_problem(name) is None else None
        out[name] = info.id if info is not None else None
    return out


def gather_context(
    backend: EngineBackend, topo: Topology, images: set[str] | None = None
) -> EngineContext:
    routes, interfaces = host_routes()
    engine = backend.ref.name
    nets = tuple(
        ExistingNetwork(
            n.name,
            n.labels.get(LABEL_PROJECT),
            tuple(p.subnet for p in n.ipam),
            n.labels.get(LABEL_HASH),
        )
        for n in topo.networks
        if n.engine == engine or engine in n.engines
    )
    here = [c for c in topo.containers if c.engine == engine]
    ctrs = {c.name: c.labels.get(LABEL_PROJECT) for c in here}
    endpoints: dict[str, dict[str, str]] = {}
    for c in here:
        for a in c.attachments:
            for ip in (a.ipv4, a.ipv6):
                if ip:
                    endpoints.setdefault(a.network, {})[ip] = c.name
    published = tuple(
        PublishedPort(c.name, c.labels.get(LABEL_PROJECT), p.host_ip, p.host_port, p.protocol)
        for c in here
        if c.running
        for p in c.ports
        if p.host_port
    )
    return EngineContext(
        networks=nets,
        containers=ctrs,
        routes=tuple(Route(r.destination, r.device) for r in routes),
        interfaces=interfaces,
        swarm_active=backend.swarm_active(),
        ipvlan_available=ipvlan_available(),
        images=image_ids(backend, images or set()),
        endpoints=endpoints,
        published=published,
    )


def taken_subnets(topo: Topology) -> list[IPNetwork]:
    """Every subnet the engines' networks use, and every route of the host."""
    taken: list[IPNetwork] = [ipaddress.ip_network(p.subnet) for n in topo.networks for p in n.ipam]
    taken += [ipaddress.ip_network(r.destination) for r in host_routes()[0]]
    return taken
