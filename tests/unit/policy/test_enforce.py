"""Keeping the kernel's table equal to compile(applied policy, topology) (dockmesh.policy.enforce),
on the in-memory nft: a topology change is a set update, never a reload; a refused or
tampered-with table is reconciled; a policy applied or removed by another process is picked
up by `poll`; a table dockmesh did not make is never touched."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dockmesh.model.labels import LABEL_DISCOVERY_SERVICE
from dockmesh.model.policy import Policy, Rule, Selector
from dockmesh.model.topology import Topology
from dockmesh.policy.compile import compile_policy, remove_transaction, render_element
from dockmesh.policy.enforce import Enforcer
from dockmesh.policy.nft import ForeignTable, parse_live
from dockmesh.policy.store import Applied, PolicyStore
from dockmesh.testing.nft import MemoryNft
from tests.outcomes import Outcomes
from tests.unit.policy.test_nft import foreign_doc, ours_doc
from tests.unit.topos import container, network, topology

T = "t"
POLICY = Policy(
    default="deny", rules=(Rule((Selector(service="client"),), (Selector(service="web"),)),)
)
OTHER = Policy(default="allow", networks=(("n", "deny"),))
SERVICES = ("client", "web", "db")


def topo(members: dict[int, str]) -> Topology:
    """Host number → service, on 10.0.0.0/24."""
    return topology(
        [network("n", "10.0.0.0/24")],
        [
            container(f"c{h}", {"n": f"10.0.0.{h}"}, {LABEL_DISCOVERY_SERVICE: s})
            for h, s in members.items()
        ],
    )


def live_elements(nft: MemoryNft) -> dict[str, frozenset[str]] | None:
    doc = nft.list_table(T)
    return None if doc is None else parse_live(doc, T).elements


def wanted(policy: Policy, t: Topology) -> dict[str, frozenset[str]]:
    return compile_policy(policy, t, "enforce", T).elements()


def applied(tmp_path: Path, policy: Policy = POLICY) -> tuple[PolicyStore, MemoryNft, Enforcer]:
    """A policy on file (as `policy apply` leaves it), an empty kernel, an agent's enforcer."""
    store = PolicyStore(T, tmp_path)
    store.save(Applied(T, "enforce", policy))
    nft = MemoryNft()
    return store, nft, Enforcer(PolicyStore(T, tmp_path), nft)


# --- only ever touch a table dockmesh made -----------------------------------------------------


def nft_holding(doc: Any) -> MemoryNft:
    nft = MemoryNft()
    nft.load(doc)
    return nft


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
        with pytest.raises(ForeignTable):
            enforcer.remove()
    else:
        enforcer.sync(topo)  # no policy recorded for it: nothing to keep
        assert enforcer.check() == []
    assert nft.ran == []


def test_a_table_a_policy_is_recorded_for_is_ours_even_without_the_mark(tmp_path: Path) -> None:
    """The record is written only once the kernel took dockmesh's table, so a table of that
    name is dockmesh's while it exists: one flushed and stripped of its mark set (or never
    given one) is restored, not given up on, and `remove` removes it."""
    store, _, _ = applied(tmp_path)
    nft = nft_holding(foreign_doc(T))
    enforcer = Enforcer(store, nft)
    enforcer.sync(topo({2: "client", 3: "web"}))
    assert nft.list_table(T) is not None
    assert enforcer.drift(compile_policy(POLICY, topo({2: "client", 3: "web"}), "enforce", T)) == []
    assert enforcer.remove() is True and nft.list_table(T) is None


def test_our_own_table_is_applied_over_and_removed(tmp_path: Any) -> None:
    nft = nft_holding(ours_doc("t"))
    enforcer = Enforcer(PolicyStore("t", tmp_path), nft)
    topo = topology([network("n", "10.0.0.0/24")], [container("a", {"n": "10.0.0.2"})])
    enforcer.apply(Applied("t", "enforce", Policy()), topo)
    assert enforcer.remove() is True
    assert nft.ran[-1] == remove_transaction("t")
    assert nft.list_table("t") is None


# --- the agent: following the topology ---------------------------------------------------------


