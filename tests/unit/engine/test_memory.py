"""The in-memory engine (dockmesh.engine.memory) keeps the rules its module lists, which the
tests built on it rely on: unique names and lookups by name, id or unique prefix; addresses
given on start (static ones checked, dynamic ones from ip_range, never the gateway or aux
addresses) and released on stop; networks with running endpoints and images in use cannot
be removed; Docker's events for each change; injected failures. Its agreement with the real
engine: tests/integration/test_backend.py."""

from __future__ import annotations

import ipaddress
import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from dockmesh.engine.memory import MemoryEngine
from dockmesh.errors import EngineConflict, EngineError, EngineNotFound
from dockmesh.model.config import (
    ContainerConfig,
    EndpointConfig,
    IpamConfig,
    NetworkConfig,
    PortMapping,
)


def on(name: str, *networks: str, ip: str | None = None, **kw: Any) -> ContainerConfig:
    eps = tuple(
        EndpointConfig(n, ipv4_address=ip if i == 0 else None) for i, n in enumerate(networks)
    )
    return ContainerConfig(name, "dockmesh/toolbox", networks=eps, **kw)


class Events:
    """Collects an engine's events on a thread, as the watcher reads them."""

    def __init__(self, engine: MemoryEngine) -> None:
        self.stream = engine.events()
        self.got: queue.SimpleQueue[dict[str, Any]] = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        for e in self.stream:
            self.got.put(e)

    def take(self) -> list[tuple[str, str]]:
        out = []
        while not self.got.empty():
            e = self.got.get()
            out.append((e["Type"], e["Action"]))
        return out


@pytest.fixture
def events() -> Iterator[tuple[MemoryEngine, Events]]:
    engine = MemoryEngine()
    ev = Events(engine)
    try:
        yield engine, ev
    finally:
        engine.drop_streams()
        ev.thread.join(5)


def test_names_are_unique_and_found_by_name_id_or_unique_prefix() -> None:
    mem = MemoryEngine()
    nid = mem.create_network(NetworkConfig("n", ipam=(IpamConfig("10.9.0.0/24"),)))
    cid = mem.create_container(on("web", "n"))
    with pytest.raises(EngineConflict, match='name "/web" is already in use'):
        mem.create_container(on("web", "n"))
    with pytest.raises(EngineConflict, match="network with name n already exists"):
        mem.create_network(NetworkConfig("n"))
    for ref in ("web", cid, cid[:12]):
        c = mem.container(ref)
        assert c is not None and c.id == cid
    assert mem.network("n") is not None and mem.network(nid[:10]) is not None
    assert mem.container("") is None and mem.container("nobody") is None
    with pytest.raises(EngineNotFound, match="No such container: nobody"):
        mem.start("nobody")


def test_addresses_are_given_on_start_and_released_on_stop() -> None:
    mem = MemoryEngine()
    mem.create_network(
        NetworkConfig(
            "n",
            ipam=(
                IpamConfig("10.9.0.0/24", ip_range="10.9.0.8/29", aux_addresses={"x": "10.9.0.9"}),
            ),
        )
    )
    net = mem.network("n")
    assert net is not None and net.ipam[0].gateway == "10.9.0.8"  # the range's first, taken
    a = mem.create_container(on("a", "n"))
    assert mem.container(a).attachments[0].ipv4 is None  # type: ignore[union-attr]
    mem.start(a)
    (att,) = mem.container(a).attachments  # type: ignore[union-attr]
    assert att.ipv4 == "10.9.0.10"  # not the gateway, not the aux address
    assert att.mac == "02:42:0a:09:00:0a"
    b = mem.create_container(on("b", "n", ip="10.9.0.200"))  # static: anywhere in the subnet
    mem.start(b)
    assert mem.container(b).attachments[0].ipv4 == "10.9.0.200"  # type: ignore[union-attr]
    c = mem.create_container(on("c", "n", ip="10.9.0.200"))
    with pytest.raises(EngineConflict, match=r"Address already in use \(10.9.0.200\)"):
        mem.start(c)
    d = mem.create_container(on("d", "n", ip="10.8.0.2"))
    with pytest.raises(EngineError, match="does not belong to any of this network's subnets"):
        mem.start(d)
    mem.stop(a)
    stopped = mem.container(a)
    assert stopped is not None and stopped.pid is None and stopped.attachments[0].ipv4 is None
    mem.start(mem.create_container(on("e", "n")))
    assert mem.container("e").attachments[0].ipv4 == "10.9.0.10"  # type: ignore[union-attr]


