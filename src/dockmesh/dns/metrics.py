"""The DNS server's counters as Prometheus metrics, read when Prometheus scrapes: the server
counts in plain numbers (`DnsStats`) on its hot path and this collector turns them into
metric families only then."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Protocol

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric


class DnsCounts(Protocol):
    """What the collector reads (`dockmesh.dns.server.DnsStats` has it)."""

    @property
    def queries(self) -> dict[str, int]: ...
    @property
    def truncated(self) -> int: ...
    @property
    def dropped(self) -> int: ...
    @property
    def tcp_connections(self) -> int: ...


class DnsCollector:
    """`dockmesh_dns_*`: responses by rcode, truncated UDP responses, packets dropped
    unanswered, open TCP connections."""

    def __init__(self, stats: DnsCounts) -> None:
        self._stats = stats

    def collect(self) -> Iterator[Metric]:
        stats = self._stats
        queries = CounterMetricFamily(
            "dockmesh_dns_queries", "DNS responses by response code.", labels=["rcode"]
        )
        for rcode, n in sorted(stats.queries.items()):
            queries.add_metric([rcode], n)
        yield queries
        yield CounterMetricFamily(
            "dockmesh_dns_truncated", "UDP responses sent truncated (TC).", value=stats.truncated
        )
        yield CounterMetricFamily(
            "dockmesh_dns_dropped", "Packets left unanswered (unreadable).", value=stats.dropped
        )
        yield GaugeMetricFamily(
            "dockmesh_dns_tcp_connections", "Open DNS TCP connections.", value=stats.tcp_connections
        )
