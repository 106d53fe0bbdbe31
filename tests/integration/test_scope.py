"""Two projects with a service of the same name, on the real engine: each project's name
(`<service>.<project>.service.dockmesh`, `/v1/health/service/<service>.<project>`) and its
gateway reach its own containers only; the short name they share answers neither unless one
claims it; the collision is said by plan, the agent (log, /metrics) and doctor. And a
container and a registration with the same ID never hide each other silently."""

from __future__ import annotations

import functools
import http.server
import json
import re
import subprocess
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.integration.conftest import dockmesh, free_subnets
from tests.integration.proxyenv import ProxyProc
from tests.integration.test_agent import AgentProc, dig, wait_until


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[AgentProc]:
    a = AgentProc(tmp_path)
    a.start()
    yield a
    if a.proc is not None and a.proc.poll() is None:
        a.proc.kill()
        a.proc.wait()


def project_file(
    tmp_path: Path, project: str, subnet: str, service: str, replicas: int, **discovery: Any
) -> str:
    doc = {
        "project": project,
        "networks": {"back": {"subnet": subnet}},
        "services": {
            service: {
                "image": "dockmesh/toolbox",
                "replicas": replicas,
                "environment": {"INSTANCE_ID": "{{project}}-{{replica}}"},
                "networks": ["back"],
                "discovery": {
                    "port": 8080,
                    "check": {"http": "/health", "interval": "1s"},
                    **discovery,
                },
            }
        },
    }
    path = tmp_path / f"{project}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return str(path)


def passing(agent: AgentProc, name: str) -> dict[str, str]:
    """ID → address of the passing instances `name` answers over HTTP."""
    _, rows = agent.get(f"/v1/health/service/{name}?passing")
    return {r["Service"]["ID"]: r["Service"]["Address"] for r in rows}


def metric(agent: AgentProc, name: str) -> float:
    with urllib.request.urlopen(agent.api + "/metrics", timeout=10) as r:
        text = r.read().decode()
    m = re.search(rf"^{name} (\S+)$", text, re.M)
    assert m, f"{name} not in /metrics"
    return float(m.group(1))


def served_by(proxy: ProxyProc, n: int) -> set[str]:
    """The instances (INSTANCE_ID) that answered `n` requests through the gateway."""
    seen = set()
    for _ in range(n):
        with urllib.request.urlopen(proxy.url + "/id", timeout=10) as r:
            seen.add(r.read().decode().split()[0])
    return seen


