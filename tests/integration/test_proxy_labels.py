"""Routes declared on containers: real containers labelled `dockmesh.http.*`, a real
`dockmesh agent` over them, and `dockmesh proxy --project` reading the routes from the
agent's catalog; requests routed by Host and path, a prefix stripped, a bad label costing only
its own route, a relabel by replacement under load with no failed request, and the routes
file picked up when it changes."""

from __future__ import annotations

import http.client
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import free_subnets
from tests.integration.proxyenv import ProxyProc, backends
from tests.integration.test_agent import AgentProc, wait_until


@dataclass
class Stack:
    api: Any
    prefix: str
    net: str
    agent: AgentProc
    toolbox: str
    ids: list[str] = field(default_factory=list)

    def run(self, name: str, service: str, **http: str) -> str:
        labels = {
            "dockmesh.project": self.prefix,
            "dockmesh.service": service,
            "dockmesh.port": "8080",
            "dockmesh.check.http": "/health",
            "dockmesh.check.interval": "1s",
            **{f"dockmesh.http.{k}": v for k, v in http.items()},
        }
        cid = str(
            self.api.create_container(
                self.toolbox,
                name=f"{self.prefix}-{name}",
                hostname=f"{self.prefix}-{name}",
                labels=labels,
                host_config=self.api.create_host_config(network_mode=self.net),
            )["Id"]
        )
        self.api.start(cid)
        self.ids.append(cid)
        return cid


@pytest.fixture
def stack(api: Any, prefix: str, tmp_path: Path, toolbox: str) -> Iterator[Stack]:
    agent = AgentProc(tmp_path)
    agent.start()
    try:
        (subnet,) = free_subnets(api, 1)
        net = f"{prefix}_net"
        api.create_network(net, ipam={"Config": [{"Subnet": subnet}]})
        yield Stack(api, prefix, net, agent, toolbox)
    finally:
        agent.stop()


def get(port: int, host: str, path: str, timeout: float = 10) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Host": host})
        r = conn.getresponse()
        return r.status, r.read().decode(errors="replace")
    finally:
        conn.close()


def answers(port: int, host: str, path: str, words: str) -> bool:
    try:
        status, body = get(port, host, path)
    except OSError:
        return False
    return status == 200 and words in body


def label_routes(proxy: ProxyProc) -> dict[str, Any]:
    doc: dict[str, Any] = proxy.status()["label_routes"]
    return doc


def test_routes_by_host_and_path_strip_a_prefix_and_skip_only_a_bad_label(
    stack: Stack, tmp_path: Path
) -> None:
    p = stack.prefix
    shop = f"shop.{p}.test"
    stack.run("web-1", "web", host=f"{shop},www.{p}.test")
    stack.run("api-1", "api", host=shop, path="/api", strip_prefix="true")
    stack.run("bad-1", "bad", host="bad host", path="/")
    stack.run("other-1", "other", path="/")  # a catch-all of another host
    with backends(1) as (static,):
        routes = tmp_path / "routes.yaml"
        routes.write_text(
            f"routes:\n  - {{host: {shop}, prefix: /file, backends: [{static.url}]}}\n"
        )
        proxy = ProxyProc(
            tmp_path, "--agent", stack.agent.api, "--project", p, "--config", str(routes)
        )
        try:
            wait_until(lambda: answers(proxy.port, shop, "/id", f"{p}-web-1"), 30)
            assert answers(proxy.port, f"WWW.{p}.test:80", "/id", f"{p}-web-1")
            # The prefix is stripped before the backend sees the request.
            wait_until(lambda: answers(proxy.port, shop, "/api/cgi-bin/echo", "uri="), 30)
            status, body = get(proxy.port, shop, "/api/cgi-bin/echo?x=1")
            assert f"host={p}-api-1" in body and "uri=/cgi-bin/echo?x=1" in body
            # Any other host goes to the catch-all; the routes file's route comes first.
            wait_until(lambda: answers(proxy.port, "elsewhere.test", "/id", f"{p}-other-1"), 30)
            status, body = get(proxy.port, shop, "/file/x")
            assert status == 200 and '"backend": "be1"' in body
            doc = label_routes(proxy)
            assert [(r["host"], r["prefix"], r["cluster"]) for r in doc["routes"]] == [
                (shop, "/api", f"api.{p}"),
                (shop, "/", f"web.{p}"),
                (f"www.{p}.test", "/", f"web.{p}"),
                (None, "/", f"other.{p}"),
            ]
            (problem,) = doc["problems"]
            assert problem.startswith(f"bad.{p} ({p}-bad-1): http-host: 'bad host' is not a host")
            assert f"routes: {problem}" in proxy.log.read_text()
        finally:
            proxy.stop()


