"""Policy against the real kernel and engine: containers on one bridge network, a table of the
test's own (named from its prefix, removed afterwards), connections made from the containers'
own namespaces."""

from __future__ import annotations

import contextlib
import ipaddress
import json
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from dockmesh.host.netns import NetnsPool
from dockmesh.policy.nft import Nft, parse_live
from tests.integration.conftest import dockmesh, free_subnets, own_differences, remove_policy_tables
from tests.integration.test_agent import AgentProc


@dataclass
class Seg:
    prefix: str
    table: str
    net: str
    ids: dict[str, str]
    policy_file: Path
    state_dir: Path


def nft_table(table: str) -> Any | None:
    """Both of the policy's tables (inet, bridge) as one listing, as dockmesh reads them."""
    return Nft().list_table(table)


def set_addresses(table: str) -> dict[str, set[str]]:
    """Every set's addresses (the address parts of a concatenation's elements)."""
    doc = nft_table(table)
    assert doc is not None, f"table inet {table} is missing"
    out: dict[str, set[str]] = {}
    for name, elements in parse_live(doc, table).elements.items():
        found: set[str] = set()
        for e in elements:
            for part in e.split(" . "):
                with contextlib.suppress(ValueError):
                    found.add(str(ipaddress.ip_address(part)))
        out[name] = found
    return out


def rule_counters(table: str) -> dict[str, int]:
    """Packets per rule as `policy show` counts them (a rule between named containers counts
    in its set elements)."""
    show = json.loads(dockmesh("policy", "show", "--json", check=True).stdout)
    assert show["table"] == table
    return {r["comment"]: r["packets"] for r in show["rules"]}


def pid_of(api: Any, cid: str) -> int:
    return int(api.inspect_container(cid)["State"]["Pid"])


def ip_of(api: Any, cid: str, net: str) -> str:
    return str(api.inspect_container(cid)["NetworkSettings"]["Networks"][net]["IPAddress"])


def connects(
    pool: NetnsPool, pid: int, address: str, port: int = 8080, timeout: float = 0.7
) -> bool:
    """A TCP connection from inside `pid`'s namespace (the container needs no tools)."""
    sock = pool.socket(pid)
    try:
        sock.setblocking(True)
        sock.settimeout(timeout)
        sock.connect((address, port))
        return True
    except OSError:
        return False
    finally:
        sock.close()


@pytest.fixture
def seg(
    api: Any, prefix: str, toolbox: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Seg]:
    table = f"{prefix}pol"
    state_dir = tmp_path / "policy"
    monkeypatch.setenv("DOCKMESH_POLICY_TABLE", table)
    monkeypatch.setenv("DOCKMESH_POLICY_DIR", str(state_dir))
    # The commands read the engine, not an agent someone else runs.
    monkeypatch.setenv("DOCKMESH_AGENT", "http://127.0.0.1:9")
    (subnet,) = free_subnets(api, 1)
    net = f"{prefix}seg"
    api.create_network(net, ipam={"Config": [{"Subnet": subnet}]})
    ids: dict[str, str] = {}
    for role, labels in (
        ("gw", {"dockmesh.service": f"{prefix}gateway"}),
        ("api", {"dockmesh.service": f"{prefix}api"}),
        ("oth", {}),
    ):
        cid = api.create_container(
            toolbox,
            name=f"{prefix}-{role}",
            hostname=f"{prefix}-{role}",
            labels=labels,
            host_config=api.create_host_config(network_mode=net),
        )["Id"]
        api.start(cid)
        ids[role] = cid
    policy_file = tmp_path / "policy.yaml"
    policy_file.write_text(
        "policy:\n"
        "  default: allow\n"
        f"  networks: {{{net}: {{default: deny}}}}\n"
        "  rules:\n"
        f"    - {{from: {{service: {prefix}gateway}}, to: {{service: {prefix}api}}, ports: [8080/tcp]}}\n"
    )
    try:
        yield Seg(prefix, table, net, ids, policy_file, state_dir)
    finally:
        # Only the test's own table, and only when it is there.
        remove_policy_tables(table)


