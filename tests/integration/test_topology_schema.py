"""`dockmesh topology --json` on the real engine, read directly and through a running agent,
validates against docs/topology.schema.json — with containers in each state a user meets:
running with a healthcheck and a published port, created and never started, exited."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from dockmesh.engine.backend import default_url
from tests.integration.conftest import TOOLBOX, dockmesh, free_subnets, run_toolbox

pytestmark = pytest.mark.integration

SCHEMA = json.loads(
    (Path(__file__).resolve().parents[2] / "docs" / "topology.schema.json").read_text()
)
# No agent answers there: the command reads the engine.
NO_AGENT = "http://127.0.0.1:1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def problems(doc: Any) -> list[str]:
    v = Draft202012Validator(SCHEMA)
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in v.iter_errors(doc)]


@pytest.fixture
def objects(api: Any, prefix: str, toolbox: str) -> dict[str, str]:
    s1, s2 = free_subnets(api, 2)
    inner, outer = f"{prefix}_inner", f"{prefix}_outer"
    api.create_network(
        inner,
        internal=True,
        labels={"team": "db"},
        ipam={"Config": [{"Subnet": s1, "Gateway": s1.replace(".0/24", ".1")}]},
    )
    api.create_network(outer, attachable=True, ipam={"Config": [{"Subnet": s2}]})
    # Running, healthchecked, published on a loopback port, on both networks.
    host_config = api.create_host_config(
        network_mode=outer, port_bindings={"8080/tcp": ("127.0.0.1", free_port())}
    )
    networking = api.create_networking_config({outer: api.create_endpoint_config(aliases=["web"])})
    web = api.create_container(
        TOOLBOX,
        name=f"{prefix}-web",
        hostname=f"{prefix}-web",
        host_config=host_config,
        networking_config=networking,
        ports=[8080, (53, "udp")],
        healthcheck={"test": ["CMD-SHELL", "true"], "interval": 1_000_000_000},
    )["Id"]
    api.start(web)
    api.connect_container_to_network(web, inner, aliases=["db"])
    # Created, never started.
    api.create_container(
        TOOLBOX, name=f"{prefix}-idle", host_config=api.create_host_config(network_mode=inner)
    )
    # Exited.
    gone = run_toolbox(api, f"{prefix}-gone", outer, command=["true"])
    api.wait(gone, timeout=30)
    return {"web": f"{prefix}-web", "idle": f"{prefix}-idle", "gone": f"{prefix}-gone"}


def mine(doc: dict[str, Any], prefix: str) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in doc["containers"] if c["name"].startswith(prefix)}


def test_topology_json_from_the_engine_validates(objects: dict[str, str], prefix: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "dockmesh", "topology", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "DOCKMESH_AGENT": NO_AGENT},
        check=True,
    )
    doc = json.loads(proc.stdout)
    assert problems(doc) == []
    ours = mine(doc, prefix)
    assert ours[objects["web"]]["state"] == "running"
    assert ours[objects["idle"]]["state"] == "created" and ours[objects["idle"]]["pid"] is None
    assert ours[objects["gone"]]["state"] == "exited" and ours[objects["gone"]]["pid"] is None
    assert {p["protocol"] for p in ours[objects["web"]]["ports"]} == {"tcp", "udp"}
    # The engine named twice on the command line: two engines, one document.
    url = default_url(os.environ.get("DOCKER_HOST"))
    named = dockmesh("topology", "--json", "--engine", f"one={url}", "--engine", f"two={url}")
    assert named.returncode == 0, named.stderr
    both = json.loads(named.stdout)
    assert problems(both) == []
    assert [e["name"] for e in both["engines"]] == ["one", "two"]


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[str]:
    api_port = free_port()
    log = tmp_path / "agent.log"
    env = {
        **os.environ,
        # The agent keeps an applied policy's table true: this one has none to keep.
        "DOCKMESH_POLICY_DIR": str(tmp_path / "policy"),
    }
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "dockmesh", "agent",
            "--api", f"127.0.0.1:{api_port}", "--dns", "off", "--state", "",
            "--no-gateway-dns",
        ],
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        env=env,
    )  # fmt: skip
    url = f"http://127.0.0.1:{api_port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(url + "/v1/dockmesh/topology", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "agent did not serve a topology: " + log.read_text()
            time.sleep(0.1)
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_topology_json_from_the_agent_validates(
    objects: dict[str, str], prefix: str, agent: str
) -> None:
    def served() -> dict[str, Any]:
        with urllib.request.urlopen(agent + "/v1/dockmesh/topology", timeout=15) as r:
            doc: dict[str, Any] = json.load(r)
            assert r.headers["X-Consul-Index"] == str(doc["version"])
            return doc

    # The agent follows events: wait until it holds the three containers.
    deadline = time.monotonic() + 30
    doc = served()
    while len(mine(doc, prefix)) < 3 and time.monotonic() < deadline:
        time.sleep(0.2)
        doc = served()
    assert problems(doc) == []
    assert set(mine(doc, prefix)) == set(objects.values())
    # What the command line prints after reading it from the agent.
    proc = subprocess.run(
        [sys.executable, "-m", "dockmesh", "topology", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "DOCKMESH_AGENT": agent},
        check=True,
    )
    printed = json.loads(proc.stdout)
    assert problems(printed) == []
    assert set(mine(printed, prefix)) == set(objects.values())
