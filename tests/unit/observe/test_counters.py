"""Interfaces mapped to networks, which containers can be read, and the stats document."""

from __future__ import annotations

from dockmesh.codecs.procnet import IfaceCounters, Route
from dockmesh.model.topology import Attachment, Container
from dockmesh.observe.counters import (
    ContainerStats,
    InterfaceStats,
    map_interfaces,
    needs_routes,
    readable,
    stats_json,
)


def ctr(*atts: tuple[str, str], pid: int | None = 10, mode: str = "") -> Container:
    return Container(
        id="c" * 64,
        name="web",
        engine="local",
        image="x",
        state="running",
        pid=pid,
        network_mode=mode,
        attachments=tuple(Attachment(f"id-{n}", n, ipv4=ip) for n, ip in atts),
    )


def k(name: str, rx: int = 0, tx: int = 0) -> IfaceCounters:
    return IfaceCounters(name, rx, 1, 0, 0, tx, 1, 0, 0)


def test_one_interface_one_network_needs_no_routes() -> None:
    c = ctr(("front", "10.0.0.2"))
    counters = [k("lo"), k("eth0")]
    assert not needs_routes(c, counters)
    assert map_interfaces(c, counters) == (InterfaceStats(k("eth0"), "front"),)


def test_several_networks_map_through_connected_routes_not_names() -> None:
    c = ctr(("front", "10.0.0.2"), ("back", "10.0.1.5"))
    counters = [k("lo"), k("eth0"), k("eth1")]
    assert needs_routes(c, counters)
    routes = [
        Route("0.0.0.0/0", "10.0.1.1", "eth0"),
        Route("10.0.1.0/24", None, "eth0"),
        Route("10.0.0.0/24", None, "eth1"),
    ]
    got = map_interfaces(c, counters, routes)
    assert [(i.counters.name, i.network) for i in got] == [("eth0", "back"), ("eth1", "front")]
    assert [(i.counters.name, i.network) for i in map_interfaces(c, counters, None)] == [
        ("eth0", None),
        ("eth1", None),
    ]


def test_readable_only_running_local_own_namespace() -> None:
    local = frozenset({"local"})
    assert readable(ctr(("a", "10.0.0.2")), local)
    assert not readable(ctr(pid=None), local)
    assert not readable(ctr(mode="host"), local)
    assert not readable(ctr(("a", "10.0.0.2")), frozenset({"remote"}))


def test_stats_json_shape() -> None:
    s = ContainerStats("web", "c" * 64, "local", (InterfaceStats(k("eth0", 5, 7), "front"),))
    doc = stats_json([s], 0.0123)
    containers = doc["containers"]
    assert isinstance(containers, list)
    c = containers[0]
    assert c["name"] == "web"
    assert c["interfaces"][0] == {
        "name": "eth0",
        "network": "front",
        "rx_bytes": 5,
        "tx_bytes": 7,
        "rx_packets": 1,
        "tx_packets": 1,
        "rx_errors": 0,
        "tx_errors": 0,
        "rx_dropped": 0,
        "tx_dropped": 0,
    }
    assert doc["elapsed_s"] == 0.0123
