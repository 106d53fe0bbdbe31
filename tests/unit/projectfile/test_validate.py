"""Validation: every problem at once, each at its line; what the engine would refuse at apply
time is refused here, checked against oracles (an address model, Docker's allocator as the
in-memory engine simulates it, the port bindings measured on the 20.10 engine)."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from dockmesh.engine.memory import MemoryEngine
from dockmesh.errors import EngineError
from dockmesh.ops.apply import Journal, start_container
from dockmesh.projectfile.context import EngineContext, ExistingNetwork, PublishedPort, Route
from dockmesh.projectfile.desired import desired_state
from dockmesh.projectfile.schema import parse_spec_partial
from dockmesh.projectfile.validate import _find_cycles, validate
from tests.unit.helpers import desired_of, problems_of

OVERLAP_AND_GATEWAY = """\
project: p
networks:
  a:
    subnet: 10.88.0.0/16
  b:
    subnet: 10.88.1.0/24
    gateway: 10.89.0.1
"""


def joined(doc: dict[str, Any] | str, facts: EngineContext | None = None) -> str:
    return "\n".join(problems_of(doc, facts))


def svc(**fields: Any) -> dict[str, Any]:
    return {"image": "x", **fields}


def test_overlap_and_gateway_outside_are_both_named_with_lines() -> None:
    assert problems_of(OVERLAP_AND_GATEWAY) == [
        "f:7: networks.b.gateway: gateway 10.89.0.1 is outside the subnet 10.88.1.0/24",
        "f:6: networks.b.subnet: 10.88.1.0/24 overlaps the subnet 10.88.0.0/16 of network 'a'",
    ]


def test_shape_problems() -> None:
    out = problems_of({"networks": {"a": {"subnett": "x"}}, "services": {"w": {"replicas": "two"}}})
    assert "f:3: networks.a.subnett: unknown key; did you mean 'subnet'?" in out
    assert "f:6: services.w.replicas: must be a whole number, not the text 'two'" in out
    assert "f:5: services.w.image: is required" in out


def test_references_cycles_and_duplicates() -> None:
    doc = {
        "networks": {"a": {}},
        "services": {
            "web": svc(networks=["a", "nope"], depends_on=["db", "ghost"]),
            "db": svc(depends_on=["web"]),
        },
    }
    out = joined(doc)
    assert "services.web.networks.nope: unknown network 'nope'" in out
    assert "services.web.depends_on.1: unknown service 'ghost'" in out
    assert "depends_on cycle: db -> web -> db" in out


def test_engine_networks_and_host_routes() -> None:
    facts = EngineContext(
        networks=(
            ExistingNetwork("other_net", None, ("10.9.0.0/16",)),
            ExistingNetwork("p_a", "p", ("10.10.0.0/24",)),
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
    out = joined(doc, EngineContext(interfaces=frozenset({"eth0"})))
    assert "networks.m.parent: interface 'veth-nothere' does not exist" in out
    assert "networks.i.driver: ipvlan: this kernel has no ipvlan support" in out
    assert "networks.o.driver: overlay needs the engine to be in a swarm" in out
    assert "networks.b.parent: parent is for macvlan and ipvlan, not bridge" in out
    ok = problems_of(
        {"networks": {"o": {"driver": "overlay", "attachable": True}}},
        EngineContext(swarm_active=True),
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
            "w": svc(
                replicas=2,
                ports=["127.0.0.1:80:80", "x"],
                healthcheck={"http": "health", "interval": "soon"},
            ),
            "v": svc(ports=["127.0.0.1:80:80"], network_mode="host", networks=["a"]),
        },
    }
    out = joined(doc)
    for needle in [
        "MTU must be between 68 and 65535, not 9",
        "must be true or false",
        "not a valid interface name",
        "cannot be published by 2 replicas",
        "'x' is not a port number",
        "http and tcp checks need a port",
        "a path starts with '/'",
        "'soon' is not a duration",
        "cannot be combined with networks",
        "services.v.ports.0: ports cannot be published with network_mode host",
    ]:
        assert needle in out, needle


def test_foreign_objects_with_our_names() -> None:
    facts = EngineContext(
        networks=(ExistingNetwork("p_a", None, ()),),
        containers={"p-w-1": None},
        images={"x": None},
    )
    out = joined({"networks": {"a": {}}, "services": {"w": {"image": "x"}}}, facts)
    assert "already has a network 'p_a' that this project did not create" in out
    assert "already has a container 'p-w-1'" in out
    assert "image 'x' is not on the engine" in out


def test_shape_and_meaning_problems_come_together() -> None:
    doc = {
        "networks": {
            "a": {"subnet": "10.0.0.0/16"},
            "b": {"subnet": "10.0.1.0/24"},
            "broken": {"subnet": 5, "nonsense": 1},
        },
        "services": {
            "web": svc(networks=["a", "broken"], depends_on=["bad"]),
            "bad": svc(replicas="many"),
        },
    }
    out = joined(doc)
    assert "networks.broken.nonsense: unknown key" in out
    assert "services.bad.replicas: must be a whole number, not the text 'many'" in out
    assert "overlaps the subnet 10.0.0.0/16 of network 'a'" in out
    # what was left out for its shape is not reported again as unknown
    assert "unknown network 'broken'" not in out
    assert "unknown service 'bad'" not in out


# --- 1. pools too small ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("subnet", "why"),
    [
        ("10.1.0.0/32", "10.1.0.0/32 is too small: no address is left for the gateway"),
        ("10.1.0.0/31", "10.1.0.0/31 is too small: no address is left for the gateway"),
        ("fd00:1::/128", "fd00:1::/128 is too small"),
    ],
)
def test_subnets_too_small_for_a_gateway(subnet: str, why: str) -> None:
    subnets = [subnet] if ":" not in subnet else ["10.1.0.0/24", subnet]
    out = joined({"networks": {"a": {"subnet": subnets}}})
    assert why in out


def test_a_30_holds_one_container_after_the_gateway() -> None:
    doc = {"networks": {"a": {"subnet": "10.1.0.0/30"}}, "services": {"w": svc(networks=["a"])}}
    assert problems_of(doc) == []
    doc["services"]["v"] = svc(networks=["a"])
    assert problems_of(doc) == [
        "f:3: networks.a.subnet: the pool 10.1.0.0/30 has room for 1 container (4 addresses, "
        "less the network address, the gateway and the broadcast address); 2 containers draw "
        "from it ('w': 1, 'v': 1)"
    ]


def test_capacity_counts_what_is_taken_inside_the_pool_only() -> None:
    doc = {
        "networks": {
            "a": {
                "subnet": "10.1.0.0/24",
                "gateway": "10.1.0.1",  # outside the pool
                "ip_range": "10.1.0.8/29",  # 8 addresses, all of them usable
                "aux_addresses": {"in": "10.1.0.9", "out": "10.1.0.200"},
            }
        },
        "services": {
            "pinned": svc(networks={"a": {"ipv4_address": "10.1.0.10"}}),
            "outside": svc(networks={"a": {"ipv4_address": "10.1.0.100"}}),
            "w": svc(replicas=6, networks=["a"]),
        },
    }
    assert problems_of(doc) == []
    doc["services"]["w"]["replicas"] = 7
    assert problems_of(doc) == [
        "f:5: networks.a.ip_range: the pool 10.1.0.8/29 has room for 6 containers (8 addresses, "
        "less aux address 'in' and the address of service 'pinned'); 7 containers draw from it "
        "('w': 7)"
    ]


def test_a_range_without_a_gateway_puts_the_gateway_on_its_first_address() -> None:
    # Measured on 20.10: subnet 10.201.77.0/24, ip_range .128/25 → the bridge is .128.
    doc = {
        "networks": {"a": {"subnet": "10.1.0.0/24", "ip_range": "10.1.0.128/30"}},
        "services": {
            "s": svc(networks={"a": {"ipv4_address": "10.1.0.128"}}),
            "t": svc(networks={"a": {"ipv4_address": "10.1.0.1"}}),  # free: not the gateway
            "w": svc(replicas=3, networks=["a"]),
        },
    }
    assert problems_of(doc) == [
        "f:10: services.s.networks.a.ipv4_address: address 10.1.0.128 is already the gateway"
    ]
    del doc["services"]["s"]
    assert problems_of(doc) == []
    doc["networks"]["a"]["aux_addresses"] = {"x": "10.1.0.128"}
    assert "aux address 10.1.0.128 is already the gateway" in joined(doc)


def test_no_container_is_no_demand_and_host_networking_draws_nothing() -> None:
    doc = {
        "networks": {"a": {"subnet": "10.1.0.0/30"}},
        "services": {
            "zero": svc(replicas=0, networks=["a"]),
            "one": svc(networks=["a"]),
            "host": svc(network_mode="host"),
        },
    }
    assert problems_of(doc) == []


def _spec_desired(doc: dict[str, Any]) -> Any:
    spec, shape, _ = parse_spec_partial(doc)
    assert spec is not None and not shape
    return desired_state(spec, spec.project or "p")


def _starts_on_memory_engine(doc: dict[str, Any]) -> bool:
    """Does every container of `doc` start on the in-memory engine (Docker's allocator)?"""
    engine = MemoryEngine()
    desired = _spec_desired(doc)
    for n in desired.networks:
        engine.create_network(n.stamped())
    try:
        for c in desired.containers:
            start_container(engine, c.stamped(), Journal())
    except EngineError:
        return False
    return True


@st.composite
def pool_docs(draw: Any) -> dict[str, Any]:
    """A subnet without ip_range (where the in-memory engine allocates as Docker does), maybe
    a gateway, aux and static addresses, and services drawing from its pool."""
    prefix = draw(st.integers(26, 30))
    net = ipaddress.IPv4Network(f"10.{draw(st.integers(0, 255))}.{draw(st.integers(0, 3))}.0/24")
    subnet = next(net.subnets(new_prefix=prefix))
    hosts = list(subnet.hosts())
    spare = draw(st.permutations(hosts))
    network: dict[str, Any] = {"subnet": str(subnet)}
    held: set[ipaddress.IPv4Address] = {hosts[0]}
    if draw(st.booleans()):
        gateway = spare.pop()
        network["gateway"] = str(gateway)
        held = {gateway}
    aux = [a for a in draw(st.lists(st.sampled_from(hosts), max_size=3)) if a not in held]
    aux = list(dict.fromkeys(aux))
    network["aux_addresses"] = {f"h{i}": str(a) for i, a in enumerate(aux)}
    held |= set(aux)
    services: dict[str, Any] = {}
    free = [a for a in spare if a not in held]
    for i in range(draw(st.integers(0, min(2, len(free))))):
        services[f"pin{i}"] = svc(networks={"n": {"ipv4_address": str(free[i])}})
    for i, replicas in enumerate(draw(st.lists(st.integers(0, 5), min_size=1, max_size=3))):
        services[f"dyn{i}"] = svc(image="dockmesh/toolbox", replicas=replicas, networks=["n"])
    for s in services.values():
        s["image"] = "dockmesh/toolbox"
    return {"project": "p", "networks": {"n": network}, "services": services}


@settings(max_examples=200, deadline=None)
@given(pool_docs())
def test_capacity_agrees_with_the_memory_engines_allocator(doc: dict[str, Any]) -> None:
    out = problems_of(doc)
    assert all("has room for" in line for line in out), out
    assert (not out) == _starts_on_memory_engine(doc), out


def _docker_allocates(
    subnet: ipaddress.IPv4Network,
    ip_range: ipaddress.IPv4Network | None,
    gateway: ipaddress.IPv4Address | None,
    statics: list[ipaddress.IPv4Address],
    dynamic: int,
) -> bool:
    """libnetwork's bitmask allocator, address by address: every address of the subnet but
    its network and broadcast; the gateway first (named, else the pool's lowest), statics
    next, then each dynamic container takes the lowest free address of the pool."""
    used = {subnet.network_address, subnet.broadcast_address}
    pool = [a for a in (ip_range or subnet) if a not in used]
    if gateway is None:
        if not pool:
            return False
        gateway = pool[0]
    used |= {gateway, *statics}
    free = [a for a in pool if a not in used]
    return len(free) >= dynamic


@settings(max_examples=300, deadline=None)
@given(
    st.integers(24, 29),
    st.data(),
)
def test_capacity_with_ip_range_agrees_with_docker_allocation(prefix: int, data: Any) -> None:
    subnet = ipaddress.IPv4Network(f"10.7.0.0/{prefix}")
    rng_prefix = data.draw(st.integers(prefix, 32))
    ip_range = data.draw(st.sampled_from(list(subnet.subnets(new_prefix=rng_prefix))))
    named_gateway = data.draw(st.none() | st.sampled_from(list(subnet.hosts())))
    hosts = [a for a in subnet.hosts() if a != named_gateway]
    statics = data.draw(st.lists(st.sampled_from(hosts), max_size=3, unique=True))
    dynamic = data.draw(st.integers(1, 12))
    network: dict[str, Any] = {"subnet": str(subnet), "ip_range": str(ip_range)}
    if named_gateway is not None:
        network["gateway"] = str(named_gateway)
    services = {
        f"s{i}": svc(networks={"n": {"ipv4_address": str(a)}}) for i, a in enumerate(statics)
    }
    services["w"] = svc(replicas=dynamic, networks=["n"])
    out = problems_of({"networks": {"n": network}, "services": services})
    implicit = named_gateway is None and next(
        (a for a in ip_range if a not in (subnet.network_address, subnet.broadcast_address)),
        None,
    )
    assume(implicit not in statics)  # a static on the gateway: its own problem
    fits = _docker_allocates(subnet, ip_range, named_gateway, statics, dynamic)
    assert all("room for" in line or "for the gateway" in line for line in out), out
    assert (not out) == fits, out


# --- 2. host ports ------------------------------------------------------------------------

# Addresses a port may be bound on, and each binding's reach over them: no address binds
# 0.0.0.0 and [::]; 0.0.0.0 takes every IPv4 address, [::] every IPv6 one (measured on 20.10:
# 0.0.0.0 and [::] do not collide, 127.0.0.1 and 127.0.0.2 do not, ::1 and no address do).
UNIVERSE = {"127.0.0.1": 4, "127.0.0.2": 4, "10.9.9.9": 4, "::1": 6, "fd00::9": 6}


def reach(host_ip: str | None) -> set[str]:
    if host_ip is None:
        return set(UNIVERSE)
    if host_ip == "0.0.0.0":
        return {a for a, v in UNIVERSE.items() if v == 4}
    if host_ip == "::":
        return {a for a, v in UNIVERSE.items() if v == 6}
    return {host_ip}


HOST_IPS = [None, "0.0.0.0", "::", "127.0.0.1", "127.0.0.2", "::1"]


def spell(host_ip: str | None, port: int, proto: str, cport: int, explicit_tcp: bool) -> str:
    host = "" if host_ip is None else (f"[{host_ip}]:" if ":" in host_ip else f"{host_ip}:")
    suffix = f"/{proto}" if proto != "tcp" or explicit_tcp else ""
    return f"{host}{port}:{cport}{suffix}"


binding = st.tuples(
    st.sampled_from(HOST_IPS),
    st.sampled_from(["tcp", "udp"]),
    st.integers(1, 65535),
    st.booleans(),
)


@settings(max_examples=300, deadline=None)
@given(binding, binding, st.integers(1024, 65535), st.booleans())
def test_two_spellings_of_one_host_port_conflict(
    a: tuple[str | None, str, int, bool],
    b: tuple[str | None, str, int, bool],
    port: int,
    same_service: bool,
) -> None:
    pa = spell(a[0], port, a[1], a[2], a[3])
    pb = spell(b[0], port, b[1], b[2], b[3])
    services = (
        {"w": svc(ports=[pa, pb])} if same_service else {"w": svc(ports=[pa]), "v": svc(ports=[pb])}
    )
    out = problems_of({"services": services})
    clash = a[1] == b[1] and bool(reach(a[0]) & reach(b[0]))
    assert len(out) == (1 if clash else 0), (pa, pb, out)
    if clash:
        where = "services.w.ports.1" if same_service else "services.v.ports.0"
        first = "services.w.ports.0"
        assert f"{where}: host port " in out[0] and f"already published by {first}" in out[0]


def test_the_int_and_string_spellings_and_replicas() -> None:
    doc = {
        "services": {
            "a": svc(ports=["8080:80", 8080]),  # an int is a container port: engine's pick
            "b": svc(ports=["0.0.0.0:8080:81/tcp"]),
            "c": svc(ports=["8080:80/udp"]),
            "d": svc(replicas=2, ports=["9090:80"]),
        }
    }
    assert problems_of(doc) == [
        "f:19: services.d.ports.0: host port 9090 cannot be published by 2 replicas (leave the "
        "host port out to let the engine pick)",
        "f:10: services.b.ports.0: host port 0.0.0.0:8080/tcp is already published by "
        "services.a.ports.0 (8080/tcp)",
    ]


def test_a_host_port_held_by_another_projects_container() -> None:
    facts = EngineContext(
        published=(
            PublishedPort("other-web-1", "other", "0.0.0.0", 8080, "tcp"),
            PublishedPort("p-web-1", "p", "0.0.0.0", 9090, "tcp"),  # ours: replaced or kept
            PublishedPort("other-dns-1", None, "127.0.0.1", 5353, "udp"),
        )
    )
    doc = {
        "services": {
            "web": svc(ports=["127.0.0.1:8080:80", "9090:80", "5353:53", "5353:53/udp"]),
        }
    }
    assert problems_of(doc, facts) == [
        "f:5: services.web.ports.0: host port 127.0.0.1:8080/tcp is already published by the "
        "running container 'other-web-1' (0.0.0.0:8080/tcp), which is not of this project",
        "f:8: services.web.ports.3: host port 5353/udp is already published by the running "
        "container 'other-dns-1' (127.0.0.1:5353/udp), which is not of this project",
    ]


# --- 3. numbers and durations the engine cannot hold ----------------------------------------


@pytest.mark.parametrize(
    ("field", "value", "why"),
    [
        ("interval", "3000000h", "services.w.healthcheck.interval: '3000000h' is longer than"),
        ("timeout", "106751d", "services.w.healthcheck.timeout: '106751d' is not a duration"),
        ("start_period", "0.5us", "services.w.healthcheck.start_period: must be at least 1ms"),
        ("retries", 2**31, "services.w.healthcheck.retries: must be less than or equal to"),
        ("retries", "3", "services.w.healthcheck.retries: must be a whole number, not the text"),
        ("port", "80", "services.w.healthcheck.port: must be a whole number, not the text '80'"),
        ("port", True, "services.w.healthcheck.port: must be a whole number, not the boolean"),
    ],
)
def test_healthcheck_numbers(field: str, value: Any, why: str) -> None:
    hc = {"tcp": True, "port": 80, field: value}
    assert why in joined({"services": {"w": svc(healthcheck=hc)}})


@pytest.mark.parametrize(
    ("value", "why"),
    [
        (1001, "must be less than or equal to 1000"),
        (-1, "must be greater than or equal to 0"),
        ("3", "must be a whole number, not the text '3'"),
        (True, "must be a whole number, not the boolean true"),
        (3.0, "must be a whole number, not the number 3.0"),
    ],
)
def test_replicas_are_whole_numbers_in_bounds(value: Any, why: str) -> None:
    assert f"services.w.replicas: {why}" in joined({"services": {"w": svc(replicas=value)}})


@pytest.mark.parametrize("value", ["yes", "off", "true", 1, 0])
def test_booleans_are_booleans(value: Any) -> None:
    out = joined({"networks": {"a": {"internal": value}}})
    assert "networks.a.internal: must be true or false, not the" in out


@pytest.mark.parametrize(
    "mtu",
    # Arabic-Indic and full-width 1500: str.isdigit() takes both
    [
        "\u0661\u0665\u0660\u0660",
        "\uff11\uff15\uff10\uff10",
        "1500.0",
        " 1500",
        True,
        "0x5dc",
        "99999",
        "67",
    ],
)
def test_mtu_is_ascii_digits_in_range(mtu: Any) -> None:
    doc = {"networks": {"a": {"options": {"com.docker.network.driver.mtu": mtu}}}}
    assert "networks.a.options.com.docker.network.driver.mtu: MTU must be" in joined(doc)


def test_mtu_of_an_ipv6_network_is_1280_at_least() -> None:
    net: dict[str, Any] = {
        "subnet": ["10.1.0.0/24", "fd00:1::/64"],
        "options": {"com.docker.network.driver.mtu": 1279},
    }
    assert "IPv6 needs 1280 at least" in joined({"networks": {"a": net}})
    net["options"]["com.docker.network.driver.mtu"] = "1280"
    assert problems_of({"networks": {"a": net}}) == []


@settings(max_examples=100, deadline=None)
@given(st.text(st.characters(categories=["Nd"]), min_size=1, max_size=4))
def test_no_digits_but_ascii_ones_make_a_number(digits: str) -> None:
    assume(not digits.isascii())
    doc = {
        "networks": {"a": {"options": {"com.docker.network.driver.mtu": digits}}},
        "services": {"w": svc(ports=[f"{digits}:80"])},
    }
    out = joined(doc)
    assert "MTU must be" in out
    assert "services.w.ports.0: host port" in out and "is not a port number" in out


# --- 4. names, templates, commands, image references ---------------------------------------


def test_a_container_name_is_a_hostname_of_63_characters_at_most() -> None:
    name = "s" * (63 - len("p--1"))
    assert problems_of({"services": {name: svc()}}) == []
    out = problems_of({"services": {name: svc(replicas=10)}})
    assert len(out) == 1 and "is 64 characters" in out[0] and "at most 63" in out[0]
    assert "is 64 characters" in joined({"project": "pp", "services": {name: svc()}})


@pytest.mark.parametrize(
    ("where", "name"),
    [
        ("networks", "a\n"),
        ("networks", " a"),
        ("networks", "a b"),
        ("networks", "-a"),
        ("networks", "réseau"),
        ("services", "web\n"),
        ("services", "web "),
        ("services", "_web"),
    ],
)
def test_names_docker_refuses(where: str, name: str) -> None:
    doc: dict[str, Any] = {where: {name: {} if where == "networks" else svc()}}
    assert "is not a valid" in joined(doc)


def test_project_names() -> None:
    for bad in ["Demo", "demo\n", "de mo", "-demo"]:
        assert "project: " in joined({"project": bad}), bad


@pytest.mark.parametrize(
    ("attach", "why"),
    [
        ({"aliases": ["api\n"]}, "'api\\n' is not a valid DNS name"),
        ({"aliases": ["a" * 64]}, "is not a valid DNS name"),
        ({"aliases": ["-api"]}, "is not a valid DNS name"),
        ({"aliases": [("a" * 60 + ".") * 5 + "a"]}, "is not a valid DNS name"),
    ],
)
def test_aliases(attach: dict[str, Any], why: str) -> None:
    doc = {"networks": {"n": {}}, "services": {"w": svc(networks={"n": attach})}}
    assert why in joined(doc)


def test_environment_and_label_keys() -> None:
    doc = {
        "networks": {"n": {"labels": {"dockmesh.project": "q"}}},
        "services": {
            "w": svc(
                environment={"GOOD_1": "x", "1BAD": "x", "BAD\n": "x", "NUL": "a\0b"},
                labels={"ok.key": "v", "bad key": "v", "k=v": "v", "dockmesh.spec.hash": "h"},
            ),
            "d": svc(labels={"dockmesh.port": "80"}, discovery={"port": 80}),
            "hand": svc(labels={"dockmesh.service": "x", "dockmesh.port": "80"}),
        },
    }
    out = joined(doc)
    assert "networks.n.labels.dockmesh.project: 'dockmesh.project' is a label dockmesh" in out
    assert "environment.1BAD: '1BAD' is not a valid variable name" in out
    assert "is not a valid variable name" in out.split("environment.BAD")[1]
    assert "environment.NUL: contains a NUL character" in out
    assert "labels.bad key: 'bad key' is not a valid label key" in out
    assert "labels.k=v: 'k=v' is not a valid label key" in out
    assert "labels.dockmesh.spec.hash: 'dockmesh.spec.hash' is a label dockmesh writes" in out
    assert "services.d.labels.dockmesh.port: 'dockmesh.port' is written by this service's" in out
    assert "services.hand" not in out  # discovery labels by hand are fine
    assert "GOOD_1" not in out and "ok.key" not in out


@pytest.mark.parametrize(
    ("field", "value", "path", "why"),
    [
        ("environment", {"A": "{{ nope }}"}, "environment.A", "unknown template variable 'nope'"),
        ("command", "echo {{replicas}}", "command", "unknown template variable 'replicas'"),
        ("command", ["echo", "{{nope}}"], "command.1", "unknown template variable 'nope'"),
        ("entrypoint", "sh -c 'echo", "entrypoint", "unbalanced quote"),
        ("command", 'echo "a', "command", "unbalanced quote"),
        ("command", "echo \\", "command", "a trailing backslash escapes nothing"),
        ("hostname", "{{ host }}", "hostname", "unknown template variable 'host'"),
        ("hostname", "h-{{replica}}-" + "x" * 59, "hostname", "is 64 characters"),
        ("hostname", "bad host", "hostname", "'bad host' is not a valid hostname"),
    ],
)
def test_templates_and_commands(field: str, value: Any, path: str, why: str) -> None:
    out = problems_of({"services": {"w": svc(replicas=10, **{field: value})}})
    assert len(out) == 1 and f"services.w.{path}: " in out[0] and why in out[0], out


def test_known_templates_and_go_templates_pass() -> None:
    doc = {
        "services": {
            "w": svc(
                replicas=2,
                environment={"A": "{{replica}}-{{ service }}-{{project}}-{{name}}", "N": 5},
                command="docker inspect -f '{{.Name}}' {{ name }}",
                hostname="{{name}}",
            )
        }
    }
    assert problems_of(doc) == []
    c = desired_of(doc).containers[1]
    assert c.config.environment == {"A": "2-w-p-p-w-2", "N": "5"}
    assert c.config.command == ("docker", "inspect", "-f", "{{.Name}}", "p-w-2")


VALID_IMAGES = [
    "busybox",
    "dockmesh/toolbox",
    "dockmesh/toolbox:latest",
    "library/busybox:1.36.1-musl",
    "registry.local:5000/team/app_x__y.z-w:v1.0",
    "localhost/app",
    "Registry.Example.com/app",
    "app@sha256:" + "a" * 64,
    "app:tag@sha256:" + "0123456789abcdef" * 4,
    "a" * 200,
]
INVALID_IMAGES = [
    ("", "must not be empty"),
    ("Busybox", "repository names are lowercase ('busybox')"),
    ("team/App", "repository names are lowercase"),
    ("busy box", "no spaces"),
    ("busybox ", "no spaces"),
    ("team//app", "empty part"),
    ("app:", "the tag '' is not valid"),
    ("app:-x", "the tag '-x' is not valid"),
    ("app:" + "t" * 129, "is not valid"),
    ("app@sha256:abc", "a digest is sha256:"),
    ("app@sha256:" + "A" * 64, "a digest is sha256:"),
    ("app@md5:" + "a" * 32, "a digest is sha256:"),
    ("-app", "is not a valid repository name part"),
    ("app_", "is not a valid repository name part"),
    ("reg:port/app", "is not a valid registry"),
    ("imagé", "non-ASCII"),
    ("a" * 256, "longer than 255"),
]


@pytest.mark.parametrize("image", VALID_IMAGES)
def test_valid_image_references(image: str) -> None:
    assert problems_of({"services": {"w": {"image": image}}}) == []


@pytest.mark.parametrize(("image", "why"), INVALID_IMAGES)
def test_invalid_image_references(image: str, why: str) -> None:
    out = joined({"services": {"w": {"image": image}}})
    assert "services.w.image: " in out and why in out, out


component = st.from_regex(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*", fullmatch=True)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(component, min_size=1, max_size=3),
    st.none() | st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,20}", fullmatch=True),
    st.integers(0, 5),
)
def test_references_of_the_grammar_pass_and_an_uppercase_letter_fails(
    parts: list[str], tag: str | None, where: int
) -> None:
    # A first part with '.' or ':' reads as a registry host: not a path component then.
    assume(len(parts) == 1 or not any(ch in parts[0] for ch in ".:"))
    path = "/".join(parts)
    assume(len(path) <= 255)
    ref = path + (f":{tag}" if tag else "")
    assert problems_of({"services": {"w": {"image": ref}}}) == []
    letters = [i for i, ch in enumerate(path) if ch.isalpha()]
    assume(letters)
    i = letters[where % len(letters)]
    upper = path[:i] + path[i].upper() + path[i + 1 :]
    if "/" in upper and any(ch in upper.split("/")[0] for ch in ".:"):
        return  # the first part reads as a registry host, where case is free
    assert "lowercase" in joined({"services": {"w": {"image": upper}}})


