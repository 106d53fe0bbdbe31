"""`dockmesh policy log`: every drop named — source and destination container, port, rule —
read from the kernel's drop logs, in enforce and in audit mode. The containers and table are
the test's own (`seg` of test_policy)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from dockmesh.host.netns import NetnsPool
from tests.integration.conftest import dockmesh
from tests.integration.test_agent import AgentProc
from tests.integration.test_policy import Seg, connects, ip_of, pid_of, seg

__all__ = ["seg"]  # the fixture, shared


def deny_by_default(s: Seg) -> None:
    """The test network's default is deny (the policy's own `default: deny` would cover every
    network of the machine: other tests' containers too)."""
    s.policy_file.write_text(
        "policy:\n"
        f"  networks: {{{s.net}: {{default: deny}}}}\n"
        "  rules:\n"
        f"    - {{from: {{service: {s.prefix}gateway}}, to: {{service: {s.prefix}api}}, "
        "ports: [8080/tcp]}\n"
    )


def drops(s: Seg) -> list[dict[str, Any]]:
    doc = json.loads(dockmesh("policy", "log", "--json", check=True).stdout)
    assert doc["table"] == s.table
    return list(doc["drops"])


def probe_denied(api: Any, pool: NetnsPool, s: Seg) -> None:
    """oth → api:8080, which no rule allows."""
    assert not connects(pool, pid_of(api, s.ids["oth"]), ip_of(api, s.ids["api"], s.net))


def test_a_denied_connection_is_named(api: Any, seg: Seg, pool: NetnsPool) -> None:
    deny_by_default(seg)
    dockmesh("policy", "apply", str(seg.policy_file), check=True)
    assert drops(seg) == []
    assert connects(pool, pid_of(api, seg.ids["gw"]), ip_of(api, seg.ids["api"], seg.net))
    probe_denied(api, pool, seg)
    found = [d for d in drops(seg) if d["port"] == "8080/tcp"]
    assert len(found) == 1, found
    d = found[0]
    assert (d["src"], d["dst"]) == (f"{seg.prefix}-oth", f"{seg.prefix}-api")
    assert d["rule"] == f"network {seg.net} default deny" and d["verdict"] == "drop"
    assert d["packets"] >= 1 and d["src_address"] == ip_of(api, seg.ids["oth"], seg.net)
    assert 0 <= d["last_seen_s"] < 30
    # The allowed connection is not there.
    assert not [x for x in drops(seg) if x["src"] == f"{seg.prefix}-gw" and x["port"] == "8080/tcp"]
    text = dockmesh("policy", "log", check=True).stdout
    want = (
        f"{seg.prefix}-oth → {seg.prefix}-api:8080/tcp  dropped by network {seg.net} default deny"
    )
    assert want in text


def test_audit_mode_says_would_drop(api: Any, seg: Seg, pool: NetnsPool) -> None:
    deny_by_default(seg)
    dockmesh("policy", "apply", str(seg.policy_file), "--mode", "audit", check=True)
    # Audit drops nothing: the connection opens, and is named as what enforce would drop.
    assert connects(pool, pid_of(api, seg.ids["oth"]), ip_of(api, seg.ids["api"], seg.net))
    found = [d for d in drops(seg) if d["port"] == "8080/tcp"]
    assert [(d["src"], d["dst"], d["verdict"]) for d in found] == [
        (f"{seg.prefix}-oth", f"{seg.prefix}-api", "would_drop")
    ]
    text = dockmesh("policy", "log", check=True).stdout
    assert f"would drop (audit): network {seg.net} default deny" in text


def test_follow_prints_new_drops_as_they_come(api: Any, seg: Seg, pool: NetnsPool) -> None:
    deny_by_default(seg)
    dockmesh("policy", "apply", str(seg.policy_file), check=True)
    proc = subprocess.Popen(
        [sys.executable, "-m", "dockmesh", "policy", "log", "--follow", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(2.0)  # it has read once: what comes next is new
        probe_denied(api, pool, seg)
        assert proc.stdout is not None
        deadline = time.monotonic() + 15
        line = ""
        while time.monotonic() < deadline and '"8080/tcp"' not in line:
            line = proc.stdout.readline()
        d = json.loads(line)
        assert (d["src"], d["dst"], d["port"]) == (
            f"{seg.prefix}-oth",
            f"{seg.prefix}-api",
            "8080/tcp",
        )
    finally:
        proc.terminate()  # our own child, by its pid
        proc.wait(timeout=10)


def test_the_agent_counts_drops_per_rule_and_pair_in_metrics(
    api: Any, seg: Seg, pool: NetnsPool, tmp_path: Path
) -> None:
    deny_by_default(seg)
    agent = AgentProc(tmp_path)
    agent.start()
    try:
        dockmesh("policy", "apply", str(seg.policy_file), check=True)
        probe_denied(api, pool, seg)
        want = [
            f'rule="network {seg.net} default deny"',
            f'src="{seg.prefix}-oth"',
            f'dst="{seg.prefix}-api"',
            'verdict="drop"',
        ]
        deadline = time.monotonic() + 20  # the agent reads the logs every 5 s
        found: list[str] = []
        while time.monotonic() < deadline and not found:
            with urllib.request.urlopen(agent.api + "/metrics", timeout=10) as r:
                text = r.read().decode()
            found = [
                line
                for line in text.splitlines()
                if line.startswith("dockmesh_policy_drops_total{") and all(w in line for w in want)
            ]
            time.sleep(0.5)
        drops = [x for x in text.splitlines() if x.startswith("dockmesh_policy_drop")]
        assert found, f"no line for the denied pair: {drops}\n{agent.log.read_text()[-3000:]}"
        assert float(found[0].rsplit(" ", 1)[1]) >= 1
    finally:
        assert agent.stop() == 0
