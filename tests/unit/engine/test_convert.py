"""Docker Engine API JSON → model values (dockmesh.engine.convert): every field where the
engine puts it, the absent and empty values an engine reports, live port bindings while
running and the configured ones otherwise."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from dockmesh.engine.convert import container_from_api, network_from_api
from dockmesh.model.topology import IpamPool, PortBinding
from tests.unit.model.test_topology import CTR, NET


def test_a_network_as_the_engine_reports_it() -> None:
    n = network_from_api(NET, "local")
    assert (n.id, n.name, n.engine, n.driver, n.scope) == (
        "n1" * 32,
        "demo_database",
        "local",
        "bridge",
        "local",
    )
    assert n.internal and not n.attachable and not n.enable_ipv6
    assert n.ipam == (
        IpamPool("10.77.3.0/24", "10.77.3.1", "10.77.3.0/28", {"spare": "10.77.3.200"}),
    )
    assert n.options == {"com.docker.network.driver.mtu": "1500"}
    assert n.labels == {"dockmesh.project": "demo"} and n.engines == ("local",)


def test_a_network_with_nothing_but_its_name_and_id() -> None:
    n = network_from_api({"Id": "x", "Name": "none", "IPAM": {"Config": None}, "Labels": None}, "e")
    assert (n.driver, n.scope, n.ipam, n.options, n.labels) == ("", "local", (), {}, {})
    # A pool without a subnet (the host network's) is no pool; an empty gateway is none.
    raw = {
        "Id": "y",
        "Name": "n",
        "IPAM": {"Config": [{}, {"Subnet": "10.0.0.0/8", "Gateway": ""}]},
    }
    assert network_from_api(raw, "e").ipam == (IpamPool("10.0.0.0/8", None, None, {}),)


def test_a_running_container_as_the_engine_reports_it() -> None:
    c = container_from_api(CTR, "local")
    assert (c.id, c.name, c.engine, c.image, c.image_id) == (
        "c1" * 32,
        "demo-user-db-1",
        "local",
        "dockmesh/toolbox",
        "sha256:abc",
    )
    assert (c.state, c.health, c.pid, c.hostname, c.network_mode) == (
        "running",
        "healthy",
        1234,
        "demo-user-db-1",
        "demo_database",
    )
    (a,) = c.attachments
    assert (a.network_id, a.network, a.ipv4, a.ipv6, a.mac, a.endpoint_id) == (
        "n1" * 32,
        "demo_database",
        "10.77.3.2",
        None,
        "02:42:0a:4d:03:02",
        "e1",
    )
    assert c.ports == (
        PortBinding(9, "udp", None, None),
        PortBinding(8080, "tcp", "127.0.0.1", 18080),
    )


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


def test_a_container_the_engine_knows_little_about() -> None:
    c = container_from_api({"Id": "x"}, "e")
    assert (c.name, c.image, c.image_id, c.state, c.health, c.pid) == (
        "",
        "",
        "",
        "unknown",
        None,
        None,
    )
    assert (c.attachments, c.ports, c.labels) == ((), (), {})


def test_a_port_published_several_times_is_a_binding_each() -> None:
    raw = {
        "Id": "x",
        "NetworkSettings": {
            "Ports": {
                "53": [
                    {"HostIp": "0.0.0.0", "HostPort": "5353"},
                    {"HostIp": "::", "HostPort": "5353"},
                ],
                "53/udp": [{"HostIp": "", "HostPort": ""}],
            }
        },
    }
    assert container_from_api(raw, "e").ports == (
        PortBinding(53, "tcp", "0.0.0.0", 5353),
        PortBinding(53, "tcp", "::", 5353),
        PortBinding(53, "udp", None, None),
    )


maybe = st.none() | st.just("")
names = st.text(alphabet="abcxyz_-", min_size=1, max_size=6)
endpoints = st.fixed_dictionaries(
    {},
    optional={
        "NetworkID": maybe | names,
        "IPAddress": maybe | st.ip_addresses(v=4).map(str),
        "GlobalIPv6Address": maybe | st.ip_addresses(v=6).map(str),
        "MacAddress": maybe | st.just("02:42:ac:11:00:02"),
        "Aliases": st.none() | st.lists(names, max_size=2),
        "EndpointID": maybe | names,
    },
)
bindings = st.none() | st.lists(
    st.fixed_dictionaries(
        {"HostIp": maybe | st.just("127.0.0.1"), "HostPort": maybe | st.integers(1, 65535).map(str)}
    ),
    max_size=2,
)
port_keys = st.builds(
    lambda p, proto: f"{p}{proto}",
    st.integers(1, 65535),
    st.sampled_from(["", "/tcp", "/udp", "/sctp"]),
)
inspects = st.fixed_dictionaries(
    {"Id": names},
    optional={
        "Name": maybe | names.map(lambda n: "/" + n),
        "Image": maybe | names,
        "State": st.none()
        | st.fixed_dictionaries(
            {},
            optional={
                "Status": maybe | st.sampled_from(["running", "exited", "created"]),
                "Running": st.booleans(),
                "Pid": st.integers(0, 99999),
                "Health": st.none() | st.fixed_dictionaries({"Status": maybe | st.just("healthy")}),
            },
        ),
        "Config": st.none()
        | st.fixed_dictionaries(
            {},
            optional={
                "Image": maybe | names,
                "Hostname": maybe | names,
                "Labels": st.none() | st.dictionaries(names, names, max_size=2),
            },
        ),
        "HostConfig": st.none()
        | st.fixed_dictionaries(
            {},
            optional={
                "NetworkMode": maybe | names,
                "PortBindings": st.none() | st.dictionaries(port_keys, bindings, max_size=2),
            },
        ),
        "NetworkSettings": st.none()
        | st.fixed_dictionaries(
            {},
            optional={
                "Networks": st.none() | st.dictionaries(names, endpoints, max_size=3),
                "Ports": st.none() | st.dictionaries(port_keys, bindings, max_size=2),
            },
        ),
    },
)


@given(inspects)
def test_any_inspect_document_converts(raw: dict[str, Any]) -> None:
    c = container_from_api(raw, "e")
    state = raw.get("State") or {}
    assert c.pid is None or (state.get("Running") and c.pid == state.get("Pid"))
    assert c.pid != 0
    assert [a.network for a in c.attachments] == sorted(
        (raw.get("NetworkSettings") or {}).get("Networks") or {}
    )
    assert all(a.ipv4 != "" and a.ipv6 != "" and a.mac != "" for a in c.attachments)
    assert list(c.ports) == sorted(
        c.ports, key=lambda p: (p.container_port, p.protocol, p.host_ip or "", p.host_port or 0)
    )
    assert all(p.protocol in ("tcp", "udp", "sctp") and p.host_port != 0 for p in c.ports)
    assert c.labels == ((raw.get("Config") or {}).get("Labels") or {})
    assert not c.name.startswith("/")


def test_a_list_entry_is_trusted_only_where_a_restart_would_show() -> None:
    from dockmesh.engine.convert import list_signature

    entry = {
        "Id": "c1" * 32,
        "Names": ["/web"],
        "State": "running",
        "Status": "Up 3 minutes (healthy)",
        "NetworkSettings": {
            "Networks": {"n": {"NetworkID": "n1", "EndpointID": "e1", "IPAddress": "10.0.0.2"}}
        },
        "Ports": [{"PrivatePort": 80, "Type": "tcp"}],
    }
    sig = list_signature(entry)
    assert sig is not None and sig[2] == "healthy"
    restarted = {
        **entry,
        "NetworkSettings": {
            "Networks": {"n": {"NetworkID": "n1", "EndpointID": "e2", "IPAddress": "10.0.0.2"}}
        },
    }
    assert list_signature(restarted) != sig
    assert list_signature({**entry, "Status": "Up 3 minutes (unhealthy)"}) != sig
    assert list_signature({**entry, "Names": ["/renamed"]}) != sig
    assert list_signature(dict(entry)) == sig
    # Running in another container's namespace: no endpoint of its own, nothing to tell by.
    assert list_signature({**entry, "NetworkSettings": {"Networks": {}}}) is None
    assert list_signature({**entry, "State": "exited", "NetworkSettings": {}}) is not None
