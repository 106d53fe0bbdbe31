"""Regressions for the adversarial tester's findings on policy, why and matrix (pure: a fake
nft, a fake sweep, small topologies)."""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import replace
from typing import Any

import pytest

from dockmesh.diagnose.sweep import Observed, Probe, sweep_confirmed
from dockmesh.model.policy import (
    Policy,
    Selector,
    parse_selector_arg,
    policy_file_problems,
)
from dockmesh.policy.compile import HASH_TAG, compile_policy, full_transaction
from dockmesh.policy.enforce import Enforcer
from dockmesh.policy.nft import ForeignTable, is_ours
from dockmesh.policy.reach import Observations, analyze
from dockmesh.policy.store import Applied, PolicyStore
from dockmesh.testing.nft import MemoryNft
from tests.unit.policy.topos import container, network, topology

# --- 1: only ever touch a table dockmesh made ------------------------------------------------


def foreign_doc(table: str) -> dict[str, Any]:
    return {
        "nftables": [
            {"table": {"family": "inet", "name": table, "handle": 1}},
            {"chain": {"family": "inet", "table": table, "name": "c", "handle": 2}},
            {
                "rule": {
                    "family": "inet",
                    "table": table,
                    "chain": "c",
                    "handle": 3,
                    "comment": "mine",
                    "expr": [{"accept": None}],
                }
            },
        ]
    }


def ours_doc(table: str) -> dict[str, Any]:
    doc = foreign_doc(table)
    doc["nftables"][2]["rule"]["comment"] = HASH_TAG + "abc"
    return doc


def nft_holding(doc: Any) -> MemoryNft:
    nft = MemoryNft()
    nft.load(doc)
    return nft


def test_a_table_without_the_marker_is_not_ours() -> None:
    assert not is_ours(foreign_doc("t"), "t")
    assert not is_ours({"nftables": [{"table": {"family": "inet", "name": "t"}}]}, "t")
    assert is_ours(ours_doc("t"), "t")


def test_the_compiled_table_carries_the_marker() -> None:
    topo = topology([network("n", "10.0.0.0/24")], [container("a", {"n": "10.0.0.2"})])
    rs = compile_policy(Policy(), topo, "enforce", "t")
    rules = [c["add"]["rule"] for c in full_transaction(rs) if "rule" in c.get("add", {})]
    assert rules[0]["comment"].startswith(HASH_TAG)


@pytest.mark.parametrize("action", ["apply", "remove", "agent"])
def test_a_hand_made_table_is_never_applied_over_nor_removed(action: str, tmp_path: Any) -> None:
    nft = nft_holding(foreign_doc("t"))
    store = PolicyStore("t", tmp_path)
    enforcer = Enforcer(store, nft)
    topo = topology([network("n", "10.0.0.0/24")], [container("a", {"n": "10.0.0.2"})])
    applied = Applied("t", "enforce", Policy(default="deny"))
    if action == "apply":
        with pytest.raises(ForeignTable, match="table inet t exists but was not made"):
            enforcer.apply(applied, topo)
        assert not store.path.exists()
    elif action == "remove":
        store.save(applied)
        with pytest.raises(ForeignTable):
            enforcer.remove()
    else:
        store.save(applied)
        enforcer.sync(topo)  # logged, not raised: the agent keeps running
    assert nft.ran == []


def test_our_own_table_is_applied_over_and_removed(tmp_path: Any) -> None:
    nft = nft_holding(ours_doc("t"))
    enforcer = Enforcer(PolicyStore("t", tmp_path), nft)
    topo = topology([network("n", "10.0.0.0/24")], [container("a", {"n": "10.0.0.2"})])
    enforcer.apply(Applied("t", "enforce", Policy()), topo)
    assert enforcer.remove() is True
    assert nft.ran[-1] == [{"delete": {"table": {"family": "inet", "name": "t"}}}]
    assert nft.list_table("t") is None


# --- 2: a file that is not a policy is not "allow everything" --------------------------------


@pytest.mark.parametrize(
    ("doc", "problem"),
    [
        (None, ((), "is not a policy")),
        ({}, ((), "is empty")),
        ({"foo": 1}, (("foo",), "unknown key")),
        ({"polcy": {"default": "deny"}}, (("polcy",), "unknown key")),
        ({"policy": None}, (("policy",), "is empty")),
        ({"policy": {}}, (("policy",), "is empty")),
        ({"policy": {"default": "deny"}, "extra": 1}, (("extra",), "unknown key")),
        ({"project": "x", "services": {"a": {}}}, ((), "without a policy: section")),
        ({"project": "x", "services": {}, "policy": None}, (("policy",), "is empty")),
    ],
)
def test_not_a_policy(doc: Any, problem: tuple[tuple[str, ...], str]) -> None:
    found = policy_file_problems(doc)
    assert any(p == problem[0] and problem[1] in m for p, m in found), found


