"""The topology model: merging engines, the JSON contract, and indexed lookups that answer as
a scan of the containers would. (Conversion from the API's JSON: tests/unit/engine/test_convert.py.)"""

from __future__ import annotations

import ipaddress
import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any, TypeVar

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from dockmesh.engine.convert import container_from_api, network_from_api
from dockmesh.model.ipam import IPNetwork, is_host_address
from dockmesh.model.topology import (
    Attachment,
    Container,
    Endpoint,
    EngineInfo,
    EngineState,
    IpamPool,
    Network,
    Topology,
    build_topology,
)

NET: dict[str, Any] = {
    "Name": "demo_database",
    "Id": "n1" * 32,
    "Scope": "local",
    "Driver": "bridge",
    "EnableIPv6": False,
    "Internal": True,
    "Attachable": False,
    "IPAM": {
        "Driver": "default",
        "Config": [
            {
                "Subnet": "10.77.3.0/24",
                "Gateway": "10.77.3.1",
                "IPRange": "10.77.3.0/28",
                "AuxiliaryAddresses": {"spare": "10.77.3.200"},
            }
        ],
    },
    "Options": {"com.docker.network.driver.mtu": "1500"},
    "Labels": {"dockmesh.project": "demo"},
}
CTR: dict[str, Any] = {
    "Id": "c1" * 32,
    "Name": "/demo-user-db-1",
    "Image": "sha256:abc",
    "State": {"Status": "running", "Running": True, "Pid": 1234, "Health": {"Status": "healthy"}},
    "Config": {
        "Image": "dockmesh/toolbox",
        "Hostname": "demo-user-db-1",
        "Labels": {"dockmesh.project": "demo"},
    },
    "HostConfig": {"NetworkMode": "demo_database"},
    "NetworkSettings": {
        "Ports": {"8080/tcp": [{"HostIp": "127.0.0.1", "HostPort": "18080"}], "9/udp": None},
        "Networks": {
            "demo_database": {
                "NetworkID": "n1" * 32,
                "IPAddress": "10.77.3.2",
                "MacAddress": "02:42:0a:4d:03:02",
                "GlobalIPv6Address": "",
                "Aliases": ["user-db", "demo-user-db-1", "c1c1c1c1c1c1"],
                "EndpointID": "e1",
            }
        },
    },
}


def state(engine: str, nets: list[dict[str, Any]], ctrs: list[dict[str, Any]]) -> EngineState:
    st = EngineState(EngineInfo(engine, f"unix:///{engine}.sock", "20.10.24"))
    for n in nets:
        st.upsert_network(network_from_api(n, engine))
    for c in ctrs:
        st.upsert_container(container_from_api(c, engine))
    return st


def test_json_contract_keys_and_values() -> None:
    doc = build_topology([state("local", [NET], [CTR])], 17).to_json()
    assert doc["version"] == 17
    assert doc["engines"] == [
        {"name": "local", "url": "unix:///local.sock", "server_version": "20.10.24"}
    ]
    [net] = doc["networks"]
    assert {
        "name",
        "id",
        "engine",
        "driver",
        "scope",
        "internal",
        "attachable",
        "ipam",
        "options",
        "labels",
        "endpoints",
    } <= set(net)
    assert net["internal"] is True
    assert net["ipam"] == [
        {
            "subnet": "10.77.3.0/24",
            "gateway": "10.77.3.1",
            "ip_range": "10.77.3.0/28",
            "aux_addresses": {"spare": "10.77.3.200"},
        }
    ]
    [ep] = net["endpoints"]
    assert ep == {
        "container": "demo-user-db-1",
        "container_id": "c1" * 32,
        "engine": "local",
        "ipv4": "10.77.3.2",
        "ipv6": None,
        "mac": "02:42:0a:4d:03:02",
        "aliases": ["user-db"],
        "dns_names": ["demo-user-db-1", "c1c1c1c1c1c1", "user-db"],
    }
    [ctr] = doc["containers"]
    assert ctr["pid"] == 1234 and ctr["health"] == "healthy" and ctr["state"] == "running"
    assert ctr["networks"] == ["demo_database"]
    assert ctr["image"] == "dockmesh/toolbox"
    assert ctr["ports"] == [
        {"container_port": 9, "protocol": "udp", "host_ip": None, "host_port": None},
        {"container_port": 8080, "protocol": "tcp", "host_ip": "127.0.0.1", "host_port": 18080},
    ]


