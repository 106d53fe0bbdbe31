"""The API's Prometheus metrics (dockmesh.api.metrics): catalog gauges read at scrape time
(every status and source listed, zeros included), requests by route pattern with unknown
methods folded into one label, blocking queries counted apart from latency, and the format
the scraper asks for. (Through the HTTP app: tests/unit/api/test_app.py.)"""

from __future__ import annotations

from dataclasses import replace

from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from dockmesh.api.metrics import ApiMetrics
from dockmesh.catalog.state import Catalog
from dockmesh.model.catalog import CheckSpec, Instance


def samples(metrics: ApiMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    body, _ = metrics.exposition("text/plain")
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
    }


def test_the_catalog_as_it_is_when_scraped() -> None:
    catalog = Catalog()
    metrics = ApiMetrics(CollectorRegistry(), lambda: catalog)
    got = samples(metrics)
    assert got[("dockmesh_catalog_services", ())] == 0
    assert {
        got[("dockmesh_catalog_checks", (("status", s),))]
        for s in ("passing", "warning", "critical", "maintenance")
    } == {0}
    catalog.register(
        Instance("a", "api", "10.0.0.2", 80),
        [CheckSpec("c", "c", "ttl", service_id="a", ttl_s=9)],
        0,
    )
    catalog.register(Instance("b", "web", "10.0.0.3", 80, source="container"), [], 0)
    catalog.kv_put("k", b"v")
    got = samples(metrics)
    assert got[("dockmesh_catalog_services", ())] == 2
    assert got[("dockmesh_catalog_instances", (("source", "api"),))] == 1
    assert got[("dockmesh_catalog_instances", (("source", "container"),))] == 1
    assert got[("dockmesh_catalog_checks", (("status", "critical"),))] == 1
    assert got[("dockmesh_kv_keys", ())] == 1
    assert got[("dockmesh_catalog_index", ())] == catalog.index


def test_requests_by_route_and_method_blocking_queries_apart() -> None:
    metrics = ApiMetrics(CollectorRegistry(), Catalog)
    metrics.observe("/v1/kv/{key}", "GET", 200, 0.002, blocking=False)
    metrics.observe("/v1/kv/{key}", "BREW", 405, 0.001, blocking=False)
    metrics.observe("/v1/health/service/{name}", "GET", 200, 300.0, blocking=True)
    got = samples(metrics)
    route = ("route", "/v1/kv/{key}")
    assert got[("dockmesh_api_requests_total", (("code", "200"), ("method", "GET"), route))] == 1
    assert got[("dockmesh_api_requests_total", (("code", "405"), ("method", "other"), route))] == 1
    health = ("route", "/v1/health/service/{name}")
    assert got[("dockmesh_api_blocking_queries_total", (health,))] == 1
    # The blocking query's five minutes are not a request's latency.
    latency = {
        k: v for k, v in got.items() if k[0] == "dockmesh_api_request_duration_seconds_count"
    }
    assert latency == {
        ("dockmesh_api_request_duration_seconds_count", (("method", "GET"), route)): 1,
        ("dockmesh_api_request_duration_seconds_count", (("method", "other"), route)): 1,
    }


def test_the_format_the_scraper_asks_for() -> None:
    metrics = ApiMetrics(CollectorRegistry(), Catalog)
    text, plain = metrics.exposition("text/plain")
    om, openmetrics = metrics.exposition("application/openmetrics-text; version=1.0.0")
    assert plain.startswith("text/plain") and openmetrics.startswith("application/openmetrics-text")
    assert om.rstrip().endswith(b"# EOF") and not text.rstrip().endswith(b"# EOF")


def test_name_collisions_and_refused_containers_are_counted() -> None:
    catalog = Catalog()
    metrics = ApiMetrics(CollectorRegistry(), lambda: catalog)
    for iid, project in (("a1", "a"), ("b1", "b"), ("w", "a")):
        service = "web" if iid == "w" else "api"
        catalog.register(Instance(iid, service, "10.0.0.2", 80, meta={"project": project}), [], 0)
    container = Instance("a1", "api", "10.0.0.9", 80, source="container", engine="e")
    catalog.register(Instance("m", "m", "10.0.0.3", 80), [], 0)
    catalog.sync_containers("e", [(replace(container, id="m"), [])], 1)
    got = samples(metrics)
    assert got[("dockmesh_service_name_collisions", ())] == 1
    assert got[("dockmesh_catalog_refused_containers", ())] == 1