def _load(port: int, host: str, stop: threading.Event, ok: list[int], failed: list[str]) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    while not stop.is_set():
        try:
            conn.request("GET", "/id", headers={"Host": host})
            r = conn.getresponse()
            r.read()
            if r.status == 200:
                ok.append(1)
            else:
                failed.append(f"{r.status}")
        except (OSError, http.client.HTTPException) as e:
            failed.append(repr(e))
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.close()


def test_a_relabel_and_a_scale_under_load_drop_no_request_and_need_no_restart(
    stack: Stack, tmp_path: Path
) -> None:
    p = stack.prefix
    a, b = f"a.{p}.test", f"b.{p}.test"
    old = stack.run("web-1", "web", host=a)
    proxy = ProxyProc(tmp_path, "--agent", stack.agent.api, "--project", p)
    stop = threading.Event()
    ok: list[int] = []
    failed: list[str] = []
    threads = [threading.Thread(target=_load, args=(proxy.port, a, stop, ok, failed)) for _ in "12"]
    try:
        wait_until(lambda: answers(proxy.port, a, "/id", f"{p}-web-1"), 30)
        pid = proxy.proc.pid
        for t in threads:
            t.start()
        # The relabel, as a rolling replacement does it: the new container (labels a and b)
        # beside the old one, then the old one stopped and removed.
        stack.run("web-2", "web", host=f"{a},{b}")
        wait_until(lambda: answers(proxy.port, b, "/id", f"{p}-web-2"), 30)
        stack.api.stop(old, timeout=5)
        stack.api.remove_container(old)
        wait_until(lambda: len(proxy.status()["upstreams"]) == 1, 15)
        # Scaled up under the same load: the new instance takes requests, nothing rebuilt.
        stack.run("web-3", "web", host=f"{a},{b}")
        wait_until(lambda: len(proxy.status()["upstreams"]) == 2, 30)
        time.sleep(1)
        stop.set()
        for t in threads:
            t.join(20)
        assert failed == [] and len(ok) > 100, (failed[:5], len(ok))
        assert proxy.proc.pid == pid and proxy.proc.poll() is None
        hosts = {r["host"] for r in label_routes(proxy)["routes"]}
        assert hosts == {a, b}
        seen = {get(proxy.port, b, "/id")[1].split()[1] for _ in range(8)}
        assert seen == {f"{p}-web-2", f"{p}-web-3"}
    finally:
        stop.set()
        proxy.stop()


