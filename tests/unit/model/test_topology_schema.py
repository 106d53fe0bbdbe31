"""docs/topology.schema.json describes exactly what `Topology.to_json` produces: every document
the code makes from what an engine can report validates, through the agent's round trip too,
and a document with a key missing, a key too many or a value of the wrong type does not."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from dockmesh.engine.convert import container_from_api, network_from_api
from dockmesh.engine.memory import MemoryEngine
from dockmesh.model.topology import (
    EngineInfo,
    EngineState,
    Topology,
    build_topology,
    topology_from_json,
)
from dockmesh.ops.apply import apply_plan
from dockmesh.projectfile.plan import make_plan
from tests.unit.helpers import desired_of, empty_topology, simulate_apply

SCHEMA_PATH = Path(__file__).resolve().parents[3] / "docs" / "topology.schema.json"


@pytest.fixture(scope="module")
def validator() -> Draft202012Validator:
    schema = json.loads(SCHEMA_PATH.read_text())
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


def errors(validator: Draft202012Validator, doc: Any) -> list[str]:
    return [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)
    ]


def check(validator: Draft202012Validator, topo: Topology) -> dict[str, Any]:
    """The document as it leaves the process (JSON text), and as the command line prints it
    after reading it back from an agent: both valid."""
    doc: dict[str, Any] = json.loads(json.dumps(topo.to_json()))
    assert errors(validator, doc) == []
    again = topology_from_json(doc).to_json()
    assert errors(validator, json.loads(json.dumps(again))) == []
    return doc


# --- what an engine can report, as the Docker API gives it ---------------------------------
#
# Values are drawn from everything the engine may send for each field (absent, empty, null
# included), so that the conversion's every branch reaches the schema.

HEX = st.text("0123456789abcdef", min_size=12, max_size=64)
NAMES = st.text("abcdefghij-_.0123456789", min_size=1, max_size=12).filter(lambda s: s[0].isalnum())
TEXT = st.text(max_size=8)
STRING_MAPS = st.dictionaries(st.text(max_size=6), st.text(max_size=6), max_size=3)
MAYBE = st.none() | st.just("")
V4 = st.sampled_from(["10.77.3.2", "172.17.0.5", "192.168.9.200"])
V6 = st.sampled_from(["fd00:77:4::2", "2001:db8::1"])
ENGINE_NAMES = st.sampled_from(["local", "h2"])


def optional(key: str, values: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    """{key: value} or {} (the engine leaves many keys out)."""
    return st.one_of(st.just({}), values.map(lambda v: {key: v}))


# Strategies are built once, here, not inside the composite functions at every draw: making
# and checking a strategy object costs more than drawing from it (a third of this file's time).
IPAM_CONFIG = st.fixed_dictionaries(
    {"Subnet": st.sampled_from(["10.77.3.0/24", "fd00:77:4::/64", ""])},
    optional={
        "Gateway": st.sampled_from(["10.77.3.1", ""]) | st.none(),
        "IPRange": st.sampled_from(["10.77.3.0/28", ""]) | st.none(),
        "AuxiliaryAddresses": STRING_MAPS | st.none(),
    },
)
NETWORK_FIELDS = st.fixed_dictionaries(
    {
        "Id": HEX,
        "Name": NAMES | st.sampled_from(["bridge"]),
        "IPAM": st.none()
        | st.fixed_dictionaries(
            {"Config": st.none() | st.lists(IPAM_CONFIG, min_size=1, max_size=2)}
        ),
    },
    optional={
        "Driver": st.sampled_from(["bridge", "overlay", "macvlan", "null", ""]) | MAYBE,
        "Internal": st.booleans() | st.none(),
        "Attachable": st.booleans() | st.none(),
        "EnableIPv6": st.booleans() | st.none(),
        "Options": STRING_MAPS | st.none(),
        "Labels": STRING_MAPS | st.none(),
    },
)
SCOPE = optional("Scope", st.sampled_from(["local", "global", "swarm"]) | MAYBE)


@st.composite
def raw_networks(draw: st.DrawFn, scope: str | None = None) -> dict[str, Any]:
    raw: dict[str, Any] = draw(NETWORK_FIELDS)
    raw |= {"Scope": scope} if scope is not None else draw(SCOPE)
    return raw


ENDPOINT_FIELDS = st.fixed_dictionaries(
    {},
    optional={
        "IPAddress": V4 | MAYBE,
        "GlobalIPv6Address": V6 | MAYBE,
        "MacAddress": st.just("02:42:0a:4d:03:02") | MAYBE,
        "Aliases": st.none() | st.lists(NAMES, max_size=3),
        "EndpointID": HEX | MAYBE,
    },
)


@st.composite
def endpoint_settings(draw: st.DrawFn, network_id: str) -> dict[str, Any]:
    ep: dict[str, Any] = {"NetworkID": network_id if draw(st.booleans()) else draw(MAYBE)}
    return ep | draw(ENDPOINT_FIELDS)


PORT_KEYS = st.builds(
    lambda n, proto: f"{n}{proto}",
    st.integers(1, 65535),
    st.sampled_from(["/tcp", "/udp", "/sctp", ""]),
)
BINDINGS = st.none() | st.lists(
    st.fixed_dictionaries(
        {},
        optional={
            "HostIp": st.sampled_from(["0.0.0.0", "::", "127.0.0.1", ""]),
            "HostPort": st.sampled_from(["18080", "0", ""]) | st.integers(1, 65535).map(str),
        },
    ),
    max_size=2,
)
STATE_FIELDS = st.fixed_dictionaries(
    {
        "Running": st.booleans(),
        "Status": st.sampled_from(
            ["created", "running", "paused", "restarting", "removing", "exited", "dead", ""]
        ),
    },
    optional={
        "Pid": st.integers(0, 4_194_304),
        "Health": st.none()
        | st.fixed_dictionaries(
            {"Status": st.sampled_from(["starting", "healthy", "unhealthy", "none", ""])}
        ),
    },
)
CONFIG_FIELDS = st.fixed_dictionaries(
    {},
    optional={
        "Image": st.sampled_from(["dockmesh/toolbox", "busybox:1", ""]),
        "Hostname": NAMES | st.just(""),
        "Labels": STRING_MAPS | st.none(),
    },
)
HOST_CONFIG_FIELDS = st.fixed_dictionaries(
    {},
    optional={
        "NetworkMode": st.sampled_from(["bridge", "host", "none", "default", ""]),
        "PortBindings": st.none() | st.dictionaries(PORT_KEYS, BINDINGS, max_size=2),
    },
)
NO_NETWORKS: st.SearchStrategy[dict[str, Any] | None] = st.sampled_from([{}, None])
PORTS = optional("Ports", st.none() | st.dictionaries(PORT_KEYS, BINDINGS, max_size=3))


@st.composite
def raw_containers(draw: st.DrawFn, networks: dict[str, str]) -> dict[str, Any]:
    """`GET /containers/{id}/json` of a container on some of `networks` (name → id). The
    engine always sends the sections; what is inside them varies."""
    chosen = draw(st.lists(st.sampled_from(sorted(networks)), unique=True)) if networks else []
    attached: dict[str, Any] = {name: draw(endpoint_settings(networks[name])) for name in chosen}
    settings_: dict[str, Any] = {"Networks": attached if attached else draw(NO_NETWORKS)}
    settings_ |= draw(PORTS)
    return {
        "Id": draw(HEX),
        "Name": "/" + draw(NAMES),
        "Image": "sha256:" + "ab" * 32,
        "State": draw(STATE_FIELDS),
        "Config": draw(CONFIG_FIELDS),
        "HostConfig": draw(HOST_CONFIG_FIELDS),
        "NetworkSettings": settings_,
    }


@st.composite
def engine_topologies(draw: st.DrawFn) -> Topology:
    """One or two engines; a swarm network may be reported by both."""
    engines = draw(st.lists(ENGINE_NAMES, min_size=1, max_size=2, unique=True))
    shared = draw(st.lists(raw_networks(scope="swarm"), max_size=2))
    states = []
    for engine in engines:
        st_ = EngineState(EngineInfo(engine, f"unix:///run/{engine}.sock", draw(TEXT)))
        nets = [*shared, *draw(st.lists(raw_networks(), min_size=1, max_size=3))]
        for raw in nets:
            st_.upsert_network(network_from_api(raw, engine))
        by_name = {raw["Name"]: raw["Id"] for raw in nets}
        for raw in draw(st.lists(raw_containers(by_name), min_size=1, max_size=4)):
            st_.upsert_container(container_from_api(raw, engine))
        states.append(st_)
    return build_topology(states, draw(st.integers(1, 2**40)))


@settings(max_examples=200, deadline=None)
@given(engine_topologies())
def test_every_topology_an_engine_can_report_validates(
    validator: Draft202012Validator, topo: Topology
) -> None:
    check(validator, topo)


# --- what dockmesh itself makes ------------------------------------------------------------

PROJECT: dict[str, Any] = {
    "project": "shop",
    "networks": {
        "front": {"subnet": "10.77.1.0/24"},
        "db": {"subnet": "10.77.3.0/24", "gateway": "10.77.3.1", "internal": True},
        "dual": {"subnet": ["10.77.4.0/24", "fd00:77:4::/64"]},
    },
    "services": {
        "api": {
            "image": "dockmesh/toolbox",
            "replicas": 2,
            "networks": {"front": {"aliases": ["api"]}, "db": {}, "dual": {}},
            "ports": ["8080", "9000/udp"],
            "healthcheck": {"http": "/health", "port": 8080},
            "discovery": {"port": 8080, "tags": ["v1"], "network": "front"},
        },
        "store": {
            "image": "dockmesh/toolbox",
            "networks": {"db": {"ipv4_address": "10.77.3.10"}},
        },
        "tool": {"image": "dockmesh/toolbox", "network_mode": "host"},
        "gateway": {"image": "dockmesh/toolbox", "ports": ["127.0.0.1:18080:8080"]},
    },
}


def test_a_project_applied_on_the_in_memory_engine_validates(
    validator: Draft202012Validator,
) -> None:
    mem = MemoryEngine()
    desired = desired_of(PROJECT)
    apply_plan(mem, make_plan(desired, build_topology([mem.snapshot()], 1), {}, engine="local"))
    topo = build_topology([mem.snapshot()], 7)
    doc = check(validator, topo)
    assert len(doc["containers"]) == 5
    running = [c for c in doc["containers"] if c["state"] == "running"]
    assert running and all(isinstance(c["pid"], int) for c in running)
    # stopped: no pid; the schema holds the null
    mem.stop("shop-store-1")
    doc = check(validator, build_topology([mem.snapshot()], 8))
    [store] = [c for c in doc["containers"] if c["name"] == "shop-store-1"]
    assert store["state"] == "exited" and store["pid"] is None


def test_a_simulated_project_and_an_empty_engine_validate(
    validator: Draft202012Validator,
) -> None:
    check(validator, simulate_apply(desired_of(PROJECT)))
    check(validator, simulate_apply(desired_of(PROJECT), state="created"))
    doc = check(validator, empty_topology())
    assert doc == {
        "version": 1,
        "engines": [{"name": "local", "url": "unix:///x", "server_version": ""}],
        "networks": [],
        "containers": [],
    }


# A hand-made document with every nullable value null and every optional list empty, beside
# one with every value set: the two ends of each field.
EDGE: dict[str, Any] = {
    "version": 3,
    "engines": [
        {"name": "local", "url": "unix:///var/run/docker.sock", "server_version": "20.10.24"},
        {"name": "h2", "url": "tcp://10.0.0.2:2375", "server_version": ""},
    ],
    "networks": [
        {
            "name": "host", "id": "h" * 64, "engine": "local", "engines": ["local"],
            "driver": "host", "scope": "local", "internal": False, "attachable": False,
            "enable_ipv6": False, "ipam": [], "options": {}, "labels": {}, "endpoints": [],
        },
        {
            "name": "ov", "id": "o" * 25, "engine": "local", "engines": ["local", "h2"],
            "driver": "overlay", "scope": "swarm", "internal": True, "attachable": True,
            "enable_ipv6": True,
            "ipam": [
                {"subnet": "10.0.1.0/24", "gateway": None, "ip_range": None, "aux_addresses": {}},
                {"subnet": "fd00:1::/64", "gateway": "fd00:1::1", "ip_range": "fd00:1::/80",
                 "aux_addresses": {"spare": "fd00:1::99"}},
            ],
            "options": {"com.docker.network.driver.overlay.vxlanid_list": "4097"},
            "labels": {"dockmesh.project": "demo"},
            "endpoints": [
                {"container": "a", "container_id": "a" * 64, "engine": "h2", "ipv4": None,
                 "ipv6": "fd00:1::2", "mac": None, "aliases": [], "dns_names": []},
            ],
        },
    ],
    "containers": [
        {
            "name": "a", "id": "a" * 64, "engine": "h2", "image": "", "state": "unknown",
            "health": None, "pid": None, "hostname": "", "network_mode": "",
            "networks": ["ov"], "ports": [], "labels": {},
        },
        {
            "name": "b", "id": "b" * 64, "engine": "local", "image": "dockmesh/toolbox",
            "state": "running", "health": "healthy", "pid": 1234, "hostname": "b",
            "network_mode": "bridge", "networks": ["bridge"],
            "ports": [
                {"container_port": 53, "protocol": "udp", "host_ip": None, "host_port": None},
                {"container_port": 8080, "protocol": "tcp", "host_ip": "127.0.0.1",
                 "host_port": 18080},
            ],
            "labels": {"dockmesh.service": "b", "dockmesh.port": "8080"},
        },
    ],
}  # fmt: skip


def test_hand_made_edge_cases_validate_and_read_back(validator: Draft202012Validator) -> None:
    assert errors(validator, EDGE) == []
    check(validator, topology_from_json(EDGE))


def _set(doc: dict[str, Any], path: tuple[str | int, ...], value: Any) -> dict[str, Any]:
    out = copy.deepcopy(doc)
    node: Any = out
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value
    return out


def _drop(doc: dict[str, Any], path: tuple[str | int, ...]) -> dict[str, Any]:
    out = copy.deepcopy(doc)
    node: Any = out
    for part in path[:-1]:
        node = node[part]
    del node[path[-1]]
    return out


WRONG = [
    ("no version", _drop(EDGE, ("version",))),
    ("no endpoints", _drop(EDGE, ("networks", 1, "endpoints"))),
    ("no dns_names", _drop(EDGE, ("networks", 1, "endpoints", 0, "dns_names"))),
    ("no health", _drop(EDGE, ("containers", 1, "health"))),
    ("no host_port", _drop(EDGE, ("containers", 1, "ports", 0, "host_port"))),
    ("no server_version", _drop(EDGE, ("engines", 0, "server_version"))),
    ("version as text", _set(EDGE, ("version",), "3")),
    ("version 0", _set(EDGE, ("version",), 0)),
    ("pid as text", _set(EDGE, ("containers", 1, "pid"), "1234")),
    ("pid 0", _set(EDGE, ("containers", 1, "pid"), 0)),
    ("internal as text", _set(EDGE, ("networks", 1, "internal"), "true")),
    ("a state Docker has not", _set(EDGE, ("containers", 1, "state"), "up")),
    ("a health Docker has not", _set(EDGE, ("containers", 1, "health"), "ok")),
    ("a scope Docker has not", _set(EDGE, ("networks", 0, "scope"), "host")),
    ("a protocol Docker has not", _set(EDGE, ("containers", 1, "ports", 0, "protocol"), "icmp")),
    ("a port past 65535", _set(EDGE, ("containers", 1, "ports", 1, "host_port"), 65536)),
    ("an empty address", _set(EDGE, ("networks", 1, "endpoints", 0, "ipv6"), "")),
    ("no engines on a network", _set(EDGE, ("networks", 0, "engines"), [])),
    ("a label that is a number", _set(EDGE, ("containers", 1, "labels", "n"), 1)),
    ("a key too many", _set(EDGE, ("containers", 1, "restart_count"), 0)),
    ("a key too many in a pool", _set(EDGE, ("networks", 1, "ipam", 0, "driver"), "default")),
    ("a key too many at the top", _set(EDGE, ("generated_at", ), "now")),
    ("twice the same DNS name", _set(EDGE, ("networks", 1, "endpoints", 0, "dns_names"), ["a", "a"])),
    ("networks as a mapping", _set(EDGE, ("networks",), {})),
]  # fmt: skip


@pytest.mark.parametrize(("what", "doc"), WRONG, ids=[w for w, _ in WRONG])
def test_a_wrong_document_is_refused(
    validator: Draft202012Validator, what: str, doc: dict[str, Any]
) -> None:
    assert errors(validator, doc), what
