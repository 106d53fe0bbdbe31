"""The topology of one or more Docker engines as immutable values.

A `Topology` is a versioned snapshot: networks, containers and the endpoints that join them.
Endpoints are not stored twice: a container carries its attachments (one per network), and
`Topology.endpoints_of(network)` derives the network's view. A network whose scope is `swarm`
(an overlay) is one network however many engines see it; its endpoints carry their engine.

Nothing here does I/O; `dockmesh.engine` fills these from the Docker API.
"""

from __future__ import annotations

import ipaddress
from bisect import bisect_left
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Generic, TypeVar

from dockmesh.model.ipam import IPNetwork, first_free

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
    """One subnet of a network, as the engine reports it: `gateway` only when one was asked
    for (or the engine chose the subnet too), so ask `effective_gateway()` for the address a
    container's route actually points at."""

    subnet: str
    gateway: str | None = None
    ip_range: str | None = None
    aux_addresses: Mapping[str, str] = field(default_factory=dict)

    def network(self) -> IPNetwork | None:
        """The subnet as a value; None when the engine's text is not one."""
        try:
            return ipaddress.ip_network(self.subnet, strict=False)
        except ValueError:
            return None

    def effective_gateway(self) -> str | None:
        """The pool's gateway: the one the engine reports, else the one Docker's IPAM took
        when none was asked for — the lowest address it hands out from the dynamic pool
        (`ip_range` when set, else the subnet; `dockmesh.model.ipam.first_free`). Canonical
        text; None when the engine's values cannot be read."""
        if self.gateway:
            try:  # some engines write it with its prefix length
                return str(ipaddress.ip_address(self.gateway.split("/")[0]))
            except ValueError:
                return None
        subnet = self.network()
        if subnet is None:
            return None
        try:
            pool = ipaddress.ip_network(self.ip_range, strict=False) if self.ip_range else subnet
        except ValueError:
            return None
        if pool.version != subnet.version:
            return None
        gateway = first_free(subnet, pool)
        return None if gateway is None else str(gateway)

    def to_json(self) -> JSON:
        return {
            "subnet": self.subnet,
            "gateway": self.gateway,
            "ip_range": self.ip_range,
            "aux_addresses": dict(self.aux_addresses),
        }


@dataclass(frozen=True, slots=True)
class Network:
    """A network as its engine reports it; a swarm overlay is one `Network` however many
    engines see it (`engines`). `id` is the engine's and unique in a topology; names are not
    (two engines may each have a local `backend`). Its subnets are `ipam`, one pool each, with
    only what the engine reports; its gateway is `gateway()`. Its endpoints are derived from
    the containers (`Topology.endpoints_of`), never stored here."""

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
    # The swarm's routing mesh (`docker network inspect`'s `Ingress`): a task's address on
    # it is the published ports' load balancer's, not one to register or probe.
    ingress: bool = False

    @property
    def is_multi_host(self) -> bool:
        return self.scope == "swarm"

    def pool(self, version: int = 4) -> IpamPool | None:
        """The network's first pool of this IP version (a bridge has one of each at most)."""
        for p in self.ipam:
            net = p.network()
            if net is not None and net.version == version:
                return p
        return None

    def gateway(self, version: int = 4) -> str | None:
        """The gateway of that pool (`IpamPool.effective_gateway`); on a local bridge, an
        address the host holds on the bridge, reachable from every container on it."""
        p = self.pool(version)
        return None if p is None else p.effective_gateway()


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
    """A container as its engine reports it. `attachments` holds its endpoint on each network
    it is on (the one place endpoints are stored); `pid` is set only while it runs, and is
    how the host reaches its namespaces; `labels` are anyone's input, read through
    `dockmesh.model.labels`."""

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


# Docker's embedded DNS: inside every container on a user-defined network, at this address.
DOCKER_DNS = "127.0.0.11"
# Networks on which Docker's embedded DNS does not answer for container names and aliases.
NO_DNS_NETWORKS = frozenset({"bridge", "host", "none"})
# Below this many characters an id prefix is too likely to be ambiguous to accept.
_MIN_ID_PREFIX = 6

_T = TypeVar("_T", Container, Network)
# A container's endpoint seen from the container: the container and its attachment.
Placement = tuple[Container, Attachment]