def verdicts(api: Any, pool: NetnsPool, s: Seg) -> dict[str, bool]:
    gw, apic, oth = (s.ids[k] for k in ("gw", "api", "oth"))
    gw_ip, api_ip = ip_of(api, gw, s.net), ip_of(api, apic, s.net)
    return {
        "gw>api": connects(pool, pid_of(api, gw), api_ip),
        "api>gw": connects(pool, pid_of(api, apic), gw_ip),
        "oth>api": connects(pool, pid_of(api, oth), api_ip),
        "oth>gw": connects(pool, pid_of(api, oth), gw_ip),
    }


WANT = {"gw>api": True, "api>gw": False, "oth>api": False, "oth>gw": False}
OPEN = dict.fromkeys(WANT, True)


def test_allow_and_deny_between_containers_on_one_bridge(
    api: Any, pool: NetnsPool, seg: Seg
) -> None:
    assert verdicts(api, pool, seg) == OPEN  # Docker alone: everyone reaches everyone
    dockmesh("policy", "apply", str(seg.policy_file), check=True)
    assert verdicts(api, pool, seg) == WANT
    show = json.loads(dockmesh("policy", "show", "--json", check=True).stdout)
    assert show["applied"] and show["mode"] == "enforce" and own_differences(show) == []
    members = {m["address"]: m["containers"] for s in show["sets"] for m in s["members"]}
    gw_ip, api_ip = (ip_of(api, seg.ids[k], seg.net) for k in ("gw", "api"))
    pair = f"{gw_ip} . {api_ip} . tcp . 8080"
    assert members[pair] == [f"{seg.prefix}-gw", f"{seg.prefix}-api"]
    assert next(r for r in show["rules"] if r["comment"] == "rule 1")["packets"] >= 1
    denied = [r for r in show["rules"] if r["comment"].startswith(f"network {seg.net}")]
    assert sum(r["packets"] for r in denied) >= 3  # three denied connection attempts counted
    # Removing removes the table and nothing else.
    tables_before = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True).stdout
    assert dockmesh("policy", "remove", check=True).stdout.startswith("removed table")
    tables_after = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True).stdout
    gone = set(tables_before.splitlines()) - set(tables_after.splitlines())
    # Other tests' tables (dmt…) may come and go meanwhile: they run beside this one.
    assert {t for t in gone if not t.startswith(("table inet dmt", "table bridge dmt"))} == set()
    assert {f"table inet {seg.table}", f"table bridge {seg.table}"} <= gone
    assert verdicts(api, pool, seg) == OPEN
    assert not (seg.state_dir / f"{seg.table}.json").exists()


def test_audit_mode_drops_nothing_and_counts_what_it_would(
    api: Any, pool: NetnsPool, seg: Seg
) -> None:
    dockmesh("policy", "apply", str(seg.policy_file), "--mode", "audit", check=True)
    assert verdicts(api, pool, seg) == OPEN
    counts = rule_counters(seg.table)
    assert counts[f"network {seg.net} default deny"] >= 3
    assert counts["rule 1"] >= 1


def test_a_bad_file_exits_2_with_its_lines(seg: Seg, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("policy:\n  default: maybe\n  rules:\n    - {from: {servic: a}, to: {}}\n")
    proc = dockmesh("policy", "apply", str(bad))
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        f"{bad}:2: policy.default: must be allow or deny, not 'maybe'",
        f"{bad}:4: policy.rules.0.from.servic: unknown selector (one of service, container, network, label, project, cidr, world)",
    ]
    assert nft_table(seg.table) is None


WAIT = 30.0  # seconds; a guard against hanging: how soon the agent follows is a benchmark's


def wait_for(pred: Any, limit: float = WAIT, step: float = 0.05) -> float:
    t = time.monotonic()
    while True:
        if pred():
            return time.monotonic() - t
        if time.monotonic() - t > limit:
            raise AssertionError(f"not within {limit} s")
        time.sleep(step)


