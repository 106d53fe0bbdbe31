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
    @property
    def refused(self) -> dict[tuple[str, str], int]: ...


class DnsCollector:
    """`dockmesh_dns_*`: responses by rcode, truncated UDP responses, packets dropped
    unanswered, open TCP connections, clients refused or closed by a limit (by transport and
    reason, every pair there from the start so that a rate of them can be graphed at once)."""

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
        refused = CounterMetricFamily(
            "dockmesh_dns_refused",
            "DNS clients refused or closed by a per-client limit: TCP connections over the "
            "per-source cap (tcp_per_source) or the total (tcp_total), idle too long (idle), too "
            "slow to send a query or read its answer (slow); UDP queries over a source's rate "
            "(udp_rate, dropped unanswered).",
            labels=["transport", "reason"],
        )
        for (transport, reason), n in sorted(stats.refused.items()):
            refused.add_metric([transport, reason], n)
        yield refused