def test_a_full_pool_and_overlapping_subnets_are_refused() -> None:
    mem = MemoryEngine()
    mem.create_network(NetworkConfig("tiny", ipam=(IpamConfig("10.9.0.0/30"),)))
    mem.start(mem.create_container(on("a", "tiny")))  # .1 is the gateway, .2 is a's
    with pytest.raises(EngineError, match="no available IPv4 addresses"):
        mem.start(mem.create_container(on("b", "tiny")))
    assert mem.container("b").attachments[0].ipv4 is None  # type: ignore[union-attr]
    with pytest.raises(EngineConflict, match="Pool overlaps"):
        mem.create_network(NetworkConfig("big", ipam=(IpamConfig("10.9.0.0/16"),)))
    with pytest.raises(EngineError, match="no available address for the gateway"):
        mem.create_network(NetworkConfig("none", ipam=(IpamConfig("10.8.0.0/31"),)))
    auto = mem.network(mem.create_network(NetworkConfig("auto")))
    assert auto is not None and ipaddress.ip_network(auto.ipam[0].subnet).prefixlen == 24


def test_what_is_in_use_cannot_be_removed() -> None:
    mem = MemoryEngine()
    mem.create_network(NetworkConfig("n", ipam=(IpamConfig("10.9.0.0/24"),)))
    mem.start(mem.create_container(on("a", "n")))
    with pytest.raises(EngineConflict, match=r"network n .* has active endpoints \(a\)"):
        mem.remove_network("n")
    with pytest.raises(EngineConflict, match="image is being used by container a"):
        mem.remove_image("dockmesh/toolbox")
    with pytest.raises(EngineNotFound, match="No such image: nothing"):
        mem.create_container(ContainerConfig("x", "nothing"))
    mem.remove_container("a")  # stops it first
    mem.remove_network("n")
    mem.remove_image("dockmesh/toolbox")
    assert mem.network("n") is None and mem.image("dockmesh/toolbox") is None
    mem.remove_container("a")  # gone already: nothing to do
    mem.remove_network("n")


def test_published_ports_and_network_modes() -> None:
    mem = MemoryEngine()
    web = on("web", "bridge", ports=(PortMapping(80, "tcp", None, 8080),))
    mem.start(mem.create_container(web))  # the default bridge is made on first use
    assert mem.network("bridge") is not None
    clash = on("other", "bridge", ports=(PortMapping(81, "tcp", None, 8080),))
    with pytest.raises(EngineError, match="port is already allocated"):
        mem.start(mem.create_container(clash))
    hostly = ContainerConfig("h", "dockmesh/toolbox", network_mode="host")
    mem.start(mem.create_container(hostly))
    with pytest.raises(EngineConflict, match="cannot be connected to any other network"):
        mem.connect("h", EndpointConfig("bridge"))


def test_each_change_emits_docker_s_event(events: tuple[MemoryEngine, Events]) -> None:
    mem, ev = events
    mem.create_network(NetworkConfig("n", ipam=(IpamConfig("10.9.0.0/24"),)))
    cid = mem.create_container(on("a", "n"))
    mem.start(cid)
    mem.set_health(cid, "healthy")
    mem.rename(cid, "b")
    mem.stop(cid)
    mem.remove_container(cid)
    mem.remove_network("n")
    mem.drop_streams()
    ev.thread.join(5)
    assert ev.take() == [
        ("network", "create"),
        ("container", "create"),
        ("network", "connect"),
        ("container", "start"),
        ("container", "health_status: healthy"),
        ("container", "rename"),
        ("network", "disconnect"),
        ("container", "die"),
        ("container", "stop"),
        ("container", "destroy"),
        ("network", "destroy"),
    ]


