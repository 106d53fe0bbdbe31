"""The HTTP API against a hand-filled catalog, through aiohttp's test client: Consul's
endpoints, headers and errors, blocking queries, the topology and /metrics.

No timed asserts: a blocking query is shown to wait by a later request completing before it,
and to wake by a change made after that."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

import dockmesh
from dockmesh.api import TopologyFeed, make_app
from dockmesh.catalog.live import LiveCatalog
from dockmesh.model.catalog import CheckSpec, Instance
from dockmesh.model.topology import EngineInfo, EngineState, build_topology

Client = TestClient[web.Request, web.Application]
GUARD_S = 30.0  # a hung test fails instead of hanging; never a measure of speed


class Env:
    def __init__(
        self, app: web.Application, client: Client, live: LiveCatalog, feed: TopologyFeed
    ) -> None:
        self.app, self.client, self.live, self.feed = app, client, live, feed

    async def call(
        self, method: str, path: str, body: Any = None, raw: bytes | None = None
    ) -> tuple[int, Any, dict[str, str]]:
        data = raw if raw is not None else (json.dumps(body) if body is not None else None)
        resp = await self.client.request(method, path, data=data)
        text = await resp.text()
        try:
            parsed: Any = json.loads(text)
        except ValueError:
            parsed = text
        return resp.status, parsed, dict(resp.headers)

    async def get(self, path: str) -> Any:
        status, body, _ = await self.call("GET", path)
        assert status == 200, (path, body)
        return body

    async def index(self, path: str) -> int:
        _, _, headers = await self.call("GET", path)
        return int(headers["X-Consul-Index"])

    async def put(self, path: str, body: Any = None, raw: bytes | None = None) -> Any:
        status, parsed, _ = await self.call("PUT", path, body, raw)
        assert status == 200, (path, parsed)
        return parsed


def run(
    scenario: Callable[[Env], Awaitable[None]], registry: CollectorRegistry | None = None
) -> None:
    async def main() -> None:
        live, feed = LiveCatalog(), TopologyFeed()
        app = make_app(live, feed.current, feed.wait, registry or CollectorRegistry())
        async with TestClient(TestServer(app)) as client:
            await scenario(Env(app, client, live, feed))

    asyncio.run(asyncio.wait_for(main(), GUARD_S))


WEB = {"Name": "web", "ID": "web-1", "Address": "10.0.0.7", "Port": 8080, "Tags": ["v1"]}


# --- registration, TTL checks, health ----------------------------------------------------


def test_register_with_a_ttl_check_pass_it_and_find_it_passing() -> None:
    async def scenario(env: Env) -> None:
        await env.put("/v1/agent/service/register", {**WEB, "Check": {"TTL": "30s"}})
        assert await env.get("/v1/health/service/web?passing") == []
        (row,) = await env.get("/v1/health/service/web")
        assert row["Service"]["ID"] == "web-1"
        assert row["Service"]["Address"] == "10.0.0.7" and row["Service"]["Port"] == 8080
        assert row["Node"]["Node"] == "dockmesh" and row["Node"]["Datacenter"] == "dc1"
        checks = {c["CheckID"]: c for c in row["Checks"]}
        assert checks["service:web-1"]["Status"] == "critical"
        assert checks["serfHealth"]["Status"] == "passing"

        await env.put("/v1/agent/check/pass/service:web-1?note=all+good")
        (row,) = await env.get("/v1/health/service/web?passing")
        check = next(c for c in row["Checks"] if c["CheckID"] == "service:web-1")
        assert (check["Status"], check["Output"], check["Type"]) == ("passing", "all good", "ttl")

        await env.put("/v1/agent/check/warn/service:web-1")
        assert await env.get("/v1/health/service/web?passing=1") == []
        await env.put("/v1/agent/check/update/service:web-1", {"Status": "passing", "Output": "ok"})
        assert len(await env.get("/v1/health/service/web?passing=true")) == 1
        await env.put("/v1/agent/check/fail/service:web-1")
        assert await env.get("/v1/health/service/web?passing") == []

    run(scenario)


def test_a_registered_http_check_is_critical_until_something_observes_it() -> None:
    async def scenario(env: Env) -> None:
        check = {"HTTP": "http://10.0.0.7:8080/health", "Interval": "1s", "Timeout": "1s"}
        await env.put("/v1/agent/service/register", {**WEB, "Check": check})
        (c,) = await env.get("/v1/health/checks/web")
        assert (c["CheckID"], c["Status"], c["Type"]) == ("service:web-1", "critical", "http")
        assert (c["Interval"], c["Timeout"], c["ServiceName"]) == ("1s", "1s", "web")
        agent = await env.get("/v1/agent/checks")
        assert agent["service:web-1"]["Status"] == "critical"
        spec = env.live.catalog.check("service:web-1")
        assert spec is not None and spec.spec.http == check["HTTP"]
        assert await env.get("/v1/health/service/web?passing") == []
        # The agent's health runner is what observes it; here, by hand.
        env.live.observe("service:web-1", "passing", "HTTP GET: 200 OK")
        assert len(await env.get("/v1/health/service/web?passing")) == 1
        # An HTTP check takes no status from outside: Consul's 404.
        status, body, headers = await env.call("PUT", "/v1/agent/check/pass/service:web-1")
        assert status == 404
        assert body == 'CheckID "service:web-1" does not have associated TTL'
        assert "X-Consul-Index" in headers

    run(scenario)


def test_agent_and_catalog_views_and_tag_filters() -> None:
    async def scenario(env: Env) -> None:
        await env.put("/v1/agent/service/register", WEB)
        await env.put(
            "/v1/agent/service/register",
            {"Name": "web", "ID": "web-2", "Port": 8081, "Tags": ["v2", "canary"],
             "Meta": {"zone": "a"}, "Weights": {"Passing": 5, "Warning": 1}},
        )  # fmt: skip
        await env.put("/v1/agent/service/register", {"Name": "db", "Port": 5432})
        assert await env.get("/v1/catalog/services") == {
            "db": [],
            "web": ["canary", "v1", "v2"],
        }
        rows = await env.get("/v1/catalog/service/web?tag=v2&tag=canary")
        assert [r["ServiceID"] for r in rows] == ["web-2"]
        assert rows[0]["ServiceWeights"] == {"Passing": 5, "Warning": 1}
        assert rows[0]["ServiceMeta"] == {"zone": "a"}
        assert rows[0]["Node"] == "dockmesh" and rows[0]["Address"] == "127.0.0.1"
        rows = await env.get("/v1/health/service/web?tag=v1")
        assert [r["Service"]["ID"] for r in rows] == ["web-1"]
        services = await env.get("/v1/agent/services")
        assert set(services) == {"web-1", "web-2", "db"}
        assert services["db"]["Service"] == "db" and services["db"]["Port"] == 5432
        assert (await env.get("/v1/agent/service/web-2"))["Tags"] == ["v2", "canary"]
        assert await env.get("/v1/catalog/service/nothing") == []
        assert await env.get("/v1/health/service/nothing") == []
        assert await env.get("/v1/status/leader") == "127.0.0.1:8300"
        assert await env.get("/v1/catalog/datacenters") == ["dc1"]

    run(scenario)


def test_deregister() -> None:
    async def scenario(env: Env) -> None:
        await env.put("/v1/agent/service/register", {**WEB, "Check": {"TTL": "30s"}})
        await env.put("/v1/agent/service/deregister/web-1")
        assert await env.get("/v1/health/service/web") == []
        assert await env.get("/v1/agent/checks") == {}
        status, body, headers = await env.call("PUT", "/v1/agent/service/deregister/web-1")
        assert status == 404 and "Unknown service ID 'web-1'" in body
        assert headers["X-Consul-KnownLeader"] == "true"

    run(scenario)


def test_reregistering_keeps_checks_unless_told_and_check_ids_stay_with_their_instance() -> None:
    async def scenario(env: Env) -> None:
        await env.put(
            "/v1/agent/service/register",
            {**WEB, "Checks": [{"CheckID": "a", "TTL": "30s"}, {"CheckID": "b", "TTL": "30s"}]},
        )
        await env.put("/v1/agent/check/pass/a")
        await env.put(
            "/v1/agent/service/register", {**WEB, "Checks": [{"CheckID": "a", "TTL": "30s"}]}
        )
        assert set(await env.get("/v1/agent/checks")) == {"a", "b"}
        # An unchanged check keeps its state across a re-registration.
        assert (await env.get("/v1/agent/checks"))["a"]["Status"] == "passing"
        await env.put(
            "/v1/agent/service/register?replace-existing-checks=true",
            {**WEB, "Checks": [{"CheckID": "a", "TTL": "30s"}]},
        )
        assert set(await env.get("/v1/agent/checks")) == {"a"}
        status, body, _ = await env.call(
            "PUT", "/v1/agent/service/register",
            {"Name": "other", "Check": {"CheckID": "a", "TTL": "5s"}},
        )  # fmt: skip
        assert status == 400 and "belongs to service 'web-1'" in body

    run(scenario)


def test_check_register_and_deregister() -> None:
    async def scenario(env: Env) -> None:
        await env.put("/v1/agent/service/register", WEB)
        await env.put(
            "/v1/agent/check/register", {"Name": "mem", "ServiceID": "web-1", "TTL": "9s"}
        )
        assert (await env.get("/v1/health/checks/web"))[0]["CheckID"] == "mem"
        await env.put("/v1/agent/check/deregister/mem")
        assert await env.get("/v1/health/checks/web") == []
        status, body, _ = await env.call("PUT", "/v1/agent/check/deregister/mem")
        assert status == 404
        status, body, _ = await env.call(
            "PUT", "/v1/agent/check/register", {"Name": "x", "ServiceID": "nope", "TTL": "9s"}
        )
        assert status == 400 and "does not exist" in body

    run(scenario)


def test_container_instances_keep_their_own_checks() -> None:
    async def scenario(env: Env) -> None:
        inst = Instance("c1", "web", "10.0.0.9", 80, source="container")
        env.live.register(inst, [CheckSpec("c1:http", "h", "http", service_id="c1", http="/h")])
        status, body, _ = await env.call(
            "PUT", "/v1/agent/check/register", {"Name": "x", "ServiceID": "c1", "TTL": "9s"}
        )
        assert status == 400 and "dockmesh.check" in body
        # A manual registration over a container's ID is refused: it would outlive the
        # container as a ghost entry with another address.
        status, body, _ = await env.call(
            "PUT", "/v1/agent/service/register", {"Name": "web", "ID": "c1", "Port": 81}
        )
        assert status == 400 and "is the registration of container" in body
        assert env.live.catalog.instance("c1") == inst

    run(scenario)


def test_a_containers_instance_and_checks_are_not_removed_through_the_api() -> None:
    # Removed, the instance was gone unsaid until the container's next change, and without
    # its Docker health check an unhealthy container passed.
    async def scenario(env: Env) -> None:
        inst = Instance("c1", "web", "10.0.0.9", 80, source="container", container="ctr-1")
        check = CheckSpec("docker:c1", "d", "docker", service_id="c1", initial_status="critical")
        env.live.register(inst, [check])
        status, body, _ = await env.call("PUT", "/v1/agent/check/deregister/docker:c1")
        assert status == 400 and "container 'ctr-1'" in body
        assert await env.get("/v1/health/service/web?passing") == []
        status, body, _ = await env.call("PUT", "/v1/agent/service/deregister/c1")
        assert status == 400 and "is the registration of container 'ctr-1'" in body
        assert env.live.catalog.instance("c1") == inst

    run(scenario)


def test_health_state() -> None:
    async def scenario(env: Env) -> None:
        await env.put("/v1/agent/service/register", {**WEB, "Check": {"TTL": "30s"}})
        assert [c["CheckID"] for c in await env.get("/v1/health/state/critical")] == [
            "service:web-1"
        ]
        assert [c["CheckID"] for c in await env.get("/v1/health/state/passing")] == ["serfHealth"]
        status, _, _ = await env.call("GET", "/v1/health/state/sleepy")
        assert status == 400

    run(scenario)


# --- errors as Consul gives them -----------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "raw", "status", "reason"),
    [
        ("PUT", "/v1/agent/service/register", b"not json", 400, "Request decode failed"),
        ("PUT", "/v1/agent/service/register", b"{}", 400, "Missing service name"),
        ("PUT", "/v1/agent/service/register", b'{"Name":"x","Port":"80"}', 400, "Port"),
        ("PUT", "/v1/agent/check/pass/nope", b"", 404, 'CheckID "nope" does not have'),
        ("PUT", "/v1/agent/check/update/nope", b'{"Status":"passing"}', 404, "associated TTL"),
        ("PUT", "/v1/agent/check/update/nope", b"[]", 400, "must be an object"),
        ("GET", "/v1/health/service/web?index=-1", b"", 400, "Invalid index"),
        ("GET", "/v1/health/service/web?index=1&wait=forever", b"", 400, "Invalid wait time"),
        ("GET", "/v1/health/service/web?passing=perhaps", b"", 400, "?passing"),
        ("GET", "/v1/health/service/web?filter=x", b"", 400, "Failed to create boolean expression"),
        ("GET", "/v1/health/service/web?node-meta=a:b", b"", 400, "not supported"),
        ("GET", "/v1/catalog/services?x=%ff", b"", 400, "not valid UTF-8"),
        ("GET", "/v1/kv/", b"", 400, "Missing key name"),
        ("GET", "/v1/kv/a%ffb", b"", 400, "key is not valid UTF-8"),
        ("GET", "/v1/kv/a%00b", b"", 400, "NUL"),
        ("PUT", "/v1/kv/x?flags=-1", b"v", 400, "Invalid flags"),
        ("PUT", "/v1/kv/x?acquire=abc", b"v", 400, "sessions"),
        ("DELETE", "/v1/kv/x?recurse&cas=1", b"", 400, "Conflicting flags"),
        ("POST", "/v1/kv/x", b"", 405, "Method Not Allowed"),
        ("GET", "/v1/agent/check/register", b"", 405, "Method Not Allowed"),
        ("GET", "/v1/nothing/here", b"", 404, "Not Found"),
    ],
)
def test_bad_requests_get_a_status_a_one_line_reason_and_consul_headers(
    method: str, path: str, raw: bytes, status: int, reason: str
) -> None:
    async def scenario(env: Env) -> None:
        got, body, headers = await env.call(method, path, raw=raw)
        assert got == status, body
        assert reason in body and "\n" not in body.strip()
        assert int(headers["X-Consul-Index"]) >= 1
        assert headers["X-Consul-KnownLeader"] == "true"
        assert headers["X-Consul-LastContact"] == "0"

    run(scenario)


def test_bodies_over_the_limits_are_413() -> None:
    async def scenario(env: Env) -> None:
        status, body, headers = await env.call("PUT", "/v1/kv/big", raw=b"x" * (512 * 1024 + 1))
        assert status == 413 and "too large" in body and "X-Consul-Index" in headers
        assert await env.put("/v1/kv/big", raw=b"x" * (512 * 1024)) is True
        status, _, headers = await env.call(
            "PUT", "/v1/agent/service/register", raw=b" " * (2 << 20)
        )
        assert status == 413 and "X-Consul-Index" in headers

    run(scenario)


# --- KV --------------------------------------------------------------------------------------


def test_kv_round_trip_with_recurse_keys_cas_flags_and_delete() -> None:
    async def scenario(env: Env) -> None:
        status, body, headers = await env.call("GET", "/v1/kv/app/missing")
        assert (status, body) == (404, "")
        assert int(headers["X-Consul-Index"]) >= 1  # py-consul reads it on a 404 too

        assert await env.put("/v1/kv/app/a", raw=b"one") is True
        assert await env.put("/v1/kv/app/b/c?flags=42", raw=b"two") is True
        assert await env.put("/v1/kv/app/empty", raw=b"") is True
        (entry,) = await env.get("/v1/kv/app/a")
        assert base64.b64decode(entry["Value"]) == b"one"
        assert entry["CreateIndex"] == entry["ModifyIndex"] and entry["LockIndex"] == 0
        assert (await env.get("/v1/kv/app/b/c"))[0]["Flags"] == 42
        assert (await env.get("/v1/kv/app/empty"))[0]["Value"] is None
        resp = await env.client.get("/v1/kv/app/a?raw")
        assert await resp.read() == b"one" and "X-Consul-Index" in resp.headers

        assert [e["Key"] for e in await env.get("/v1/kv/app/?recurse")] == [
            "app/a",
            "app/b/c",
            "app/empty",
        ]
        assert await env.get("/v1/kv/app/?keys") == ["app/a", "app/b/c", "app/empty"]
        assert await env.get("/v1/kv/app/?keys&separator=/") == ["app/a", "app/b/", "app/empty"]
        assert await env.get("/v1/kv/?keys") == ["app/a", "app/b/c", "app/empty"]
        status, _, _ = await env.call("GET", "/v1/kv/zzz/?keys")
        assert status == 404

        # Check-and-set: 0 creates only; N writes only over ModifyIndex N.
        index = entry["ModifyIndex"]
        assert await env.put("/v1/kv/app/a?cas=0", raw=b"x") is False
        assert await env.put(f"/v1/kv/app/a?cas={index}", raw=b"two") is True
        assert await env.put(f"/v1/kv/app/a?cas={index}", raw=b"three") is False
        assert await env.put("/v1/kv/app/new?cas=0", raw=b"x") is True
        (entry,) = await env.get("/v1/kv/app/a")
        assert base64.b64decode(entry["Value"]) == b"two"

        status, body, _ = await env.call("DELETE", f"/v1/kv/app/a?cas={index}")
        assert (status, body) == (200, False)
        status, body, _ = await env.call("DELETE", f"/v1/kv/app/a?cas={entry['ModifyIndex']}")
        assert (status, body) == (200, True)
        status, body, _ = await env.call("DELETE", "/v1/kv/app/gone?cas=7")
        assert (status, body) == (200, True)  # Consul: nothing to compare is success
        status, body, _ = await env.call("DELETE", "/v1/kv/app/?recurse")
        assert (status, body) == (200, True)
        assert await env.get("/v1/kv/?keys") == []

    run(scenario)


def test_kv_keys_are_taken_from_the_raw_path() -> None:
    async def scenario(env: Env) -> None:
        await env.put("/v1/kv/a%2Fb%20c+d%C3%A9", raw=b"v")
        assert env.live.catalog.kv_keys("") == ["a/b c+dé"]

    run(scenario)


def test_requests_written_by_hand() -> None:
    """What no client library sends but a proxy or a hand-written client may."""

    async def exchange(env: Env, raw: bytes) -> bytes:
        server = env.client.server
        reader, writer = await asyncio.open_connection(server.host, server.port)
        writer.write(raw)
        await writer.drain()
        data = await reader.read()  # to the end: every request here says Connection: close
        writer.close()
        return data

    async def scenario(env: Env) -> None:
        chunked = (
            b"PUT /v1/kv/x HTTP/1.1\r\nHost: h\r\nConnection: close\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
            b"5\r\nhello\r\n0\r\n\r\n"
        )
        assert (await exchange(env, chunked)).startswith(b"HTTP/1.1 200")
        assert env.live.catalog.kv_get("x") is not None
        # An absolute-form target: the key is still the path's.
        absolute = b"GET http://h/v1/kv/x HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"
        reply = await exchange(env, absolute)
        assert reply.startswith(b"HTTP/1.1 200") and b'"Key":"x"' in reply

    run(scenario)


# --- blocking queries ------------------------------------------------------------------------


def test_a_blocking_query_waits_for_a_change_of_its_own_topic() -> None:
    async def scenario(env: Env) -> None:
        await env.put("/v1/agent/service/register", WEB)
        index = await env.index("/v1/health/service/web")
        waiter = asyncio.ensure_future(
            env.call("GET", f"/v1/health/service/web?index={index}&wait=20s")
        )
        # Changes elsewhere do not wake it; a request made after it completes first.
        await env.put("/v1/agent/service/register", {"Name": "db", "Port": 1})
        await env.put("/v1/kv/k", raw=b"v")
        assert await env.get("/v1/health/service/web") and not waiter.done()
        await env.put("/v1/agent/service/register", {**WEB, "ID": "web-2"})
        status, rows, headers = await waiter
        assert status == 200 and int(headers["X-Consul-Index"]) > index
        assert {r["Service"]["ID"] for r in rows} == {"web-1", "web-2"}

    run(scenario)


def test_a_blocking_query_wakes_on_a_check_change_and_for_kv_keys() -> None:
    async def scenario(env: Env) -> None:
        await env.put("/v1/agent/service/register", {**WEB, "Check": {"TTL": "30s"}})
        index = await env.index("/v1/health/service/web?passing")
        waiter = asyncio.ensure_future(
            env.call("GET", f"/v1/health/service/web?passing&index={index}&wait=20s")
        )
        assert await env.get("/v1/status/leader") and not waiter.done()
        await env.put("/v1/agent/check/pass/service:web-1")
        _, rows, _ = await waiter
        assert len(rows) == 1

        await env.put("/v1/kv/a", raw=b"1")
        await env.put("/v1/kv/b", raw=b"1")
        (a,) = await env.get("/v1/kv/a")
        # The key's index is below the KV table's: a watch on it must still wait.
        kv_waiter = asyncio.ensure_future(env.call("GET", f"/v1/kv/a?index={a['ModifyIndex']}"))
        await env.put("/v1/kv/b", raw=b"2")
        assert await env.get("/v1/kv/b") and not kv_waiter.done()
        await env.put("/v1/kv/a", raw=b"2")
        _, (entry,), headers = await kv_waiter
        assert base64.b64decode(entry["Value"]) == b"2"
        assert int(headers["X-Consul-Index"]) == entry["ModifyIndex"]

    run(scenario)


def test_blocking_queries_that_answer_at_once() -> None:
    async def scenario(env: Env) -> None:
        await env.put("/v1/agent/service/register", WEB)
        index = await env.index("/v1/catalog/services")
        # An index the catalog never reached: a client from before a restart.
        status, _, headers = await env.call("GET", "/v1/catalog/services?index=999999999&wait=5m")
        assert status == 200 and int(headers["X-Consul-Index"]) == index
        # An index already passed, and a wait that runs out.
        assert await env.get(f"/v1/catalog/services?index={index - 1}&wait=5m")
        status, _, headers = await env.call("GET", f"/v1/catalog/services?index={index}&wait=5ms")
        assert status == 200 and int(headers["X-Consul-Index"]) == index

    run(scenario)


def test_shutdown_answers_waiting_queries() -> None:
    async def scenario(env: Env) -> None:
        index = await env.index("/v1/catalog/services")
        waiter = asyncio.ensure_future(
            env.call("GET", f"/v1/catalog/services?index={index}&wait=10m")
        )
        assert await env.get("/v1/status/leader") and not waiter.done()
        await env.app.shutdown()
        status, _, _ = await waiter
        assert status == 200

    run(scenario)


# --- topology --------------------------------------------------------------------------------


def _topology(version: int) -> Any:
    return build_topology([EngineState(EngineInfo("local", "unix:///x"))], version)


def test_topology_with_blocking_on_its_version() -> None:
    async def scenario(env: Env) -> None:
        status, body, headers = await env.call("GET", "/v1/dockmesh/topology")
        assert status == 503 and "X-Consul-Index" in headers
        env.feed.publish(_topology(3))
        status, body, headers = await env.call("GET", "/v1/dockmesh/topology")
        assert status == 200 and body["version"] == 3 and headers["X-Consul-Index"] == "3"
        assert body == json.loads(json.dumps(_topology(3).to_json()))
        waiter = asyncio.ensure_future(env.call("GET", "/v1/dockmesh/topology?index=3&wait=1m"))
        assert await env.get("/v1/status/leader") and not waiter.done()
        env.feed.publish(_topology(4))
        _, body, headers = await waiter
        assert body["version"] == 4 and headers["X-Consul-Index"] == "4"
        # A version from before a restart, and an old one: at once.
        assert (await env.get("/v1/dockmesh/topology?index=99&wait=1m"))["version"] == 4
        assert (await env.get("/v1/dockmesh/topology?index=2&wait=1m"))["version"] == 4

    run(scenario)


# --- metrics ---------------------------------------------------------------------------------


def test_metrics_count_requests_by_route_pattern_and_show_the_catalog() -> None:
    registry = CollectorRegistry()

    async def scenario(env: Env) -> None:
        await env.put("/v1/agent/service/register", {**WEB, "Check": {"TTL": "30s"}})
        await env.put("/v1/kv/secret-key-name", raw=b"v")
        await env.call("GET", "/v1/health/service/secret-service-name")
        await env.call("GET", "/v1/nothing/at/all/secret")
        env.live.register(Instance("c1", "web", "10.0.0.9", 80, source="container"), [])
        resp = await env.client.get("/metrics")
        assert resp.status == 200 and resp.content_type == "text/plain"
        text = await resp.text()
        assert (
            'dockmesh_api_requests_total{code="200",method="PUT",'
            'route="/v1/agent/service/register"} 1.0'
        ) in text
        assert 'route="/v1/health/service/{name}"' in text
        assert 'route="/v1/kv/{key}"' in text
        assert 'code="404",method="GET",route="unmatched"' in text
        assert "secret" not in text  # raw paths never become labels
        assert 'dockmesh_catalog_checks{status="critical"} 1.0' in text
        assert 'dockmesh_catalog_instances{source="container"} 1.0' in text
        assert "dockmesh_catalog_services 1.0" in text
        assert "dockmesh_kv_keys 1.0" in text
        assert "dockmesh_api_request_duration_seconds_bucket" in text
        assert f'dockmesh_build_info{{version="{dockmesh.__version__}"}} 1.0' in text

    run(scenario, registry)


# --- fuzz: nothing a client sends is a 500 -----------------------------------------------

_paths = st.sampled_from(
    [
        "/v1/agent/service/register", "/v1/agent/check/update/c", "/v1/agent/check/pass/c",
        "/v1/agent/check/register", "/v1/kv/k", "/v1/kv/", "/v1/health/service/web",
        "/v1/catalog/service/web", "/v1/agent/service/deregister/w", "/v1/dockmesh/topology",
    ]
)  # fmt: skip
_queries = st.lists(
    st.tuples(
        st.sampled_from(
            ["index", "wait", "cas", "flags", "recurse", "keys", "passing", "tag", "x"]
        ),
        st.text(max_size=12),
    ),
    max_size=4,
)
_bodies = st.one_of(
    st.binary(max_size=64),
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=10),
        lambda inner: (
            st.lists(inner, max_size=3)
            | st.dictionaries(
                st.sampled_from(["Name", "ID", "Port", "Check", "TTL", "Status"]), inner
            )
        ),
        max_leaves=10,
    ).map(lambda v: json.dumps(v).encode()),
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.tuples(st.sampled_from(["GET", "PUT", "DELETE"]), _paths, _queries, _bodies), max_size=12
    )
)
def test_no_request_is_a_server_error(
    requests: list[tuple[str, str, list[tuple[str, str]], bytes]],
) -> None:
    async def scenario(env: Env) -> None:
        await env.put("/v1/agent/service/register", {**WEB, "Check": {"CheckID": "c", "TTL": "1m"}})
        env.feed.publish(_topology(1))
        for method, path, params, body in requests:
            # A blocking query would wait for its (short) wait; keep the fuzz quick.
            params = [(k, "1ms" if k == "wait" else v) for k, v in params]
            resp = await env.client.request(method, path, params=params, data=body)
            await resp.read()
            assert resp.status < 500, (method, path, params, body, await resp.text())
            assert "X-Consul-Index" in resp.headers

    run(scenario)


def test_container_checks_keep_their_spec() -> None:
    async def scenario(env: Env) -> None:
        inst = Instance("c1", "web", "10.0.0.9", 80, source="container")
        env.live.register(
            inst, [CheckSpec("c1:http", "h", "http", service_id="c1", http="/health")]
        )
        (c,) = await env.get("/v1/health/checks/web")
        assert (c["CheckID"], c["Type"], c["Interval"]) == ("c1:http", "http", "10s")

    run(scenario)


def test_a_request_aiohttp_refuses_is_logged_as_one_info_line() -> None:
    """Any client can send bytes aiohttp's parser refuses: that is one info line, never an
    error with a traceback a client could flood the log with; other records pass as they are."""
    from aiohttp.http_exceptions import BadHttpMessage

    from dockmesh.api.app import quiet_bad_requests

    try:
        raise BadHttpMessage("bad request line")
    except BadHttpMessage:
        record = logging.LogRecord(
            "aiohttp.server", logging.ERROR, "x", 1, "Error handling request", (), sys.exc_info()
        )
    quiet_bad_requests(record)
    assert record.levelno == logging.INFO and record.exc_info is None
    assert "refused a malformed request" in record.getMessage()
    other = logging.LogRecord("aiohttp.server", logging.ERROR, "x", 1, "boom", (), None)
    assert quiet_bad_requests(other) is True
    assert other.levelno == logging.ERROR


def test_the_shared_catalogs_store_not_followed_means_no_leader_but_is_not_an_engine() -> None:
    from dockmesh.model.liveness import EngineLink

    store = [EngineLink("etcd", True, 0.0)]
    engines = [EngineLink("local", True, 0.0)]

    async def main() -> None:
        live, feed = LiveCatalog(), TopologyFeed()
        app = make_app(
            live,
            feed.current,
            feed.wait,
            CollectorRegistry(),
            links=lambda: engines,
            store_links=lambda: store,
        )
        async with TestClient(TestServer(app)) as client:
            env = Env(app, client, live, feed)
            _, leader, headers = await env.call("GET", "/v1/status/leader")
            assert headers["X-Consul-KnownLeader"] == "true" and leader != ""
            store[0] = EngineLink("etcd", False, 2.5)
            _, leader, headers = await env.call("GET", "/v1/status/leader")
            assert headers["X-Consul-KnownLeader"] == "false" and leader == ""
            assert headers["X-Consul-LastContact"] == "2500"
            assert [e["engine"] for e in await env.get("/v1/dockmesh/engines")] == ["local"]
            engines.clear()  # an agent that follows no engine (`--engine none`): the store alone
            store[0] = EngineLink("etcd", True, 0.0)
            _, _, headers = await env.call("GET", "/v1/status/leader")
            assert headers["X-Consul-KnownLeader"] == "true"

    asyncio.run(asyncio.wait_for(main(), GUARD_S))