# --- 5. static addresses --------------------------------------------------------------------


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
            "s1": svc(networks={"a": {"ipv4_address": "10.5.0.1"}}),
            "s2": svc(networks={"a": {"ipv4_address": "10.5.0.5"}}),
            "s3": svc(networks={"a": {"ipv4_address": "10.5.0.100"}}),  # outside the pool: fine
            "s4": svc(networks={"a": {"ipv4_address": "10.5.0.9"}}),
            "s5": svc(networks={"a": {"ipv4_address": "10.5.0.9"}}),
            "s6": svc(replicas=2, networks={"nosub": {"ipv4_address": "10.6.0.2"}}),
            "s7": svc(networks={"a": {"ipv4_address": "10.5.0.255"}}),
            "s8": svc(networks={"a": {"ipv4_address": "10.5.0.0"}}),
            "s9": svc(networks={"a": {"ipv4_address": "10.5.1.1"}}),
        },
    }
    out = joined(doc)
    assert "s1.networks.a.ipv4_address: address 10.5.0.1 is already the gateway" in out
    assert "s2.networks.a.ipv4_address: address 10.5.0.5 is already aux address 'h'" in out
    assert "s3." not in out
    assert (
        "s5.networks.a.ipv4_address: address 10.5.0.9 is already the address of service 's4'" in out
    )
    assert "cannot be shared by 2 replicas" in out
    assert "needs the network 'nosub' to declare its subnet" in out
    assert "s7.networks.a.ipv4_address: address 10.5.0.255 is the broadcast address" in out
    assert "s8.networks.a.ipv4_address: address 10.5.0.0 is the network address" in out
    assert "s9.networks.a.ipv4_address: address 10.5.1.1 is outside the subnet" in out