def test_the_first_topology_makes_the_table_then_changes_are_set_updates(tmp_path: Path) -> None:
    _, nft, enforcer = applied(tmp_path)
    first = topo({2: "client", 3: "web"})
    enforcer.sync(first)
    assert live_elements(nft) == wanted(POLICY, first)
    assert (enforcer.transactions, enforcer.reloads) == (1, 1)
    second = topo({2: "client", 3: "web", 4: "web"})
    enforcer.sync(second)
    assert live_elements(nft) == wanted(POLICY, second)
    assert (enforcer.transactions, enforcer.reloads) == (2, 1)
    assert all("element" in next(iter(c.values())) for c in nft.ran[-1])
    enforcer.sync(second)  # nothing changed: nothing sent
    assert enforcer.transactions == 2


def test_without_a_policy_on_file_nothing_is_sent(tmp_path: Path) -> None:
    nft = MemoryNft()
    enforcer = Enforcer(PolicyStore(T, tmp_path), nft)
    enforcer.sync(topo({2: "web"}))
    enforcer.poll()
    assert nft.ran == [] and enforcer.applied is None


members = st.dictionaries(st.integers(2, 40), st.sampled_from(SERVICES), max_size=8)
changes = st.tuples(st.just("topology"), members, st.just(False))
refused = st.tuples(st.just("topology"), members, st.just(True))  # when something is sent
steps = st.one_of(
    changes,
    changes,
    refused,
    refused,
    st.tuples(st.just("restart"), st.none(), st.none()),
    st.tuples(st.just("apply"), st.sampled_from([POLICY, OTHER]), st.none()),
)


def test_any_sequence_of_changes_restarts_applies_and_refusals() -> None:
    """The agent's enforcer follows topologies, is restarted, sees `policy apply` run by another
    process (then polls), and nft refuses a transaction now and then (a busy kernel). After each
    step the table is the applied policy compiled for the topology, but for a refused step,
    which leaves it whole as it was; the table is made once per apply (and once at first),
    never for a topology change or a restart."""
    seen = Outcomes()

    @settings(max_examples=100, deadline=None)
    @given(st.lists(steps, min_size=1, max_size=8))
    def run(steps: list[Any]) -> None:
        with tempfile.TemporaryDirectory() as d:
            store, nft, enforcer = applied(Path(d))
            policy, t = POLICY, topo({})
            reloads, made = 0, 0
            for kind, arg, refuse in steps:
                before = live_elements(nft)
                if kind == "topology":
                    t = topo(arg)
                    # Refused only when something must be sent, so the refusal is used up here.
                    refuse = refuse and before != wanted(policy, t)
                    if refuse:
                        nft.refuse_next()
                    enforcer.sync(t)
                    seen("refused" if refuse else "topology")
                elif kind == "restart":
                    reloads += enforcer.reloads
                    enforcer = Enforcer(PolicyStore(T, Path(d)), nft)
                    enforcer.sync(t)
                    seen("restart")
                else:
                    policy = arg
                    other = Enforcer(PolicyStore(T, Path(d)), nft)  # `dockmesh policy apply`
                    other.apply(Applied(T, "enforce", policy), t)
                    reloads += other.reloads
                    made += 1
                    enforcer.poll()
                    seen("apply")
                after = live_elements(nft)
                if refuse:
                    assert after in (before, wanted(policy, t))
                else:
                    assert after == wanted(policy, t)
                if before is None and after is not None and kind != "apply":
                    made += 1
            assert reloads + enforcer.reloads == made
            assert store.load() == Applied(T, "enforce", policy)

    run()
    seen.require(topology=0.15, refused=0.02, restart=0.05, apply=0.05)


# --- reconciling ----------------------------------------------------------------------------


def test_a_refused_set_update_is_reconciled_at_once(tmp_path: Path) -> None:
    _, nft, enforcer = applied(tmp_path)
    enforcer.sync(topo({2: "client"}))
    nft.refuse_next()
    t = topo({2: "client", 3: "web"})
    enforcer.sync(t)
    assert live_elements(nft) == wanted(POLICY, t)
    assert enforcer.reloads == 1  # the live table had the wanted structure: its sets updated


def test_a_refused_first_table_is_made_by_the_next_change(tmp_path: Path) -> None:
    _, nft, enforcer = applied(tmp_path)
    nft.refuse_next()
    enforcer.sync(topo({2: "client"}))
    assert live_elements(nft) is None
    t = topo({2: "client", 3: "web"})
    enforcer.sync(t)
    assert live_elements(nft) == wanted(POLICY, t)


