"""Validation: every problem at once, each at its line; address checks against an oracle."""

from __future__ import annotations

import ipaddress
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from dockmesh.projectfile.facts import EngineNetworkFact, Facts, Route
from tests.unit.helpers import problems_of

OVERLAP_AND_GATEWAY = """\
project: p
networks:
  a:
    subnet: 10.88.0.0/16
  b:
    subnet: 10.88.1.0/24
    gateway: 10.89.0.1
"""


def test_overlap_and_gateway_outside_are_both_named_with_lines() -> None:
    assert problems_of(OVERLAP_AND_GATEWAY) == [
        "f:7: networks.b.gateway: gateway 10.89.0.1 is outside the subnet 10.88.1.0/24",
        "f:6: networks.b.subnet: 10.88.1.0/24 overlaps the subnet 10.88.0.0/16 of network 'a'",
    ]


def test_shape_problems() -> None:
    out = problems_of({"networks": {"a": {"subnett": "x"}}, "services": {"w": {"replicas": "two"}}})
    assert "f:3: networks.a.subnett: unknown key" in out
    assert any(x.startswith("f:6: services.w.replicas: must be a valid integer") for x in out)
    assert "f:5: services.w.image: is required" in out


def test_references_cycles_and_duplicates() -> None:
    doc = {
        "networks": {"a": {}},
        "services": {
            "web": {"image": "x", "networks": ["a", "nope"], "depends_on": ["db", "ghost"]},
            "db": {"image": "x", "depends_on": ["web"]},
        },
    }
    out = problems_of(doc)
    assert any("services.web.networks.nope: unknown network 'nope'" in x for x in out)
    assert any("services.web.depends_on.1: unknown service 'ghost'" in x for x in out)
    assert any("depends_on cycle: db -> web -> db" in x for x in out)


def test_static_address_rules() -> None:
    doc = {
        "networks": {
            "a": {
                "subnet": "10.5.0.0/24",
                "ip_range": "10.5.0.0/28",
                "aux_addresses": {"h": "10.5.0.5"},
            },
            "nosub": {},
        },
        "services": {
            "s1": {"image": "x", "networks": {"a": {"ipv4_address": "10.5.0.1"}}},
            "s2": {"image": "x", "networks": {"a": {"ipv4_address": "10.5.0.5"}}},
            "s3": {"image": "x", "networks": {"a": {"ipv4_address": "10.5.0.100"}}},
            "s4": {"image": "x", "networks": {"a": {"ipv4_address": "10.5.0.9"}}},
            "s5": {"image": "x", "networks": {"a": {"ipv4_address": "10.5.0.9"}}},
            "s6": {
                "image": "x",
                "replicas": 2,
                "networks": {"nosub": {"ipv4_address": "10.6.0.2"}},
            },
        },
    }
    out = "\n".join(problems_of(doc))
    assert "s1.networks.a.ipv4_address: address 10.5.0.1 is already the gateway" in out
    assert "s2.networks.a.ipv4_address: address 10.5.0.5 is already aux address 'h'" in out
    assert "s3.networks.a.ipv4_address: address 10.5.0.100 is outside the network's ip_range" in out
    assert (
        "s5.networks.a.ipv4_address: address 10.5.0.9 is already the address of service 's4'" in out
    )
    assert "cannot be shared by 2 replicas" in out
    assert "needs the network 'nosub' to declare its subnet" in out


def test_engine_networks_and_host_routes() -> None:
    facts = Facts(
        networks=(
            EngineNetworkFact("other_net", None, ("10.9.0.0/16",)),
            EngineNetworkFact("p_a", "p", ("10.10.0.0/24",)),
        ),
        routes=(
            Route("10.9.0.0/16", "br-x"),
            Route("192.168.50.0/24", "eth0"),
            Route("10.10.0.0/24", "br-y"),
        ),
    )
    doc = {
        "networks": {
            "a": {"subnet": "10.10.0.0/24"},
            "b": {"subnet": "10.9.3.0/24"},
            "c": {"subnet": "192.168.50.128/25"},
        }
    }
    out = problems_of(doc, facts)
    assert out == [
        "f:5: networks.b.subnet: 10.9.3.0/24 overlaps 10.9.0.0/16 of the engine's network 'other_net'",
        "f:7: networks.c.subnet: 192.168.50.128/25 overlaps the host's route to 192.168.50.0/24 (dev eth0)",
    ]


def test_drivers_need_what_they_need() -> None:
    doc = {
        "networks": {
            "m": {"driver": "macvlan", "parent": "veth-nothere", "subnet": "10.20.0.0/24"},
            "i": {"driver": "ipvlan", "parent": "eth0"},
            "o": {"driver": "overlay"},
            "b": {"parent": "eth0"},
        }
    }
    out = "\n".join(problems_of(doc, Facts(interfaces=frozenset({"eth0"}))))
    assert "networks.m.parent: interface 'veth-nothere' does not exist" in out
    assert "networks.i.driver: ipvlan: this kernel has no ipvlan support" in out
    assert "networks.o.driver: overlay needs the engine to be in a swarm" in out
    assert "networks.b.parent: parent is for macvlan and ipvlan, not bridge" in out
    ok = problems_of(
        {"networks": {"o": {"driver": "overlay", "attachable": True}}}, Facts(swarm_active=True)
    )
    assert ok == []