def test_two_projects_with_one_service_name_never_reach_each_other(
    api: Any, prefix: str, agent: AgentProc, tmp_path: Path, toolbox: str
) -> None:
    pa, pb = f"{prefix}a", f"{prefix}b"
    svc = f"{prefix}api"  # unique on the engine: other tests' `api` stay out of the short name
    sa, sb = free_subnets(api, 2)
    fa = project_file(tmp_path, pa, sa, svc, 2)
    fb = project_file(tmp_path, pb, sb, svc, 1)
    proxies: list[ProxyProc] = []
    try:
        dockmesh("up", fa, check=True)
        wait_until(lambda: len(passing(agent, svc)) == 2, 30)  # one project: unambiguous
        # plan names the collision before `up` makes it (and still plans).
        plan = dockmesh("plan", fb)
        assert plan.returncode == 0, plan.stderr
        assert f"service name '{svc}' is used by projects {pa}, {pb}" in plan.stderr
        assert f"{svc}.{pa}, {svc}.{pb}" in plan.stderr
        dockmesh("up", fb, check=True)
        wait_until(lambda: len(passing(agent, f"{svc}.{pb}")) == 1, 30)
        wait_until(lambda: len(passing(agent, f"{svc}.{pa}")) == 2, 30)
        a, b = passing(agent, f"{svc}.{pa}"), passing(agent, f"{svc}.{pb}")
        assert set(a) == {f"{pa}-{svc}-1", f"{pa}-{svc}-2"} and set(b) == {f"{pb}-{svc}-1"}
        # DNS: each project's name is its own addresses, A and SRV; the shared short name
        # answers neither (never a merge of the two).
        assert dig(agent.dns_port, f"{svc}.{pa}.service.dockmesh") == sorted(a.values())
        assert dig(agent.dns_port, f"{svc}.{pb}.service.dockmesh") == sorted(b.values())
        srv = dig(agent.dns_port, f"{svc}.{pb}.service.dockmesh", "SRV")
        assert srv == [f"1 1 8080 {pb}-{svc}-1.node.dockmesh."]
        assert dig(agent.dns_port, f"{svc}.service.dockmesh") == []
        assert passing(agent, svc) == {}
        # The catalog still lists the service by its name, each instance with its project.
        _, rows = agent.get(f"/v1/catalog/service/{svc}.{pa}")
        assert {r["ServiceMeta"]["project"] for r in rows} == {pa}
        # Said by the agent: a gauge, and one log line.
        assert metric(agent, "dockmesh_service_name_collisions") >= 1
        line = f"service name '{svc}' is used by projects {pa}, {pb}"
        wait_until(lambda: line in agent.log.read_text(), 10)
        assert agent.log.read_text().count(line) == 1
        # Each project's gateway (the demo's: the proxy following `<service>.{{project}}`)
        # sends to its own project's replicas only.
        for project, want in ((pa, {f"{pa}-1", f"{pa}-2"}), (pb, {f"{pb}-1"})):
            proxy = ProxyProc(tmp_path, "--service", f"{svc}.{project}", "--agent", agent.api)
            proxies.append(proxy)
            wait_until(lambda p=proxy, w=want: len(p.status()["upstreams"]) == len(w), 15)
            assert served_by(proxy, 12) == want
        # An explicit discovery.name claims the short name: b's from now on.
        fb = project_file(tmp_path, pb, sb, svc, 1, name=svc)
        dockmesh("up", fb, check=True)
        wait_until(lambda: set(passing(agent, svc)) == {f"{pb}-{svc}-1"}, 30)
        assert set(passing(agent, f"{svc}.{pa}")) == set(a)  # a's own name is untouched
        wait_until(lambda: dig(agent.dns_port, f"{svc}.service.dockmesh") != [], 10)
        assert dig(agent.dns_port, f"{svc}.service.dockmesh") == sorted(
            passing(agent, f"{svc}.{pb}").values()
        )
    finally:
        for p in proxies:
            p.stop()
        for f in (fa, fb):
            dockmesh("down", f)


COMPOSE = """
version: "2.4"
services:
  api:
    image: dockmesh/toolbox:latest
    environment: {{INSTANCE_ID: "{project}"}}
    networks: [default, side]
    labels:
      dockmesh.service: {svc}
      dockmesh.port: "8080"
      dockmesh.network: side
networks:
  side: {{}}
"""


def test_compose_projects_are_scoped_and_take_their_own_network_names(
    api: Any, prefix: str, agent: AgentProc, tmp_path: Path
) -> None:
    svc = f"{prefix}api"
    projects = [f"{prefix}x", f"{prefix}y"]
    cmds = []
    try:
        for project in projects:
            f = tmp_path / f"{project}.yml"
            f.write_text(COMPOSE.format(project=project, svc=svc))
            cmd = ["docker-compose", "-p", project, "-f", str(f)]
            cmds.append(cmd)
            subprocess.run([*cmd, "up", "-d"], check=True, capture_output=True, timeout=120)
        for project in projects:
            # `dockmesh.network: side` is the file's network, `<project>_side` on the engine.
            side = api.inspect_container(f"{project}_api_1")["NetworkSettings"]["Networks"]
            want = side[f"{project}_side"]["IPAddress"]
            wait_until(lambda p=project: passing(agent, f"{svc}.{p}") != {}, 30)
            assert list(passing(agent, f"{svc}.{project}").values()) == [want]
            assert dig(agent.dns_port, f"{svc}.{project}.service.dockmesh") == [want]
        assert dig(agent.dns_port, f"{svc}.service.dockmesh") == []
        # doctor says it of the container, from the topology alone.
        out = dockmesh("doctor", f"{projects[0]}_api_1", "--json")
        found = [f for f in json.loads(out.stdout)["findings"] if f["code"] == "name-collision"]
        assert len(found) == 1 and f"{svc}.{projects[1]}" in found[0]["message"], out.stdout
    finally:
        for cmd in cmds:
            subprocess.run([*cmd, "down", "-v"], capture_output=True, timeout=120)


