"""A policy's table tampered with on the real kernel: a running agent restores it within a
second (flushed, deleted, a rule deleted by its handle, a rule added, a set element deleted),
and with no agent `policy show` names what differs, while `policy apply` and `policy remove`
still work on the damaged table. The table is the test's own (named from its prefix)."""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

from dockmesh.host.netns import NetnsPool
from dockmesh.policy.nft import element_texts
from tests.integration import test_policy
from tests.integration.conftest import dockmesh, own_differences
from tests.integration.test_agent import AgentProc
from tests.integration.test_policy import WANT, Seg, ip_of, nft_table, verdicts

# The policy tests' fixtures: a network with three containers and a policy file, a table of
# the test's own; namespaces to connect from.
seg = test_policy.seg  # the fixture, shared

RESTORED_WITHIN_S = 1.0


def steady(table: str) -> Any:
    """The table as it works: each rule's expressions and comment in order, each set's
    elements; no handles, no counter values."""
    doc = nft_table(table)
    if doc is None:
        return None
    rules, sets = [], {}
    for item in doc["nftables"]:
        if "rule" in item:
            r = item["rule"]
            expr = [e for e in r["expr"] if not (isinstance(e, dict) and "counter" in e)]
            rules.append((json.dumps(expr, sort_keys=True), r.get("comment", "")))
        elif "set" in item:
            s = item["set"]  # elements as values: a counting element's counter moves
            if "timeout" in (s.get("flags") or ()):
                continue  # a drop log: the kernel records flows in it as it drops
            if str(s["name"]).startswith("br6"):
                continue  # every IPv6 bridge on the host: other tests' networks come and go
            sets[s["name"]] = sorted(t for e in s.get("elem") or () for t in element_texts(e))
    return rules, sets


def nft(*args: str) -> None:
    subprocess.run(["nft", *args], check=True, capture_output=True)


def handle_of(table: str, comment: str) -> int:
    doc = nft_table(table)
    assert doc is not None
    return next(
        int(i["rule"]["handle"])
        for i in doc["nftables"]
        if "rule" in i and i["rule"].get("comment", "").startswith(comment)
    )


def tamperings(api: Any, s: Seg) -> dict[str, Any]:
    gw_ip, api_ip = ip_of(api, s.ids["gw"], s.net), ip_of(api, s.ids["api"], s.net)
    t = s.table
    return {
        "flush table": lambda: nft("flush", "table", "inet", t),
        "delete table": lambda: nft("delete", "table", "inet", t),
        "delete one rule": lambda: nft(
            "delete", "rule", "inet", t, "forward", "handle", str(handle_of(t, "network "))
        ),
        "add a rule": lambda: nft("insert", "rule", "inet", t, "forward", "accept"),
        "delete a set element": lambda: nft(
            "delete", "element", "inet", t, "a_port_4", f"{{ {gw_ip} . {api_ip} . tcp . 8080 }}"
        ),
    }


def metric(agent: AgentProc, name: str) -> float:
    with urllib.request.urlopen(agent.api + "/metrics", timeout=10) as r:
        text = r.read().decode()
    m = re.search(rf"^{name} (\S+)$", text, re.M)
    assert m is not None, name
    return float(m.group(1))


def until(pred: Any, limit: float, step: float = 0.005) -> float:
    t = time.monotonic()
    while not pred():
        if time.monotonic() - t > limit:
            raise AssertionError(f"not within {limit} s")
        time.sleep(step)
    return time.monotonic() - t


