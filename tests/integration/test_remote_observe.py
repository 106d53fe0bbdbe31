"""`stats`, `doctor` and `flows` for a container on another host, answered by that host's agent,
on a real two-host `dockmesh lab`: the command's document is the one host2's agent gives (its
request counter says it was asked), the flows are host2's own conntrack table (which the
machine's table does not hold), `--agent URL` from inside host1 asks host2 over the lab's
network, and asking the wrong host is refused in one line. One lab for the module, removed
after it, on failure too."""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("lab")]


def dm(
    lab: str, *args: str, check: bool = True, timeout: float = 180
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "dockmesh", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "DOCKMESH_LAB": lab, "COLUMNS": "200"},
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"dockmesh {' '.join(args)} → {proc.returncode}\n{proc.stderr}")
    return proc


def on_host(lab: str, host: str, *cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return dm(lab, "lab", "exec", host, "--", *cmd, check=check)


def agent_get(lab: str, host: str, path: str) -> tuple[int, str]:
    """`GET path` of `host`'s agent, asked from inside that host (curl, as a user would)."""
    got = on_host(
        lab, host, "curl", "-s", "-m", "20", "-w", "\n%{http_code}",
        f"http://127.0.0.1:8500{path}",
    )  # fmt: skip
    body, _, code = got.stdout.rpartition("\n")
    return int(code), body


def asked(lab: str, host: str, route: str) -> int:
    """How many times `host`'s agent answered `route` with a 200."""
    _, text = agent_get(lab, host, "/metrics")
    pattern = rf'dockmesh_api_requests_total{{[^}}]*route="{re.escape(route)}"[^}}]*code="200"[^}}]*}} (\S+)'
    found = [float(m) for m in re.findall(pattern, text)]
    if not found:  # the labels may come in another order
        found = [
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("dockmesh_api_requests_total{")
            and f'route="{route}"' in line
            and 'code="200"' in line
        ]
    return int(sum(found))


@pytest.fixture(scope="module")
def lab2(toolbox: str) -> Iterator[dict[str, Any]]:
    """Two hosts; on host2 a web server and a client on a network of their own, and traffic
    between them. Removed after the module, on failure too."""
    name = f"r{secrets.token_hex(4)}"
    t0 = time.monotonic()
    try:
        up = dm(name, "lab", "up", "--hosts", "2", "--image", toolbox, "--json", check=False)
        print(f"lab up --hosts 2: {time.monotonic() - t0:.1f} s (exit {up.returncode})")
        assert up.returncode == 0, up.stderr
        web, client, net = f"{name}-web", f"{name}-client", f"{name}-net"
        on_host(name, "host2", "docker", "network", "create", net)
        on_host(name, "host2", "docker", "run", "-d", "--name", web, "--network", net,
                toolbox, "httpd", "-f", "-p", "8080", "-h", "/")  # fmt: skip
        on_host(name, "host2", "docker", "run", "-d", "--name", client, "--network", net,
                toolbox, "sleep", "600")  # fmt: skip
        # The agent turns conntrack's byte accounting on when first asked for flows: ask once
        # before the traffic, so its connections count bytes.
        doc = {"hosts": json.loads(up.stdout)["hosts"]}
        deadline = time.monotonic() + 20
        while True:
            got = dm(name, "flows", "--engine", "host2", "--json", check=False)
            if got.returncode == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.3)
        assert got.returncode == 0, got.stderr
        for _ in range(3):
            on_host(name, "host2", "docker", "exec", client,
                    "wget", "-q", "-O", "/dev/null", f"http://{web}:8080/etc/hostname")  # fmt: skip
        yield {"name": name, "web": web, "client": client, "net": net, **doc}
    finally:
        down = dm(name, "lab", "down", check=False)
        print(f"lab down: exit {down.returncode} {down.stderr.strip()}")


