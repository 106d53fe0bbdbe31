"""The in-memory nft (dockmesh.testing.nft) against the real one: the same transactions, in a
network namespace of the test's own (the host's tables are never touched), must be taken or
refused alike and list back to the same sets, elements and rule comments."""

from __future__ import annotations

import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dockmesh.model.labels import LABEL_DISCOVERY_SERVICE
from dockmesh.model.policy import Policy, Rule, Selector
from dockmesh.policy.compile import (
    JSON,
    Ruleset,
    compile_policy,
    element_delta,
    full_transaction,
    remove_transaction,
)
from dockmesh.policy.nft import Nft, NftError, parse_live
from dockmesh.testing.nft import MemoryNft
from tests.unit.topos import container, network, topology

TABLE = "dmtnft"
POLICY = Policy(
    default="deny",
    networks=(("n", "deny"),),
    rules=(Rule((Selector(service="client"),), (Selector(service="web"),)),),
)


@pytest.fixture(scope="module")
def real(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Nft]:
    """nft run inside a network namespace made for this module, removed after it."""
    name = f"dmt{secrets.token_hex(3)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    script = Path(tmp_path_factory.mktemp("nft")) / "nft"
    script.write_text(f'#!/bin/sh\nexec ip netns exec {name} nft "$@"\n')
    script.chmod(0o755)
    try:
        yield Nft(str(script))
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def ruleset(members: dict[int, str]) -> Ruleset:
    """Host number → service, on network n (10.0.0.0/24); hosts over 200 sit outside it
    (10.9.0.x), so the interval sets hold single addresses beside the subnet."""
    cs = [
        container(f"c{h}", {"n": f"10.{9 if h > 200 else 0}.0.{h}"}, {LABEL_DISCOVERY_SERVICE: s})
        for h, s in members.items()
    ]
    return compile_policy(POLICY, topology([network("n", "10.0.0.0/24")], cs), "enforce", TABLE)


def outcome(nft: Nft, cmds: list[JSON]) -> bool:
    try:
        nft.run(cmds)
    except NftError:
        return False
    return True


def listed(nft: Nft) -> tuple[object, ...] | None:
    doc = nft.list_table(TABLE)
    if doc is None:
        return None
    live = parse_live(doc, TABLE)
    return (live.structure_hash, live.elements, tuple(r.comment for r in live.rules))


members = st.dictionaries(st.integers(2, 254), st.sampled_from(["client", "web", "db"]), max_size=8)


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(members, min_size=1, max_size=4), st.data())
def test_both_take_the_same_transactions_and_list_the_same_table(
    real: Nft, steps: list[dict[int, str]], data: st.DataObject
) -> None:
    memory = MemoryNft()
    real.run(remove_transaction(TABLE))
    rs = ruleset(steps[0])
    for nft in (real, memory):
        assert outcome(nft, full_transaction(rs))
    assert listed(real) == listed(memory)
    for step in steps[1:]:
        want = ruleset(step)
        delta = element_delta(rs.elements(), want)
        assert delta is not None
        stale_first: bool = data.draw(st.booleans(), "a stale delta")
        if delta and stale_first:
            # One element deleted that is not there (a delta against a table someone else
            # changed): both refuse the whole transaction.
            stale = {"family": "inet", "table": TABLE, "name": "s0_4", "elem": ["10.0.0.1"]}
            delta = [{"delete": {"element": stale}}, *delta]
            assert outcome(real, delta) is outcome(memory, delta) is False
        else:
            assert outcome(real, delta) is outcome(memory, delta) is True
            rs = want
        assert listed(real) == listed(memory)