def test_a_running_agent_restores_each_tampering_within_a_second(
    api: Any, pool: NetnsPool, seg: Seg, tmp_path: Path
) -> None:
    agent = AgentProc(tmp_path)
    agent.start()
    try:
        dockmesh("policy", "apply", str(seg.policy_file), check=True)
        until(lambda: metric(agent, "dockmesh_policy_watch_up") == 1.0, 30)
        good = steady(seg.table)
        assert good is not None
        seen = verdicts(api, pool, seg)
        assert seen == WANT, (seen, agent.log.read_text()[-3000:])
        taken: dict[str, float] = {}
        for n, (what, tamper) in enumerate(tamperings(api, seg).items(), 1):
            tamper()
            t0 = time.monotonic()
            until(lambda: steady(seg.table) == good, 30)
            taken[what] = time.monotonic() - t0
            until(lambda n=n: metric(agent, "dockmesh_policy_repairs_total") == n, 10)
        print("restored in", {k: round(v, 3) for k, v in taken.items()})
        assert all(v < RESTORED_WITHIN_S for v in taken.values()), taken
        assert verdicts(api, pool, seg) == WANT
        log = agent.log.read_text()
        repairs = [line for line in log.splitlines() if "changed behind dockmesh's back" in line]
        assert len(repairs) == len(taken), log
        assert "rules missing" in repairs[0] and "table inet" in repairs[1]
        assert "network " in repairs[2] and "missing" in repairs[2]
        assert "extra rule 'accept'" in repairs[3]
        assert "1 element missing" in repairs[4]
        # Its own transactions (a container starting) are no tampering: no repair counted.
        agent.stop()
        agent.start()
        until(lambda: metric(agent, "dockmesh_policy_watch_up") == 1.0, 30)
        api.restart(seg.ids["oth"], timeout=0)
        time.sleep(1.0)
        assert metric(agent, "dockmesh_policy_repairs_total") == 0.0
        assert steady(seg.table) is not None
    finally:
        with contextlib.suppress(Exception):
            agent.stop()


def show() -> dict[str, Any]:
    proc = dockmesh("policy", "show", "--json")
    assert proc.returncode == 0, proc.stderr
    doc: dict[str, Any] = json.loads(proc.stdout)
    return doc


def test_without_an_agent_policy_show_names_what_differs_and_apply_remove_still_work(
    api: Any, seg: Seg
) -> None:
    dockmesh("policy", "apply", str(seg.policy_file), check=True)
    doc = show()
    assert own_differences(doc) == []
    gw_ip, api_ip = ip_of(api, seg.ids["gw"], seg.net), ip_of(api, seg.ids["api"], seg.net)
    pair = f"{gw_ip} . {api_ip} . tcp . 8080"
    inet = f"table inet {seg.table}: "
    tamperings(api, seg)["delete one rule"]()
    tamperings(api, seg)["delete a set element"]()
    doc = show()
    assert doc["in_sync"] is False
    assert any(
        d.startswith(inet + f"chain forward: rule 'network {seg.net} default deny'")
        and "missing" in d
        for d in doc["differences"]
    ), doc["differences"]
    assert inet + f"set a_port_4: 1 element missing ({pair})" in doc["differences"]
    text = dockmesh("policy", "show")
    assert text.returncode == 0 and "differs from the compiled policy" in text.stdout
    assert "1 element missing" in text.stdout

    # Flushed: still dockmesh's table; show says so, apply restores it.
    nft("flush", "table", "inet", seg.table)
    doc = show()
    assert doc["applied"], doc
    assert inet + f"set a_port_4: 1 element missing ({pair})" in doc["differences"], doc
    assert any(
        d.startswith(inet + "chain forward: all ") and d.endswith("(the chain is empty)")
        for d in doc["differences"]
    ), doc
    dockmesh("policy", "apply", str(seg.policy_file), check=True)
    assert own_differences(show()) == []

    # Deleted: show says the table is missing (no agent to restore it).
    nft("delete", "table", "inet", seg.table)
    doc = show()
    assert not doc["applied"] and doc["differences"] == [f"table inet {seg.table} missing"]

    # Flushed and its mark set deleted too: the recorded policy still makes it dockmesh's.
    dockmesh("policy", "apply", str(seg.policy_file), check=True)
    nft("flush", "table", "inet", seg.table)
    listed = nft_table(seg.table)
    assert listed is not None
    for item in listed["nftables"]:
        if "set" in item and item["set"]["name"].startswith("dockmesh_"):
            nft("delete", "set", item["set"]["family"], seg.table, item["set"]["name"])
    proc = dockmesh("policy", "remove")
    assert proc.returncode == 0, proc.stderr
    assert nft_table(seg.table) is None