def test_options_ports_and_healthchecks() -> None:
    doc = {
        "networks": {
            "a": {
                "options": {
                    "com.docker.network.driver.mtu": "9",
                    "com.docker.network.bridge.enable_icc": "maybe",
                    "com.docker.network.bridge.name": "a-name-far-too-long",
                }
            }
        },
        "services": {
            "w": {
                "image": "x",
                "replicas": 2,
                "ports": ["127.0.0.1:80:80", "x"],
                "healthcheck": {"http": "health", "interval": "soon"},
            },
            "v": {
                "image": "x",
                "ports": ["127.0.0.1:80:80"],
                "network_mode": "host",
                "networks": ["a"],
            },
        },
    }
    out = "\n".join(problems_of(doc))
    for needle in [
        "MTU must be a number",
        "must be true or false",
        "not a valid interface name",
        "cannot be published by 2 replicas",
        "'x' is not a port number",
        "http and tcp checks need a port",
        "a path starts with '/'",
        "'soon' is not a duration",
        "cannot be combined with networks",
        "the same host port is published by ['v', 'w']",
    ]:
        assert needle in out, needle


def test_foreign_objects_with_our_names() -> None:
    facts = Facts(
        networks=(EngineNetworkFact("p_a", None, ()),),
        containers={"p-w-1": None},
        images={"x": None},
    )
    out = "\n".join(problems_of({"networks": {"a": {}}, "services": {"w": {"image": "x"}}}, facts))
    assert "already has a network 'p_a' that this project did not create" in out
    assert "already has a container 'p-w-1'" in out
    assert "image 'x' is not on the engine" in out


# --- generated documents against an oracle ------------------------------------------------

octet = st.integers(0, 255)


@st.composite
def network_docs(draw: Any) -> tuple[dict[str, Any], set[str]]:
    """A network with random subnet, gateway, ip_range, aux address and one static address,
    and the set of fields an oracle says are wrong."""
    prefix = draw(st.integers(16, 29))
    base = ipaddress.IPv4Address(f"10.{draw(octet)}.{draw(octet)}.{draw(octet)}")
    net = ipaddress.IPv4Network(f"{base}/{prefix}", strict=False)
    size = net.num_addresses

    def addr_near() -> ipaddress.IPv4Address:
        off = draw(st.integers(-3, size + 2))
        return (
            net.network_address + off
            if 0 <= int(net.network_address) + off < 2**32
            else net.network_address
        )

    gw, aux, static = addr_near(), addr_near(), addr_near()
    rng_prefix = draw(st.integers(prefix - 1, 30))
    rng = ipaddress.ip_network(f"{addr_near()}/{rng_prefix}", strict=False)

    def host_ok(a: ipaddress.IPv4Address) -> bool:
        return int(net.network_address) < int(a) < int(net.broadcast_address)

    bad: set[str] = set()
    if not host_ok(gw):
        bad.add("gateway")
    rng_ok = int(net.network_address) <= int(rng.network_address) and int(
        rng.broadcast_address
    ) <= int(net.broadcast_address)
    if not rng_ok:
        bad.add("ip_range")
    if not host_ok(aux) or (host_ok(gw) and aux == gw):
        bad.add("aux")
    held = {a for a, ok in ((gw, host_ok(gw)), (aux, "aux" not in bad)) if ok}
    if not host_ok(static) or (rng_ok and static not in rng) or static in held:
        bad.add("static")
    doc = {
        "networks": {
            "n": {
                "subnet": str(net),
                "gateway": str(gw),
                "ip_range": str(rng),
                "aux_addresses": {"h": str(aux)},
            }
        },
        "services": {"s": {"image": "x", "networks": {"n": {"ipv4_address": str(static)}}}},
    }
    return doc, bad


@settings(max_examples=300, deadline=None)
@given(network_docs())
def test_address_checks_agree_with_oracle(case: tuple[dict[str, Any], set[str]]) -> None:
    doc, bad = case
    out = problems_of(doc)
    found = set()
    for line in out:
        path = line.split(": ", 2)[1]
        if path.endswith("gateway"):
            found.add("gateway")
        elif path.endswith("ip_range"):
            found.add("ip_range")
        elif ".aux_addresses." in path:
            found.add("aux")
        elif path.endswith("ipv4_address"):
            found.add("static")
        else:
            raise AssertionError(line)
    assert found == bad, out


def test_shape_and_meaning_problems_come_together() -> None:
    doc = {
        "networks": {
            "a": {"subnet": "10.0.0.0/16"},
            "b": {"subnet": "10.0.1.0/24"},
            "broken": {"subnet": 5, "nonsense": 1},
        },
        "services": {
            "web": {"image": "x", "networks": ["a", "broken"], "depends_on": ["bad"]},
            "bad": {"image": "x", "replicas": "many"},
        },
    }
    out = "\n".join(problems_of(doc))
    assert "networks.broken.nonsense: unknown key" in out
    assert "services.bad.replicas: must be a valid integer" in out
    assert "overlaps the subnet 10.0.0.0/16 of network 'a'" in out
    # what was left out for its shape is not reported again as unknown
    assert "unknown network 'broken'" not in out
    assert "unknown service 'bad'" not in out
