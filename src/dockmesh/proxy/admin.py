"""The admin endpoint: `/status` (JSON, the shape docs/http-api.md gives) and `/metrics`
(Prometheus) of one worker, read from its tally and its clusters when asked; and, with several
workers, the parent's endpoint that asks every worker and adds their answers up: counters are
summed; an upstream is healthy only if every worker finds it so, ejected if any has ejected it,
and its breaker shows the worst state any worker has.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from dockmesh.proxy.cluster import Cluster
from dockmesh.proxy.tally import LATENCY_BUCKETS, Tally

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

BREAKER_STATES = ("closed", "open", "half_open")
_BREAKER_RANK = {"closed": 0, "half_open": 1, "open": 2}


class ProxyCollector(Collector):
    """One worker's tally and clusters as Prometheus metrics, read when scraped."""

    def __init__(self, tally: Tally, clusters: Sequence[Cluster[Any]]) -> None:
        self.tally = tally
        self.clusters = clusters  # live: a reload changes it in place

    def collect(self) -> Iterator[Metric]:
        s = self.tally
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
        if s.access_log:
            lines = CounterMetricFamily(
                "dockmesh_proxy_access_log_lines",
                "Access log lines: written, dropped (the buffer was full or the write failed), "
                "sampled_out (--access-log-sample)",
                labels=["outcome"],
            )
            for outcome, n in sorted(s.access_log.items()):
                lines.add_metric([outcome], n)
            yield lines
        yield GaugeMetricFamily(
            "dockmesh_proxy_client_connections", "Client connections open", value=s.connections
        )
        closed = CounterMetricFamily(
            "dockmesh_proxy_client_closed",
            "Client connections the proxy closed to protect the others, by reason",
            labels=["reason"],
        )
        for reason, n in sorted(s.closed.items()):
            closed.add_metric([reason], n)
        yield closed
        yield GaugeMetricFamily(
            "dockmesh_proxy_buffered_bytes",
            "Bytes held for clients (sent ahead, bodies, responses not taken yet)",
            value=s.buffered_bytes,
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


def cluster_settings(c: Cluster[Any]) -> dict[str, Any]:
    """A cluster's resilience settings, as /status shows them."""
    b, o, r = c.breaker_policy, c.outlier.policy, c.retry
    return {
        "name": c.name,
        "breaker": {
            "failures": b.consecutive_failures,
            "failure_ratio": b.failure_ratio,
            "window_s": b.window_s,
            "min_requests": b.min_requests,
            "open_for_s": b.open_base_s,
            "backoff": b.open_multiplier,
            "open_max_s": b.open_max_s,
            "probes": b.half_open_probes,
            "close_after": b.close_after,
        },
        "outlier": {
            "failures": o.consecutive_5xx,
            "gateway_failures": o.consecutive_gateway_failures,
            "eject_for_s": o.base_ejection_s,
            "eject_max_s": o.max_ejection_s,
            "max_ejection_percent": o.max_ejection_percent,
        },
        "retry": {
            "attempts": r.attempts,
            "on": sorted(map(str, r.on)),
            "budget": r.budget_ratio,
            "min_per_s": r.min_per_s,
        },
    }


def status_document(clusters: Iterable[Cluster[Any]]) -> dict[str, object]:
    """The /status shape of docs/http-api.md (plus `cluster` and `weight` per upstream, and the
    clusters' resilience settings under `clusters`)."""
    upstreams = []
    clusters = list(clusters)
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
    return {"upstreams": upstreams, "clusters": [cluster_settings(c) for c in clusters]}


def merge_status(docs: list[dict[str, Any]]) -> dict[str, Any]:
    """Several workers' /status documents as one."""
    merged: dict[tuple[str, str], dict[str, Any]] = {}
    for doc in docs:
        for u in doc.get("upstreams", []):
            key = (u.get("cluster", ""), u["address"])
            m = merged.get(key)
            if m is None:
                merged[key] = dict(u)
                continue
            m["healthy"] = m["healthy"] and u["healthy"]
            m["ejected"] = m["ejected"] or u["ejected"]
            if _BREAKER_RANK[u["breaker"]] > _BREAKER_RANK[m["breaker"]]:
                m["breaker"] = u["breaker"]
            for k in ("in_flight", "requests", "failures"):
                m[k] += u[k]
    # Every worker has the same settings: the first's say it.
    settings: dict[str, Any] = {}
    for doc in docs:
        for c in doc.get("clusters", []):
            settings.setdefault(c["name"], c)
    out: dict[str, Any] = {"upstreams": list(merged.values()), "clusters": list(settings.values())}
    # Every worker builds the same table from the same catalog: any one's is the table.
    label_routes = next((d["label_routes"] for d in docs if "label_routes" in d), None)
    if label_routes is not None:
        out["label_routes"] = label_routes
    return out


# Gauges that say a state, merged as /status merges it (`merge_status`); every other sample
# (counters, histograms, gauges of counts such as connections and in-flight requests) is the
# sum over the workers.
_HEALTHY = "dockmesh_proxy_upstream_healthy"  # healthy only if every worker finds it so
_EJECTED = "dockmesh_proxy_upstream_ejected"  # ejected if any worker has ejected it
_BREAKER = "dockmesh_proxy_breaker_state"  # the worst state any worker's breaker is in


def merge_metrics(texts: list[str]) -> str:
    """Several workers' /metrics as one: counts summed, states merged as in `merge_status`."""
    from prometheus_client.parser import text_string_to_metric_families

    order: list[str] = []
    families: dict[str, tuple[str, str]] = {}
    samples: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
    worst: dict[tuple[tuple[str, str], ...], int] = {}  # breaker: labels but state → rank
    for text in texts:
        for fam in text_string_to_metric_families(text):
            if fam.name not in families:
                families[fam.name] = (fam.type, fam.documentation)
                order.append(fam.name)
                samples[fam.name] = {}
            acc = samples[fam.name]
            for s in fam.samples:
                labels = tuple(sorted(s.labels.items()))
                k = (s.name, labels)
                known = acc.get(k)
                if fam.name == _BREAKER:
                    acc.setdefault(k, 0.0)
                    rank = _BREAKER_RANK.get(s.labels.get("state", ""))
                    if s.value and rank is not None:
                        upstream = tuple(kv for kv in labels if kv[0] != "state")
                        worst[upstream] = max(worst.get(upstream, 0), rank)
                elif known is None:
                    acc[k] = s.value
                elif fam.name == _HEALTHY:
                    acc[k] = min(known, s.value)
                elif fam.name == _EJECTED:
                    acc[k] = max(known, s.value)
                else:
                    acc[k] = known + s.value
    for sname, labels in samples.get(_BREAKER, {}):
        upstream = tuple(kv for kv in labels if kv[0] != "state")
        state = dict(labels).get("state", "")
        hit = upstream in worst and _BREAKER_RANK.get(state) == worst[upstream]
        samples[_BREAKER][(sname, labels)] = 1.0 if hit else 0.0
    lines = []
    for name in order:
        kind, doc = families[name]
        lines.append(f"# HELP {name} {doc}")
        lines.append(f"# TYPE {name} {kind}")
        for (sname, labels), value in samples[name].items():
            lab = ",".join(f'{k}="{_escape(v)}"' for k, v in labels)
            lines.append(f"{sname}{{{lab}}} {value!r}" if lab else f"{sname} {value!r}")
    return "\n".join(lines) + "\n"


def _escape(v: str) -> str:
    return v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


# --- the servers ----------------------------------------------------------------------------


async def serve_admin(
    bind: tuple[str, int],
    tally: Tally,
    clusters: Sequence[Cluster[Any]],
    routes: Callable[[], dict[str, Any]] | None = None,
) -> tuple[Any, int]:
    """One worker's endpoint; (its runner, to clean up, and the port it got). `clusters` is
    read at each request: a reload changes it in place. `routes`: the routes the containers
    declare, with their problems (`/status`'s `label_routes`)."""
    from aiohttp import web
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

    registry = CollectorRegistry(auto_describe=False)
    registry.register(ProxyCollector(tally, clusters))

    async def status(request: web.Request) -> web.Response:
        doc = status_document(clusters)
        if routes is not None:
            doc["label_routes"] = routes()
        return web.json_response(doc)

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    return await _admin_app(bind, status, metrics)


async def serve_summed_admin(bind: tuple[str, int], ports: Mapping[int, int]) -> tuple[Any, int]:
    """The parent's endpoint over its workers' (worker number → its admin port, as they
    come and go)."""
    import aiohttp
    from aiohttp import web

    async def gather(path: str) -> list[bytes]:
        timeout = aiohttp.ClientTimeout(total=2)
        async with aiohttp.ClientSession(timeout=timeout) as session:

            async def one(port: int) -> bytes | None:
                try:
                    async with session.get(f"http://127.0.0.1:{port}{path}") as r:
                        return await r.read()
                except (aiohttp.ClientError, TimeoutError):
                    return None

            got = await asyncio.gather(*(one(p) for p in list(ports.values())))
        return [g for g in got if g is not None]

    async def status(request: web.Request) -> web.Response:
        docs = [json.loads(b) for b in await gather("/status")]
        return web.json_response(merge_status(docs))

    async def metrics(request: web.Request) -> web.Response:
        texts = [b.decode() for b in await gather("/metrics")]
        return web.Response(text=merge_metrics(texts), content_type="text/plain", charset="utf-8")

    return await _admin_app(bind, status, metrics)


async def _admin_app(
    bind: tuple[str, int],
    status: Callable[[Any], Awaitable[Any]],
    metrics: Callable[[Any], Awaitable[Any]],
) -> tuple[Any, int]:
    from aiohttp import web

    app = web.Application()
    app.router.add_get("/status", status)
    app.router.add_get("/metrics", metrics)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, bind[0], bind[1], reuse_address=True)
    await site.start()
    port = bind[1]
    for address in runner.addresses:  # the port the kernel chose when asked for 0
        port = int(address[1])
        break
    return runner, port
