"""The in-memory nft (dockmesh.testing.nft) takes dockmesh's transactions as the kernel does
where the enforcer relies on it: whole or not at all, listed back as written, element deltas
that move a table from one ruleset to the next, and the refusals that make it reconcile."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dockmesh.model.labels import LABEL_DISCOVERY_SERVICE
from dockmesh.model.policy import Policy, Rule, Selector
from dockmesh.policy.compile import Ruleset, compile_policy, element_delta, full_transaction
from dockmesh.policy.nft import NftError, is_ours, parse_live
from dockmesh.testing.nft import MemoryNft
from tests.unit.topos import container, network, topology

POLICY = Policy(
    default="deny",
    rules=(Rule((Selector(service="client"),), (Selector(service="web"),)),),
)
SERVICES = ("client", "web", "db")


def ruleset(members: dict[int, str]) -> Ruleset:
    """Host number → service: containers on 10.0.0.0/24 (and 10.9.0.0/24 for host > 200,
    outside every network: a /32 in the interval set)."""
    nets = [network("n", "10.0.0.0/24")]
    cs = [
        container(
            f"c{h}",
            {"n": f"10.{9 if h > 200 else 0}.0.{h}"},
            {LABEL_DISCOVERY_SERVICE: svc},
        )
        for h, svc in members.items()
    ]
    return compile_policy(POLICY, topology(nets, cs), "enforce", "t")


members = st.dictionaries(st.integers(2, 254), st.sampled_from(SERVICES), max_size=12)


def test_a_full_transaction_lists_back_as_the_ruleset() -> None:
    rs = ruleset({2: "client", 3: "web", 250: "db"})
    nft = MemoryNft()
    nft.run(full_transaction(rs))
    doc = nft.list_table("t")
    live = parse_live(doc, "t")
    assert is_ours(doc, "t")
    assert live.structure_hash == rs.structure_hash
    assert live.elements == rs.elements()
    assert nft.elements("t", "a_any_4") == {"10.0.0.2 . 10.0.0.3"}
    assert nft.list_table("other") is None


@given(members, members)
def test_element_deltas_move_the_table_from_one_ruleset_to_the_next(
    before: dict[int, str], after: dict[int, str]
) -> None:
    old, new = ruleset(before), ruleset(after)
    nft = MemoryNft()
    nft.run(full_transaction(old))
    delta = element_delta(parse_live(nft.list_table("t"), "t").elements, new)
    assert delta is not None  # same policy: same sets
    nft.run(delta)
    assert parse_live(nft.list_table("t"), "t").elements == new.elements()


def test_a_refused_command_leaves_the_whole_transaction_undone() -> None:
    rs = ruleset({3: "web"})
    nft = MemoryNft()
    nft.run(full_transaction(rs))
    before = nft.list_table("t")
    add = {
        "add": {"element": {"family": "inet", "table": "t", "name": "s1_4", "elem": ["10.0.0.7"]}}
    }
    gone = {
        "delete": {
            "element": {"family": "inet", "table": "t", "name": "s1_4", "elem": ["10.0.0.9"]}
        }
    }
    with pytest.raises(NftError, match="No such file"):
        nft.run([add, gone])
    assert nft.list_table("t") == before
    nft.refuse_next("Error: busy")
    with pytest.raises(NftError, match="busy"):
        nft.run([add])
    assert nft.list_table("t") == before and len(nft.ran) == 3
    with pytest.raises(NftError):  # the table is not there to delete
        nft.run([{"delete": {"table": {"family": "inet", "name": "absent"}}}])


def test_an_interval_set_refuses_overlaps_so_deletions_go_first() -> None:
    nft = MemoryNft()
    t = {"family": "inet", "table": "t", "name": "all_4"}
    nft.run(
        [
            {"add": {"table": {"family": "inet", "name": "t"}}},
            {"add": {"set": {**t, "type": "ipv4_addr", "flags": ["interval"]}}},
            {"add": {"element": {**t, "elem": [{"prefix": {"addr": "10.0.0.0", "len": 24}}]}}},
        ]
    )
    wider = {"add": {"element": {**t, "elem": [{"prefix": {"addr": "10.0.0.0", "len": 16}}]}}}
    with pytest.raises(NftError, match="conflicting intervals"):
        nft.run([wider])
    narrower = {"delete": {"element": {**t, "elem": [{"prefix": {"addr": "10.0.0.0", "len": 24}}]}}}
    nft.run([narrower, wider])
    assert nft.elements("t", "all_4") == {"10.0.0.0/16"}
