"""The DNS collector reads the server's counters at scrape time, as Prometheus text."""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, generate_latest

from dockmesh.dns.metrics import DnsCollector


@dataclass
class Counts:
    queries: dict[str, int] = field(default_factory=dict)
    truncated: int = 0
    dropped: int = 0
    tcp_connections: int = 0
    refused: dict[tuple[str, str], int] = field(default_factory=dict)


def test_the_counters_are_read_when_scraped() -> None:
    counts = Counts()
    registry = CollectorRegistry()
    registry.register(DnsCollector(counts))
    counts.queries.update(NOERROR=7, NXDOMAIN=2)
    counts.truncated, counts.dropped, counts.tcp_connections = 3, 1, 4
    text = generate_latest(registry).decode()
    assert 'dockmesh_dns_queries_total{rcode="NOERROR"} 7.0' in text
    assert 'dockmesh_dns_queries_total{rcode="NXDOMAIN"} 2.0' in text
    assert "dockmesh_dns_truncated_total 3.0" in text
    assert "dockmesh_dns_dropped_total 1.0" in text
    assert "dockmesh_dns_tcp_connections 4.0" in text
    counts.queries["NOERROR"] = 9
    assert 'dockmesh_dns_queries_total{rcode="NOERROR"} 9.0' in generate_latest(registry).decode()


def test_refused_clients_are_counted_by_transport_and_reason() -> None:
    counts = Counts(
        refused={("tcp", "tcp_per_source"): 5, ("tcp", "idle"): 0, ("udp", "udp_rate"): 9}
    )
    registry = CollectorRegistry()
    registry.register(DnsCollector(counts))
    text = generate_latest(registry).decode()
    assert 'dockmesh_dns_refused_total{reason="tcp_per_source",transport="tcp"} 5.0' in text
    assert 'dockmesh_dns_refused_total{reason="idle",transport="tcp"} 0.0' in text
    assert 'dockmesh_dns_refused_total{reason="udp_rate",transport="udp"} 9.0' in text