def test_a_pinned_address_in_the_pool_after_a_dynamic_dependency_is_a_problem() -> None:
    doc: dict[str, Any] = {
        "networks": {"a": {"subnet": "10.5.0.0/24", "ip_range": "10.5.0.0/28"}},
        "services": {
            "db": svc(networks={"a": {"ipv4_address": "10.5.0.3"}}, depends_on=["cache"]),
            "cache": svc(networks=["a"]),
            "web": svc(replicas=3, networks=["a"]),
        },
    }
    assert problems_of(doc) == [
        "f:10: services.db.networks.a.ipv4_address: 10.5.0.3 lies in the dynamic pool "
        "10.5.0.0/28 of network 'a', and service 'cache', which draws from that pool, starts "
        "first ('db' depends on it): the engine may give it this address. Pin an address "
        "outside the pool (ip_range), or give 'cache' a static address"
    ]
    doc["services"]["db"]["networks"]["a"]["ipv4_address"] = "10.5.0.100"  # outside the pool
    assert problems_of(doc) == []
    del doc["services"]["db"]["depends_on"]  # web, in file order after db, starts after it
    doc["services"]["db"]["networks"]["a"]["ipv4_address"] = "10.5.0.3"
    assert problems_of(doc) == []


def test_an_address_held_on_the_live_network() -> None:
    doc = {
        "networks": {"a": {"subnet": "10.5.0.0/24"}},
        "services": {
            "db": svc(networks={"a": {"ipv4_address": "10.5.0.7"}}),
            "web": svc(networks=["a"]),
        },
    }
    same = desired_of(doc).networks[0].hash
    kept = ExistingNetwork("p_a", "p", ("10.5.0.0/24",), same)

    def facts(holder: str, owner: str | None, network: ExistingNetwork = kept) -> EngineContext:
        return EngineContext(
            networks=(network,),
            containers={holder: owner},
            endpoints={"p_a": {"10.5.0.7": holder}},
        )

    assert "held on the engine by container 'x-1', which is not of this project" in joined(
        doc, facts("x-1", None)
    )
    assert "held on the engine by container 'p-web-1', which draws its address from the pool" in (
        joined(doc, facts("p-web-1", "p"))
    )
    assert problems_of(doc, facts("p-db-1", "p")) == []  # its own address
    assert problems_of(doc, facts("p-old-1", "p")) == []  # not in the file: removed first
    replaced = ExistingNetwork("p_a", "p", ("10.5.0.0/24",), "another hash")
    assert problems_of(doc, facts("x-1", None, replaced)) == []  # the network starts empty


