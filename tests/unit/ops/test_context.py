"""What validation is told about the engine and the host (dockmesh.ops.context), gathered from
the in-memory engine and this machine's own routes."""

from __future__ import annotations

import ipaddress

from dockmesh.engine.memory import MemoryEngine
from dockmesh.model.config import (
    ContainerConfig,
    EndpointConfig,
    IpamConfig,
    NetworkConfig,
    PortMapping,
)
from dockmesh.ops.context import gather_context, image_ids, taken_subnets
from dockmesh.ops.project import snapshot
from dockmesh.projectfile.context import PublishedPort


def test_facts_come_from_the_engine() -> None:
    mem = MemoryEngine()
    mem.create_network(
        NetworkConfig("p_a", ipam=(IpamConfig("10.9.0.0/24"),), labels={"dockmesh.project": "p"})
    )
    mem.create_network(NetworkConfig("other", ipam=(IpamConfig("10.8.0.0/24"),)))
    mem.create_container(
        ContainerConfig("c1", "dockmesh/toolbox", networks=(EndpointConfig("other"),))
    )
    facts = gather_context(mem, snapshot(mem), {"dockmesh/toolbox", "dockmesh/missing"})
    assert {(n.name, n.project, n.subnets) for n in facts.networks} >= {
        ("p_a", "p", ("10.9.0.0/24",)),
        ("other", None, ("10.8.0.0/24",)),
    }
    assert facts.containers == {"c1": None}
    assert facts.images["dockmesh/missing"] is None
    assert facts.images["dockmesh/toolbox"] == mem.image("dockmesh/toolbox").id  # type: ignore[union-attr]
    assert "lo" in facts.interfaces  # the host's own


def test_endpoints_and_published_ports_of_this_engine_s_containers() -> None:
    mem = MemoryEngine()
    mem.create_network(NetworkConfig("p_a", ipam=(IpamConfig("10.9.0.0/24"),)))
    web = ContainerConfig(
        "web",
        "dockmesh/toolbox",
        networks=(EndpointConfig("p_a", ipv4_address="10.9.0.7"),),
        ports=(PortMapping(80, "tcp", "127.0.0.1", 18080), PortMapping(81, "udp")),
        labels={"dockmesh.project": "p"},
    )
    mem.start(mem.create_container(web))
    idle = ContainerConfig(
        "idle",
        "dockmesh/toolbox",
        networks=(EndpointConfig("p_a"),),
        ports=(PortMapping(90, "tcp", None, 19090),),
    )
    mem.create_container(idle)  # created, never started: nothing published, no address
    facts = gather_context(mem, snapshot(mem))
    assert facts.endpoints == {"p_a": {"10.9.0.7": "web"}}
    assert facts.published == (PublishedPort("web", "p", "127.0.0.1", 18080, "tcp"),)
    assert facts.containers == {"web": "p", "idle": None}
    assert facts.swarm_active is False


def test_an_image_reference_the_engine_cannot_parse_is_not_looked_up() -> None:
    mem = MemoryEngine()
    got = image_ids(mem, {"dockmesh/toolbox", "Not A Reference!"})
    assert got["Not A Reference!"] is None
    assert got["dockmesh/toolbox"] == mem.image("dockmesh/toolbox").id  # type: ignore[union-attr]


def test_taken_subnets_hold_every_network_s_pools() -> None:
    mem = MemoryEngine()
    mem.create_network(
        NetworkConfig("a", ipam=(IpamConfig("10.9.0.0/24"), IpamConfig("fd00:9::/64")))
    )
    taken = taken_subnets(snapshot(mem))
    assert ipaddress.ip_network("10.9.0.0/24") in taken
    assert ipaddress.ip_network("fd00:9::/64") in taken
