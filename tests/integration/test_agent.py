"""`dockmesh agent` as a user runs it: a process on free ports, the real engine, real clients
(curl-like HTTP, dig), containers labelled for discovery."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dockmesh.engine.backend import DEFAULT_URL
from dockmesh.testing.relay import CuttableRelay
from tests.integration.conftest import free_subnets


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class AgentProc:
    def __init__(self, tmp: Path, *extra: str) -> None:
        self.extra = extra
        self.api_port, self.dns_port = free_port(), free_port()
        self.state = tmp / "state.db"
        self.log = tmp / "agent.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "dockmesh",
                "agent",
                "--api",
                f"127.0.0.1:{self.api_port}",
                "--dns",
                f"127.0.0.1:{self.dns_port}",
                "--state",
                str(self.state),
                "--no-gateway-dns",
                *self.extra,
            ],
            stdout=self.log.open("ab"),
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                self.get("/v1/status/leader")
                return
            except OSError:
                assert self.proc.poll() is None, self.log.read_text()
                time.sleep(0.1)
        raise AssertionError("agent did not answer: " + self.log.read_text())

    def stop(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=20)

    def get(self, path: str) -> tuple[str | None, Any]:
        with urllib.request.urlopen(self.api + path, timeout=15) as r:
            return r.headers.get("X-Consul-Index"), json.load(r)

    def put(self, path: str, body: bytes) -> Any:
        req = urllib.request.Request(self.api + path, data=body, method="PUT")
        with urllib.request.urlopen(req, timeout=15) as r:
            return json.load(r)


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[AgentProc]:
    a = AgentProc(tmp_path)
    a.start()
    yield a
    if a.proc is not None and a.proc.poll() is None:
        a.proc.kill()
        a.proc.wait()


def wait_until(pred: Any, limit: float) -> float:
    t = time.monotonic()
    while time.monotonic() - t < limit:
        if pred():
            return time.monotonic() - t
        time.sleep(0.05)
    raise AssertionError("condition not reached in time")


def dig(port: int, name: str, qtype: str = "A") -> list[str]:
    out = subprocess.run(
        ["dig", "+short", "+time=2", "+tries=1", "@127.0.0.1", "-p", str(port), name, qtype],
        capture_output=True,
        text=True,
        timeout=10,
    ).stdout
    return sorted(line for line in out.splitlines() if line)


def test_labelled_containers_are_discovered_checked_and_leave_at_once(
    api: Any, prefix: str, agent: AgentProc, toolbox: str
) -> None:
    (subnet,) = free_subnets(api, 1)
    net = f"{prefix}_net"
    api.create_network(net, ipam={"Config": [{"Subnet": subnet}]})
    labels = {
        "dockmesh.service": f"{prefix}svc",
        "dockmesh.port": "8080",
        "dockmesh.check.http": "/health",
        "dockmesh.check.interval": "1s",
    }
    ids = []
    for i in (1, 2):
        cid = api.create_container(
            toolbox,
            name=f"{prefix}-w{i}",
            hostname=f"{prefix}-w{i}",
            labels=labels,
            host_config=api.create_host_config(network_mode=net),
        )["Id"]
        api.start(cid)
        ids.append(cid)
    svc = f"{prefix}svc"

    def passing() -> set[str]:
        _, nodes = agent.get(f"/v1/health/service/{svc}?passing")
        return {n["Service"]["ID"] for n in nodes}

    wait_until(lambda: passing() == {f"{prefix}-w1", f"{prefix}-w2"}, 10)
    assert len(dig(agent.dns_port, f"{svc}.service.dockmesh")) == 2
    srv = dig(agent.dns_port, f"{svc}.service.dockmesh", "SRV")
    assert len(srv) == 2 and all(" 8080 " in r for r in srv)
    # the backend fails its check: out of ?passing and DNS within an interval or two
    subprocess.run(["docker", "exec", f"{prefix}-w2", "touch", "/tmp/unhealthy"], check=True)
    subprocess.run(["docker", "exec", f"{prefix}-w2", "rm", "-f", "/www/health"], check=True)
    wait_until(lambda: passing() == {f"{prefix}-w1"}, 20)
    assert len(dig(agent.dns_port, f"{svc}.service.dockmesh")) == 1
    # stopped: gone from the catalog (the engine's event), not merely failing its check (how
    # soon an event reaches the model is benchmarks/topology.py's measure)
    api.stop(ids[0], timeout=0)

    def listed() -> set[str]:
        return {row["ServiceID"] for row in agent.get(f"/v1/catalog/service/{svc}")[1]}

    wait_until(lambda: f"{prefix}-w1" not in listed(), 20)
    assert listed() == {f"{prefix}-w2"} and passing() == set()  # w2 still there, failing
    assert dig(agent.dns_port, f"{svc}.service.dockmesh") == []


def test_manual_registrations_and_kv_survive_a_restart(agent: AgentProc, prefix: str) -> None:
    body = json.dumps(
        {"Name": f"{prefix}m", "ID": f"{prefix}m-1", "Address": "10.9.9.9", "Port": 1234}
    )
    urllib.request.urlopen(
        urllib.request.Request(
            agent.api + "/v1/agent/service/register", data=body.encode(), method="PUT"
        ),
        timeout=10,
    ).close()
    assert agent.put(f"/v1/kv/{prefix}/k", b"kept") is True
    assert agent.stop() == 0  # SIGTERM: a clean exit
    agent.start()
    _, nodes = agent.get(f"/v1/catalog/service/{prefix}m")
    assert [n["ServiceID"] for n in nodes] == [f"{prefix}m-1"]
    _, kv = agent.get(f"/v1/kv/{prefix}/k")
    import base64

    assert base64.b64decode(kv[0]["Value"]) == b"kept"


def test_topology_from_the_agent_matches_the_engine(agent: AgentProc) -> None:
    def names(url: str) -> set[str]:
        out = subprocess.run(
            [sys.executable, "-m", "dockmesh", "topology", "--json"],
            capture_output=True,
            text=True,
            env={**os.environ, "DOCKMESH_AGENT": url},
            check=True,
        ).stdout
        return {c["name"] for c in json.loads(out)["containers"]}

    # Other tests (and other users of the engine) make and remove containers meanwhile: the
    # agent holds every container that the engine held before and after it was asked, and
    # none that it held neither time; it follows by events, so it may be asked again.
    for _ in range(20):
        before, via, after = (
            names("http://127.0.0.1:1"),
            names(agent.api),
            names("http://127.0.0.1:1"),
        )
        if before & after <= via <= before | after:
            break
        time.sleep(0.5)
    assert before & after <= via <= before | after, (before, via, after)
    tree = subprocess.run(
        [sys.executable, "-m", "dockmesh", "topology"],
        capture_output=True,
        text=True,
        env={**os.environ, "DOCKMESH_AGENT": agent.api},
        check=True,
    )
    assert tree.stdout.startswith("topology v")


def test_compose_services_register_with_register_compose(
    api: Any, prefix: str, tmp_path: Path
) -> None:
    """An existing Compose app gets discovery without edits; `dockmesh.*` labels written in a
    compose file work too."""
    compose = tmp_path / "docker-compose.yml"
    compose.write_text(
        f"""