def test_foreign_live_addresses_take_room_in_the_pool() -> None:
    doc = {
        "networks": {"a": {"subnet": "10.5.0.0/29"}},
        "services": {"web": svc(replicas=5, networks=["a"])},
    }
    same = desired_of(doc).networks[0].hash
    facts = EngineContext(
        networks=(ExistingNetwork("p_a", "p", ("10.5.0.0/29",), same),),
        containers={"x-1": None, "p-web-1": "p"},
        endpoints={"p_a": {"10.5.0.2": "p-web-1", "10.5.0.3": "x-1"}},
    )
    assert "room for 4 containers" in joined(doc, facts)
    assert "held by 'x-1'" in joined(doc, facts)


# --- 6. IPv6 --------------------------------------------------------------------------------


def test_dual_stack_is_accepted() -> None:
    doc = {
        "networks": {
            "a": {
                "subnet": ["10.1.0.0/24", "fd00:1::/64"],
                "gateway": ["fd00:1::fe", "10.1.0.254"],
                "ip_range": ["fd00:1::100/120", "10.1.0.0/25"],
                "aux_addresses": {"v4": "10.1.0.200", "v6": "fd00:1::2"},
            }
        },
        "services": {
            "s": svc(networks={"a": {"ipv4_address": "10.1.0.9", "ipv6_address": "fd00:1::9"}}),
            "w": svc(replicas=3, networks=["a"]),
        },
    }
    assert problems_of(doc) == []