def test_a_table_deleted_behind_its_back_is_made_again_on_the_next_change(tmp_path: Path) -> None:
    _, nft, enforcer = applied(tmp_path)
    enforcer.sync(topo({2: "client"}))
    nft.run([{"delete": {"table": {"family": "inet", "name": T}}}])
    t = topo({2: "client", 3: "web"})
    enforcer.sync(t)  # the set update fails (no table): it reconciles
    assert live_elements(nft) == wanted(POLICY, t)
    assert enforcer.reloads == 2


def test_a_restart_mends_elements_changed_by_hand_without_a_reload(tmp_path: Path) -> None:
    _, nft, enforcer = applied(tmp_path)
    t = topo({2: "client", 3: "web"})
    enforcer.sync(t)
    (pairs,) = (name for name, e in wanted(POLICY, t).items() if e == {"10.0.0.2 . 10.0.0.3"})
    family = {"family": "inet", "table": T, "name": pairs}
    added = {"concat": ["10.0.0.2", "10.0.0.99"]}
    nft.run([{"add": {"element": {**family, "elem": [added]}}}])
    gone = {"concat": ["10.0.0.2", "10.0.0.3"]}
    nft.run([{"delete": {"element": {**family, "elem": [gone]}}}])
    restarted = Enforcer(PolicyStore(T, tmp_path), nft)
    restarted.sync(t)
    assert live_elements(nft) == wanted(POLICY, t)
    assert restarted.reloads == 0 and restarted.transactions == 1


def test_reload_mends_the_table_at_once_and_reads_the_file_again(tmp_path: Path) -> None:
    store, nft, enforcer = applied(tmp_path)
    t = topo({2: "client", 3: "web"})
    enforcer.sync(t)
    (pairs,) = (name for name, e in wanted(POLICY, t).items() if e == {"10.0.0.2 . 10.0.0.3"})
    family = {"family": "inet", "table": T, "name": pairs}
    nft.run([{"delete": {"element": {**family, "elem": [{"concat": ["10.0.0.2", "10.0.0.3"]}]}}}])
    enforcer.reload()  # no change in the topology: only the reload sees the element gone
    assert live_elements(nft) == wanted(POLICY, t)
    nft.run([{"delete": {"table": {"family": "inet", "name": T}}}])
    enforcer.reload()
    assert live_elements(nft) == wanted(POLICY, t)
    # the file rewritten by hand: read again
    store.save(Applied(T, "enforce", OTHER))
    enforcer.reload()
    assert live_elements(nft) == wanted(OTHER, t)


def test_reload_before_any_topology_sends_nothing(tmp_path: Path) -> None:
    _, nft, enforcer = applied(tmp_path)
    enforcer.reload()
    assert live_elements(nft) is None and enforcer.transactions == 0


# --- the policy file ---------------------------------------------------------------------------


def test_poll_picks_up_a_policy_applied_elsewhere_and_its_removal(tmp_path: Path) -> None:
    _, nft, enforcer = applied(tmp_path)
    t = topo({2: "client", 3: "web"})
    enforcer.sync(t)
    enforcer.poll()  # the file did not change: nothing to do
    assert enforcer.transactions == 1
    # Another process writes a new policy file without touching the kernel (a copy).
    PolicyStore(T, tmp_path).save(Applied(T, "enforce", OTHER))
    enforcer.poll()
    assert live_elements(nft) == wanted(OTHER, t)
    assert enforcer.applied == Applied(T, "enforce", OTHER)
    # `policy remove` elsewhere: table and file gone; the agent does not make it again.
    Enforcer(PolicyStore(T, tmp_path), nft).remove()
    enforcer.poll()
    enforcer.sync(topo({2: "client", 3: "web", 4: "web"}))
    assert live_elements(nft) is None and enforcer.applied is None