@dataclass(frozen=True, slots=True)
class Topology:
    """One version of the topology. Lookups go through indexes built on first use (see
    `_TopologyIndex`); `networks` and `containers` stay the plain sorted tuples."""

    version: int
    engines: tuple[EngineInfo, ...]
    networks: tuple[Network, ...]
    containers: tuple[Container, ...]
    # Built on first lookup, not in build_topology: the watcher freezes a topology on every
    # change and most versions are superseded before anyone looks them up. Two threads that
    # race here each build an equal index and one wins, so no lock is needed.
    _index: _TopologyIndex | None = field(default=None, init=False, repr=False, compare=False)

    def _idx(self) -> _TopologyIndex:
        idx = self._index
        if idx is None:
            idx = _TopologyIndex(self.networks, self.containers)
            object.__setattr__(self, "_index", idx)
        return idx

    def network(self, name_or_id: str) -> Network | None:
        """The network with this name or id (the first in order when several engines hold
        one of that name), else the only one whose id starts with it (6 characters at
        least)."""
        return self._idx().networks.find(name_or_id)

    def container(self, name_or_id: str) -> Container | None:
        """The container with this name or id, else the only one whose id starts with it
        (6 characters at least)."""
        return self._idx().containers.find(name_or_id)

    def endpoints_of(self, network: Network) -> tuple[Endpoint, ...]:
        """Every container attached to `network` (by id), sorted by container then engine."""
        return self._idx().endpoints_of(network)

    def networks_of(self, container: Container) -> tuple[str, ...]:
        return tuple(a.network for a in container.attachments)

    def attached_networks(self, container: Container) -> tuple[tuple[Network, Attachment], ...]:
        """Each of the container's attachments with the network it joins, as the container's
        engine reports it; attachments to a network this topology lacks are left out."""
        return self._idx().attached_networks(container)

    def attachments_at(self, address: str) -> tuple[Placement, ...]:
        """Every (container, attachment) holding `address` as its IPv4 or IPv6 address, in
        topology order. Addresses are compared as text, in the engine's (canonical) form.
        Several only when engines reuse private ranges or a container holds it twice."""
        return self._idx().at_address.get(address, ())

    def container_by_ip(self, address: str) -> Container | None:
        """The container holding `address`, or None when none or several do."""
        holders = self._idx().holders.get(address, ())
        return holders[0] if len(holders) == 1 else None

    def containers_with_label(self, key: str, value: str | None = None) -> tuple[Container, ...]:
        """Containers carrying label `key` (with this `value`, when given), in topology order."""
        idx = self._idx()
        if value is None:
            return idx.with_label_key.get(key, ())
        return idx.with_label.get((key, value), ())

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
            "ingress": n.ingress,
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


class _ByNameOrId(Generic[_T]):
    """Name, full id and unique id prefix → object, answering as a scan in order would: the
    first object whose name or id equals the key, else the only one whose id starts with it."""

    __slots__ = ("_exact", "_ids", "_sorted")
    _exact: dict[str, _T]
    _ids: list[str]
    _sorted: list[_T]

    def __init__(self, items: Sequence[_T]) -> None:
        exact: dict[str, _T] = {}
        for x in items:
            exact.setdefault(x.name, x)
            exact.setdefault(x.id, x)
        self._exact = exact
        ordered: list[_T] = sorted(items, key=lambda x: x.id)
        self._ids = [x.id for x in ordered]
        self._sorted = ordered

    def find(self, key: str) -> _T | None:
        hit = self._exact.get(key)
        if hit is not None or len(key) < _MIN_ID_PREFIX:
            return hit
        # Ids starting with `key` are adjacent in sorted order: unique iff the next one
        # does not start with it too.
        i = bisect_left(self._ids, key)
        ids = self._ids
        if i == len(ids) or not ids[i].startswith(key):
            return None
        if i + 1 < len(ids) and ids[i + 1].startswith(key):
            return None
        return self._sorted[i]


class _TopologyIndex:
    """Every lookup table of one topology version, built in one pass over the containers.

    Only `_endpoints` grows after construction (a memo); dict.setdefault keeps concurrent
    fillers consistent since they compute equal values."""

    __slots__ = (
        "_endpoints",
        "_network_on",
        "at_address",
        "attached",
        "containers",
        "holders",
        "networks",
        "with_label",
        "with_label_key",
    )

    def __init__(self, networks: Sequence[Network], containers: Sequence[Container]) -> None:
        self.networks = _ByNameOrId(networks)
        self.containers = _ByNameOrId(containers)
        network_on: dict[tuple[str, str], Network] = {}
        for n in networks:
            for engine in n.engines or (n.engine,):
                network_on.setdefault((engine, n.id), n)
        self._network_on = network_on
        attached: dict[str, list[Placement]] = {}
        at_address: dict[str, list[Placement]] = {}
        holders: dict[str, list[Container]] = {}
        with_label: dict[tuple[str, str], list[Container]] = {}
        with_label_key: dict[str, list[Container]] = {}
        for c in containers:
            seen_networks: set[str] = set()
            seen_addresses: set[str] = set()
            for a in c.attachments:
                # Container.attachment() answers with the first attachment to a network.
                if a.network_id not in seen_networks:
                    seen_networks.add(a.network_id)
                    attached.setdefault(a.network_id, []).append((c, a))
                for address in {a.ipv4, a.ipv6}:
                    if address is None:
                        continue
                    at_address.setdefault(address, []).append((c, a))
                    if address not in seen_addresses:
                        seen_addresses.add(address)
                        holders.setdefault(address, []).append(c)
            for kv in c.labels.items():
                with_label.setdefault(kv, []).append(c)
                with_label_key.setdefault(kv[0], []).append(c)
        self.attached = {k: tuple(v) for k, v in attached.items()}
        self.at_address = {k: tuple(v) for k, v in at_address.items()}
        self.holders = {k: tuple(v) for k, v in holders.items()}
        self.with_label = {k: tuple(v) for k, v in with_label.items()}
        self.with_label_key = {k: tuple(v) for k, v in with_label_key.items()}
        # (network id, whether DNS answers on it) → endpoints: all an endpoint list depends on.
        self._endpoints: dict[tuple[str, bool], tuple[Endpoint, ...]] = {}

    def endpoints_of(self, network: Network) -> tuple[Endpoint, ...]:
        key = (network.id, network.name not in NO_DNS_NETWORKS)
        eps = self._endpoints.get(key)
        if eps is None:
            eps = self._endpoints.setdefault(key, self._make_endpoints(*key))
        return eps

    def _make_endpoints(self, network_id: str, dns_answers: bool) -> tuple[Endpoint, ...]:
        eps: list[Endpoint] = []
        for c, a in self.attached.get(network_id, ()):
            # The engine adds the short id and the hostname to every endpoint's aliases;
            # `aliases` keeps what the user asked for, `dns_names` everything DNS answers.
            implicit = {c.id[:12], c.hostname}
            aliases = tuple(x for x in a.aliases if x not in implicit)
            dns: tuple[str, ...] = ()
            if dns_answers:
                dns = tuple(dict.fromkeys((c.name, c.id[:12], *a.aliases)))
            eps.append(Endpoint(c.name, c.id, c.engine, a.ipv4, a.ipv6, a.mac, aliases, dns))
        return tuple(sorted(eps, key=lambda e: (e.container, e.engine)))

    def attached_networks(self, container: Container) -> tuple[tuple[Network, Attachment], ...]:
        out: list[tuple[Network, Attachment]] = []
        for a in container.attachments:
            n = self._network_on.get((container.engine, a.network_id))
            if n is not None:
                out.append((n, a))
        return tuple(out)


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


