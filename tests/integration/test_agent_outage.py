"""The agent while its engine does not answer: the engine's socket reaches the agent through a
relay the test cuts (dockerd itself runs on untouched), a container without a check is
killed through the engine's own socket meanwhile, and the agent — following the container's
process itself — takes it out of DNS and `?passing` within a second. The agent says all
along that it has lost its engine (`X-Consul-KnownLeader: false`, no leader, the metrics),
and says it no more once the relay is back."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from dockmesh.testing.relay import CuttableRelay
from tests.integration.conftest import free_subnets
from tests.integration.test_agent import AgentProc, dig, wait_until

pytestmark = pytest.mark.integration


def get(agent: AgentProc, path: str) -> tuple[Any, bytes]:
    with urllib.request.urlopen(agent.api + path, timeout=15) as r:
        return r.headers, r.read()


def known_leader(agent: AgentProc, path: str = "/v1/health/service/none") -> str:
    return str(get(agent, path)[0]["X-Consul-KnownLeader"])


def metric(agent: AgentProc, name: str) -> float:
    text = get(agent, "/metrics")[1].decode()
    m = re.search(rf'^{name}\{{engine="local"\}} (\S+)$', text, re.M)
    assert m, f"{name} not in /metrics"
    return float(m.group(1))


def test_a_container_killed_while_the_engine_is_cut_leaves_dns_and_passing_within_a_second(
    api: Any, prefix: str, toolbox: str, tmp_path: Path, relay: CuttableRelay
) -> None:
    (subnet,) = free_subnets(api, 1)
    net = f"{prefix}_net"
    api.create_network(net, ipam={"Config": [{"Subnet": subnet}]})
    svc = f"{prefix}svc"
    labels = {"dockmesh.service": svc, "dockmesh.port": "8080"}  # no check: only liveness
    ids = {}
    for name in ("a", "b"):
        cid = api.create_container(
            toolbox,
            name=f"{prefix}-{name}",
            command=["sleep", "300"],
            labels=labels,
            host_config=api.create_host_config(network_mode=net),
        )["Id"]
        api.start(cid)
        ids[name] = cid
    agent = AgentProc(tmp_path, "--engine", f"unix://{relay.path}")
    try:
        agent.start()

        def passing() -> set[str]:
            body = get(agent, f"/v1/health/service/{svc}?passing")[1]
            return {n["Service"]["ID"] for n in json.loads(body)}

        wait_until(lambda: passing() == {f"{prefix}-a", f"{prefix}-b"}, 20)
        assert len(dig(agent.dns_port, f"{svc}.service.dockmesh")) == 2
        assert known_leader(agent) == "true"
        assert metric(agent, "dockmesh_engine_connected") == 1
        assert json.loads(get(agent, "/v1/status/leader")[1]) != ""

        relay.cut()  # the engine stops answering the agent; dockerd runs on
        wait_until(lambda: known_leader(agent) == "false", 5)
        assert json.loads(get(agent, "/v1/status/leader")[1]) == ""
        assert known_leader(agent, f"/v1/catalog/service/{svc}") == "false"
        assert metric(agent, "dockmesh_engine_connected") == 0

        api.kill(ids["a"])  # through the engine's own socket, not the cut relay
        t0 = time.monotonic()

        def gone() -> bool:
            return (
                passing() == {f"{prefix}-b"}
                and len(dig(agent.dns_port, f"{svc}.service.dockmesh")) == 1
            )

        while not gone():
            assert time.monotonic() - t0 < 1.0, (
                f"still served {time.monotonic() - t0:.2f} s after its death: {passing()}"
            )
            time.sleep(0.02)
        assert known_leader(agent) == "false"  # still cut
        time.sleep(1.0)
        assert metric(agent, "dockmesh_engine_last_sync_age_seconds") >= 1.0
        topo = subprocess.run(
            [sys.executable, "-m", "dockmesh", "topology", "--json"],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "DOCKMESH_AGENT": agent.api},
        )
        assert topo.returncode == 0 and "may be stale" in topo.stderr
        json.loads(topo.stdout)  # the JSON itself is untouched

        relay.restore()
        wait_until(lambda: known_leader(agent) == "true", 15)  # the back-off is 5 s at most
        assert json.loads(get(agent, "/v1/status/leader")[1]) != ""
        assert metric(agent, "dockmesh_engine_connected") == 1
        assert metric(agent, "dockmesh_engine_last_sync_age_seconds") == 0
        assert passing() == {f"{prefix}-b"}  # the resync agrees: a is dead
        assert agent.stop() == 0
    finally:
        if agent.proc is not None and agent.proc.poll() is None:
            agent.proc.kill()
            agent.proc.wait()
