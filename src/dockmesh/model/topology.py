"""The topology of one or more Docker engines as immutable values.

A `Topology` is a versioned snapshot: networks, containers and the endpoints that join them.
Endpoints are not stored twice: a container carries its attachments (one per network), and
`Topology.endpoints_of(network)` derives the network's view. A network whose scope is `swarm`
(an overlay) is one network however many engines see it; its endpoints carry their engine.

Nothing here does I/O; `dockmesh.engine` fills these from the Docker API.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

JSON = dict[str, Any]


@dataclass(frozen=True, slots=True)
class EngineInfo:
    name: str
    url: str
    server_version: str = ""

    def to_json(self) -> JSON:
        return {"name": self.name, "url": self.url, "server_version": self.server_version}


@dataclass(frozen=True, slots=True)
class IpamPool:
    subnet: str
    gateway: str | None = None
    ip_range: str | None = None
    aux_addresses: Mapping[str, str] = field(default_factory=dict)

    def to_json(self) -> JSON:
        return {
            "subnet": self.subnet,
            "gateway": self.gateway,
            "ip_range": self.ip_range,
            "aux_addresses": dict(self.aux_addresses),
        }


@dataclass(frozen=True, slots=True)
class Network:
    id: str
    name: str
    engine: str
    driver: str
    scope: str = "local"
    internal: bool = False
    attachable: bool = False
    enable_ipv6: bool = False
    ipam: tuple[IpamPool, ...] = ()
    options: Mapping[str, str] = field(default_factory=dict)
    labels: Mapping[str, str] = field(default_factory=dict)
    # Every engine that reports this network (more than one for a swarm overlay).
    engines: tuple[str, ...] = ()

    @property
    def is_multi_host(self) -> bool:
        return self.scope == "swarm"


@dataclass(frozen=True, slots=True)
class Attachment:
    """A container's endpoint on one network, as the container reports it."""

    network_id: str
    network: str
    ipv4: str | None = None
    ipv6: str | None = None
    mac: str | None = None
    aliases: tuple[str, ...] = ()
    endpoint_id: str = ""


@dataclass(frozen=True, slots=True)
class PortBinding:
    container_port: int
    protocol: str
    host_ip: str | None
    host_port: int | None

    def to_json(self) -> JSON:
        return {
            "container_port": self.container_port,
            "protocol": self.protocol,
            "host_ip": self.host_ip,
            "host_port": self.host_port,
        }


@dataclass(frozen=True, slots=True)
class Container:
    id: str
    name: str
    engine: str
    image: str
    state: str
    image_id: str = ""
    health: str | None = None
    pid: int | None = None
    hostname: str = ""
    network_mode: str = ""
    attachments: tuple[Attachment, ...] = ()
    ports: tuple[PortBinding, ...] = ()
    labels: Mapping[str, str] = field(default_factory=dict)

    @property
    def running(self) -> bool:
        return self.state == "running"

    def attachment(self, network_id: str) -> Attachment | None:
        for a in self.attachments:
            if a.network_id == network_id:
                return a
        return None


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A container on a network, from the network's point of view."""

    container: str
    container_id: str
    engine: str
    ipv4: str | None
    ipv6: str | None
    mac: str | None
    aliases: tuple[str, ...]
    dns_names: tuple[str, ...]

    def to_json(self) -> JSON:
        return {
            "container": self.container,
            "container_id": self.container_id,
            "engine": self.engine,
            "ipv4": self.ipv4,
            "ipv6": self.ipv6,
            "mac": self.mac,
            "aliases": list(self.aliases),
            "dns_names": list(self.dns_names),
        }


# Networks on which Docker's embedded DNS answers for container names and aliases.
_NO_DNS_NETWORKS = frozenset({"bridge", "host", "none"})


