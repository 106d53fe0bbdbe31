"""Gathers `Facts` for validation: the engine's networks and containers, the host's routes and
interfaces, swarm state and kernel support for ipvlan."""

from __future__ import annotations

import ipaddress
import os
import platform

import docker.errors

from dockmesh.engine.client import EngineClient
from dockmesh.model.ipam import IPNetwork
from dockmesh.model.labels import LABEL_PROJECT
from dockmesh.model.topology import Topology
from dockmesh.projectfile.facts import EngineNetworkFact, Facts, Route


def host_routes() -> tuple[tuple[Route, ...], frozenset[str]]:
    from pyroute2 import IPRoute  # slow to import; only plan/up need it

    with IPRoute() as ipr:
        names = {link["index"]: link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}
        routes: list[Route] = []
        for family in (2, 10):  # AF_INET, AF_INET6
            for r in ipr.get_routes(family=family, table=254):
                dst = r.get_attr("RTA_DST")
                if dst is None:
                    continue  # default route
                dev = names.get(r.get_attr("RTA_OIF"), "?")
                routes.append(Route(f"{dst}/{r['dst_len']}", dev))
    return tuple(routes), frozenset(n for n in names.values() if n)


def ipvlan_available() -> bool:
    if os.path.isdir("/sys/module/ipvlan"):
        return True
    release = platform.release()
    for f in ("modules.dep", "modules.builtin"):
        try:
            with open(f"/lib/modules/{release}/{f}") as fh:
                if "/ipvlan.ko" in fh.read():
                    return True
        except OSError:
            continue
    return False


def image_ids(client: EngineClient, names: set[str]) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in sorted(names):
        try:
            out[name] = str(client.api.inspect_image(name)["Id"])
        except docker.errors.ImageNotFound:
            out[name] = None
    return out


def gather_facts(client: EngineClient, topo: Topology, images: set[str] | None = None) -> Facts:
    routes, interfaces = host_routes()
    nets = tuple(
        EngineNetworkFact(n.name, n.labels.get(LABEL_PROJECT), tuple(p.subnet for p in n.ipam))
        for n in topo.networks
        if n.engine == client.ref.name
    )
    ctrs = {
        c.name: c.labels.get(LABEL_PROJECT) for c in topo.containers if c.engine == client.ref.name
    }
    return Facts(
        networks=nets,
        containers=ctrs,
        routes=routes,
        interfaces=interfaces,
        swarm_active=client.swarm_active(),
        ipvlan_available=ipvlan_available(),
        images=image_ids(client, images or set()),
    )


def taken_subnets(client: EngineClient) -> list[IPNetwork]:
    """Every subnet the engine's networks use, and every route of the host."""
    taken: list[IPNetwork] = []
    for n in client.api.networks():
        for cfg in (n.get("IPAM") or {}).get("Config") or []:
            if cfg.get("Subnet"):
                taken.append(ipaddress.ip_network(cfg["Subnet"]))
    taken += [ipaddress.ip_network(r.destination) for r in host_routes()[0]]
    return taken
