"""An engine in memory, behind the same `EngineBackend` interface as the real one.

It keeps Docker's semantics where dockmesh's logic depends on them, and emits the events
Docker would, in Docker's shape, so that apply, the engine's context for validation, the
watcher (and later the catalog and the policy enforcer) are tested without a daemon and
driven by hypothesis:

- names are unique (a second create with the same name is `EngineConflict`); objects are
  found by name, id, or a unique id prefix;
- a container is created on its first network; addresses are allocated when it starts
  (static ones must be free and in the subnet, dynamic ones come from `ip_range`, else the
  subnet, skipping the gateway and aux addresses) and released when it stops;
- a network with running endpoints cannot be removed; subnets of two networks never overlap;
- an image used by a container cannot be removed; a container needs its image.

`fail(op, name)` makes the next matching operation raise, for tests of rollback paths.
Integration tests use the real engine instead.
"""

from __future__ import annotations

import hashlib
import ipaddress
import itertools
import queue
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from dockmesh.engine.backend import EngineRef, ImageInfo
from dockmesh.errors import EngineConflict, EngineError, EngineNotFound
from dockmesh.model.config import (
    ContainerConfig,
    EndpointConfig,
    IpamConfig,
    NetworkConfig,
    VolumeConfig,
)
from dockmesh.model.ipam import first_free
from dockmesh.model.topology import (
    Attachment,
    Container,
    EngineInfo,
    EngineState,
    IpamPool,
    Network,
    PortBinding,
)

_IPNet = ipaddress.IPv4Network | ipaddress.IPv6Network


class MemoryEventStream:
    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[dict[str, Any] | None] = queue.SimpleQueue()

    def put(self, event: dict[str, Any]) -> None:
        self._queue.put(event)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        while (event := self._queue.get()) is not None:
            yield event

    def close(self) -> None:
        self._queue.put(None)


@dataclass(slots=True)
class _Ctr:
    """A container as the engine keeps it: its configuration and its run-time state."""

    id: str
    config: ContainerConfig
    image_id: str
    endpoints: dict[str, EndpointConfig]  # network id → what was asked
    state: str = "created"
    health: str | None = None
    pid: int | None = None
    addresses: dict[str, str] = field(default_factory=dict)  # network id → allocated IPv4
    name: str = ""


def _normal_image(ref: str) -> str:
    last = ref.rsplit("/", 1)[-1]
    return ref if (":" in last or "@" in ref) else f"{ref}:latest"