def test_the_agent_keeps_it_true_across_a_new_ip_and_its_own_restart(
    api: Any, pool: NetnsPool, seg: Seg, tmp_path: Path, toolbox: str
) -> None:
    agent = AgentProc(tmp_path)
    agent.start()
    try:
        dockmesh("policy", "apply", str(seg.policy_file), check=True)
        assert verdicts(api, pool, seg) == WANT
        # api comes back with a new IP: another container takes its old one meanwhile.
        old = ip_of(api, seg.ids["api"], seg.net)
        api.stop(seg.ids["api"], timeout=0)
        squat = api.create_container(
            toolbox,
            name=f"{seg.prefix}-squat",
            host_config=api.create_host_config(network_mode=seg.net),
            networking_config=api.create_networking_config(
                {seg.net: api.create_endpoint_config(ipv4_address=old)}
            ),
        )["Id"]
        api.start(squat)
        api.start(seg.ids["api"])
        api.remove_container(squat, force=True)
        new = ip_of(api, seg.ids["api"], seg.net)
        assert new != old
        gw_pid = pid_of(api, seg.ids["gw"])
        wait_for(lambda: connects(pool, gw_pid, new, timeout=0.2))
        assert verdicts(api, pool, seg) == WANT
        sets = set_addresses(seg.table)
        assert old not in set().union(*sets.values())

        # The agent stops; meanwhile a second api instance comes and goes: its address
        # would be stale. The agent's restart must take it out without a reload.
        agent.stop()
        counters_before = rule_counters(seg.table)
        second = api.create_container(
            toolbox,
            name=f"{seg.prefix}-api2",
            labels={"dockmesh.service": f"{seg.prefix}api"},
            host_config=api.create_host_config(network_mode=seg.net),
        )["Id"]
        api.start(second)
        agent.start()
        second_ip = ip_of(api, second, seg.net)
        wait_for(lambda: second_ip in set().union(*set_addresses(seg.table).values()))
        agent.stop()
        api.remove_container(second, force=True)
        agent.start()
        wait_for(lambda: second_ip not in set().union(*set_addresses(seg.table).values()))
        assert verdicts(api, pool, seg) == WANT
        live = {ip_of(api, c, seg.net) for c in seg.ids.values()}
        in_sets = set().union(*set_addresses(seg.table).values())
        assert in_sets <= live
        # Element updates, not a reload: the counters went on.
        after = rule_counters(seg.table)
        assert after["rule 1"] >= counters_before["rule 1"] > 0
    finally:
        with contextlib.suppress(Exception):
            agent.stop()
    # A stopped agent leaves the policy in force (fail closed).
    assert verdicts(api, pool, seg) == WANT


def test_a_table_dockmesh_did_not_make_is_never_touched(seg: Seg) -> None:
    """A hand-made table of the name given: apply, remove and show refuse (exit 2, one line)
    and leave it exactly as it was."""
    subprocess.run(["nft", "add", "table", "inet", seg.table], check=True)
    subprocess.run(["nft", "add", "chain", "inet", seg.table, "c"], check=True)
    subprocess.run(
        ["nft", "add", "rule", "inet", seg.table, "c", "accept", "comment", '"hand made"'],
        check=True,
    )
    before = subprocess.run(
        ["nft", "list", "table", "inet", seg.table], capture_output=True, text=True, check=True
    ).stdout
    for args in (("apply", str(seg.policy_file)), ("remove",), ("show", "--json"), ("show",)):
        proc = dockmesh("policy", *args)
        assert proc.returncode == 2, (args, proc.stdout, proc.stderr)
        assert len(proc.stderr.splitlines()) == 1 and f"inet {seg.table}" in proc.stderr
        after = subprocess.run(
            ["nft", "list", "table", "inet", seg.table], capture_output=True, text=True
        ).stdout
        assert after == before, args
    assert not (seg.state_dir / f"{seg.table}.json").exists()


def test_a_file_that_is_not_a_policy_changes_nothing(seg: Seg, tmp_path: Path) -> None:
    dockmesh("policy", "apply", str(seg.policy_file), check=True)
    before = set_addresses(seg.table)
    recorded = (seg.state_dir / f"{seg.table}.json").read_text()
    cases = {
        "empty.yaml": "",
        "foo.yaml": "foo: 1\n",
        "typo.yaml": "polcy:\n  default: deny\n",
        "nothing.yaml": "policy:\n",
        "topology.yaml": "project: x\nservices:\n  a: {image: busybox}\n",
    }
    for name, text in cases.items():
        f = tmp_path / name
        f.write_text(text)
        proc = dockmesh("policy", "apply", str(f))
        assert proc.returncode == 2, (name, proc.stdout)
        assert proc.stderr.startswith(f"{f}:"), (name, proc.stderr)
    for path in (tmp_path / "missing.yaml", tmp_path):
        proc = dockmesh("policy", "apply", str(path))
        assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1, proc.stderr
        assert str(path) in proc.stderr
    assert set_addresses(seg.table) == before
    assert (seg.state_dir / f"{seg.table}.json").read_text() == recorded