def test_a_container_and_a_registration_never_hide_each_other(
    api: Any, prefix: str, agent: AgentProc, toolbox: str
) -> None:
    (subnet,) = free_subnets(api, 1)
    net = f"{prefix}_net"
    api.create_network(net, ipam={"Config": [{"Subnet": subnet}]})
    labels = {"dockmesh.service": f"{prefix}svc", "dockmesh.port": "8080"}

    def start(name: str) -> str:
        cid = str(
            api.create_container(
                toolbox,
                name=name,
                labels=labels,
                host_config=api.create_host_config(network_mode=net),
            )["Id"]
        )
        api.start(cid)
        return cid

    def register(iid: str) -> tuple[int, str]:
        body = json.dumps({"Name": f"{prefix}m", "ID": iid, "Address": "10.9.9.9", "Port": 1})
        req = urllib.request.Request(
            agent.api + "/v1/agent/service/register", data=body.encode(), method="PUT"
        )
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return int(r.status), r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def held(iid: str) -> str | None:
        """The service name the agent holds under `iid` (None: nothing)."""
        try:
            return str(agent.get(f"/v1/agent/service/{iid}")[1]["Service"])
        except urllib.error.HTTPError as e:
            if e.code == 404:
                return None
            raise

    # The container first: a registration under its ID is refused, with the reason.
    start(f"{prefix}-first")
    wait_until(lambda: held(f"{prefix}-first") is not None, 20)
    code, why = register(f"{prefix}-first")
    assert code == 400 and f"is the registration of container '{prefix}-first'" in why, why
    # The registration first: the container waits, and the agent says why.
    second = f"{prefix}-second"
    assert register(second)[0] == 200
    start(second)
    wait_until(lambda: metric(agent, "dockmesh_catalog_refused_containers") >= 1, 20)
    assert held(second) == f"{prefix}m"  # still the registration, not silently replaced
    wait_until(lambda: f"{second}: not registered: its service ID" in agent.log.read_text(), 10)
    # The registration goes: the container takes its ID at once.
    req = urllib.request.Request(agent.api + f"/v1/agent/service/deregister/{second}", method="PUT")
    urllib.request.urlopen(req, timeout=10).close()
    wait_until(lambda: held(second) == labels["dockmesh.service"], 10)
    assert metric(agent, "dockmesh_catalog_refused_containers") == 0


def test_plan_refuses_discovery_without_its_network_on_two_networks(
    prefix: str, tmp_path: Path
) -> None:
    path = tmp_path / "dockmesh.yaml"
    path.write_text(
        f"project: {prefix}\n"
        "networks: {front: {}, back: {}}\n"
        "services:\n"
        "  api:\n"
        "    image: dockmesh/toolbox\n"
        "    networks: [front, back]\n"
        "    discovery: {port: 8080}\n"
    )
    r = dockmesh("plan", str(path))
    assert r.returncode == 2
    assert r.stderr.splitlines() == [
        f"{path}:7: services.api.discovery: the service is on 2 networks (front, back): "
        "set network: to the one whose address to register"
    ]


def test_each_gateway_follows_its_own_projects_instances(agent: AgentProc, tmp_path: Path) -> None:
    """The gateway's side alone, over loopback: three servers registered through the API as two
    projects' `api`; each project's proxy sends every request to its own."""
    servers = []
    for n in range(3):
        www = tmp_path / f"www{n}"
        www.mkdir()
        (www / "id").write_text(f"inst{n}\n")
        handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(www))
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
    proxies: list[ProxyProc] = []
    try:
        for n, project in enumerate(("shop", "shop", "blog")):
            body = {
                "Name": "api",
                "ID": f"{project}-api-{n}",
                "Address": "127.0.0.1",
                "Port": servers[n].server_address[1],
                "Meta": {"project": project},
            }
            req = urllib.request.Request(
                agent.api + "/v1/agent/service/register",
                data=json.dumps(body).encode(),
                method="PUT",
            )
            urllib.request.urlopen(req, timeout=10).close()
        for project, want in (("shop", {"inst0", "inst1"}), ("blog", {"inst2"})):
            proxy = ProxyProc(tmp_path, "--service", f"api.{project}", "--agent", agent.api)
            proxies.append(proxy)
            wait_until(lambda p=proxy, w=want: len(p.status()["upstreams"]) == len(w), 15)
            assert served_by(proxy, 30) == want
    finally:
        for p in proxies:
            p.stop()
        for s in servers:
            s.shutdown()
            s.server_close()