def topology_from_json(doc: Any) -> Topology:
    """A topology back from its JSON (`Topology.to_json`, as the agent serves it), for the
    renderings that need values. Raises ValueError on a document of another shape.

    The JSON keeps what users see, not everything: attachments are rebuilt from the
    networks' endpoints (their aliases as the engine lists them: the user's, then the short
    id and the hostname)."""
    try:
        engines = tuple(
            EngineInfo(str(e["name"]), str(e["url"]), str(e.get("server_version", "")))
            for e in doc["engines"]
        )
        networks: list[Network] = []
        attachments: dict[tuple[str, str], list[Attachment]] = {}
        for n in doc["networks"]:
            net = Network(
                id=str(n["id"]),
                name=str(n["name"]),
                engine=str(n["engine"]),
                driver=str(n["driver"]),
                scope=str(n.get("scope", "local")),
                internal=bool(n.get("internal", False)),
                attachable=bool(n.get("attachable", False)),
                ingress=bool(n.get("ingress", False)),
                enable_ipv6=bool(n.get("enable_ipv6", False)),
                ipam=tuple(
                    IpamPool(
                        str(p["subnet"]),
                        p.get("gateway"),
                        p.get("ip_range"),
                        dict(p.get("aux_addresses") or {}),
                    )
                    for p in n.get("ipam") or ()
                ),
                options=dict(n.get("options") or {}),
                labels=dict(n.get("labels") or {}),
                engines=tuple(n.get("engines") or (n["engine"],)),
            )
            networks.append(net)
            for ep in n.get("endpoints") or ():
                key = (str(ep["engine"]), str(ep["container_id"]))
                attachments.setdefault(key, []).append(
                    Attachment(
                        network_id=net.id,
                        network=net.name,
                        ipv4=ep.get("ipv4"),
                        ipv6=ep.get("ipv6"),
                        mac=ep.get("mac"),
                        aliases=tuple(ep.get("aliases") or ()),
                    )
                )
        containers = []
        for c in doc["containers"]:
            cid, engine = str(c["id"]), str(c["engine"])
            hostname = str(c.get("hostname") or "")
            by_name = {a.network: a for a in attachments.get((engine, cid), ())}
            # In the container's own order; a network the snapshot lacks keeps its name.
            atts = tuple(
                replace(a, aliases=(*a.aliases, cid[:12], hostname))
                if (a := by_name.get(str(name)))
                else Attachment(network_id="", network=str(name))
                for name in c.get("networks") or ()
            )
            containers.append(
                Container(
                    id=cid,
                    name=str(c["name"]),
                    engine=engine,
                    image=str(c.get("image", "")),
                    state=str(c.get("state", "unknown")),
                    health=c.get("health"),
                    pid=c.get("pid"),
                    hostname=hostname,
                    network_mode=str(c.get("network_mode") or ""),
                    attachments=atts,
                    ports=tuple(
                        PortBinding(
                            int(p["container_port"]),
                            str(p["protocol"]),
                            p.get("host_ip"),
                            p.get("host_port"),
                        )
                        for p in c.get("ports") or ()
                    ),
                    labels=dict(c.get("labels") or {}),
                )
            )
        return Topology(int(doc["version"]), engines, tuple(networks), tuple(containers))
    except (KeyError, TypeError, AttributeError) as e:
        raise ValueError(f"not a topology document: {e!r}") from None