@pytest.mark.parametrize(
    ("net", "why"),
    [
        ({"subnet": "fd00:1::/64"}, "an IPv6 subnet needs an IPv4 subnet beside it"),
        ({"subnet": ["10.1.0.0/24", "10.2.0.0/24"]}, "a second IPv4 subnet"),
        ({"subnet": []}, "an empty list"),
        ({"subnet": ["10.1.0.0/24", "fd00::/64", "fd01::/64"]}, "at most two"),
        ({"subnet": "10.1.0.0/24", "enable_ipv6": True}, "enable_ipv6: needs an IPv6 subnet"),
        (
            {"subnet": ["10.1.0.0/24", "fd00:1::/64"], "enable_ipv6": False},
            "enable_ipv6: is false but the network has an IPv6 subnet",
        ),
        (
            {"subnet": ["10.1.0.0/24", "fd00:1::/64"], "gateway": "fd00:2::1"},
            "gateway fd00:2::1 is outside the subnet fd00:1::/64",
        ),
        (
            {"subnet": "10.1.0.0/24", "gateway": "fd00:2::1"},
            "gateway fd00:2::1 is IPv6 but the network has no IPv6 subnet",
        ),
        (
            {"subnet": ["10.1.0.0/24", "fd00:1::/64"], "gateway": ["10.1.0.1", "10.1.0.2"]},
            "a second IPv4 gateway",
        ),
        (
            {"subnet": ["10.1.0.0/24", "fd00:1::/64"], "ip_range": "fd00:2::/120"},
            "ip_range fd00:2::/120 is outside the subnet fd00:1::/64",
        ),
        (
            {"subnet": ["10.1.0.0/24", "fd00:1::/64"], "gateway": "fd00:1::"},
            "gateway fd00:1:: is the network address",
        ),
        ({"subnet": ["10.1.0.0/24", "fd00:1::1/64"]}, "has host bits set"),
    ],
)
def test_ipv6_networks(net: dict[str, Any], why: str) -> None:
    assert why in joined({"networks": {"a": net}})


