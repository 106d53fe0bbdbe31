"""Container network counters as Prometheus metrics (dockmesh.observe.metrics), read at scrape
time from this test's own process standing in for a container: cAdvisor's names, dockmesh's
labels, the counters as /proc shows them, and nothing but the timing gauge without a
topology."""

from __future__ import annotations

import os
from dataclasses import replace

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from dockmesh.codecs.procnet import IfaceCounters, parse_net_dev
from dockmesh.model.topology import Topology
from dockmesh.observe.metrics import ContainerNetworkCollector
from tests.unit.topos import container, network, topology


def scrape(topo: Topology | None) -> dict[str, list[tuple[dict[str, str], float]]]:
    registry = CollectorRegistry()
    # This test's own process stands in for the container (no cgroup names it).
    registry.register(ContainerNetworkCollector(lambda: topo, lambda pid, cid: True))
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for s in family.samples:
            out.setdefault(s.name, []).append((s.labels, s.value))
    return out


def own_interfaces() -> dict[str, IfaceCounters]:
    with open(f"/proc/{os.getpid()}/net/dev") as f:
        return {c.name: c for c in parse_net_dev(f.read()) if c.name != "lo"}


def test_every_interface_of_every_readable_container() -> None:
    me = replace(container("web", {"front": "10.0.0.2"}), pid=os.getpid())
    before = own_interfaces()
    got = scrape(topology([network("front", "10.0.0.0/24")], [me]))
    after = own_interfaces()
    received = got["container_network_receive_bytes_total"]
    scraped = {labels["interface"] for labels, _ in received}
    # Other tests' containers add and remove interfaces on this host meanwhile.
    assert set(before) & set(after) <= scraped <= set(before) | set(after)
    assert all(labels["container"] == "web" for labels, _ in received)
    # Counters only grow between the read before and the scrape.
    assert all(
        v >= before[i].rx_bytes for labels, v in received if (i := labels["interface"]) in before
    )
    names = {n.removesuffix("_total") for n in got if n.startswith("container_network_")}
    assert names == {
        f"container_network_{d}_{what}"
        for d in ("receive", "transmit")
        for what in ("bytes", "packets", "errors", "packets_dropped")
    }
    ((_, seconds),) = got["dockmesh_network_counters_read_seconds"]
    assert seconds >= 0


def test_without_a_topology_only_the_empty_families() -> None:
    got = scrape(None)
    assert not any(n.startswith("container_network_") for n in got)
    assert "dockmesh_network_counters_read_seconds" not in got