version: "2.4"
services:
  web:
    image: dockmesh/toolbox:latest
    expose: ["8080"]
  api:
    image: dockmesh/toolbox:latest
    labels:
      dockmesh.service: {prefix}labelled
      dockmesh.port: "8080"
      dockmesh.check.http: /health
      dockmesh.check.interval: 1s
"""
    )
    cmd = ["docker-compose", "-p", prefix, "-f", str(compose)]
    agent = AgentProc(tmp_path, "--register-compose")
    try:
        subprocess.run([*cmd, "up", "-d"], check=True, capture_output=True, timeout=120)
        agent.start()

        def passing(service: str) -> list[list[str]]:
            _, nodes = agent.get(f"/v1/health/service/{service}?passing")
            return [n["Service"]["Tags"] for n in nodes]

        # Other Compose apps on the engine (other tests, other users) may have a "web" too: ours
        # is the one tagged with its project. 30 s: a guard against hanging on a busy machine.
        wait_until(lambda: [prefix] in passing(f"web.{prefix}"), 30)
        wait_until(lambda: len(passing(f"{prefix}labelled")) == 1, 30)
    finally:
        if agent.proc is not None:
            agent.stop()
        subprocess.run([*cmd, "down", "-v"], capture_output=True, timeout=120)


def test_the_agent_starts_without_its_engine_and_follows_it_once_it_answers(
    tmp_path: Path,
) -> None:
    engine_url = os.environ.get("DOCKER_HOST") or DEFAULT_URL
    if not engine_url.startswith("unix://"):
        pytest.skip("the relay stands in for a unix socket engine")
    relay = CuttableRelay(tmp_path / "docker.sock", engine_url.removeprefix("unix://"))
    agent = AgentProc(tmp_path, "--engine", f"unix://{relay.path}")
    try:
        agent.start()  # answers while the engine's socket does not exist yet
        with pytest.raises(urllib.error.HTTPError) as absent:
            agent.get("/v1/dockmesh/topology")
        assert absent.value.code == 503
        assert agent.proc is not None and agent.proc.poll() is None
        relay.restore()

        def followed() -> bool:
            try:
                return bool(agent.get("/v1/dockmesh/topology")[1]["engines"])
            except urllib.error.HTTPError:
                return False

        wait_until(followed, 20)  # the back-off is 5 s at most
        assert agent.stop() == 0
    finally:
        if agent.proc is not None and agent.proc.poll() is None:
            agent.proc.kill()
            agent.proc.wait()
        relay.cut()