def test_ipv6_overlaps_and_routes() -> None:
    doc = {
        "networks": {
            "a": {"subnet": ["10.1.0.0/24", "fd00:1::/64"]},
            "b": {"subnet": ["10.2.0.0/24", "fd00:1::/48"]},
            "c": {"subnet": ["10.3.0.0/24", "fd00::/64"]},
        }
    }
    out = joined(doc, EngineContext(routes=(Route("fd00::/64", "eth0"),)))
    assert "networks.b.subnet.1: fd00:1::/48 overlaps the subnet fd00:1::/64 of network 'a'" in out
    assert "networks.c.subnet.1: fd00::/64 overlaps the host's route to fd00::/64 (dev eth0)" in out


def test_ipv6_static_addresses_and_capacity() -> None:
    doc: dict[str, Any] = {
        "networks": {"a": {"subnet": ["10.1.0.0/24", "fd00:1::/126"]}, "v4": {}},
        "services": {
            "w": svc(replicas=2, networks=["a"]),
            "s": svc(networks={"a": {"ipv6_address": "fd00:1::1"}}),
            "t": svc(networks={"a": {"ipv4_address": "fd00:1::3"}}),
            "u": svc(networks={"v4": {"ipv6_address": "fd00:9::3"}}),
            "z": svc(networks={"a": {"ipv6_address": "fe80::1%eth0"}}),
        },
    }
    out = joined(doc)
    assert "s.networks.a.ipv6_address: address fd00:1::1 is already the gateway" in out
    assert "t.networks.a.ipv4_address: fd00:1::3 is an IPv6 address: give it as ipv6_address" in out
    assert "u.networks.v4.ipv6_address: a static address needs the network 'v4'" in out
    assert "z.networks.a.ipv6_address: 'fe80::1%eth0': the engine takes no zone index" in out
    # measured: a /126 holds the gateway (::1) and two containers (::2, ::3)
    assert "the pool fd00:1::/126 has room for 2 containers" in out


