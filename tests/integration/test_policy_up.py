"""`up FILE` applies the file's policy: section after its containers exist (as `policy apply`
does), `plan` shows it, `down` removes only the policy its own project applied; a wrong section
stops `up` before anything is created. Each test has its own table and policy directory."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from dockmesh.host.netns import NetnsPool
from tests.integration.conftest import dockmesh, free_subnets, remove_policy_tables
from tests.integration.test_policy import connects, ip_of, nft_table, pid_of
from tests.integration.test_project import project_objects


@pytest.fixture
def table(prefix: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    name = f"{prefix}up"
    monkeypatch.setenv("DOCKMESH_POLICY_TABLE", name)
    monkeypatch.setenv("DOCKMESH_POLICY_DIR", str(tmp_path / "policy"))
    monkeypatch.setenv("DOCKMESH_AGENT", "http://127.0.0.1:9")  # no one else's agent
    try:
        yield name
    finally:
        remove_policy_tables(name)


def project_file(tmp_path: Path, prefix: str, subnet: str, policy: Any) -> str:
    doc: dict[str, Any] = {
        "project": prefix,
        "networks": {"seg": {"subnet": subnet}},
        "services": {
            "a": {"image": "dockmesh/toolbox", "networks": ["seg"]},
            "b": {"image": "dockmesh/toolbox", "networks": ["seg"]},
        },
    }
    if policy is not None:
        doc["policy"] = policy
    path = tmp_path / "dockmesh.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return str(path)


POLICY = {
    "networks": {"seg": {"default": "deny"}},
    "rules": [{"from": {"service": "a"}, "to": {"service": "b"}, "ports": ["8080/tcp"]}],
}


def handles(table: str) -> list[tuple[str, int]]:
    """The table's objects by their kernel handles: the same only if nothing was replaced
    (the drop logs' elements and the counters change as packets come; these do not)."""
    doc = nft_table(table)
    assert doc is not None
    return [
        (kind, item[kind]["handle"])
        for item in doc["nftables"]
        for kind in ("table", "set", "chain", "rule")
        if kind in item
    ]


def policy_changes(doc: dict[str, Any]) -> list[dict[str, str]]:
    return [c for c in doc["changes"] if c["kind"] == "policy"]


def test_up_applies_the_policy_section_and_down_removes_it(
    api: Any, prefix: str, toolbox: str, tmp_path: Path, table: str, pool: NetnsPool
) -> None:
    (subnet,) = free_subnets(api, 1)
    path = project_file(tmp_path, prefix, subnet, POLICY)
    planned = json.loads(dockmesh("plan", path, "--json", check=True).stdout)
    assert policy_changes(planned) == [
        {
            "action": "create",
            "kind": "policy",
            "name": f"inet {table}",
            "reason": "not in the kernel",
        }
    ]
    proc = dockmesh("up", path, "--json", check=True)
    assert [c["action"] for c in policy_changes(json.loads(proc.stdout))] == ["create"]
    assert "1 policy created" in proc.stderr
    assert nft_table(table) is not None
    record = json.loads((tmp_path / "policy" / f"{table}.json").read_text())
    assert record["project"] == prefix and record["source"] == str(Path(path).resolve())

    net = f"{prefix}_seg"
    a, b = f"{prefix}-a-1", f"{prefix}-b-1"
    assert connects(pool, pid_of(api, a), ip_of(api, b, net))  # the rule allows a → b:8080
    assert not connects(pool, pid_of(api, b), ip_of(api, a, net))  # the network's deny

    # In sync now: plan says nothing, and a second up leaves the table (and its counters).
    assert dockmesh("plan", path, "--exit-code").returncode == 0
    handles_before = handles(table)
    again = json.loads(dockmesh("up", path, "--json", check=True).stdout)
    assert again["changes"] == []
    assert handles(table) == handles_before

    down = dockmesh("down", path, "--json", check=True)
    assert policy_changes(json.loads(down.stdout)) == [
        {
            "action": "remove",
            "kind": "policy",
            "name": f"inet {table}",
            "reason": f"applied by up of project {prefix}",
        }
    ]
    assert nft_table(table) is None
    assert not (tmp_path / "policy" / f"{table}.json").exists()


def test_a_policy_applied_by_hand_is_not_removed_by_down(
    api: Any, prefix: str, toolbox: str, tmp_path: Path, table: str
) -> None:
    (subnet,) = free_subnets(api, 1)
    hand = tmp_path / "hand.yaml"
    hand.write_text(yaml.safe_dump({"policy": {"default": "allow"}}))
    dockmesh("policy", "apply", str(hand), check=True)
    path = project_file(tmp_path, prefix, subnet, None)
    up = json.loads(dockmesh("up", path, "--json", check=True).stdout)
    assert policy_changes(up) == []
    down = json.loads(dockmesh("down", path, "--json", check=True).stdout)
    assert policy_changes(down) == []
    assert nft_table(table) is not None

    # And up of a file with a policy: section refuses to replace it, before creating anything.
    path = project_file(tmp_path, prefix, subnet, POLICY)
    proc = dockmesh("up", path)
    assert proc.returncode == 2, proc.stderr
    assert "dockmesh policy apply applied from" in proc.stderr
    assert project_objects(api, prefix) == ([], [])


def test_a_wrong_policy_section_stops_up_before_anything_is_created(
    api: Any, prefix: str, toolbox: str, tmp_path: Path, table: str
) -> None:
    (subnet,) = free_subnets(api, 1)
    bad = {"rules": [{"from": {"service": "nope"}, "to": {"service": "b"}}]}
    path = project_file(tmp_path, prefix, subnet, bad)
    proc = dockmesh("up", path)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"{path}:")
    assert "policy.rules[0].from.service" in lines[0] or "policy.rules.0.from" in lines[0]
    assert project_objects(api, prefix) == ([], [])
    assert nft_table(table) is None