def seen_by_agent(lab: str, container: str) -> None:
    """Waits until host2's agent has the container in its topology (it follows events)."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        code, _ = agent_get(lab, "host2", f"/v1/dockmesh/stats?container={container}")
        if code == 200:
            return
        time.sleep(0.2)
    raise AssertionError(f"host2's agent never saw {container}")


def test_stats_of_a_host2_container_is_host2s_agents_answer(lab2: dict[str, Any]) -> None:
    lab, web = lab2["name"], lab2["web"]
    seen_by_agent(lab, web)
    before = asked(lab, "host2", "/v1/dockmesh/stats")
    t0 = time.perf_counter()
    mine = json.loads(dm(lab, "stats", web, "--engine", "host2", "--json").stdout)
    print(f"stats --engine host2: {(time.perf_counter() - t0) * 1000:.0f} ms")
    assert asked(lab, "host2", "/v1/dockmesh/stats") == before + 1
    code, body = agent_get(lab, "host2", f"/v1/dockmesh/stats?container={web}")
    assert code == 200
    theirs = json.loads(body)
    [c] = mine["containers"]
    [t] = theirs["containers"]
    assert (c["name"], c["id"]) == (t["name"], t["id"])
    # The engine as the command names it (the agent has its own name for its one engine).
    assert c["engine"] == "host2" and "error" not in c
    assert [(i["name"], i["network"]) for i in c["interfaces"]] == [
        (i["name"], i["network"]) for i in t["interfaces"]
    ]
    assert [i["network"] for i in c["interfaces"]] == [lab2["net"]]
    # Read first by the command, then by us: the counters only grew.
    for a, b in zip(c["interfaces"], t["interfaces"], strict=True):
        assert 0 < a["rx_bytes"] <= b["rx_bytes"] and 0 < a["tx_packets"] <= b["tx_packets"]
    # The table reads the same document.
    table = dm(lab, "stats", web, "--engine", "host2").stdout
    assert web in table and lab2["net"] in table
    # Every container of host2 when none is named, each from host2's agent.
    every = json.loads(dm(lab, "stats", "--engine", "host2", "--json").stdout)
    names = {x["name"] for x in every["containers"]}
    assert {web, lab2["client"]} <= names
    assert all("error" not in x and x["engine"] == "host2" for x in every["containers"])


def test_doctor_of_a_host2_container_is_host2s_agents_diagnosis(lab2: dict[str, Any]) -> None:
    lab, web = lab2["name"], lab2["web"]
    seen_by_agent(lab, web)
    before = asked(lab, "host2", "/v1/dockmesh/doctor")
    t0 = time.perf_counter()
    got = dm(lab, "doctor", web, "--engine", "host2", "--json", "--timeout", "0.5", check=False)
    print(f"doctor --engine host2: {(time.perf_counter() - t0) * 1000:.0f} ms")
    assert got.returncode in (0, 1), got.stderr  # 1: a finding is an error (the command's)
    assert asked(lab, "host2", "/v1/dockmesh/doctor") == before + 1
    mine = json.loads(got.stdout)
    code, body = agent_get(lab, "host2", f"/v1/dockmesh/doctor?container={web}&timeout=0.5")
    assert code == 200
    theirs = json.loads(body)
    assert mine["container"] == theirs["container"] == web
    s, t = mine["sections"], theirs["sections"]
    assert s["networks"] == t["networks"] and s["routes"] == t["routes"]
    assert [x["name"] for x in s["interfaces"]] == [x["name"] for x in t["interfaces"]]
    assert any(x["port"] == 8080 for x in s["listening"]), s["listening"]
    assert s["errors"] == [], s["errors"]
    # Its peer answered from host2's namespace.
    assert any(p["reachable"] for p in s["connectivity"]), s["connectivity"]
    text = dm(lab, "doctor", web, "--engine", "host2", check=False).stdout
    assert f"doctor {web}" in text and "findings" in text


def test_flows_on_host2_are_host2s_own_table(lab2: dict[str, Any]) -> None:
    lab, web, client = lab2["name"], lab2["web"], lab2["client"]
    before = asked(lab, "host2", "/v1/dockmesh/flows")
    doc = json.loads(dm(lab, "flows", "--engine", "host2", "--json").stdout)
    assert asked(lab, "host2", "/v1/dockmesh/flows") == before + 1
    edges = [e for e in doc["edges"] if (e["src"], e["dst"]) == (client, web)]
    assert edges and edges[0]["port"] == 8080 and edges[0]["connections"] >= 3, doc["edges"]
    assert edges[0]["bytes"] > 0 and doc["accounting"] == "on"
    # The machine's own table never saw it: it passed in host2's namespace only.
    local = json.loads(dm(lab, "flows", "--json").stdout)
    assert not [e for e in local["edges"] if {e["src"], e["dst"]} & {web, client}]
    by_service = dm(lab, "flows", "--engine", "host2", "--by", "service").stdout
    assert "8080/tcp" in by_service


def test_agent_url_from_another_host_asks_over_the_labs_network(lab2: dict[str, Any]) -> None:
    lab, web = lab2["name"], lab2["web"]
    seen_by_agent(lab, web)
    host2 = next(h["address"] for h in lab2["hosts"] if h["name"] == "host2")
    got = on_host(lab, "host1", sys.executable, "-m", "dockmesh", "stats", web,
                  "--agent", f"http://{host2}:8500", "--json")  # fmt: skip
    [c] = json.loads(got.stdout)["containers"]
    assert c["name"] == web and c["interfaces"]
    both = dm(lab, "stats", web, "--engine", "host2", "--agent", "http://x:1", check=False)
    assert both.returncode == 2 and len(both.stderr.strip().splitlines()) == 1


def test_the_wrong_host_is_refused_in_one_line(lab2: dict[str, Any]) -> None:
    lab, web = lab2["name"], lab2["web"]
    for cmd in (["doctor", web], ["stats", web]):
        got = dm(lab, *cmd, "--engine", "host1", check=False)
        assert got.returncode == 2, (cmd, got.stderr)
        assert len(got.stderr.strip().splitlines()) == 1 and web in got.stderr
    # host1's agent, asked directly about host2's container: 404, one line.
    code, body = agent_get(lab, "host1", f"/v1/dockmesh/doctor?container={web}")
    assert code == 404 and body.strip() == f"no container {web!r} on this host's engines"
    # Through --agent, the agent's reason comes back as the command's one line.
    host1 = next(h["address"] for h in lab2["hosts"] if h["name"] == "host1")
    got = on_host(lab, "host2", sys.executable, "-m", "dockmesh", "doctor", web,
                  "--agent", f"http://{host1}:8500", check=False)  # fmt: skip
    assert got.returncode == 2 and "no container" in got.stderr
    assert len(got.stderr.strip().splitlines()) == 1
    # Bytes no container name holds: 400, one line; never looked up.
    for bad in ("a%0Ab", "%ff%fe", "..", "a%00"):
        code, body = agent_get(lab, "host2", f"/v1/dockmesh/doctor?container={bad}")
        assert code == 400 and len(body.strip().splitlines()) == 1, (bad, body)