def test_swarm_network_seen_by_two_engines_is_one() -> None:
    overlay = {
        **NET,
        "Name": "ov",
        "Id": "ov" * 32,
        "Scope": "swarm",
        "Driver": "overlay",
        "Attachable": True,
    }
    c2 = {
        **CTR,
        "Id": "c2" * 32,
        "Name": "/other",
        "NetworkSettings": {"Networks": {"ov": {"NetworkID": "ov" * 32, "IPAddress": "10.0.1.3"}}},
    }
    c1 = {
        **CTR,
        "NetworkSettings": {"Networks": {"ov": {"NetworkID": "ov" * 32, "IPAddress": "10.0.1.2"}}},
    }
    local_bridge = {**NET, "Id": "b" * 64, "Name": "bridge", "Scope": "local"}
    topo = build_topology(
        [state("h1", [overlay, local_bridge], [c1]), state("h2", [overlay, local_bridge], [c2])], 1
    )
    ovs = [n for n in topo.networks if n.name == "ov"]
    assert len(ovs) == 1 and ovs[0].engines == ("h1", "h2")
    assert [(e.container, e.engine) for e in topo.endpoints_of(ovs[0])] == [
        ("demo-user-db-1", "h1"),
        ("other", "h2"),
    ]
    # local networks with the same id on two engines stay two
    assert len([n for n in topo.networks if n.name == "bridge"]) == 2


def test_lookup_by_name_id_and_prefix() -> None:
    topo = build_topology([state("local", [NET], [CTR])], 1)
    c = topo.container("demo-user-db-1")
    assert c is not None and topo.container("c1c1c1") is c and topo.container("c1") is None
    n = topo.network("demo_database")
    assert n is not None and topo.networks_of(c) == ("demo_database",)


# --- indexed lookups answer as a scan would -------------------------------------------------
#
# The reference functions below are the scans Topology used before it had indexes. Small pools
# of names, ids, addresses and labels make collisions (a name equal to an id, ids sharing
# prefixes, one address on two containers, one network id on two engines) the common case.

IDS = st.text("ab01", min_size=6, max_size=9)
NAMES = st.sampled_from(["web", "db", "bridge", "none", "aaaaaa", "ab01ab", "x"])
ENGINES = st.sampled_from(["e1", "e2"])
NET_IDS = ["aaaaaa", "aaaaab", "ab01ab01", "bbbbbb", "b0b0b0b0"]
ADDRESSES = ["10.0.0.2", "10.0.0.3", "fd00::2"]
LABEL_KEYS = ["dockmesh.service", "team"]
LABEL_VALUES = ["api", "web"]


@st.composite
def networks(draw: st.DrawFn) -> Network:
    engine = draw(ENGINES)
    return Network(
        draw(st.sampled_from(NET_IDS)),
        draw(NAMES),
        engine,
        "bridge",
        scope=draw(st.sampled_from(["local", "swarm"])),
        engines=draw(st.sampled_from([(), (engine,), ("e1", "e2")])),
    )


@st.composite
def attachments(draw: st.DrawFn) -> Attachment:
    nid = draw(st.sampled_from(NET_IDS))
    return Attachment(
        nid,
        f"net-{nid}",
        ipv4=draw(st.sampled_from([None, *ADDRESSES[:2]])),
        ipv6=draw(st.sampled_from([None, ADDRESSES[2]])),
        aliases=tuple(draw(st.lists(st.sampled_from(["api", "web", "h", "aaaaaa"]), max_size=3))),
    )


@st.composite
def containers(draw: st.DrawFn) -> Container:
    cid = draw(IDS)
    return Container(
        cid,
        draw(NAMES),
        draw(ENGINES),
        "img",
        "running",
        hostname=draw(st.sampled_from(["h", cid[:12]])),
        attachments=tuple(draw(st.lists(attachments(), max_size=3))),
        labels=draw(st.dictionaries(st.sampled_from(LABEL_KEYS), st.sampled_from(LABEL_VALUES))),
    )


@st.composite
def topologies(draw: st.DrawFn) -> Topology:
    nets = draw(st.lists(networks(), max_size=6))
    ctrs = draw(st.lists(containers(), max_size=8))
    if draw(st.booleans()):  # as Topology(...) takes them: any order
        return Topology(1, (), tuple(nets), tuple(ctrs))
    states = {e: EngineState(EngineInfo(e, f"unix:///{e}")) for e in ("e1", "e2")}
    for n in nets:
        states[n.engine].networks[n.id] = n
    for c in ctrs:
        states[c.engine].containers[c.id] = c
    return build_topology(list(states.values()), 1)


T = TypeVar("T", Container, Network)


def scan_find(items: tuple[T, ...], key: str) -> T | None:
    for x in items:
        if key in (x.name, x.id):
            return x
    matches = [x for x in items if x.id.startswith(key)]
    return matches[0] if len(matches) == 1 and len(key) >= 6 else None


