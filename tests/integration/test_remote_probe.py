"""`why --probe` and `matrix` between containers on two hosts of a real `dockmesh lab`, over an
attachable overlay, with the probes made by the source's host's agent
(`GET /v1/dockmesh/probe`): `--probe-via-agent` takes that path although the lab's pids are
shown here, and its verdicts equal the local probes' for an allowed pair (a web server on
the other host) and a refused one (a port nothing listens on); host2's agent counts the
probes it made; an agent refuses a container that is not its own. One lab for the module,
removed after it, on failure too."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.test_remote_observe import asked

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("lab")]

ENGINES = ("--engine", "host1", "--engine", "host2")


class Lab:
    def __init__(self, name: str, policy_dir: Path) -> None:
        self.name, self.policy_dir = name, policy_dir
        self.a, self.b = f"{name}-a", f"{name}-b"
        self.net = f"{name}ov"

    def dm(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [sys.executable, "-m", "dockmesh", *args],
            capture_output=True,
            text=True,
            timeout=180,
            env={
                **os.environ,
                "DOCKMESH_LAB": self.name,
                "DOCKMESH_POLICY_DIR": str(self.policy_dir),
                "DOCKMESH_AGENT": "http://127.0.0.1:9",  # the engines themselves, not an agent
                "COLUMNS": "200",
            },
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"dockmesh {' '.join(args)} → {proc.returncode}\n{proc.stderr}")
        return proc

    def on(self, host: str, *cmd: str) -> str:
        return self.dm("lab", "exec", host, "--", *cmd).stdout.strip()


@pytest.fixture(scope="module")
def lab(toolbox: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """Two hosts, an attachable overlay; a on host1 and b on host2, each serving 8080."""
    lab = Lab(f"p{secrets.token_hex(3)}", tmp_path_factory.mktemp("probe17"))
    t0 = time.monotonic()
    try:
        up = lab.dm("lab", "up", "--hosts", "2", "--image", toolbox, "--json", check=False)
        print(f"lab up --hosts 2: {time.monotonic() - t0:.1f} s (exit {up.returncode})")
        assert up.returncode == 0, up.stderr
        lab.on("host1", "docker", "network", "create", "-d", "overlay", "--attachable", lab.net)
        for host, name in (("host1", lab.a), ("host2", lab.b)):
            lab.on(host, "docker", "run", "-d", "--name", name, "--network", lab.net,
                   toolbox, "httpd", "-f", "-p", "8080", "-h", "/")  # fmt: skip
        wait_seen(lab, "host2", lab.b)
        wait_seen(lab, "host1", lab.a)
        yield lab
    finally:
        down = lab.dm("lab", "down", check=False)
        print(f"lab down: exit {down.returncode} {down.stderr.strip()}")


def agent_get(lab: Lab, host: str, path: str) -> tuple[int, str]:
    """`GET path` of `host`'s agent, asked from inside that host."""
    got = lab.dm(
        "lab", "exec", host, "--", "curl", "-s", "-m", "20", "-w", "\n%{http_code}",
        f"http://127.0.0.1:8500{path}",
    )  # fmt: skip
    body, _, code = got.stdout.rpartition("\n")
    return int(code), body


def wait_seen(lab: Lab, host: str, container: str) -> None:
    """Until `host`'s agent has the container in its topology (it follows events)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if agent_get(lab, host, f"/v1/dockmesh/stats?container={container}")[0] == 200:
            return
        time.sleep(0.3)
    raise AssertionError(f"{host}'s agent never saw {container}")


def why(lab: Lab, src: str, dst: str, port: str, *extra: str) -> tuple[int, dict[str, Any]]:
    got = lab.dm("why", src, dst, "--port", port, "--probe", "--json", *ENGINES, *extra,
                 check=False)  # fmt: skip
    assert got.returncode in (0, 1), got.stderr
    return got.returncode, json.loads(got.stdout)


def probe_of(doc: dict[str, Any]) -> tuple[bool, bool | None]:
    return doc["reachable"], doc["probe"]["ok"]


@pytest.mark.parametrize(
    ("port", "verdict"),
    [("8080/tcp", (True, True)), ("9/tcp", (False, False))],
    ids=["allowed", "refused"],
)
def test_why_through_the_agent_agrees_with_the_local_probe(
    lab: Lab, port: str, verdict: tuple[bool, bool]
) -> None:
    for src, dst, src_host in ((lab.b, lab.a, "host2"), (lab.a, lab.b, "host1")):
        here_code, here = why(lab, src, dst, port)
        before = asked(lab.name, src_host, "/v1/dockmesh/probe")
        t0 = time.monotonic()
        via_code, via = why(lab, src, dst, port, "--probe-via-agent")
        took = time.monotonic() - t0
        after = asked(lab.name, src_host, "/v1/dockmesh/probe")
        print(f"why {src}→{dst} {port} via {src_host}'s agent: {took:.2f} s; {via['probe']}")
        assert probe_of(here) == probe_of(via) == verdict, (here["probe"], via["probe"])
        assert here_code == via_code == (0 if verdict[0] else 1)
        assert after > before  # that host's agent made the probe
        assert via["probe"]["detail"].startswith("TCP connect to ")


def test_matrix_through_the_agents_agrees_with_the_local_probes(lab: Lab) -> None:
    args = ("matrix", "--port", "8080/tcp", "--json", "--select", f"container={lab.a}",
            "--select", f"container={lab.b}", *ENGINES)  # fmt: skip
    here = json.loads(lab.dm(*args).stdout)
    before = {h: asked(lab.name, h, "/v1/dockmesh/probe") for h in ("host1", "host2")}
    via = json.loads(lab.dm(*args, "--probe-via-agent").stdout)
    after = {h: asked(lab.name, h, "/v1/dockmesh/probe") for h in ("host1", "host2")}
    print(f"matrix: here {here['elapsed_s']} s, through the agents {via['elapsed_s']} s")

    def seen(doc: dict[str, Any]) -> dict[tuple[str, str], tuple[bool, bool | None]]:
        return {(x["src"], x["dst"]): (x["expected"], x["observed"]) for x in doc["pairs"]}

    assert seen(here) == seen(via) == {(lab.a, lab.b): (True, True), (lab.b, lab.a): (True, True)}
    assert here["unprobed"] == via["unprobed"] == 0 and via["mismatches"] == 0
    assert all(after[h] > before[h] for h in after)  # each source's own host probed


def test_an_agent_probes_only_from_its_own_containers(lab: Lab) -> None:
    # b runs on host2: host1's agent does not know it; a malformed question is a 400.
    code, text = agent_get(lab, "host1", f"/v1/dockmesh/probe?container={lab.b}&address=10.0.0.1")
    assert code == 404 and "\n" not in text.strip(), text
    code, text = agent_get(lab, "host1", f"/v1/dockmesh/probe?container={lab.a}&address=a.b")
    assert code == 400 and "not an IPv4 or IPv6 address" in text