class MemoryEngine:
    def __init__(
        self,
        name: str = "mem",
        clock_ns: Callable[[], int] = time.time_ns,
        read_delay_s: float = 0.0,
        images: Sequence[str] = ("dockmesh/toolbox:latest", "dockmesh/python:latest"),
        swarm: bool = False,
    ) -> None:
        self.ref = EngineRef(name, f"memory://{name}")
        self._clock_ns = clock_ns
        self._read_delay_s = read_delay_s  # a slow inspect, as when the engine holds a lock
        self._lock = threading.RLock()
        self._networks: dict[str, Network] = {}
        self._containers: dict[str, _Ctr] = {}
        self._images: dict[str, ImageInfo] = {}
        self._volumes: dict[str, VolumeConfig] = {}
        self._streams: list[MemoryEventStream] = []
        self._ids = itertools.count(1)
        self._failures: list[tuple[str, str, EngineError]] = []
        self._swarm = swarm
        for image in images:
            self.add_image(image)

    # --- EngineSource -------------------------------------------------------------------

    def info(self) -> EngineInfo:
        return EngineInfo(self.ref.name, self.ref.url, "memory")

    def swarm_active(self) -> bool:
        return self._swarm

    def snapshot(self) -> EngineState:
        with self._lock:
            return EngineState(
                self.info(),
                dict(self._networks),
                {cid: self._view(c) for cid, c in self._containers.items()},
            )

    def events(self) -> MemoryEventStream:
        stream = MemoryEventStream()
        with self._lock:
            self._streams.append(stream)
        return stream

    def container(self, container_id: str) -> Container | None:
        if self._read_delay_s:
            time.sleep(self._read_delay_s)
        with self._lock:
            c = self._find_container(container_id)
            return None if c is None else self._view(c)

    def network(self, network_id: str) -> Network | None:
        if self._read_delay_s:
            time.sleep(self._read_delay_s)
        with self._lock:
            return self._find_network(network_id)

    def close(self) -> None:
        self.drop_streams()

    # --- test controls ------------------------------------------------------------------

    def drop_streams(self) -> None:
        """Ends every event stream, as an engine restart does."""
        with self._lock:
            streams, self._streams = self._streams, []
        for s in streams:
            s.close()

    def fail(self, op: str, name: str = "*", message: str = "injected failure") -> None:
        """The next `op` (a method name: start, create_container, …) on `name` raises."""
        with self._lock:
            self._failures.append((op, name, EngineError(f"{op} {name}: {message}")))

    def _maybe_fail(self, op: str, name: str) -> None:
        for i, (fop, fname, exc) in enumerate(self._failures):
            if fop == op and fname in ("*", name):
                del self._failures[i]
                raise exc

    def add_image(self, ref: str, labels: Mapping[str, str] | None = None) -> str:
        with self._lock:
            iid = "sha256:" + hashlib.sha256(f"{ref}{next(self._ids)}".encode()).hexdigest()
            self._images[_normal_image(ref)] = ImageInfo(iid, dict(labels or {}))
            return iid

    # --- lookups ------------------------------------------------------------------------

    def _id(self) -> str:
        return hashlib.sha256(f"{self.ref.name}/{next(self._ids)}".encode()).hexdigest()

    def _find_network(self, ref: str) -> Network | None:
        if ref in self._networks:
            return self._networks[ref]
        by_name = [n for n in self._networks.values() if n.name == ref]
        if by_name:
            return by_name[0]
        by_prefix = [n for n in self._networks.values() if n.id.startswith(ref)]
        return by_prefix[0] if len(by_prefix) == 1 and ref else None

    def _find_container(self, ref: str) -> _Ctr | None:
        if ref in self._containers:
            return self._containers[ref]
        by_name = [c for c in self._containers.values() if c.name == ref]
        if by_name:
            return by_name[0]
        by_prefix = [c for c in self._containers.values() if c.id.startswith(ref)]
        return by_prefix[0] if len(by_prefix) == 1 and ref else None

    def _net(self, ref: str) -> Network:
        n = self._find_network(ref)
        if n is None:
            raise EngineNotFound(f"network {ref} not found")
        return n

    def _ctr(self, ref: str) -> _Ctr:
        c = self._find_container(ref)
        if c is None:
            raise EngineNotFound(f"No such container: {ref}")
        return c

    def _view(self, c: _Ctr) -> Container:
        attachments = []
        for nid, ep in self._endpoints_by_name(c):
            net = self._networks.get(nid)
            name = net.name if net is not None else ep.network
            implicit: tuple[str, ...] = ()
            if name not in ("bridge", "host", "none"):
                implicit = (c.id[:12], self._hostname(c))
            attachments.append(
                Attachment(  # sorted below by network name, as the engine reports them
                    network_id=nid,
                    network=name,
                    ipv4=c.addresses.get(nid),
                    mac=_mac(c.addresses[nid]) if nid in c.addresses else None,
                    aliases=(*ep.aliases, *implicit),
                    endpoint_id=f"ep-{c.id[:8]}-{nid[:8]}" if nid in c.addresses else "",
                )
            )
        attachments.sort(key=lambda a: a.network)
        ports = tuple(
            PortBinding(p.container_port, p.protocol, p.host_ip, p.host_port)
            for p in c.config.ports
        )
        return Container(
            id=c.id,
            name=c.name,
            engine=self.ref.name,
            image=c.config.image,
            image_id=c.image_id,
            state=c.state,
            health=c.health,
            pid=c.pid,
            hostname=self._hostname(c),
            network_mode=c.config.network_mode or "",
            attachments=tuple(attachments),
            ports=ports,
            labels=dict(c.config.labels),
        )

    def _endpoints_by_name(self, c: _Ctr) -> list[tuple[str, EndpointConfig]]:
        return [(nid, ep) for nid, ep in c.endpoints.items()]

    @staticmethod
    def _hostname(c: _Ctr) -> str:
        return c.config.hostname or c.id[:12]

    def _emit(self, kind: str, action: str, oid: str, **attrs: str) -> None:
        event = {
            "Type": kind,
            "Action": action,
            "Actor": {"ID": oid, "Attributes": attrs},
            "timeNano": self._clock_ns(),
        }
        for s in self._streams:
            s.put(event)

    # --- networks -----------------------------------------------------------------------

    def create_network(
        self,
        config: NetworkConfig | str,
        subnet: str | None = None,
        internal: bool = False,
        scope: str = "local",
        driver: str = "bridge",
    ) -> str:
        """`create_network(NetworkConfig)` as the engine takes it, or the short form
        `create_network(name, subnet=…)` for tests."""
        if isinstance(config, str):
            ipam = (IpamConfig(subnet),) if subnet else ()
            config = NetworkConfig(config, driver, ipam, internal)
        with self._lock:
            self._maybe_fail("create_network", config.name)
            if self._find_network(config.name) is not None and any(
                n.name == config.name for n in self._networks.values()
            ):
                raise EngineConflict(f"network with name {config.name} already exists")
            pools = self._pools(config)
            nid = self._id()
            net_scope = "swarm" if config.driver == "overlay" else scope
            self._networks[nid] = Network(
                nid,
                config.name,
                self.ref.name,
                config.driver,
                net_scope,
                config.internal,
                config.attachable,
                config.enable_ipv6,
                ipam=pools,
                options=dict(config.options),
                labels=dict(config.labels),
                engines=(self.ref.name,),
            )
            self._emit("network", "create", nid, name=config.name, type=config.driver)
        return nid

    def _pools(self, config: NetworkConfig) -> tuple[IpamPool, ...]:
        taken = [ipaddress.ip_network(p.subnet) for n in self._networks.values() for p in n.ipam]
        pools: list[IpamPool] = []
        wanted = list(config.ipam)
        if not wanted:  # the engine picks a free /24
            for i in itertools.count(0):
                cand = ipaddress.ip_network(f"10.{200 + i // 256}.{i % 256}.0/24")
                if not any(cand.overlaps(t) for t in taken):
                    wanted = [IpamConfig(str(cand))]
                    break
        for p in wanted:
            try:
                net = ipaddress.ip_network(p.subnet)
            except ValueError as e:
                raise EngineError(f"invalid subnet {p.subnet}: {e}") from None
            for t in taken:
                if t.version == net.version and net.overlaps(t):
                    raise EngineConflict(
                        f"Pool overlaps with other one on this address space ({p.subnet})"
                    )
            if p.gateway is None and config.driver == "bridge" and net.num_addresses < 4:
                raise EngineError(f"no available address for the gateway in {p.subnet}")
            # With no gateway named, the engine takes the first address it hands out from
            # ip_range (else from the subnet) for it.
            dynamic = ipaddress.ip_network(p.ip_range) if p.ip_range else net
            first = first_free(net, dynamic)
            gw = p.gateway or (None if first is None else str(first))
            pools.append(IpamPool(str(net), gw, p.ip_range, dict(p.aux_addresses)))
            taken.append(net)
        return tuple(pools)

    def remove_network(self, ref: str) -> None:
        with self._lock:
            net = self._find_network(ref)
            if net is None:
                return
            self._maybe_fail("remove_network", net.name)
            active = [c.name for c in self._containers.values() if net.id in c.addresses]
            if active:
                raise EngineConflict(
                    f"error while removing network: network {net.name} id {net.id} has "
                    f"active endpoints ({', '.join(sorted(active))})"
                )
            del self._networks[net.id]
            self._emit("network", "destroy", net.id, name=net.name, type=net.driver)

    # --- containers ---------------------------------------------------------------------

    def create_container(
        self,
        config: ContainerConfig | str,
        image: str = "dockmesh/toolbox",
        labels: dict[str, str] | None = None,
    ) -> str:
        """`create_container(ContainerConfig)` as the engine takes it, or the short form
        `create_container(name, image=…, labels=…)` for tests."""
        if isinstance(config, str):
            config = ContainerConfig(config, image, labels=dict(labels or {}))
        with self._lock:
            self._maybe_fail("create_container", config.name)
            if any(c.name == config.name for c in self._containers.values()):
                raise EngineConflict(
                    f'Conflict. The container name "/{config.name}" is already in use'
                )
            img = self._images.get(_normal_image(config.image))
            if img is None:
                raise EngineNotFound(f"No such image: {config.image}")
            endpoints: dict[str, EndpointConfig] = {}
            if config.network_mode is None:
                first = config.networks[0] if config.networks else EndpointConfig("bridge")
                if first.network == "bridge" and self._find_network("bridge") is None:
                    self.create_network(
                        NetworkConfig("bridge", ipam=(IpamConfig("172.17.0.0/16"),))
                    )
                endpoints[self._net(first.network).id] = first
            cid = self._id()
            self._containers[cid] = _Ctr(cid, config, img.id, endpoints, name=config.name)
            self._emit("container", "create", cid, name=config.name, image=config.image)
        return cid

    def connect(
        self, container: str, endpoint: EndpointConfig | str, aliases: tuple[str, ...] = ()
    ) -> None:
        """`connect(container, EndpointConfig)`, or `connect(container, network, aliases)`."""
        with self._lock:
            c = self._ctr(container)
            if isinstance(endpoint, str):
                endpoint = EndpointConfig(self._net(endpoint).name, aliases)
            net = self._net(endpoint.network)
            self._maybe_fail("connect", c.name)
            if net.id in c.endpoints:
                raise EngineConflict(
                    f"endpoint with name {c.name} already exists in network {net.name}"
                )
            if c.config.network_mode is not None:
                raise EngineConflict(
                    f"container sharing network namespace with another container or host "
                    f"cannot be connected to any other network ({c.name})"
                )
            c.endpoints[net.id] = endpoint
            if c.state == "running":
                try:
                    self._allocate(c, net.id)
                except EngineError:
                    del c.endpoints[net.id]
                    raise
                self._emit("network", "connect", net.id, container=c.id, name=net.name)

    def disconnect(self, container: str, network: str, force: bool = False) -> None:
        with self._lock:
            c = self._ctr(container)
            net = self._net(network)
            if net.id not in c.endpoints:
                raise EngineError(f"container {c.name} is not connected to network {net.name}")
            del c.endpoints[net.id]
            if c.addresses.pop(net.id, None) is not None:
                self._emit("network", "disconnect", net.id, container=c.id, name=net.name)

    def _allocate(self, c: _Ctr, nid: str) -> None:
        net = self._networks.get(nid)
        if net is None:
            raise EngineNotFound(f"network {c.endpoints[nid].network} not found")
        ep = c.endpoints[nid]
        if not net.ipam:
            return
        pool = net.ipam[0]
        subnet = ipaddress.ip_network(pool.subnet)
        held = {o.addresses[nid] for o in self._containers.values() if nid in o.addresses}
        held |= {a for a in (pool.gateway, *pool.aux_addresses.values()) if a}
        if ep.ipv4_address is not None:
            if ipaddress.ip_address(ep.ipv4_address) not in subnet:
                raise EngineError(
                    f"invalid address {ep.ipv4_address}: it does not belong to any of this "
                    f"network's subnets"
                )
            if ep.ipv4_address in held:
                raise EngineConflict(f"Address already in use ({ep.ipv4_address})")
            c.addresses[nid] = ep.ipv4_address
            return
        # Docker allocates every address of ip_range but the subnet's own network and
        # broadcast addresses (a range's first address is allocatable).
        source = ipaddress.ip_network(pool.ip_range) if pool.ip_range else subnet
        reserved = {subnet.network_address, subnet.broadcast_address}
        for addr in source:
            if addr not in reserved and str(addr) not in held:
                c.addresses[nid] = str(addr)
                return
        raise EngineError(
            f"no available IPv4 addresses on this network's address pools ({net.name})"
        )

    def start(self, container: str) -> None:
        with self._lock:
            c = self._ctr(container)
            self._maybe_fail("start", c.name)
            if c.state == "running":
                return
            for nid in c.endpoints:
                if nid not in self._networks:
                    raise EngineNotFound(f"network {c.endpoints[nid].network} not found")
            self._check_ports(c)
            try:
                for nid in c.endpoints:
                    self._allocate(c, nid)
            except EngineError:
                c.addresses.clear()
                raise
            c.state, c.pid = "running", int(c.id[:6], 16) + 1000
            for nid in c.addresses:
                self._emit("network", "connect", nid, container=c.id, name=self._networks[nid].name)
            self._emit("container", "start", c.id, name=c.name)

    def _check_ports(self, c: _Ctr) -> None:
        mine = {(p.host_port, p.protocol) for p in c.config.ports if p.host_port}
        for o in self._containers.values():
            if o.state != "running" or o is c:
                continue
            for p in o.config.ports:
                if (p.host_port, p.protocol) in mine:
                    raise EngineError(
                        f"driver failed programming external connectivity: Bind for "
                        f"0.0.0.0:{p.host_port} failed: port is already allocated"
                    )

    def stop(self, container: str, timeout_s: int = 10) -> None:
        with self._lock:
            c = self._ctr(container)
            self._maybe_fail("stop", c.name)
            if c.state != "running":
                return
            self._set_stopped(c)

    def _set_stopped(self, c: _Ctr) -> None:
        for nid in list(c.addresses):
            net = self._networks.get(nid)
            self._emit("network", "disconnect", nid, container=c.id, name=net.name if net else "")
        c.addresses.clear()
        c.state, c.pid, c.health = "exited", None, None
        self._emit("container", "die", c.id, name=c.name)
        self._emit("container", "stop", c.id, name=c.name)

    def set_health(self, cid: str, status: str) -> None:
        with self._lock:
            c = self._ctr(cid)
            c.health = status
            self._emit("container", f"health_status: {status}", c.id, name=c.name)

    def rename(self, cid: str, new_name: str) -> None:
        with self._lock:
            c = self._ctr(cid)
            c.name = new_name
            self._emit("container", "rename", c.id, name=new_name)

    # --- volumes -------------------------------------------------------------------------

    def volumes(self, label: str | None = None) -> dict[str, dict[str, str]]:
        key, _, value = (label or "").partition("=")
        with self._lock:
            return {
                n: dict(v.labels)
                for n, v in self._volumes.items()
                if label is None or v.labels.get(key) == value or (not value and key in v.labels)
            }

    def create_volume(self, config: VolumeConfig) -> str:
        """As the engine does: a volume of that name already there is kept as it is."""
        with self._lock:
            self._maybe_fail("create_volume", config.name)
            self._volumes.setdefault(config.name, config)
        return config.name

    def remove_volume(self, name: str) -> None:
        with self._lock:
            if name not in self._volumes:
                return
            self._maybe_fail("remove_volume", name)
            if any(m.source == name for c in self._containers.values() for m in c.config.mounts):
                raise EngineConflict(f"remove {name}: volume is in use")
            del self._volumes[name]

    def remove_container(self, container: str) -> None:
        with self._lock:
            c = self._find_container(container)
            if c is None:
                return
            self._maybe_fail("remove_container", c.name)
            if c.state == "running":
                self._set_stopped(c)
            del self._containers[c.id]
            self._emit("container", "destroy", c.id, name=c.name)

    def wait(self, container: str, timeout_s: float) -> int:
        with self._lock:
            self._ctr(container)
        return 0

    def logs(self, container: str) -> bytes:
        with self._lock:
            self._ctr(container)
        return b""

    def put_archive(self, container: str, path: str, tar: bytes) -> None:
        with self._lock:
            self._ctr(container)

    # --- images -------------------------------------------------------------------------

    def image(self, ref: str) -> ImageInfo | None:
        with self._lock:
            found = self._images.get(_normal_image(ref))
            if found is None:
                found = next((i for i in self._images.values() if i.id == ref), None)
            return found

    def import_image(
        self, source: bytes | str, repository: str, tag: str, changes: Sequence[str]
    ) -> None:
        labels = {}
        for ch in changes:
            if ch.startswith("LABEL "):
                k, _, v = ch[6:].partition("=")
                labels[k.strip()] = v.strip()
        self.add_image(f"{repository}:{tag}", labels)

    def commit(
        self, container: str, repository: str, tag: str, message: str, conf: Mapping[str, Any]
    ) -> str:
        with self._lock:
            self._ctr(container)
        return self.add_image(f"{repository}:{tag}", dict(conf.get("Labels") or {}))

    def remove_image(self, ref: str) -> None:
        with self._lock:
            key = _normal_image(ref)
            info = self._images.get(key)
            if info is None:
                key, info = next(
                    ((k, i) for k, i in self._images.items() if i.id == ref), ("", None)
                )
            if info is None:
                raise EngineNotFound(f"No such image: {ref}")
            users = [c.name for c in self._containers.values() if c.image_id == info.id]
            if users:
                raise EngineConflict(f"image is being used by container {users[0]}")
            del self._images[key]


def _mac(ip: str) -> str:
    parts = ipaddress.ip_address(ip).packed[-4:]
    return "02:42:" + ":".join(f"{b:02x}" for b in parts)