def scan_endpoints(topo: Topology, network: Network) -> tuple[Endpoint, ...]:
    eps: list[Endpoint] = []
    for c in topo.containers:
        a = c.attachment(network.id)
        if a is None:
            continue
        implicit = {c.id[:12], c.hostname}
        aliases = tuple(x for x in a.aliases if x not in implicit)
        dns: tuple[str, ...] = ()
        if network.name not in ("bridge", "host", "none"):
            dns = tuple(dict.fromkeys((c.name, c.id[:12], *a.aliases)))
        eps.append(Endpoint(c.name, c.id, c.engine, a.ipv4, a.ipv6, a.mac, aliases, dns))
    return tuple(sorted(eps, key=lambda e: (e.container, e.engine)))


def keys_of(topo: Topology) -> set[str]:
    """Every name, id and id prefix in the topology, and a few strings that are none."""
    keys = {"", "zzzzzz", "ab01ab01ab"}
    for name, oid in [(x.name, x.id) for x in topo.networks] + [
        (x.name, x.id) for x in topo.containers
    ]:
        keys.add(name)
        keys.update(oid[:i] for i in range(len(oid) + 1))
    return keys


@settings(max_examples=150)
@given(topologies())
def test_name_id_and_prefix_lookups_equal_a_scan(topo: Topology) -> None:
    for key in keys_of(topo):
        assert topo.container(key) is scan_find(topo.containers, key), key
        assert topo.network(key) is scan_find(topo.networks, key), key


@settings(max_examples=150)
@given(topologies(), networks())
def test_endpoints_equal_a_scan(topo: Topology, foreign: Network) -> None:
    for n in (*topo.networks, foreign):
        assert topo.endpoints_of(n) == scan_endpoints(topo, n)
        assert topo.endpoints_of(n) == scan_endpoints(topo, n)  # memoised: same answer


@settings(max_examples=150)
@given(topologies())
def test_address_and_label_lookups_equal_a_scan(topo: Topology) -> None:
    for address in [*ADDRESSES, "10.9.9.9"]:
        placed = [
            (c, a) for c in topo.containers for a in c.attachments if address in (a.ipv4, a.ipv6)
        ]
        assert topo.attachments_at(address) == tuple(placed)
        holders = [
            c for c in topo.containers if any(address in (a.ipv4, a.ipv6) for a in c.attachments)
        ]
        expected = holders[0] if len(holders) == 1 else None
        assert topo.container_by_ip(address) is expected
    for key in [*LABEL_KEYS, "other"]:
        assert topo.containers_with_label(key) == tuple(
            c for c in topo.containers if key in c.labels
        )
        for value in LABEL_VALUES:
            assert topo.containers_with_label(key, value) == tuple(
                c for c in topo.containers if c.labels.get(key) == value
            )


@settings(max_examples=150)
@given(topologies())
def test_attached_networks_equal_a_scan(topo: Topology) -> None:
    for c in topo.containers:
        expected = []
        for a in c.attachments:
            on = [
                n
                for n in topo.networks
                if n.id == a.network_id and c.engine in (n.engines or (n.engine,))
            ]
            if on:
                expected.append((on[0], a))
        assert topo.attached_networks(c) == tuple(expected)


@settings(max_examples=100)
@given(topologies())
def test_to_json_equals_the_scan_built_document(topo: Topology) -> None:
    doc = topo.to_json()
    for n, nj in zip(topo.networks, doc["networks"], strict=True):
        assert nj["endpoints"] == [e.to_json() for e in scan_endpoints(topo, n)]


def test_index_is_invisible_to_equality_and_replace() -> None:
    topo = build_topology([state("local", [NET], [CTR])], 1)
    fresh = build_topology([state("local", [NET], [CTR])], 1)
    assert topo.container("demo-user-db-1") is not None  # builds topo's index
    assert topo == fresh and repr(topo) == repr(fresh)
    newer = replace(topo, version=2, containers=())
    assert newer.container("demo-user-db-1") is None


def test_concurrent_first_lookups_agree() -> None:
    topo = build_topology([state("local", [NET], [CTR])], 1)
    with ThreadPoolExecutor(8) as pool:
        found = list(pool.map(lambda _: topo.container("c1c1c1"), range(64)))
    assert all(c is not None and c.name == "demo-user-db-1" for c in found)


@settings(max_examples=60, deadline=None)
@given(topologies())
def test_the_json_reads_back_into_the_same_json(topo: Topology) -> None:
    """What the agent serves renders (tree, dot) the same as what the engine gave."""
    from dockmesh.model.topology import topology_from_json

    # The engine names an attachment after its network; the generator may not.
    names = {n.id: n.name for n in topo.networks}
    assume(
        all(
            names.get(a.network_id, a.network) == a.network
            for c in topo.containers
            for a in c.attachments
        )
    )
    doc = topo.to_json()
    assert topology_from_json(json.loads(json.dumps(doc))).to_json() == doc


