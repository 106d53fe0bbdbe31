"""The real Consul clients from PyPI, unmodified, against dockmesh's API.

python-consul and py-consul both install a module named `consul`, so each lives in its own
throwaway virtual environment under /tmp (kept between runs) and drives the API from a
subprocess. The API is served on a free loopback port by an event loop in a thread of this
test process, over a catalog filled by nothing but the clients: no engine, no health runner
(HTTP checks, which need the runner, are tested at the agent level).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import textwrap
import threading
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry

from dockmesh.api import TopologyFeed, make_app
from dockmesh.catalog.live import LiveCatalog

CLIENTS = ["python-consul", "py-consul"]


@contextmanager
def served_api() -> Iterator[tuple[int, LiveCatalog]]:
    """make_app on 127.0.0.1:<free port>, run by its own loop in a thread."""
    loop = asyncio.new_event_loop()
    started = threading.Event()
    box: dict[str, Any] = {}

    async def start() -> None:
        live, feed = LiveCatalog(), TopologyFeed()
        app = make_app(live, feed.current, feed.wait, CollectorRegistry())
        runner = web.AppRunner(app, handler_cancellation=True)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        box.update(runner=runner, live=live, port=runner.addresses[0][1])

    def main() -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(start())
        finally:
            started.set()
        loop.run_forever()
        loop.run_until_complete(box["runner"].cleanup())
        loop.close()

    thread = threading.Thread(target=main, name="dockmesh-api", daemon=True)
    thread.start()
    started.wait(30)
    if "port" not in box:
        pytest.fail("the API did not start")
    try:
        yield box["port"], box["live"]
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(30)


def client_python(package: str) -> Path:
    """A venv holding `package` alone, made on first use and kept under /tmp."""
    venv = Path("/tmp") / f"dockmesh-test-{package}"
    python = venv / "bin" / "python"
    if python.exists():
        ok = subprocess.run([python, "-c", "import consul"], capture_output=True)
        if ok.returncode == 0:
            return python
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
    got = subprocess.run(
        [python, "-m", "pip", "install", "-q", package], capture_output=True, text=True
    )
    if got.returncode != 0:
        pytest.fail(f"could not install {package}: {got.stderr.strip()[-500:]}")
    return python


# Runs inside the client's venv: only the client's public API, as an application would.
SCRIPT = textwrap.dedent(
    """
    import inspect, sys, threading, time
    import consul

    port, tag = int(sys.argv[1]), sys.argv[2]
    c = consul.Consul(host="127.0.0.1", port=port)
    sid, check_id = "web-" + tag, "service:web-" + tag

    def need(cond, what):
        if not cond:
            print("FAIL:", what)
            sys.exit(1)

    def passing_ids():
        _, nodes = c.health.service("web", passing=True)
        return {n["Service"]["ID"] for n in nodes}

    # Register with a TTL check: not passing until the check passes.
    need(c.agent.service.register("web", service_id=sid, address="10.1.2.3", port=8080,
                                  tags=["v1"], check=consul.Check.ttl("30s")), "register")
    need(sid not in passing_ids(), "passing before its check passed")
    need(c.agent.check.ttl_pass(check_id, "ok"), "ttl_pass")
    need(sid in passing_ids(), "not passing after ttl_pass")
    _, nodes = c.health.service("web", passing=True)
    n = [x for x in nodes if x["Service"]["ID"] == sid][0]
    need(n["Service"]["Address"] == "10.1.2.3" and n["Service"]["Port"] == 8080, n)
    need(n["Node"]["Node"] and any(ch["CheckID"] == check_id for ch in n["Checks"]), n)
    need(sid in c.agent.services(), "agent.services")
    need(c.agent.checks()[check_id]["Status"] == "passing", "agent.checks")
    _, rows = c.catalog.service("web", tag="v1")
    need(sid in {r["ServiceID"] for r in rows}, "catalog.service")
    _, services = c.catalog.services()
    need("web" in services, "catalog.services")
    need(c.status.leader(), "status.leader")
    need(not c.agent.check.ttl_pass("no-such-check"), "ttl_pass of an unknown check")

    # A blocking query returns when something changes, long before its wait ends (how soon
    # is a speed, measured by benchmarks/topology.py, not asserted on a shared machine).
    idx, _ = c.health.service("web")
    woke = {}
    def waiter():
        i2, nodes = c.health.service("web", index=idx, wait="60s")
        woke["t"], woke["i"], woke["n"] = time.monotonic(), i2, nodes
    th = threading.Thread(target=waiter)
    th.start()
    time.sleep(0.5)
    need("t" not in woke, "blocking query returned before any change")
    t_change = time.monotonic()
    c.agent.check.ttl_fail(check_id, "down")
    th.join(70)
    need("t" in woke, "blocking query never returned")
    ms = (woke["t"] - t_change) * 1000
    need(ms < 30_000, f"blocking query woke {ms:.0f} ms after the change: by its wait")
    need(int(woke["i"]) > int(idx), "index did not move")
    need(sid not in passing_ids(), "failed check still passing")

    # KV: put, get, recurse, keys, cas, flags, delete.
    need(c.kv.put("cl/a", "v1"), "kv put")
    _, v = c.kv.get("cl/a")
    need(v is not None and v["Value"] == b"v1", v)
    need(c.kv.put("cl/a", "v2", cas=v["ModifyIndex"]), "cas with the current index")
    need(not c.kv.put("cl/a", "v3", cas=v["ModifyIndex"]), "cas with a stale index")
    need(not c.kv.put("cl/a", "v4", cas=0), "cas 0 over an existing key")
    need(c.kv.put("cl/b/c", "x", flags=7), "kv put with flags")
    _, vals = c.kv.get("cl/", recurse=True)
    need([x["Key"] for x in vals] == ["cl/a", "cl/b/c"], vals)
    need([x["Value"] for x in vals] == [b"v2", b"x"] and vals[1]["Flags"] == 7, vals)
    _, keys = c.kv.get("cl/", keys=True, separator="/")
    need(keys == ["cl/a", "cl/b/"], keys)
    _, missing = c.kv.get("cl/nope")
    need(missing is None, "missing key")
    kidx, _ = c.kv.get("cl/a")
    kv_woke = {}
    def kv_waiter():
        _, val = c.kv.get("cl/a", index=kidx, wait="60s")
        kv_woke["t"], kv_woke["v"] = time.monotonic(), val
    th = threading.Thread(target=kv_waiter)
    th.start()
    time.sleep(0.3)
    t_change = time.monotonic()
    c.kv.put("cl/a", "v5")
    th.join(70)
    need(kv_woke.get("v", {}).get("Value") == b"v5", kv_woke)
    ms = (kv_woke["t"] - t_change) * 1000
    need(ms < 30_000, f"KV blocking query woke {ms:.0f} ms after the change: by its wait")
    need(c.kv.delete("cl/a"), "kv delete")
    need(c.kv.get("cl/a")[1] is None, "deleted key still there")
    need(c.kv.delete("cl/", recurse=True), "kv delete recurse")
    need(c.kv.get("cl/", recurse=True)[1] is None, "recursive delete left keys")

    # One agent that is its own node: members, nodes, the node's services and checks, checks
    # by state (web's check failed above).
    members = c.agent.members()
    need(len(members) == 1 and members[0]["Status"] == 1, members)
    node_name = members[0]["Name"]
    _, nodes = c.catalog.nodes()
    need([n["Node"] for n in nodes] == [node_name], nodes)
    _, node = c.catalog.node(node_name)
    need(node["Node"]["Node"] == node_name and node["Services"][sid]["Port"] == 8080, node)
    need(c.catalog.node("no-such-node")[1] is None, "an unknown node is null")
    _, checks = c.health.node(node_name)
    need({"serfHealth", check_id} <= {x["CheckID"] for x in checks}, checks)
    _, critical = c.health.state("critical")
    need(check_id in {x["CheckID"] for x in critical}, critical)
    _, passing = c.health.state("passing")
    need({x["CheckID"] for x in passing} == {"serfHealth"}, passing)
    # ?filter=, where the client has it (py-consul).
    if "filter_expr" in inspect.signature(c.agent.services).parameters:
        got = c.agent.services(filter_expr='Service == "web" and "v1" in Tags')
        need(set(got) == {sid}, got)
        need(c.agent.services(filter_expr="Port == 1") == {}, "filtered out")
        got = c.agent.checks(filter_expr="Status == critical")
        need(set(got) == {check_id}, got)
        _, rows = c.catalog.service("web", filter_expr="ServiceAddress == `10.1.2.3`")
        need([r["ServiceID"] for r in rows] == [sid], rows)
        _, rows = c.catalog.nodes(filter_expr="Node != " + node_name)
        need(rows == [], rows)
        try:
            c.agent.services(filter_expr="Port ==")
            need(False, "a bad filter was accepted")
        except Exception as e:
            need("Failed to create boolean expression evaluator" in str(e), e)

    # Deregister.
    need(c.agent.service.deregister(sid), "deregister")
    _, nodes = c.health.service("web")
    need(sid not in {x["Service"]["ID"] for x in nodes}, "deregistered instance remains")
    need(check_id not in c.agent.checks(), "deregistered instance's check remains")
    print("ok")
    """
)


@pytest.mark.parametrize("package", CLIENTS)
def test_consul_client_drives_the_api(package: str, tmp_path: Path) -> None:
    python = client_python(package)
    script = tmp_path / "client.py"
    script.write_text(SCRIPT)
    with served_api() as (port, live):
        got = subprocess.run(
            [python, str(script), str(port), package],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert got.returncode == 0, got.stdout + got.stderr
        assert got.stdout.strip().endswith("ok")
        assert live.catalog.instances() == []


def test_curl_style_form_bodies_are_kv_values() -> None:
    """`curl -X PUT -d value` sends a form content type: the body is still the value."""
    with served_api() as (port, _):
        base = f"http://127.0.0.1:{port}"
        put = urllib.request.Request(
            f"{base}/v1/kv/acc/persist",
            data=b"persisted",
            method="PUT",
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        with urllib.request.urlopen(put, timeout=10) as resp:
            assert json.load(resp) is True
        with urllib.request.urlopen(f"{base}/v1/kv/acc/persist?raw", timeout=10) as resp:
            assert resp.read() == b"persisted"
            assert resp.headers["X-Consul-Index"]