# --- 7. healthchecks ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "test",
    [
        ["CMD", "true"],
        ["CMD", "/bin/check", "--quick"],
        ["CMD-SHELL", "wget -q -O- localhost || exit 1"],
        ["NONE"],
        "exit 0",
    ],
)
def test_healthcheck_test_forms(test: Any) -> None:
    assert problems_of({"services": {"w": svc(healthcheck={"test": test})}}) == []


@pytest.mark.parametrize(
    ("test", "path", "why"),
    [
        (["true"], "test.0", "'true': a test list starts with CMD, CMD-SHELL or NONE"),
        (["cmd", "true"], "test.0", "'cmd': a test list starts with CMD"),
        (["CMD"], "test", "CMD needs a program"),
        (["CMD-SHELL"], "test", "CMD-SHELL takes one command string"),
        (["CMD-SHELL", "a", "b"], "test", "CMD-SHELL takes one command string"),
        (["NONE", "x"], "test", "NONE stands alone"),
        ([], "test", "an empty test"),
        ("  ", "test", "an empty test"),
        (["CMD", "a\0b"], "test.1", "contains a NUL character"),
    ],
)
def test_healthcheck_tests_the_engine_would_misread(test: Any, path: str, why: str) -> None:
    out = joined({"services": {"w": svc(healthcheck={"test": test})}})
    assert f"services.w.healthcheck.{path}: {why}" in out


@pytest.mark.parametrize(
    ("path", "ok"),
    [
        ("/health", True),
        ("/a%20b?x=%25&y=1", True),
        ("/a b", False),
        ("/a\tb", False),
        ("/é", False),
        ("/a\r\nX-Evil: 1", False),
        ("health", False),
    ],
)
def test_http_check_paths(path: str, ok: bool) -> None:
    doc = {
        "services": {
            "w": svc(
                healthcheck={"http": path, "port": 80},
                discovery={"port": 80, "check": {"http": path}},
            )
        }
    }
    out = problems_of(doc)
    assert (out == []) == ok, out
    if not ok:
        assert any("healthcheck.http" in x for x in out)
        assert any("discovery.check.http" in x for x in out)


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
    # Docker's semantics: a static address may lie anywhere in the subnet, ip_range or not.
    if not host_ok(static) or static in held:
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
        "services": {"s": svc(networks={"n": {"ipv4_address": str(static)}})},
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


# --- a file that validates clean converts -------------------------------------------------

# Mostly values that pass, so that many documents validate clean; a few that do not.
GOOD_SUBNETS = ["10.1.0.0/24", ["10.1.0.0/24", "fd00:1::/64"], "10.1.0.0/29"]
SUBNETS = [*GOOD_SUBNETS * 3, "10.1.0.0/31", ["fd00:1::/127", "10.1.0.0/24"], "x", []]
ADDRESSES = ["10.1.0.3", "10.1.0.9", "10.1.0.200", "fd00:1::1", "fd00:1::5", "fe80::1%e", "x"]
RANGES = ["10.1.0.0/28", "10.1.0.8/29", "10.1.0.7/32", "fd00:1::/120", "10.2.0.0/28", "y"]
COMMANDS = [None, None, "echo {{replica}} '{{ name }}'", "{{.Name}}", ["a", "{{service}}"]]
COMMANDS += ["echo {{ nope }}", "sh -c 'x", "a\\", "a\0b"]
PORTS: list[Any] = ["18080:80", "0.0.0.0:18081:80/tcp", "[::1]:18082:80", 80, "9090:90/udp"]
PORTS += ["x:1", "18080:81"]
CHECKS: list[Any] = [None, {"http": "/a%b", "port": 80}, {"test": ["CMD", "true"]}]
CHECKS += [{"test": ["NONE"]}, {"test": "exit 0"}, {"tcp": True, "port": 80}]
CHECKS += [{"http": "/a b", "port": 80}, {"tcp": True, "port": 80, "interval": "3000000h"}]
CHECKS += [{"test": ["X"]}, {"test": ["CMD-SHELL", "a", "b"]}]


def maybe(values: list[Any]) -> Any:
    return st.sampled_from([None] * 2 * len(values) + values)


