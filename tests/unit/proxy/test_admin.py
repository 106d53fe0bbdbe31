"""The admin endpoint: /status and /metrics of one worker, and of several added up."""

from __future__ import annotations

import asyncio
import json
import random
from typing import Any, cast

import aiohttp
from prometheus_client import CollectorRegistry, generate_latest

from dockmesh.proxy.admin import (
    ProxyCollector,
    merge_metrics,
    merge_status,
    serve_admin,
    serve_summed_admin,
    status_document,
)
from dockmesh.proxy.cluster import Cluster
from dockmesh.proxy.tally import Tally
from dockmesh.testing.clock import ManualClock

STATUS_KEYS = {
    "address", "healthy", "ejected", "breaker", "in_flight", "requests", "failures",
    "cluster", "weight",
}  # fmt: skip


def setup() -> tuple[Tally, Cluster[Any]]:
    c: Cluster[Any] = Cluster("web", "round_robin", clock=ManualClock(), rng=random.Random(0))
    c.set_members({"10.0.0.1:80": 1, "10.0.0.2:80": 3})
    a = c.upstreams["10.0.0.1:80"]
    a.requests, a.failures, a.in_flight = 7, 2, 1
    c.set_healthy(c.upstreams["10.0.0.2:80"], False)
    t = Tally()
    t.observe(200, 0.002)
    t.observe(503, 0.2)
    t.retried("connect")
    t.reject("no_upstream")
    t.connections = 3
    return t, c


def test_status_document() -> None:
    _, c = setup()
    doc = status_document([c])
    upstreams = cast(list[dict[str, Any]], doc["upstreams"])
    assert [u["address"] for u in upstreams] == ["10.0.0.1:80", "10.0.0.2:80"]
    first, second = upstreams
    assert set(first) == STATUS_KEYS
    assert first["requests"] == 7 and first["failures"] == 2 and first["in_flight"] == 1
    assert first["breaker"] == "closed" and not first["ejected"] and first["healthy"]
    assert not second["healthy"] and second["weight"] == 3 and second["cluster"] == "web"


def test_metrics_names_and_values() -> None:
    t, c = setup()
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ProxyCollector(t, [c]))
    text = generate_latest(registry).decode()
    for line in (
        'dockmesh_proxy_requests_total{code="200"} 1.0',
        'dockmesh_proxy_requests_total{code="503"} 1.0',
        'dockmesh_proxy_request_duration_seconds_bucket{le="0.0025"} 1.0',
        'dockmesh_proxy_request_duration_seconds_bucket{le="+Inf"} 2.0',
        'dockmesh_proxy_retries_total{reason="connect"} 1.0',
        'dockmesh_proxy_rejected_total{reason="no_upstream"} 1.0',
        "dockmesh_proxy_client_connections 3.0",
        'dockmesh_proxy_upstream_healthy{cluster="web",upstream="10.0.0.2:80"} 0.0',
        'dockmesh_proxy_upstream_requests_total{cluster="web",upstream="10.0.0.1:80"} 7.0',
        'dockmesh_proxy_upstream_failures_total{cluster="web",upstream="10.0.0.1:80"} 2.0',
        'dockmesh_proxy_breaker_state{cluster="web",state="closed",upstream="10.0.0.1:80"} 1.0',
        'dockmesh_proxy_ejections_total{cluster="web"} 0.0',
    ):
        assert line in text, line


def test_several_workers_add_up() -> None:
    one = {"address": "a:1", "cluster": "c", "healthy": True, "ejected": False,
           "breaker": "half_open", "in_flight": 1, "requests": 5, "failures": 1, "weight": 1}  # fmt: skip
    two = {**one, "healthy": False, "breaker": "closed", "requests": 2, "failures": 0}
    other = {**one, "address": "b:1"}
    merged = merge_status([{"upstreams": [one, other]}, {"upstreams": [two]}])
    a, b = merged["upstreams"]
    assert a["healthy"] is False and a["breaker"] == "half_open"
    assert (a["requests"], a["failures"], a["in_flight"]) == (7, 1, 2) and b == other
    texts = [
        '# HELP x_total X\n# TYPE x_total counter\nx_total{code="200"} 2.0\n',
        '# HELP x_total X\n# TYPE x_total counter\nx_total{code="200"} 3.0\n'
        'x_total{code="5\\"0\\"3"} 1.0\n',
    ]
    summed = merge_metrics(texts)
    assert 'x_total{code="200"} 5.0' in summed and 'x_total{code="5\\"0\\"3"} 1.0' in summed
    assert summed.startswith("# HELP x X\n# TYPE x counter\n")