@pytest.mark.parametrize("workers", [1, 2])
def test_the_routes_file_is_picked_up_when_it_changes_and_a_bad_one_is_kept_out(
    tmp_path: Path, workers: int
) -> None:
    with backends(2) as (one, two):
        routes = tmp_path / "routes.yaml"
        routes.write_text(f"routes:\n  - {{prefix: /, backends: [{one.url}]}}\n")
        proxy = ProxyProc(tmp_path, "--config", str(routes), "--workers", str(workers))
        try:
            assert answers(proxy.port, "x.test", "/", '"backend": "be1"')
            pid = proxy.proc.pid
            # Written elsewhere and renamed over it, as editors and config tools do.
            new = tmp_path / "routes.new"
            new.write_text(f"routes:\n  - {{prefix: /, backends: [{two.url}]}}\n")
            new.replace(routes)
            # Every worker (new connections land on either): be2 only, 10 times in a row.
            wait_until(lambda: answers(proxy.port, "x.test", "/", '"backend": "be2"'), 10)
            wait_until(
                lambda: all(
                    answers(proxy.port, "x.test", "/", '"backend": "be2"') for _ in range(10)
                ),
                10,
            )
            routes.write_text("routes: [\n")  # broken: the running configuration stays
            wait_until(lambda: "changed: " in proxy.log.read_text(), 10)
            assert "keeping the running configuration" in proxy.log.read_text()
            assert answers(proxy.port, "x.test", "/", '"backend": "be2"')
            assert proxy.proc.pid == pid and proxy.proc.poll() is None
        finally:
            proxy.stop()


def test_project_flags_are_checked(tmp_path: Path) -> None:
    from tests.integration.test_proxy import proxy_cli

    both = proxy_cli("--project", "a", "--all-projects")
    assert both.returncode == 2 and "exclude each other" in both.stderr
    bad = proxy_cli("--project=bad name")
    assert bad.returncode == 2 and "not a project name" in bad.stderr


def test_a_project_files_expose_is_routed(stack: Stack, tmp_path: Path) -> None:
    import yaml

    from tests.integration.conftest import dockmesh

    p = stack.prefix
    (subnet,) = free_subnets(stack.api, 1)
    doc = {
        "project": p,
        "networks": {"back": {"subnet": subnet}},
        "services": {
            "shop": {
                "image": stack.toolbox,
                "replicas": 2,
                "networks": ["back"],
                "environment": {"INSTANCE_ID": "shop-{{replica}}"},
                "expose": {"host": f"shop.{p}.test", "port": 8080},
            },
            "api": {
                "image": stack.toolbox,
                "networks": ["back"],
                "discovery": {"port": 8080, "check": {"http": "/health", "interval": "1s"}},
                "expose": {"host": f"shop.{p}.test", "path": "/api", "strip_prefix": True},
            },
        },
    }
    path = tmp_path / "dockmesh.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    dockmesh("up", str(path), check=True)
    proxy = ProxyProc(tmp_path, "--agent", stack.agent.api, "--project", p)
    try:
        host = f"shop.{p}.test"
        wait_until(lambda: answers(proxy.port, host, "/api/cgi-bin/echo", "uri=/cgi-bin/echo"), 30)
        wait_until(lambda: len(proxy.status()["upstreams"]) == 3, 30)
        seen = {get(proxy.port, host, "/id")[1].split()[0] for _ in range(6)}
        assert seen == {"shop-1", "shop-2"}
    finally:
        proxy.stop()
        dockmesh("down", str(path))


def test_all_projects_routes_containers_of_no_project_too(stack: Stack, tmp_path: Path) -> None:
    p = stack.prefix
    stack.run("web-1", "web", host=f"web.{p}.test")
    # Hand-labelled, of no project: routed by its service's own name.
    cid = str(
        stack.api.create_container(
            stack.toolbox,
            name=f"{p}-loose-1",
            hostname=f"{p}-loose-1",
            labels={
                "dockmesh.service": f"{p}loose",
                "dockmesh.port": "8080",
                "dockmesh.http.host": f"loose.{p}.test",
            },
            host_config=stack.api.create_host_config(network_mode=stack.net),
        )["Id"]
    )
    stack.api.start(cid)
    proxy = ProxyProc(tmp_path, "--agent", stack.agent.api, "--all-projects")
    try:
        wait_until(lambda: answers(proxy.port, f"loose.{p}.test", "/id", f"{p}-loose-1"), 30)
        wait_until(lambda: answers(proxy.port, f"web.{p}.test", "/id", f"{p}-web-1"), 30)
        clusters = {r["cluster"] for r in label_routes(proxy)["routes"]}
        assert {f"{p}loose", f"web.{p}"} <= clusters
    finally:
        proxy.stop()