def test_an_injected_failure_fails_the_next_matching_operation_once() -> None:
    mem = MemoryEngine()
    mem.create_network(NetworkConfig("n", ipam=(IpamConfig("10.9.0.0/24"),)))
    mem.fail("start", "b", "no room")
    a = mem.create_container(on("a", "n"))
    b = mem.create_container(on("b", "n"))
    mem.start(a)  # another name: not this one
    with pytest.raises(EngineError, match="start b: no room"):
        mem.start(b)
    mem.start(b)  # once
    mem.fail("create_container")
    with pytest.raises(EngineError, match="injected failure"):
        mem.create_container(on("c", "n"))
    assert mem.container("c") is None


def refused_only_when_full(change: Callable[[], None]) -> None:
    try:
        change()
    except EngineError as e:
        message = str(e)
    else:
        return
    assert "no available IPv4 addresses" in message


class Containers(RuleBasedStateMachine):
    """Any sequence of creates, starts, stops, connects, disconnects and removals on two
    networks: the running containers' addresses stay unique on each network, inside its
    pool and off its reserved addresses; stopped ones hold none."""

    def __init__(self) -> None:
        super().__init__()
        self.mem = MemoryEngine()
        self.mem.create_network(
            NetworkConfig("a", ipam=(IpamConfig("10.9.0.0/28", aux_addresses={"x": "10.9.0.3"}),))
        )
        self.mem.create_network(
            NetworkConfig("b", ipam=(IpamConfig("10.9.1.0/24", ip_range="10.9.1.64/28"),))
        )
        self.names: list[str] = []
        self.made = 0

    @rule(net=st.sampled_from(["a", "b"]))
    def create(self, net: str) -> None:
        name = f"c{self.made}"
        self.made += 1
        self.mem.create_container(on(name, net))
        self.names.append(name)

    @precondition(lambda self: self.names)
    @rule(data=st.data())
    def start(self, data: st.DataObject) -> None:
        name = data.draw(st.sampled_from(self.names))
        refused_only_when_full(lambda: self.mem.start(name))

    @precondition(lambda self: self.names)
    @rule(data=st.data())
    def stop(self, data: st.DataObject) -> None:
        self.mem.stop(data.draw(st.sampled_from(self.names)))

    @precondition(lambda self: self.names)
    @rule(data=st.data(), net=st.sampled_from(["a", "b"]))
    def connect_or_disconnect(self, data: st.DataObject, net: str) -> None:
        name = data.draw(st.sampled_from(self.names))
        c = self.mem.container(name)
        assert c is not None
        if any(x.network == net for x in c.attachments):
            self.mem.disconnect(name, net)
        else:
            refused_only_when_full(lambda: self.mem.connect(name, EndpointConfig(net)))

    @precondition(lambda self: self.names)
    @rule(data=st.data())
    def remove(self, data: st.DataObject) -> None:
        name = data.draw(st.sampled_from(self.names))
        self.mem.remove_container(name)
        self.names.remove(name)

    @invariant()
    def addresses_are_unique_in_their_pool_and_off_the_reserved_ones(self) -> None:
        state = self.mem.snapshot()
        for net in state.networks.values():
            pool = net.ipam[0]
            subnet = ipaddress.ip_network(pool.subnet)
            source = ipaddress.ip_network(pool.ip_range) if pool.ip_range else subnet
            reserved = {
                pool.gateway,
                *pool.aux_addresses.values(),
                str(subnet.network_address),
                str(subnet.broadcast_address),
            }
            held = [
                a.ipv4
                for c in state.containers.values()
                for a in c.attachments
                if a.network_id == net.id and a.ipv4
            ]
            assert len(held) == len(set(held))
            assert all(ipaddress.ip_address(x) in source and x not in reserved for x in held)
        for c in state.containers.values():
            assert (c.pid is not None) == c.running
            assert c.running or all(a.ipv4 is None for a in c.attachments)


TestContainers = Containers.TestCase
TestContainers.settings = settings(max_examples=50, stateful_step_count=25, deadline=None)
