"""A container's interface counters mapped onto its Docker networks (pure).

`/proc/<pid>/net/dev` names interfaces (eth0, eth1, ...) but not networks, and the order in
which Docker hands out eth names is the order the networks were connected, which the engine
does not report. The connected routes say it: the interface that carries the route to a
subnet holding the container's address on a network is that network's interface. Reading
`/proc/<pid>/net/route` costs a second file per container, so it is only asked for when the
answer is not already plain (one interface, one network).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

from dockmesh.codecs.procnet import IfaceCounters, Route
from dockmesh.model.topology import Container, Topology

LOOPBACK = "lo"


@dataclass(frozen=True, slots=True)
class InterfaceStats:
    counters: IfaceCounters
    network: str | None  # None: no Docker network is known to use this interface

    def to_json(self) -> dict[str, object]:
        return {"name": self.counters.name, "network": self.network, **self.counters.to_json()}


@dataclass(frozen=True, slots=True)
class ContainerStats:
    name: str
    id: str
    engine: str
    interfaces: tuple[InterfaceStats, ...]
    error: str | None = None  # why the counters could not be read (a container just gone)

    def to_json(self) -> dict[str, object]:
        doc: dict[str, object] = {
            "name": self.name,
            "id": self.id,
            "engine": self.engine,
            "interfaces": [i.to_json() for i in self.interfaces],
        }
        if self.error is not None:
            doc["error"] = self.error
        return doc


def readable(c: Container, local_engines: frozenset[str]) -> bool:
    """Whether `c`'s counters can be read here: running, with a pid in this machine's pid
    namespace (engines reached over a unix socket), and a network namespace of its own (a
    container on the host network would report the host's interfaces)."""
    return (
        c.running
        and c.pid is not None
        and c.pid > 0
        and c.engine in local_engines
        and c.network_mode != "host"
    )


def local_engines(topo: Topology) -> frozenset[str]:
    """Engines on this machine: the ones reached through a unix socket share its pids."""
    return frozenset(e.name for e in topo.engines if e.url.startswith("unix://"))


def needs_routes(c: Container, counters: Sequence[IfaceCounters]) -> bool:
    """Whether mapping `c`'s interfaces needs its routes: not when one interface meets one
    network (or none)."""
    ifaces = sum(1 for x in counters if x.name != LOOPBACK)
    return ifaces > 1 or (ifaces == 1 and len(c.attachments) > 1)


def map_interfaces(
    c: Container, counters: Sequence[IfaceCounters], routes: Sequence[Route] | None = None
) -> tuple[InterfaceStats, ...]:
    """Each non-loopback interface with the network it joins, in the kernel's order.

    One interface and one attachment: they belong together. Otherwise an interface joins the
    network of the attachment whose IPv4 address lies in a subnet routed directly (no
    gateway) through that interface; an interface no route explains has no network."""
    ifaces = [x for x in counters if x.name != LOOPBACK]
    if len(ifaces) == 1 and len(c.attachments) == 1:
        return (InterfaceStats(ifaces[0], c.attachments[0].network),)
    by_iface: dict[str, str] = {}
    for r in routes or ():
        if r.gateway is not None or r.is_default or r.iface in by_iface:
            continue
        try:
            subnet = ipaddress.ip_network(r.destination)
        except ValueError:
            continue
        for a in c.attachments:
            for address in (a.ipv4, a.ipv6):
                if address is None:
                    continue
                try:
                    inside = ipaddress.ip_address(address) in subnet
                except ValueError:
                    continue
                if inside:
                    by_iface.setdefault(r.iface, a.network)
    return tuple(InterfaceStats(x, by_iface.get(x.name)) for x in ifaces)


def stats_json(containers: Sequence[ContainerStats], elapsed_s: float) -> dict[str, object]:
    """The `dockmesh stats --json` document (docs/cli.md, "dockmesh stats")."""
    return {"containers": [c.to_json() for c in containers], "elapsed_s": round(elapsed_s, 6)}