def test_a_file_that_is_not_a_policy_leaves_the_table_as_it_is(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store, nft, enforcer = applied(tmp_path)
    t = topo({2: "client", 3: "web"})
    enforcer.sync(t)
    store.path.write_text("{ not json")
    with caplog.at_level(logging.ERROR):
        enforcer.poll()
        enforcer.sync(topo({2: "client", 3: "web", 4: "web"}))
    assert live_elements(nft) == wanted(POLICY, t)
    assert "keeping the table as it is" in caplog.text


def test_a_file_naming_another_table_is_not_applied(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = PolicyStore(T, tmp_path)
    store.path.parent.mkdir(parents=True, exist_ok=True)
    other = PolicyStore("u", tmp_path)
    other.save(Applied("u", "enforce", POLICY))
    store.path.write_text(other.path.read_text())
    nft = MemoryNft()
    with caplog.at_level(logging.ERROR):
        Enforcer(store, nft).sync(topo({2: "web"}))
    assert nft.ran == [] and "names table u, not t" in caplog.text


# --- the command line ---------------------------------------------------------------------------


def test_apply_writes_the_file_only_once_the_kernel_took_the_table(tmp_path: Path) -> None:
    nft = MemoryNft()
    store = PolicyStore(T, tmp_path)
    enforcer = Enforcer(store, nft)
    nft.refuse_next("Error: Could not process rule: Operation not supported")
    with pytest.raises(Exception, match="Operation not supported"):
        enforcer.apply(Applied(T, "enforce", POLICY), topo({2: "web"}))
    assert not store.path.exists() and live_elements(nft) is None
    rs = enforcer.apply(Applied(T, "audit", POLICY), topo({2: "web"}))
    assert rs.mode == "audit" and store.load() == Applied(T, "audit", POLICY)


def test_remove_says_whether_there_was_anything_to_remove(tmp_path: Path) -> None:
    _, _, enforcer = applied(tmp_path)
    assert enforcer.remove() is True  # the file only (the agent never made the table)
    assert enforcer.remove() is False
    with pytest.raises(ForeignTable):
        Enforcer(PolicyStore(T, tmp_path), nft_holding(foreign_doc(T))).remove()
    assert Enforcer(PolicyStore(T, tmp_path), nft_holding(ours_doc(T))).remove() is True


# --- tampering: `check`, called after every change to the ruleset -----------------------------


def kept(tmp_path: Path) -> tuple[MemoryNft, Enforcer, Topology]:
    """An agent's enforcer that made the policy true over client c2 and web c3."""
    _, nft, enforcer = applied(tmp_path)
    t = topo({2: "client", 3: "web"})
    enforcer.sync(t)
    return nft, enforcer, t


def test_its_own_transactions_leave_nothing_to_restore(tmp_path: Path) -> None:
    nft, enforcer, _ = kept(tmp_path)
    for members in ({2: "client"}, {2: "client", 4: "web", 5: "db"}, {}):
        enforcer.sync(topo(members))
        ran = len(nft.ran)
        assert enforcer.check() == []
        assert len(nft.ran) == ran  # a comparison, no transaction: never a loop
    assert enforcer.repairs == 0


TAMPER: dict[str, Any] = {
    "flush": lambda nft: nft.run([{"flush": {"table": {"family": "inet", "name": T}}}]),
    "delete table": lambda nft: nft.run([{"delete": {"table": {"family": "inet", "name": T}}}]),
    "delete rule": lambda nft: nft.run(
        [{"delete": {"rule": {"family": "inet", "table": T, "handle": nft.tables[("inet", T)].rules[-1]["handle"]}}}]
    ),
    "add rule": lambda nft: nft.run(
        [{"add": {"rule": {"family": "inet", "table": T, "chain": "forward", "expr": [{"accept": None}]}}}]
    ),
    "delete element": lambda nft: nft.run(
        [{"delete": {"element": {"family": "inet", "table": T, "name": "a_any_4",
                                 "elem": [{"concat": ["10.0.0.2", "10.0.0.3"]}]}}}]
    ),
    "strip the mark": lambda nft: nft.run(
        [{"flush": {"table": {"family": "inet", "name": T}}}]
        + [{"delete": {"set": {"family": "inet", "table": T, "name": n}}}
           for n in nft.tables[("inet", T)].sets if n.startswith("dockmesh_")]
    ),
}  # fmt: skip


@pytest.mark.parametrize("how", sorted(TAMPER))
def test_a_change_behind_its_back_is_restored_logged_and_counted(
    how: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    nft, enforcer, t = kept(tmp_path)
    reloads = enforcer.reloads
    want = compile_policy(POLICY, t, "enforce", T)
    TAMPER[how](nft)
    assert enforcer.drift(want) != []
    with caplog.at_level(logging.WARNING, "dockmesh.policy.enforce"):
        found = enforcer.check()
    assert found and enforcer.drift(want) == [] and enforcer.repairs == 1
    (line,) = [r.getMessage() for r in caplog.records]
    assert "changed behind dockmesh's back" in line and found[0] in line
    # Elements alone: set updates, the counters go on; anything else: the table written whole.
    assert enforcer.reloads == reloads + (how != "delete element")
    assert enforcer.check() == [] and enforcer.repairs == 1


def test_a_table_policy_remove_deleted_is_not_brought_back(tmp_path: Path) -> None:
    nft, enforcer, _ = kept(tmp_path)
    Enforcer(PolicyStore(T, tmp_path), nft).remove()  # `dockmesh policy remove`
    assert enforcer.check() == [] and nft.list_table(T) is None and enforcer.repairs == 0


def test_another_policy_apply_is_waited_for_and_followed_not_repaired(tmp_path: Path) -> None:
    nft, enforcer, t = kept(tmp_path)
    other = Enforcer(PolicyStore(T, tmp_path), nft)
    rs = compile_policy(OTHER, t, "enforce", T)
    # `policy apply` wrote the kernel and has not recorded the policy yet: wait for it.
    nft.run(other.transaction(rs))
    assert enforcer.check() is None
    PolicyStore(T, tmp_path).save(Applied(T, "enforce", OTHER))
    assert enforcer.check(patient=False) == []
    assert enforcer.drift(rs) == [] and enforcer.repairs == 0
    # Had it not recorded it, the table the agent keeps comes back after the wait.
    nft.run(other.transaction(compile_policy(POLICY, t, "enforce", T)))
    assert enforcer.check(patient=False) is not None and enforcer.repairs == 1
    assert enforcer.drift(rs) == []


class Mistaken(MemoryNft):
    """An nft whose prediction of the listing is wrong (a rule it says the kernel lists that
    the kernel does not): the enforcer must not rewrite the table forever."""

    def normalise(self, cmds: list[dict[str, Any]]) -> Any:
        doc = super().normalise(cmds)
        doc["nftables"].append(
            {"rule": {"family": "inet", "table": T, "chain": "forward", "expr": [{"drop": None}]}}
        )
        return doc


def test_a_wrong_prediction_is_learnt_from_the_kernel_not_repaired_forever(
    tmp_path: Path,
) -> None:
    store = PolicyStore(T, tmp_path)
    store.save(Applied(T, "enforce", POLICY))
    nft = Mistaken()
    enforcer = Enforcer(store, nft)
    enforcer.sync(topo({2: "client"}))
    for _ in range(3):
        enforcer.check()
    assert enforcer.repairs <= 1
    ran = len(nft.ran)
    assert enforcer.check() == [] and len(nft.ran) == ran
    nft.run([{"flush": {"table": {"family": "inet", "name": T}}}])
    assert enforcer.check() and enforcer.check() == []  # tampering is still seen


def test_apply_and_remove_work_on_a_flushed_table(tmp_path: Path) -> None:
    nft, _, t = kept(tmp_path)
    TAMPER["strip the mark"](nft)
    cli = Enforcer(PolicyStore(T, tmp_path), nft)
    cli.apply(Applied(T, "enforce", OTHER), t)
    assert cli.drift(compile_policy(OTHER, t, "enforce", T)) == []
    TAMPER["flush"](nft)
    PolicyStore(T, tmp_path).remove()  # the record lost too: the mark alone says it is ours
    assert Enforcer(PolicyStore(T, tmp_path), nft).remove() is True
    assert nft.list_table(T) is None


def test_a_container_that_leaves_takes_its_flows_out_of_the_drop_logs(tmp_path: Path) -> None:
    _, nft, enforcer = applied(tmp_path)
    t = topo({2: "client", 3: "web", 4: "db"})
    enforcer.sync(t)
    rs = enforcer.ruleset
    assert rs is not None and rs.logs
    lg = next(g for g in rs.logs if g.family == 4 and g.rule == "default deny")
    flows = ["10.0.0.4 . 10.0.0.3 . tcp . 80", "192.0.2.9 . 10.0.0.3 . tcp . 80"]
    # What the kernel records as it drops (the double takes it as an add).
    where = {"family": "inet", "table": T, "name": lg.name}
    nft.run([{"add": {"element": {**where, "elem": [render_element(f) for f in flows]}}}])
    enforcer.sync(topo({2: "client", 3: "web"}))  # db leaves: its address is no one's now
    assert nft.elements(T, lg.name) == {"192.0.2.9 . 10.0.0.3 . tcp . 80"}  # the outside's stays