@dataclass(frozen=True, slots=True)
class Topology:
    version: int
    engines: tuple[EngineInfo, ...]
    networks: tuple[Network, ...]
    containers: tuple[Container, ...]

    def network(self, name_or_id: str) -> Network | None:
        for n in self.networks:
            if n.name == name_or_id or n.id == name_or_id:
                return n
        matches = [n for n in self.networks if n.id.startswith(name_or_id)]
        return matches[0] if len(matches) == 1 and len(name_or_id) >= 6 else None

    def container(self, name_or_id: str) -> Container | None:
        for c in self.containers:
            if c.name == name_or_id or c.id == name_or_id:
                return c
        matches = [c for c in self.containers if c.id.startswith(name_or_id)]
        return matches[0] if len(matches) == 1 and len(name_or_id) >= 6 else None

    def endpoints_of(self, network: Network) -> tuple[Endpoint, ...]:
        eps: list[Endpoint] = []
        for c in self.containers:
            a = c.attachment(network.id)
            if a is None:
                continue
            # The engine adds the short id and the hostname to every endpoint's aliases;
            # `aliases` keeps what the user asked for, `dns_names` everything DNS answers.
            implicit = {c.id[:12], c.hostname}
            aliases = tuple(x for x in a.aliases if x not in implicit)
            dns: tuple[str, ...] = ()
            if network.name not in _NO_DNS_NETWORKS:
                dns = tuple(dict.fromkeys((c.name, c.id[:12], *a.aliases)))
            eps.append(Endpoint(c.name, c.id, c.engine, a.ipv4, a.ipv6, a.mac, aliases, dns))
        return tuple(sorted(eps, key=lambda e: (e.container, e.engine)))

    def networks_of(self, container: Container) -> tuple[str, ...]:
        return tuple(a.network for a in container.attachments)

    def to_json(self) -> JSON:
        return {
            "version": self.version,
            "engines": [e.to_json() for e in self.engines],
            "networks": [self._network_json(n) for n in self.networks],
            "containers": [self._container_json(c) for c in self.containers],
        }

    def _network_json(self, n: Network) -> JSON:
        return {
            "name": n.name,
            "id": n.id,
            "engine": n.engine,
            "engines": list(n.engines or (n.engine,)),
            "driver": n.driver,
            "scope": n.scope,
            "internal": n.internal,
            "attachable": n.attachable,
            "enable_ipv6": n.enable_ipv6,
            "ipam": [p.to_json() for p in n.ipam],
            "options": dict(n.options),
            "labels": dict(n.labels),
            "endpoints": [e.to_json() for e in self.endpoints_of(n)],
        }

    @staticmethod
    def _container_json(c: Container) -> JSON:
        return {
            "name": c.name,
            "id": c.id,
            "engine": c.engine,
            "image": c.image,
            "state": c.state,
            "health": c.health,
            "pid": c.pid,
            "hostname": c.hostname,
            "network_mode": c.network_mode,
            "networks": [a.network for a in c.attachments],
            "ports": [p.to_json() for p in c.ports],
            "labels": dict(c.labels),
        }


@dataclass(slots=True)
class EngineState:
    """What one engine holds, keyed by id. Mutable: the watcher updates it in place and
    freezes a `Topology` from it after every change."""

    info: EngineInfo
    networks: dict[str, Network] = field(default_factory=dict)
    containers: dict[str, Container] = field(default_factory=dict)

    def upsert_network(self, n: Network) -> bool:
        changed = self.networks.get(n.id) != n
        self.networks[n.id] = n
        return changed

    def drop_network(self, network_id: str) -> bool:
        return self.networks.pop(network_id, None) is not None

    def upsert_container(self, c: Container) -> bool:
        changed = self.containers.get(c.id) != c
        self.containers[c.id] = c
        return changed

    def drop_container(self, container_id: str) -> bool:
        return self.containers.pop(container_id, None) is not None


def build_topology(states: list[EngineState], version: int) -> Topology:
    """Freeze engine states into one topology. Swarm-scoped networks with the same id are one
    network; the first engine (in the order given) that reports it supplies its details."""
    networks: dict[tuple[str, str], Network] = {}
    seen_on: dict[tuple[str, str], list[str]] = {}
    for st in states:
        for n in st.networks.values():
            key = ("*", n.id) if n.is_multi_host else (st.info.name, n.id)
            if key not in networks:
                networks[key] = n
                seen_on[key] = []
            seen_on[key].append(st.info.name)
    merged = tuple(
        sorted(
            (_with_engines(n, tuple(seen_on[k])) for k, n in networks.items()),
            key=lambda n: (n.name, n.engine),
        )
    )
    containers = tuple(
        sorted(
            (c for st in states for c in st.containers.values()),
            key=lambda c: (c.name, c.engine),
        )
    )
    return Topology(version, tuple(st.info for st in states), merged, containers)


def _with_engines(n: Network, engines: tuple[str, ...]) -> Network:
    return n if n.engines == engines else replace(n, engines=engines)