@st.composite
def documents(draw: Any) -> dict[str, Any]:
    networks: dict[str, Any] = {}
    for i in range(draw(st.integers(0, 2))):
        net = {
            "subnet": draw(st.sampled_from(SUBNETS)),
            "gateway": draw(maybe(ADDRESSES)),
            "ip_range": draw(maybe(RANGES)),
            "aux_addresses": draw(maybe([{"a": a} for a in ADDRESSES])),
            "enable_ipv6": draw(maybe([True, False])),
        }
        net = {k: v for k, v in net.items() if v is not None}
        if isinstance(net["subnet"], str):  # one network per subnet, or they overlap
            net["subnet"] = net["subnet"].replace("10.1.", f"10.{1 + i}.")
        networks[f"n{i}"] = net
    services: dict[str, Any] = {}
    for i in range(draw(st.integers(0, 3))):
        attach = {
            n: {
                k: draw(st.sampled_from(ADDRESSES))
                for k in ("ipv4_address", "ipv6_address")
                if draw(st.integers(0, 3)) == 0
            }
            for n in draw(st.lists(st.sampled_from([*networks] * 4 + ["ghost"]), unique=True))
        }
        service = {
            "image": draw(st.sampled_from(["dockmesh/toolbox"] * 10 + ["Bad", "a@sha256:1"])),
            "replicas": draw(st.sampled_from([1, 1, 1, 0, 2, 4])),
            "networks": attach,
            "command": draw(st.sampled_from(COMMANDS[:5] * 3 + COMMANDS)),
            "hostname": draw(maybe(["{{name}}", "h-{{replica}}", "h {{x}}"])),
            "ports": draw(st.lists(st.sampled_from(PORTS), max_size=1)),
            "depends_on": draw(st.lists(st.sampled_from([f"s{j}" for j in range(i)]))) if i else [],
            "healthcheck": draw(st.sampled_from(CHECKS[:6] * 3 + CHECKS)),
        }
        services[f"s{i}"] = {k: v for k, v in service.items() if v is not None}
    return {"project": "p", "networks": networks, "services": services}


@settings(max_examples=400, deadline=None)
@given(documents())
def test_what_validates_clean_converts(doc: dict[str, Any]) -> None:
    spec, shape, left_out = parse_spec_partial(doc)
    assert spec is not None
    if shape or validate(spec, "p", EngineContext(), left_out):
        return
    desired_state(spec, "p")  # nothing the validation let through makes conversion fail


def test_discovery_on_several_networks_names_the_one_to_register() -> None:
    doc = (
        "project: p\n"
        "networks: {front: {}, back: {}}\n"
        "services:\n"
        "  api:\n"
        "    image: x\n"
        "    networks: [front, back]\n"
        "    discovery: {port: 80}\n"
        "  one:\n"
        "    image: x\n"
        "    networks: [front]\n"
        "    discovery: {port: 80}\n"
        "  named:\n"
        "    image: x\n"
        "    networks: [front, back]\n"
        "    discovery: {port: 80, network: back}\n"
    )
    assert problems_of(doc) == [
        "f:7: services.api.discovery: the service is on 2 networks (front, back): set network: "
        "to the one whose address to register"
    ]


def test_expose_is_checked_field_by_field() -> None:
    doc = {
        "project": "p",
        "services": {
            "web": svc(
                expose={"host": ["shop.test", "bad host"], "path": "api", "strip_prefix": "x"}
            ),
            "api": svc(
                discovery={"port": 8080},
                expose={"path": "/"},
                labels={"dockmesh.http.host": "a.test"},
            ),
        },
    }
    got = joined(doc)
    assert "services.web.expose.host: host: 'bad host' is not a host name" in got
    assert "services.web.expose.path: path: 'api': a path starts with '/'" in got
    assert "services.web.expose.strip_prefix: strip_prefix='x': expected true" in got
    assert "services.web.expose: needs port: (the port to send to)" in got
    assert "services.api.labels.dockmesh.http.host: 'dockmesh.http.host' is written by" in got


def test_expose_writes_the_route_labels_and_registers_the_service() -> None:
    desired = desired_of(
        {
            "project": "p",
            "services": {
                "web": svc(
                    expose={"host": "shop.test", "path": "/app", "strip_prefix": True, "port": 80}
                ),
                "api": svc(discovery={"port": 8080}, expose={"path": "/api", "port": 9000}),
            },
        }
    )
    labels = {c.config.name: c.config.labels for c in desired.containers}
    web, api = labels["p-web-1"], labels["p-api-1"]
    assert web["dockmesh.service"] == "web" and web["dockmesh.port"] == "80"
    assert web["dockmesh.http.host"] == "shop.test"
    assert web["dockmesh.http.path"] == "/app"
    assert web["dockmesh.http.strip_prefix"] == "true"
    assert "dockmesh.http.port" not in web  # the registered port is the one
    assert api["dockmesh.port"] == "8080" and api["dockmesh.http.port"] == "9000"


def _cycles_recursively(graph: dict[str, list[str]]) -> list[list[str]]:
    """The depth-first search as it was written first, recursive: what the loop must find."""
    seen: set[tuple[str, ...]] = set()
    state: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(n: str) -> None:
        state[n] = 1
        stack.append(n)
        for d in graph.get(n, []):
            if state.get(d) == 1:
                cyc = stack[stack.index(d) :]
                k = cyc.index(min(cyc))
                canon = tuple(cyc[k:] + cyc[:k])
                if canon not in seen:
                    seen.add(canon)
                    out.append(list(canon))
            elif state.get(d) is None:
                visit(d)
        stack.pop()
        state[n] = 2

    for n in sorted(graph):
        if state.get(n) is None:
            visit(n)
    return out


NODES = st.sampled_from("abcdef")


@given(st.dictionaries(NODES, st.lists(NODES, max_size=4), max_size=6))
def test_cycles_are_those_of_the_recursive_search(graph: dict[str, list[str]]) -> None:
    assert list(_find_cycles(graph)) == _cycles_recursively(graph)


def test_a_long_chain_of_dependencies_is_no_recursion_error() -> None:
    # 1 500 services, each depending on the next, ended in a RecursionError traceback.
    n = 5000
    graph = {f"s{i}": [f"s{i + 1}"] for i in range(n)}
    assert list(_find_cycles(graph)) == []
    graph[f"s{n}"] = ["s0"]
    (cycle,) = _find_cycles(graph)
    assert len(cycle) == n + 1 and cycle[0] == "s0"