def test_the_servers_answer_on_loopback() -> None:
    async def run() -> None:
        t, c = setup()
        workers = [await serve_admin(("127.0.0.1", 0), t, [c]) for _ in range(2)]
        parent, port = await serve_summed_admin(
            ("127.0.0.1", 0), {i: p for i, (_, p) in enumerate(workers)}
        )
        try:
            async with aiohttp.ClientSession() as s:
                async with s.get(f"http://127.0.0.1:{workers[0][1]}/status") as r:
                    assert json.loads(await r.read()) == json.loads(
                        json.dumps(status_document([c]))
                    )
                async with s.get(f"http://127.0.0.1:{port}/status") as r:
                    doc = await r.json()
                    assert doc["upstreams"][0]["requests"] == 14
                async with s.get(f"http://127.0.0.1:{port}/metrics") as r:
                    assert 'dockmesh_proxy_requests_total{code="200"} 2.0' in await r.text()
        finally:
            for runner, _ in [*workers, (parent, port)]:
                await runner.cleanup()

    asyncio.run(run())


def test_several_workers_metrics_merge_states_as_status_does() -> None:
    """Counts add up; an upstream is healthy only if every worker finds it so, ejected if any
    has ejected it, and its breaker shows the worst state any worker's is in — one-hot, as
    one worker's would be (summed, two healthy workers made `healthy` 2 and a half-open
    breaker showed closed 1 and half_open 1)."""

    def worker(healthy: int, ejected: int, state: str, in_flight: int) -> str:
        lv = 'cluster="web",upstream="10.0.0.1:80"'
        lines = [
            "# HELP dockmesh_proxy_upstream_healthy h\n# TYPE dockmesh_proxy_upstream_healthy gauge",
            f"dockmesh_proxy_upstream_healthy{{{lv}}} {healthy}.0",
            "# HELP dockmesh_proxy_upstream_ejected e\n# TYPE dockmesh_proxy_upstream_ejected gauge",
            f"dockmesh_proxy_upstream_ejected{{{lv}}} {ejected}.0",
            "# HELP dockmesh_proxy_upstream_in_flight f\n# TYPE dockmesh_proxy_upstream_in_flight gauge",
            f"dockmesh_proxy_upstream_in_flight{{{lv}}} {in_flight}.0",
            "# HELP dockmesh_proxy_breaker_state b\n# TYPE dockmesh_proxy_breaker_state gauge",
        ]
        for st_ in ("closed", "open", "half_open"):
            on = 1 if st_ == state else 0
            lines.append(f'dockmesh_proxy_breaker_state{{{lv},state="{st_}"}} {on}.0')
        return "\n".join(lines) + "\n"

    lv = 'cluster="web",upstream="10.0.0.1:80"'

    def bl(state: str) -> str:  # the breaker's labels, sorted as the merge writes them
        return f'cluster="web",state="{state}",upstream="10.0.0.1:80"'

    both_fine = merge_metrics([worker(1, 0, "closed", 2), worker(1, 0, "closed", 3)])
    assert f"dockmesh_proxy_upstream_healthy{{{lv}}} 1.0" in both_fine
    assert f"dockmesh_proxy_upstream_in_flight{{{lv}}} 5.0" in both_fine
    assert f"dockmesh_proxy_breaker_state{{{bl('closed')}}} 1.0" in both_fine
    mixed = merge_metrics([worker(1, 0, "closed", 0), worker(0, 1, "half_open", 0)])
    assert f"dockmesh_proxy_upstream_healthy{{{lv}}} 0.0" in mixed
    assert f"dockmesh_proxy_upstream_ejected{{{lv}}} 1.0" in mixed
    assert f"dockmesh_proxy_breaker_state{{{bl('half_open')}}} 1.0" in mixed
    assert f"dockmesh_proxy_breaker_state{{{bl('closed')}}} 0.0" in mixed
    assert f"dockmesh_proxy_breaker_state{{{bl('open')}}} 0.0" in mixed
