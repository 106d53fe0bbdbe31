"""The Consul endpoints clients reach for after the basics: members, nodes, a node's
services and checks, checks by state, the agent's aggregated service health, and `?filter=`
on the list endpoints, as Consul shapes them."""

from __future__ import annotations

import asyncio
import time
from typing import Any
from urllib.parse import quote

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import dockmesh
from tests.unit.api.test_app import WEB, Env, run

TTL = {"TTL": "30s"}


async def two_services(env: Env) -> None:
    await env.put("/v1/agent/service/register", {**WEB, "Check": TTL})
    db = {"Name": "db", "ID": "db-1", "Address": "10.0.0.8", "Port": 5432, "Meta": {"env": "x"}}
    await env.put("/v1/agent/service/register", db)


def test_agent_members_is_this_agent_alive() -> None:
    async def scenario(env: Env) -> None:
        (member,) = await env.get("/v1/agent/members")
        assert (member["Name"], member["Addr"], member["Port"], member["Status"]) == (
            "dockmesh",
            "127.0.0.1",
            8301,
            1,
        )
        assert member["Tags"]["dc"] == "dc1" and member["Tags"]["role"] == "consul"
        me = await env.get("/v1/agent/self")
        assert me["Member"] == member
        # the Consul level clients compare, dockmesh's own version as build metadata
        assert me["Config"]["Version"] == f"1.15.0+dockmesh.{dockmesh.__version__}"
        # and plainly, for whoever does not parse build metadata
        assert me["dockmesh"] == {"version": dockmesh.__version__}

    run(scenario)


def test_catalog_nodes_and_one_node_with_its_services() -> None:
    async def scenario(env: Env) -> None:
        await two_services(env)
        (node,) = await env.get("/v1/catalog/nodes")
        assert node["Node"] == "dockmesh" and node["Datacenter"] == "dc1"
        got = await env.get("/v1/catalog/node/dockmesh")
        assert got["Node"]["Node"] == "dockmesh"
        assert sorted(got["Services"]) == ["db-1", "web-1"]
        web = got["Services"]["web-1"]
        assert (web["Service"], web["Address"], web["Port"], web["Tags"]) == (
            "web",
            "10.0.0.7",
            8080,
            ["v1"],
        )
        # Consul: an unknown node is 200 with null.
        status, body, headers = await env.call("GET", "/v1/catalog/node/elsewhere")
        assert (status, body) == (200, None) and "X-Consul-Index" in headers
        only_db = await env.get("/v1/catalog/node/dockmesh?filter=Meta.env%20%3D%3D%20x")
        assert list(only_db["Services"]) == ["db-1"]
        assert await env.get("/v1/catalog/nodes?filter=Node%20%3D%3D%20other") == []

    run(scenario)


def test_health_node_lists_serf_health_and_every_check() -> None:
    async def scenario(env: Env) -> None:
        await two_services(env)
        checks = await env.get("/v1/health/node/dockmesh")
        assert [c["CheckID"] for c in checks] == ["serfHealth", "service:web-1"]
        assert checks[1]["ServiceName"] == "web" and checks[1]["Status"] == "critical"
        assert await env.get("/v1/health/node/elsewhere") == []
        critical = await env.get("/v1/health/node/dockmesh?filter=Status%20%3D%3D%20critical")
        assert [c["CheckID"] for c in critical] == ["service:web-1"]

    run(scenario)


def ids(rows: list[dict[str, Any]]) -> list[str]:
    return [c["CheckID"] for c in rows]


def test_health_state_by_state_with_filter_and_bad_states() -> None:
    async def scenario(env: Env) -> None:
        await two_services(env)
        assert ids(await env.get("/v1/health/state/critical")) == ["service:web-1"]
        assert ids(await env.get("/v1/health/state/passing")) == ["serfHealth"]
        assert ids(await env.get("/v1/health/state/any")) == ["serfHealth", "service:web-1"]
        assert await env.get("/v1/health/state/warning") == []
        f = "/v1/health/state/any?filter=ServiceName%20%3D%3D%20web"
        assert ids(await env.get(f)) == ["service:web-1"]
        status, body, _ = await env.call("GET", "/v1/health/state/sick")
        assert status == 400 and "Invalid state" in body

    run(scenario)


def test_agent_health_by_name_says_the_worst_status_in_its_code() -> None:
    async def scenario(env: Env) -> None:
        await two_services(env)
        path = "/v1/agent/health/service/name/web"
        status, body, _ = await env.call("GET", path)
        assert status == 503
        (row,) = body
        assert row["AggregatedStatus"] == "critical" and row["Service"]["ID"] == "web-1"
        assert [c["CheckID"] for c in row["Checks"]] == ["service:web-1"]
        assert (await env.call("GET", path + "?format=text"))[:2] == (503, "critical")
        await env.put("/v1/agent/check/warn/service:web-1")
        assert (await env.call("GET", path + "?format=text"))[:2] == (429, "warning")
        await env.put("/v1/agent/check/pass/service:web-1")
        assert (await env.call("GET", path + "?format=text"))[:2] == (200, "passing")
        status, body, _ = await env.call("GET", path)
        assert status == 200 and body[0]["AggregatedStatus"] == "passing"
        # No checks: passing, as Consul.
        assert (await env.call("GET", "/v1/agent/health/service/name/db"))[0] == 200
        status, body, headers = await env.call("GET", "/v1/agent/health/service/name/nope")
        assert (status, body) == (404, []) and "X-Consul-Index" in headers
        got = await env.call("GET", "/v1/agent/health/service/name/nope?format=text")
        assert got[:2] == (404, "ServiceName nope Not Found")
        status, body, _ = await env.call("GET", "/v1/agent/health/service/id/web-1")
        assert status == 200 and body["Service"]["ID"] == "web-1"
        assert (await env.call("GET", "/v1/agent/health/service/id/nope"))[0] == 404

    run(scenario)


