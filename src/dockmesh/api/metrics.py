"""Prometheus metrics of the API and of the catalog it serves.

Catalog sizes are read when Prometheus scrapes (a collector), never counted along the way:
they cannot drift from the catalog. Requests are counted by route *pattern*
(`/v1/health/service/{name}`), never by raw path, so the number of series stays bounded
whatever clients ask for.

The registry is passed in so the agent's other parts (DNS, health checks) expose theirs on
the same `/metrics`.
"""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Callable, Iterator, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from dockmesh import __version__
from dockmesh.catalog.state import Catalog
from dockmesh.model.liveness import EngineLink

Registry = CollectorRegistry

_METHODS = frozenset({"GET", "PUT", "POST", "DELETE", "HEAD", "OPTIONS", "PATCH"})
_STATUSES = ("passing", "warning", "critical", "maintenance")
# Ordinary reads take microseconds to milliseconds; blocking queries are counted apart.
_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class CatalogCollector(Collector):
    """dockmesh_catalog_* gauges, computed from the catalog at scrape time."""

    def __init__(self, catalog: Callable[[], Catalog]) -> None:
        self._catalog = catalog

    def collect(self) -> Iterator[GaugeMetricFamily]:
        cat = self._catalog()
        services = GaugeMetricFamily("dockmesh_catalog_services", "Services in the catalog.")
        services.add_metric([], len(cat.services()))
        yield services

        instances = GaugeMetricFamily(
            "dockmesh_catalog_instances",
            "Service instances in the catalog, by where they come from.",
            labels=["source"],
        )
        by_source = Tally[str](i.source for i in cat.instances())
        for source in ("api", "container"):
            instances.add_metric([source], by_source.get(source, 0))
        yield instances

        checks = GaugeMetricFamily(
            "dockmesh_catalog_checks", "Health checks in the catalog, by status.", labels=["status"]
        )
        by_status = Tally[str](c.status for c in cat.checks())
        for status in _STATUSES:
            checks.add_metric([status], by_status.get(status, 0))
        yield checks

        kv = GaugeMetricFamily("dockmesh_kv_keys", "Keys in the KV store.")
        kv.add_metric([], len(cat.kv_keys("")))
        yield kv

        collisions = GaugeMetricFamily(
            "dockmesh_service_name_collisions",
            "Short service names two or more projects have (answered for neither, or for the "
            "one that claims it; each project's by <service>.<project>).",
        )
        collisions.add_metric([], len(cat.collisions()))
        yield collisions

        refused = GaugeMetricFamily(
            "dockmesh_catalog_refused_containers",
            "Containers not registered because a registration through the API holds their ID.",
        )
        refused.add_metric([], len(cat.refusals()))
        yield refused

        index = GaugeMetricFamily("dockmesh_catalog_index", "The catalog's current index.")
        index.add_metric([], cat.index)
        yield index


class EngineCollector(Collector):
    """dockmesh_engine_* gauges: whether the agent follows each engine's events now, and how
    long its topology has not been known to match the engine (0 while it follows); and how
    many containers' processes the agent follows itself."""

    def __init__(
        self, links: Callable[[], Sequence[EngineLink]], followed: Callable[[], int] | None = None
    ) -> None:
        self._links = links
        self._followed = followed

    def collect(self) -> Iterator[GaugeMetricFamily]:
        links = self._links()
        connected = GaugeMetricFamily(
            "dockmesh_engine_connected",
            "1 while the agent follows the engine's event stream, else 0.",
            labels=["engine"],
        )
        age = GaugeMetricFamily(
            "dockmesh_engine_last_sync_age_seconds",
            "Seconds since the topology was last known to match the engine (0 while connected).",
            labels=["engine"],
        )
        for link in links:
            connected.add_metric([link.engine], 1.0 if link.connected else 0.0)
            age.add_metric([link.engine], link.sync_age_s)
        yield connected
        yield age
        if self._followed is not None:
            followed = GaugeMetricFamily(
                "dockmesh_followed_processes",
                "Containers' processes the agent follows itself (pidfd or /proc).",
            )
            followed.add_metric([], self._followed())
            yield followed


class ApiMetrics:
    """Request counters and latency, registered once in `registry`."""

    def __init__(self, registry: CollectorRegistry, catalog: Callable[[], Catalog]) -> None:
        self.registry = registry
        self.requests = Counter(
            "dockmesh_api_requests",
            "HTTP API requests, by route pattern, method and status code.",
            ["route", "method", "code"],
            registry=registry,
        )
        self.latency = Histogram(
            "dockmesh_api_request_duration_seconds",
            "Time to answer an HTTP API request that is not a blocking query.",
            ["route", "method"],
            buckets=_BUCKETS,
            registry=registry,
        )
        self.blocking = Counter(
            "dockmesh_api_blocking_queries",
            "Blocking queries (?index=) answered, by route pattern.",
            ["route"],
            registry=registry,
        )
        registry.register(CatalogCollector(catalog))
        # The running version, as exporters do: `dockmesh_build_info{version="0.1.0"} 1`.
        Gauge(
            "dockmesh_build_info", "The dockmesh version serving.", ["version"], registry=registry
        ).labels(__version__).set(1)

    def observe(self, route: str, method: str, code: int, seconds: float, blocking: bool) -> None:
        method = method if method in _METHODS else "other"
        self.requests.labels(route, method, str(code)).inc()
        if blocking:
            self.blocking.labels(route).inc()
        else:
            self.latency.labels(route, method).observe(seconds)

    def exposition(self, accept: str) -> tuple[bytes, str]:
        """The registry in the text format the scraper asked for, and its content type."""
        encoder, content_type = choose_encoder(accept)
        return encoder(self.registry), content_type
