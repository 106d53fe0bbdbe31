"""`dockmesh lab` for real: two engines in network namespaces as a swarm, etcd, an agent per
host; exec with the host's engine and DNS, `--engine hostN`, partitions, a killed agent, a
stopped etcd member, and `lab down` leaving nothing. One lab (its own name, so it never meets
another) for the module: two hosts, to spare the machine's cores."""

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

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("lab")]


def lab(
    name: str, *args: str, check: bool = True, timeout: float = 180
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "dockmesh", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "DOCKMESH_LAB": name, "COLUMNS": "200"},
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"dockmesh {' '.join(args)} → {proc.returncode}\n{proc.stderr}")
    return proc


def status(name: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(lab(name, "lab", "status", "--json").stdout)
    return doc


def state(name: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(Path(f"/run/dockmesh-lab/lab-{name}/lab.json").read_text())
    return doc


def pid_alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def lab_pids(name: str) -> list[int]:
    marks = (f"/run/dockmesh-lab/lab-{name}/", f"/var/lib/dockmesh-lab/lab-{name}/")
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            line = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if any(m in line for m in marks) and pid_alive(int(entry)):
            found.append(int(entry))
    return found


def leftovers(name: str, pids: list[int]) -> list[str]:
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    left = [f"netns {line.split()[0]}" for line in netns.splitlines() if f"dml-{name}-" in line]
    for path in (
        f"/run/dockmesh-lab/lab-{name}",
        f"/var/lib/dockmesh-lab/lab-{name}",
        f"/etc/netns/dml-{name}-host1",
        f"/etc/netns/dml-{name}-host2",
    ):
        if os.path.exists(path):
            left.append(path)
    left += [f"pid {p}" for p in pids if pid_alive(p)]
    left += [f"pid {p} (not recorded)" for p in lab_pids(name)]
    return left


@pytest.fixture(scope="module")
def lab2(toolbox: str) -> Iterator[dict[str, Any]]:
    """A lab of two hosts; removed after the module, on failure too."""
    name = f"t{secrets.token_hex(4)}"
    t0 = time.monotonic()
    try:
        up = lab(name, "lab", "up", "--hosts", "2", "--image", toolbox, "--json", check=False)
        print(f"lab up --hosts 2: {time.monotonic() - t0:.1f} s (exit {up.returncode})")
        assert up.returncode == 0, up.stderr
        yield {
            "name": name,
            "up": json.loads(up.stdout),
            "pids": list(state(name)["pids"].values()),
        }
    finally:
        lab(name, "lab", "down", check=False)


def test_status_shows_hosts_roles_agents_and_etcd(lab2: dict[str, Any]) -> None:
    doc = status(lab2["name"])
    hosts = doc["hosts"]
    assert [h["name"] for h in hosts] == ["host1", "host2"]
    assert [h["swarm_role"] for h in hosts] == ["manager", "worker"]
    assert all(h["engine_ok"] and h["agent_ok"] for h in hosts), hosts
    assert all(h["address"].startswith("10.") for h in hosts)
    [member] = doc["etcd"]
    assert member["healthy"] and member["leader"], member
    assert set(member) >= {"name", "healthy", "leader"}
    # No route out: a host reaches the lab's subnet and its own bridges, nothing past the switch
    # (the machine's egress guard never even sees lab traffic).
    routes = lab(lab2["name"], "lab", "exec", "host1", "--", "ip", "-4", "route").stdout
    assert "default" not in routes and doc["subnet"] in routes
    sw = subprocess.run(
        ["ip", "-n", f"dml-{lab2['name']}-sw", "-4", "route"], capture_output=True, text=True
    )
    assert sw.returncode == 0 and sw.stdout.strip() == ""
    # The swarm names its nodes after the lab's hosts.
    nodes = lab(lab2["name"], "lab", "exec", "host1", "--", "docker", "node", "ls").stdout
    assert "host1" in nodes and "host2" in nodes


def test_a_second_lab_of_the_same_name_is_refused(lab2: dict[str, Any]) -> None:
    again = lab(lab2["name"], "lab", "up", "--hosts", "1", check=False)
    assert again.returncode == 2
    assert "is up" in again.stderr and len(again.stderr.strip().splitlines()) == 1


def test_exec_runs_with_the_hosts_engine_and_dns(lab2: dict[str, Any], toolbox: str) -> None:
    name = lab2["name"]
    svc = f"{name}web"
    lab(
        name, "lab", "exec", "host2", "--",
        "docker", "run", "-d", "--name", svc,
        "-l", f"dockmesh.service={svc}", "-l", "dockmesh.port=8080",
        toolbox, "sleep", "600",
    )  # fmt: skip
    # The container is on host2's engine only: the machine's own engine does not have it.
    assert subprocess.run(["docker", "inspect", svc], capture_output=True).returncode != 0
    seen = ""
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and not seen:
        q = lab(name, "lab", "exec", "host2", "--", "dig", "+short", "+time=1", "+tries=1",
                f"{svc}.service.dockmesh", check=False)  # fmt: skip
        seen = q.stdout.strip()
        time.sleep(0.2)
    assert seen.count(".") == 3, "host2's agent never answered for its container"
    # DNS went to host2's agent: the resolv.conf in the namespace names it.
    conf = lab(name, "lab", "exec", "host2", "--", "cat", "/etc/resolv.conf").stdout
    assert f"nameserver {lab2['up']['hosts'][1]['address']}" in conf
    # The exit code of the command is the command's.
    assert (
        lab(name, "lab", "exec", "host1", "--", "sh", "-c", "exit 7", check=False).returncode == 7
    )
    # `--engine host2` is that lab engine for every command that reads engines.
    topo = json.loads(lab(name, "topology", "--json", "--engine", "host2").stdout)
    assert [e["name"] for e in topo["engines"]] == ["host2"]
    assert svc in {c["name"] for c in topo["containers"]}
    bad = lab(name, "topology", "--engine", "host9", check=False)
    assert bad.returncode == 2 and "host1 to host2" in bad.stderr


def _reaches(name: str, src: str, address: str) -> bool:
    q = lab(name, "lab", "exec", src, "--", "dig", f"@{address}", "+time=1", "+tries=1",
            "+short", "consul.service.dockmesh", check=False)  # fmt: skip
    return q.returncode == 0


def test_partition_and_heal(lab2: dict[str, Any]) -> None:
    name = lab2["name"]
    h2 = lab2["up"]["hosts"][1]["address"]
    etcd = lab2["up"]["etcd"][0]["address"]
    assert _reaches(name, "host1", h2)
    try:
        lab(name, "lab", "partition", "host2", "--from", "host1")
        assert not _reaches(name, "host1", h2)
        # Only from host1: host2 still reaches etcd.
        health = lab(name, "lab", "exec", "host2", "--", "curl", "-s", "-m", "2",
                     f"http://{etcd}:2379/health", check=False)  # fmt: skip
        assert '"health":"true"' in health.stdout
        lab(name, "lab", "partition", "host2", "--from", "etcd")
        cut = lab(name, "lab", "exec", "host2", "--", "curl", "-s", "-m", "1",
                  f"http://{etcd}:2379/health", check=False)  # fmt: skip
        assert cut.returncode != 0
        assert status(name)["partitions"] == ["host2 from host1", "host2 from etcd"]
    finally:
        lab(name, "lab", "heal")
    assert _reaches(name, "host1", h2)
    assert status(name)["partitions"] == []
    bad = lab(name, "lab", "partition", "host7", check=False)
    assert bad.returncode == 2 and "host7" in bad.stderr


def test_kill_and_start_an_agent(lab2: dict[str, Any]) -> None:
    name = lab2["name"]
    pid = state(name)["pids"]["agent@host2"]
    lab(name, "lab", "kill", "agent@host2")
    assert not pid_alive(pid)
    hosts = {h["name"]: h for h in status(name)["hosts"]}
    assert not hosts["host2"]["agent_ok"] and hosts["host1"]["agent_ok"]
    t0 = time.monotonic()
    lab(name, "lab", "start", "agent@host2")
    print(f"agent@host2 answered {time.monotonic() - t0:.1f} s after lab start")
    assert {h["name"]: h for h in status(name)["hosts"]}["host2"]["agent_ok"]
    lab2["pids"].append(state(name)["pids"]["agent@host2"])


def test_kill_and_start_an_engine(lab2: dict[str, Any]) -> None:
    """A dockerd killed leaves its pidfile: started again at once, it must not take its dead
    predecessor (a zombie until init reaps it) for a running daemon."""
    name = lab2["name"]
    for _ in range(2):
        lab(name, "lab", "kill", "engine@host2")
        assert not {h["name"]: h for h in status(name)["hosts"]}["host2"]["engine_ok"]
        lab(name, "lab", "start", "engine@host2")
        assert {h["name"]: h for h in status(name)["hosts"]}["host2"]["engine_ok"]
    lab2["pids"].append(state(name)["pids"]["engine@host2"])


def test_stop_and_start_etcd(lab2: dict[str, Any]) -> None:
    name = lab2["name"]
    lab(name, "lab", "stop", "etcd@1")
    [member] = status(name)["etcd"]
    assert not member["healthy"]
    lab(name, "lab", "start", "etcd@1")
    [member] = status(name)["etcd"]
    assert member["healthy"] and member["leader"]
    lab2["pids"].append(state(name)["pids"]["etcd@etcd1"])
    bad = lab(name, "lab", "kill", "etcd@2", check=False)
    assert bad.returncode == 2 and "etcd2" in bad.stderr


def test_down_leaves_nothing(lab2: dict[str, Any]) -> None:
    name = lab2["name"]
    t0 = time.monotonic()
    lab(name, "lab", "down")
    print(f"lab down: {time.monotonic() - t0:.1f} s")
    assert leftovers(name, lab2["pids"]) == []
    # No lab: down is a no-op, status says so (exit 2).
    assert lab(name, "lab", "down").returncode == 0
    assert lab(name, "lab", "status", check=False).returncode == 2