def test_filter_on_the_list_endpoints() -> None:
    async def scenario(env: Env) -> None:
        await two_services(env)
        await env.put(
            "/v1/agent/service/register", {**WEB, "ID": "web-2", "Tags": ["v2"], "Check": TTL}
        )
        await env.put("/v1/agent/check/pass/service:web-2")

        async def kept(path: str, expression: str) -> list[str]:
            body: Any = await env.get(f"{path}?filter={quote(expression)}")
            if isinstance(body, dict):
                return sorted(body)
            return [r.get("CheckID") or r.get("ServiceID") or r["Service"]["ID"] for r in body]

        assert await kept("/v1/health/service/web", "v2 in Service.Tags") == ["web-2"]
        assert await kept("/v1/health/service/web", "Checks.Status == critical") == ["web-1"]
        assert await kept("/v1/catalog/service/web", 'ServiceTags contains "v1"') == ["web-1"]
        assert await kept("/v1/agent/services", "Port == 5432") == ["db-1"]
        assert await kept("/v1/agent/services", "Service == web") == ["web-1", "web-2"]
        assert await kept("/v1/agent/checks", "Status == passing") == ["service:web-2"]
        assert await kept("/v1/health/checks/web", "ServiceID == web-1") == ["service:web-1"]
        status, body, headers = await env.call("GET", "/v1/agent/services?filter=Port%20%3D%3D")
        assert status == 400 and "X-Consul-Index" in headers
        assert body.startswith("Failed to create boolean expression evaluator: 1:")
        status, body, _ = await env.call("GET", "/v1/health/service/web?filter=Nope%20is%20empty")
        assert (status, body) == (
            400,
            'Failed to create boolean expression evaluator: 1:1 (0): Selector "Nope" is not valid',
        )

    run(scenario)


def test_a_bad_filter_answers_at_once_even_on_a_blocking_query() -> None:
    async def scenario(env: Env) -> None:
        await two_services(env)
        index = await env.index("/v1/health/service/web")
        path = f"/v1/health/service/web?index={index}&wait=60s&filter=%28"
        status, _, _ = await asyncio.wait_for(env.call("GET", path), 10)
        assert status == 400

    run(scenario)


def test_catalog_node_blocks_until_a_service_changes() -> None:
    async def scenario(env: Env) -> None:
        await two_services(env)
        index = await env.index("/v1/catalog/node/dockmesh")
        waiter = asyncio.ensure_future(
            env.call("GET", f"/v1/catalog/node/dockmesh?index={index}&wait=60s")
        )
        assert (await env.get("/v1/agent/members"))[0]["Name"] == "dockmesh"
        assert not waiter.done()
        await env.put("/v1/agent/service/deregister/db-1")
        status, body, headers = await waiter
        assert status == 200 and list(body["Services"]) == ["web-1"]
        assert int(headers["X-Consul-Index"]) > index

    run(scenario)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.binary(max_size=80), min_size=1, max_size=10))
def test_any_filter_bytes_are_an_answer_or_one_400_line(filters: list[bytes]) -> None:
    async def scenario(env: Env) -> None:
        await two_services(env)
        for raw in filters:
            for path in ("/v1/health/service/web", "/v1/agent/checks", "/v1/catalog/nodes"):
                status, body, headers = await env.call("GET", f"{path}?filter={quote(raw)}")
                assert status in (200, 400), body
                assert "X-Consul-Index" in headers
                if status == 400:
                    assert isinstance(body, str) and "\n" not in body.strip()

    run(scenario)


def test_a_filter_too_costly_for_the_rows_is_one_400_line_at_once() -> None:
    """A `matches` whose state sets grow with every character, over Consul's longest meta
    value: it held the event loop (DNS's too) for 0.26 s a row, 5 s for these twenty; now a
    400 once its budget is spent."""

    async def scenario(env: Env) -> None:
        for i in range(20):
            service = {**WEB, "ID": f"web-{i}", "Meta": {"k": "a" * 512}}
            await env.put("/v1/agent/service/register", service)
        expression = 'Meta.k matches "(.|.|.|.|.|.|.){140}z"'
        started = time.process_time()
        status, body, _ = await env.call("GET", "/v1/agent/services?filter=" + quote(expression))
        assert time.process_time() - started < 0.5
        assert status == 400 and isinstance(body, str) and "\n" not in body.strip(), body
        assert "cost more than" in body
        # The same pattern over short fields costs little: answered.
        short = 'Service matches "(.|.|.|.|.|.|.){140}z"'
        assert await env.get("/v1/agent/services?filter=" + quote(short)) == {}

    run(scenario)