@pytest.mark.parametrize(
    "doc",
    [
        {"default": "deny"},
        {"networks": {"backend": {"default": "deny"}}},
        {"rules": []},
        {"policy": {"default": "allow"}},
        {"project": "x", "services": {}, "policy": {"default": "deny"}},
    ],
)
def test_a_policy(doc: Any) -> None:
    assert policy_file_problems(doc) == []


# --- 3: matrix: a disagreement is probed again before it is a mismatch ----------------------


def test_disagreements_are_probed_again_with_a_longer_timeout() -> None:
    probes = [Probe(k, 1, f"10.0.0.{i + 2}") for i, k in enumerate("abcd")]
    expected: dict[Hashable, bool] = {"a": True, "b": True, "c": False, "d": False}
    calls: list[tuple[list[Hashable], float]] = []

    def fake(
        pool: Any, ps: Sequence[Probe], timeout_s: float, **kw: Any
    ) -> dict[Hashable, Observed]:
        calls.append(([p.key for p in ps], timeout_s))
        if len(calls) == 1:  # first pass: a and b lost (busy host), c answered, d silent
            seen = {"a": False, "b": False, "c": True, "d": False}
        else:  # second pass: a answers now, b still not, c still answers
            seen = {"a": True, "b": False, "c": True}
        return {p.key: Observed(seen[str(p.key)], None, "x") for p in ps}

    got = sweep_confirmed(None, probes, expected, timeout_s=1.0, sweep_fn=fake)  # type: ignore[arg-type]
    assert calls[0] == (["a", "b", "c", "d"], 1.0)
    assert calls[1][0] == ["a", "b", "c"] and calls[1][1] > 1.0
    assert len(calls) == 2
    assert {k: o.ok for k, o in got.items()} == {"a": True, "b": False, "c": True, "d": False}
    assert got["a"].detail.endswith("(on a second try)")
    assert got["b"].detail.endswith("(twice)")


def test_no_disagreement_no_second_pass() -> None:
    calls = []

    def fake(
        pool: Any, ps: Sequence[Probe], timeout_s: float, **kw: Any
    ) -> dict[Hashable, Observed]:
        calls.append(1)
        return {p.key: Observed(True, 0.1, "x") for p in ps}

    sweep_confirmed(None, [Probe("a", 1, "10.0.0.2")], {"a": True}, sweep_fn=fake)  # type: ignore[arg-type]
    assert calls == [1]


# --- 4: why: host-mode source, a container to itself, a stale table --------------------------


def small() -> Any:
    return topology(
        [network("n", "10.0.0.0/24"), network("m", "10.1.0.0/24")],
        [
            container("a", {"n": "10.0.0.2"}, {"dockmesh.service": "a"}),
            container("b", {"n": "10.0.0.3"}, {"dockmesh.service": "b"}),
            container("lonely", {"m": "10.1.0.2"}),
            replace(container("hostly", {}), network_mode="host"),
        ],
    )


def test_a_host_mode_source_is_the_host() -> None:
    deny = Policy(default="deny")
    a = analyze(small(), deny, "hostly", "b")
    assert a.reachable and a.src == "hostly"
    assert a.steps[0].check == "host_network"
    assert "network_mode host" in a.summary and a.address == "10.0.0.3"
    # The same verdict as from the host itself.
    assert analyze(small(), deny, "host", "b").reachable


def test_a_container_reaches_itself_whatever_the_policy() -> None:
    for policy in (None, Policy(default="deny"), Policy(networks=(("n", "deny"),))):
        a = analyze(small(), policy, "a", "a")
        assert a.reachable, a
        assert [s.check for s in a.steps] == ["running", "self"]
        assert "forward hook" in a.steps[1].detail
        assert a.address == "10.0.0.2"
    # Even one on a network of its own, shared with nobody.
    assert analyze(small(), None, "lonely", "lonely").reachable


def test_a_stale_table_is_said_in_the_policy_step() -> None:
    stale = "table inet t is not in sync with the topology"
    a = analyze(small(), Policy(), "a", "b", observed=Observations(policy_stale=stale))
    step = next(s for s in a.steps if s.check == "policy")
    assert stale in step.detail
    fresh = analyze(small(), Policy(), "a", "b")
    assert "not in sync" not in next(s for s in fresh.steps if s.check == "policy").detail


# --- 5: selectors ---------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["service=", "container=", "network= ", "label="])
def test_an_empty_selector_value_is_said_clearly(text: str) -> None:
    got = parse_selector_arg(text)
    assert isinstance(got, str) and "needs a value" in got


def test_a_selector_with_a_value_parses() -> None:
    assert parse_selector_arg("container=x") == Selector(container="x")