def test_both_refuse_an_overlap_in_an_interval_set_and_a_missing_table(real: Nft) -> None:
    real.run(remove_transaction(TABLE))  # what another test of the module left
    memory = MemoryNft()
    t = {"family": "inet", "table": TABLE, "name": "iv"}
    setup: list[JSON] = [
        {"add": {"table": {"family": "inet", "name": TABLE}}},
        {"delete": {"table": {"family": "inet", "name": TABLE}}},
        {"add": {"table": {"family": "inet", "name": TABLE}}},
        {"add": {"set": {**t, "type": "ipv4_addr", "flags": ["interval"]}}},
        {"add": {"element": {**t, "elem": [{"prefix": {"addr": "10.0.0.0", "len": 24}}]}}},
    ]
    wider: JSON = {"add": {"element": {**t, "elem": [{"prefix": {"addr": "10.0.0.0", "len": 16}}]}}}
    narrower: JSON = {
        "delete": {"element": {**t, "elem": [{"prefix": {"addr": "10.0.0.0", "len": 24}}]}}
    }
    for nft in (real, memory):
        assert outcome(nft, setup)
        assert not outcome(nft, [wider])
        assert outcome(nft, [narrower, wider])
        assert parse_live(nft.list_table(TABLE), TABLE).elements == {"iv": {"10.0.0.0/16"}}
        assert outcome(nft, [{"delete": {"table": {"family": "inet", "name": TABLE}}}])
        assert not outcome(nft, [{"delete": {"table": {"family": "inet", "name": TABLE}}}])


# --- tampering: both list it so that drift says the same words ---------------------------------


def _tamper(nft: Nft, how: str) -> None:
    t = {"family": "inet", "name": TABLE}
    doc = nft.list_table(TABLE)
    assert doc is not None
    handles = [
        i["rule"]["handle"]
        for i in doc["nftables"]
        if "rule" in i and i["rule"]["family"] == "inet" and i["rule"]["chain"] == "forward"
    ]
    pairs = next(
        (i["set"] for i in doc["nftables"] if "set" in i and i["set"]["name"] == "a_any_4"),
        None,
    )
    assert pairs is not None and pairs.get("elem"), "the test's policy makes a pair set"
    victim = pairs["elem"][0]
    victim = victim["elem"]["val"] if "elem" in victim else victim
    where = {"family": "inet", "table": TABLE}
    cmds: dict[str, list[JSON]] = {
        "flush": [{"flush": {"table": t}}],
        "delete table": [{"delete": {"table": t}}],
        "delete rule": [{"delete": {"rule": {**where, "chain": "forward", "handle": handles[-2]}}}],
        "add rule": [{"add": {"rule": {**where, "chain": "forward", "expr": [{"drop": None}]}}}],
        "delete element": [{"delete": {"element": {**where, "name": "a_any_4", "elem": [victim]}}}],
    }
    nft.run(cmds[how])


@pytest.mark.parametrize(
    "how", ["flush", "delete table", "delete rule", "add rule", "delete element"]
)
def test_drift_says_the_same_of_both_and_nft_lists_what_it_predicts(real: Nft, how: str) -> None:
    """The reference listing made in a namespace of its own (`Nft.normalise`) equals the
    kernel's listing of the table as written, and the in-memory one's prediction; after the
    same tampering both read the same differences."""
    from dockmesh.policy.drift import differences, tables_of, view, wanted
    from dockmesh.policy.nft import mark

    rs = ruleset({2: "client", 3: "web", 201: "web"})
    tx = mark(full_transaction(rs), rs.structure_hash)
    keys = tables_of(tx)
    memory = MemoryNft()
    real.run(tx)
    memory.run(tx)
    try:
        want_real = wanted(tx, Nft().normalise(tx))  # a namespace of its own, not `real`'s
        want_memory = wanted(tx, memory.normalise(tx))
        assert want_real == want_memory
        assert differences(view(real.list_tables(keys), keys), want_real) == []
        _tamper(real, how)
        _tamper(memory, how)
        said = differences(view(real.list_tables(keys), keys), want_real)
        assert said and said == differences(view(memory.list_tables(keys), keys), want_memory)
    finally:
        outcome(real, remove_transaction(TABLE))
