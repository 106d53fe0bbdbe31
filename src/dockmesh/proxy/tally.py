"""The proxy's counters, kept as plain Python numbers on the request path and turned into
Prometheus metrics only when /metrics is scraped: prometheus-client's own Counter and Histogram
take a lock per update, which on the request path would cost more than the rest of a
request's bookkeeping together."""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

    from dockmesh.proxy.cluster import Cluster

LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip


class Stats:
    def __init__(self) -> None:
        self.responses: dict[int, int] = {}
        self.latency_counts = [0] * (len(LATENCY_BUCKETS) + 1)
        self.latency_sum = 0.0
        self.retries: dict[str, int] = {}
        self.rejected: dict[str, int] = {}  # requests refused before any upstream (400, 503…)
        self.connections = 0
        self.connections_total = 0

    def observe(self, status: int, latency_s: float) -> None:
        self.responses[status] = self.responses.get(status, 0) + 1
        self.latency_counts[bisect.bisect_left(LATENCY_BUCKETS, latency_s)] += 1
        self.latency_sum += latency_s

    def responded(self, status: int) -> None:
        """A response of the proxy's own outside any timed exchange (a refusal)."""
        self.responses[status] = self.responses.get(status, 0) + 1

    def retried(self, reason: str) -> None:
        self.retries[reason] = self.retries.get(reason, 0) + 1

    def reject(self, reason: str) -> None:
        self.rejected[reason] = self.rejected.get(reason, 0) + 1


BREAKER_STATES = ("closed", "open", "half_open")


class ProxyCollector(Collector):
    def __init__(self, stats: Stats, clusters: Iterable[Cluster]) -> None:
        self.stats = stats
        self.clusters = list(clusters)

    def collect(self) -> Iterator[Metric]:
        s = self.stats
        requests = CounterMetricFamily(
            "dockmesh_proxy_requests", "Responses sent to clients, by status", labels=["code"]
        )
        for code, n in sorted(s.responses.items()):
            requests.add_metric([str(code)], n)
        yield requests
        buckets = []
        acc = 0
        for bound, n in zip((*LATENCY_BUCKETS, float("inf")), s.latency_counts, strict=True):
            acc += n
            buckets.append((_le(bound), acc))
        yield HistogramMetricFamily(
            "dockmesh_proxy_request_duration_seconds",
            "Time from a request's head to the end of its response",
            buckets=buckets,
            sum_value=s.latency_sum,
        )
        retries = CounterMetricFamily(
            "dockmesh_proxy_retries", "Requests tried again, by reason", labels=["reason"]
        )
        for reason, n in sorted(s.retries.items()):
            retries.add_metric([reason], n)
        yield retries
        rejected = CounterMetricFamily(
            "dockmesh_proxy_rejected", "Requests answered by the proxy itself", labels=["reason"]
        )
        for reason, n in sorted(s.rejected.items()):
            rejected.add_metric([reason], n)
        yield rejected
        yield GaugeMetricFamily(
            "dockmesh_proxy_client_connections", "Client connections open", value=s.connections
        )
        up_labels = ["cluster", "upstream"]
        healthy = GaugeMetricFamily(
            "dockmesh_proxy_upstream_healthy",
            "1 when the upstream passes its checks",
            labels=up_labels,
        )
        ejected = GaugeMetricFamily(
            "dockmesh_proxy_upstream_ejected", "1 while the upstream is ejected", labels=up_labels
        )
        in_flight = GaugeMetricFamily(
            "dockmesh_proxy_upstream_in_flight", "Requests in flight", labels=up_labels
        )
        up_requests = CounterMetricFamily(
            "dockmesh_proxy_upstream_requests", "Attempts sent to the upstream", labels=up_labels
        )
        up_failures = CounterMetricFamily(
            "dockmesh_proxy_upstream_failures",
            "Attempts that failed (5xx or no answer)",
            labels=up_labels,
        )
        conns = GaugeMetricFamily(
            "dockmesh_proxy_upstream_connections", "Open connections", labels=up_labels
        )
        breaker = GaugeMetricFamily(
            "dockmesh_proxy_breaker_state",
            "1 for the breaker's current state",
            labels=[*up_labels, "state"],
        )
        ejections = CounterMetricFamily(
            "dockmesh_proxy_ejections", "Outlier ejections", labels=["cluster"]
        )
        for c in self.clusters:
            ejected_now = c.outlier.ejected()
            for addr, u in c.upstreams.items():
                lv = [c.name, addr]
                healthy.add_metric(lv, 1 if u.healthy else 0)
                ejected.add_metric(lv, 1 if addr in ejected_now else 0)
                in_flight.add_metric(lv, u.in_flight)
                up_requests.add_metric(lv, u.requests)
                up_failures.add_metric(lv, u.failures)
                conns.add_metric(lv, u.connections)
                state = u.breaker.state.value
                for st in BREAKER_STATES:
                    breaker.add_metric([*lv, st], 1 if st == state else 0)
            ejections.add_metric([c.name], c.ejections)
        yield from (
            healthy,
            ejected,
            in_flight,
            up_requests,
            up_failures,
            conns,
            breaker,
            ejections,
        )


def _le(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(bound)


def status_document(clusters: Iterable[Cluster]) -> dict[str, object]:
    """INTERFACE.md's /status shape (plus `cluster` and `weight` per upstream)."""
    upstreams = []
    for c in clusters:
        ejected_now = c.outlier.ejected()
        for addr, u in c.upstreams.items():
            upstreams.append(
                {
                    "address": addr,
                    "healthy": u.healthy,
                    "ejected": addr in ejected_now,
                    "breaker": u.breaker.state.value,
                    "in_flight": u.in_flight,
                    "requests": u.requests,
                    "failures": u.failures,
                    "cluster": c.name,
                    "weight": u.weight,
                }
            )
    return {"upstreams": upstreams}