def test_a_document_of_another_shape_is_refused() -> None:
    from dockmesh.model.topology import topology_from_json

    bad: Any
    for bad in (
        {},
        {"version": 1},
        [],
        None,
        {"version": 1, "engines": [{}], "networks": [], "containers": []},
    ):
        with pytest.raises(ValueError, match="not a topology document"):
            topology_from_json(bad)


# --- a network's gateway -------------------------------------------------------------------


@st.composite
def pools_without_gateway(draw: st.DrawFn) -> tuple[IPNetwork, IPNetwork | None]:
    """A subnet the engine accepts (IPv4 /8 to /30, IPv6 /64 to /126) and, or not, an
    ip_range inside it of any size down to one address."""
    if draw(st.booleans()):
        bits, prefix = 32, draw(st.integers(8, 30))
        subnet: IPNetwork = ipaddress.IPv4Network(
            (draw(st.integers(0x0A000000, 0x0AFFFFFF)), prefix), strict=False
        )
    else:
        bits, prefix = 128, draw(st.integers(64, 126))
        base = (0xFD00 << 112) | draw(st.integers(0, 2**112 - 1))
        subnet = ipaddress.IPv6Network((base, prefix), strict=False)
    if draw(st.booleans()):
        return subnet, None
    range_prefix = draw(st.integers(prefix, bits))
    # The first, the last or any block of that size (the edges are where the rule bites).
    blocks = 2 ** (range_prefix - prefix)
    k = draw(st.sampled_from([0, blocks - 1]) | st.integers(0, blocks - 1))
    size = 2 ** (bits - range_prefix)
    start = int(subnet.network_address) + k * size
    return subnet, ipaddress.ip_network((start, range_prefix))


@given(pools_without_gateway())
def test_the_gateway_nobody_asked_for_is_the_first_address_the_pool_hands_out(
    case: tuple[IPNetwork, IPNetwork | None],
) -> None:
    subnet, ip_range = case
    pool = IpamPool(str(subnet), None, None if ip_range is None else str(ip_range))
    dynamic = ip_range or subnet
    gateway = pool.effective_gateway()
    # Only the subnet's two ends can be kept from hosts (is_host_address says which).
    kept = {a for a in (subnet[0], subnet[-1]) if a in dynamic and not is_host_address(a, subnet)}
    if dynamic.num_addresses == len(kept):
        # A range of one or two addresses, both the subnet's network or broadcast address:
        # the engine finds no room for the gateway.
        assert gateway is None
        return
    assert gateway is not None
    gw = ipaddress.ip_address(gateway)
    assert str(gw) == gateway  # canonical text, as the engine writes addresses
    assert gw in dynamic and is_host_address(gw, subnet)
    # The lowest such address: what lies below it in the pool is never handed out.
    below = int(gw) - int(dynamic.network_address)
    assert below <= 1
    assert all(not is_host_address(dynamic[i], subnet) for i in range(below))


@given(
    st.ip_addresses(v=4) | st.ip_addresses(v=6),
    st.sampled_from(["", "/24", "/64"]),
    st.none() | st.just("10.0.0.64/26"),
)
def test_the_gateway_the_engine_reports_wins(
    address: Any, suffix: str, ip_range: str | None
) -> None:
    pool = IpamPool("10.0.0.0/24", f"{address}{suffix}", ip_range)
    assert pool.effective_gateway() == str(address)


def test_gateways_as_the_engine_puts_them() -> None:
    # Measured on Docker 20.10: the engine reports only the gateway it was given.
    assert IpamPool("10.213.77.0/24", None, "10.213.77.64/26").effective_gateway() == "10.213.77.64"
    assert IpamPool("10.213.78.0/24").effective_gateway() == "10.213.78.1"
    assert IpamPool("10.213.79.0/24", "10.213.79.254").effective_gateway() == "10.213.79.254"
    assert IpamPool("10.213.80.0/24", None, "10.213.80.0/25").effective_gateway() == "10.213.80.1"
    assert IpamPool("fd00:1::/64").effective_gateway() == "fd00:1::1"
    for unreadable in (
        IpamPool("nonsense"),
        IpamPool("10.0.0.0/24", "x"),
        IpamPool("10.0.0.0/24", None, "fd00::/64"),
    ):
        assert unreadable.effective_gateway() is None


def test_a_network_s_gateway_is_its_first_pool_s_of_that_version() -> None:
    n = Network(
        "1",
        "n",
        "local",
        "bridge",
        ipam=(
            IpamPool("junk"),
            IpamPool("fd00:2::/64"),
            IpamPool("10.2.0.0/24", None, "10.2.0.128/25"),
        ),
    )
    assert (n.gateway(4), n.gateway(6)) == ("10.2.0.128", "fd00:2::1")
    assert n.pool(4) == n.ipam[2] and Network("2", "none", "local", "null").gateway() is None
