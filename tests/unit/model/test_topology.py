"""The topology model: conversion from API JSON, merging engines, the JSON contract."""

from __future__ import annotations

from typing import Any

from dockmesh.engine.convert import container_from_api, network_from_api
from dockmesh.model.topology import EngineInfo, EngineState, build_topology

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


def test_stopped_container_has_no_pid_but_keeps_configured_ports() -> None:
    raw = {
        **CTR,
        "State": {"Status": "exited", "Running": False, "Pid": 0},
        "NetworkSettings": {"Ports": {}, "Networks": {}},
        "HostConfig": {"PortBindings": {"80/tcp": [{"HostIp": "", "HostPort": "81"}]}},
    }
    c = container_from_api(raw, "local")
    assert c.pid is None and not c.running and c.health is None
    assert [(p.container_port, p.host_port) for p in c.ports] == [(80, 81)]


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
