"""What differs between a live table and what a transaction writes (dockmesh.policy.drift): a
table just written compares equal (against nft's listing of it, and against the commands as
sent); each kind of tampering is named once, in words; elements compare as values whatever
form nft lists them in. (The same against the real kernel: tests/integration/test_memory_nft.py
and tests/integration/test_policy_tamper.py.)"""

from __future__ import annotations

import copy
import ipaddress
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dockmesh.model.policy import Policy
from dockmesh.model.topology import Topology
from dockmesh.policy.compile import JSON, compile_policy, full_transaction
from dockmesh.policy.drift import (
    as_listing,
    differences,
    element_texts,
    mark_writers,
    only_elements,
    render,
    structure,
    summary,
    tables_of,
    view,
    wanted,
)
from dockmesh.policy.nft import mark
from dockmesh.testing.nft import MemoryNft
from tests.outcomes import Outcomes
from tests.unit.policy.test_compile import POLICIES, topologies

T = "t"


def written(policy: Policy, topo: Topology) -> tuple[list[JSON], MemoryNft]:
    rs = compile_policy(policy, topo, "enforce", T)
    tx = mark(full_transaction(rs), rs.structure_hash)
    nft = MemoryNft()
    nft.run(tx)
    return tx, nft


def diffs(tx: list[JSON], nft: MemoryNft) -> list[str]:
    keys = tables_of(tx)
    return differences(view(nft.list_tables(keys), keys), wanted(tx, nft.normalise(tx)))


@settings(max_examples=150, deadline=None)
@given(topologies(), POLICIES)
def test_a_table_just_written_is_in_sync_with_either_reference(topo: Topology, p: Policy) -> None:
    tx, nft = written(p, topo)
    keys = tables_of(tx)
    live = view(nft.list_tables(keys), keys)
    assert keys == [("inet", T), ("bridge", T)]
    assert differences(live, wanted(tx, nft.normalise(tx))) == []
    assert differences(live, wanted(tx, as_listing(structure(tx)))) == []


def _rules(nft: MemoryNft) -> list[dict[str, Any]]:
    return nft.tables[("inet", T)].rules


KINDS = ["flush", "delete table", "delete rule", "add rule", "replace", "element"]
# The policy spans two tables (inet and bridge): each difference says which.
P = f"table inet {T}: "


@pytest.mark.parametrize("kind", KINDS)
def test_each_kind_of_tampering_is_named(kind: str) -> None:
    seen = Outcomes()

    @settings(max_examples=60, deadline=None)
    @given(topologies(), POLICIES, st.data())
    def run(topo: Topology, p: Policy, data: st.DataObject) -> None:
        tx, nft = written(p, topo)
        rules = _rules(nft)
        if kind == "flush":
            nft.run([{"flush": {"table": {"family": "inet", "name": T}}}])
            forward = sum(1 for r in rules if r["chain"] == "forward")
            found = diffs(tx, nft)
            assert (
                found[0] == P + f"chain forward: all {forward} rules missing (the chain is empty)"
            )
            assert all(d.startswith(P) and "(the chain is empty)" in d for d in found)
        elif kind == "delete table":
            nft.run([{"delete": {"table": {"family": "inet", "name": T}}}])
            assert diffs(tx, nft) == [f"table inet {T} missing"]  # the bridge table is intact
        elif kind == "delete rule":
            i = data.draw(st.integers(0, len(rules) - 1))
            gone = rules[i]
            nft.run(
                [{"delete": {"rule": {"family": "inet", "table": T, "handle": gone["handle"]}}}]
            )
            (d,) = diffs(tx, nft)
            assert d.startswith(P + f"chain {gone['chain']}: rule ") and d.endswith(" missing")
            assert (f"'{gone['comment']}'" if gone.get("comment") else render(gone["expr"])) in d
        elif kind == "add rule":
            nft.run([{"add": {"rule": {"family": "inet", "table": T, "chain": "forward",
                                       "expr": [{"accept": None}]}}}])  # fmt: skip
            assert diffs(tx, nft) == [P + "chain forward: extra rule 'accept'"]
        elif kind == "replace":
            i = data.draw(st.integers(0, len(rules) - 1))
            r = copy.deepcopy(rules[i])
            verdict = "drop" if {"accept": None} in r["expr"] else "accept"
            r["expr"] = [e for e in r["expr"] if e not in ({"accept": None}, {"drop": None})]
            r["expr"].append({verdict: None})
            nft.run([{"replace": {"rule": r}}])
            found = diffs(tx, nft)
            assert len(found) in (1, 2) and verdict in " ".join(found), found
            assert not only_elements(*_sides(tx, nft))
        else:
            holding = [n for n, s in nft.tables[("inet", T)].sets.items() if s.elements]
            if not holding:
                seen("no element")
                return
            name = data.draw(st.sampled_from(sorted(holding)))
            victim = sorted(nft.elements(T, name))[0]
            elem: Any = victim
            if "/" in victim:
                a, _, n = victim.partition("/")
                elem = {"prefix": {"addr": a, "len": int(n)}}
            nft.run([{"delete": {"element": {"family": "inet", "table": T, "name": name,
                                             "elem": [elem]}}}])  # fmt: skip
            assert diffs(tx, nft) == [P + f"set {name}: 1 element missing ({victim})"]
            assert only_elements(*_sides(tx, nft))
        seen(kind)

    run()
    seen.require(**{kind: 0.5})


def _sides(tx: list[JSON], nft: MemoryNft) -> tuple[Any, Any]:
    keys = tables_of(tx)
    return view(nft.list_tables(keys), keys), wanted(tx, nft.normalise(tx))


def test_chain_and_set_declarations_are_compared_key_by_key() -> None:
    from tests.unit.policy.test_compile import chapter, seg_policy

    tx, nft = written(seg_policy(), chapter())
    nft.tables[("inet", T)].chains["forward"]["policy"] = "drop"
    first = next(iter(nft.tables[("inet", T)].sets))
    nft.tables[("inet", T)].sets[first].doc["flags"] = ["timeout"]
    found = diffs(tx, nft)
    assert P + "chain forward: policy drop, want accept" in found
    assert any(d.startswith(P + f"set {first}: flags timeout, want ") for d in found), found
    nft.run([{"delete": {"set": {"family": "inet", "table": T, "name": first}}}])
    assert P + f"set {first} missing" in diffs(tx, nft)


def test_what_the_packet_path_records_in_a_drop_log_is_no_difference() -> None:
    from tests.unit.policy.test_compile import chapter, seg_policy

    tx, nft = written(seg_policy(), chapter())
    log = next(n for n in nft.tables[("inet", T)].sets if n.startswith("log") and n.endswith("_4"))
    elem = {"concat": ["10.242.0.4", "10.242.0.3", "tcp", 8080]}
    nft.run([{"add": {"element": {"family": "inet", "table": T, "name": log, "elem": [elem]}}}])
    assert diffs(tx, nft) == []


def test_a_set_and_a_chain_no_one_asked_for_are_extra() -> None:
    from tests.unit.policy.test_compile import chapter, seg_policy

    tx, nft = written(seg_policy(), chapter())
    nft.run(
        [
            {"add": {"set": {"family": "inet", "table": T, "name": "x", "type": "ipv4_addr"}}},
            {"add": {"chain": {"family": "inet", "table": T, "name": "side"}}},
        ]
    )
    assert diffs(tx, nft) == [P + "extra set x", P + "extra chain side"]


def test_several_tables_say_which() -> None:
    a = {"family": "inet", "name": "t"}
    b = {"family": "bridge", "name": "t"}
    tx: list[JSON] = [{"add": {"table": a}}, {"add": {"table": b}}]
    ref = as_listing(tx)
    live = view({"nftables": [{"table": a}]}, tables_of(tx))
    assert differences(live, wanted(tx, ref)) == ["table bridge t missing"]


# --- elements as values ---------------------------------------------------------------------


v4 = st.integers(0, 2**32 - 1).map(ipaddress.IPv4Address)
v6 = st.integers(0, 2**128 - 1).map(ipaddress.IPv6Address)


@given(st.one_of(v4, v6), st.data())
def test_a_prefix_a_range_and_an_address_name_the_same_value(
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address, data: st.DataObject
) -> None:
    length = data.draw(st.integers(0, ip.max_prefixlen))
    net = ipaddress.ip_network(f"{ip}/{length}", strict=False)
    want = str(net.network_address) if length == ip.max_prefixlen else str(net)
    assert element_texts({"prefix": {"addr": str(net.network_address), "len": length}}) == [want]
    assert element_texts({"range": [str(net[0]), str(net[-1])]}) == [want]
    if length == ip.max_prefixlen:
        assert element_texts(ip.exploded) == [want]  # the kernel's text, whatever was sent
    assert element_texts({"elem": {"val": want, "comment": "x"}}) == [want]


def test_concatenations_and_maps_read_as_one_text_each() -> None:
    assert element_texts({"concat": ["veth1", "10.0.0.2"]}) == ["veth1 . 10.0.0.2"]
    assert element_texts({"concat": [{"range": ["10.0.0.0", "10.0.0.255"]}, 80]}) == [
        "10.0.0.0/24 . 80"
    ]
    assert element_texts([8080, {"accept": None}]) == ["8080 : accept"]
    assert element_texts(["10.0.0.2", {"jump": {"target": "c1"}}]) == ["10.0.0.2 : jump c1"]


def test_an_interval_set_listed_as_one_range_equals_two_prefixes_sent() -> None:
    decl = {"family": "inet", "table": T, "name": "s", "type": "ipv4_addr", "flags": ["interval"]}
    tx: list[JSON] = [
        {"add": {"table": {"family": "inet", "name": T}}},
        {"add": {"set": decl}},
        {"add": {"element": {**decl, "elem": ["10.0.0.0/25", "10.0.0.128/25"]}}},
    ]
    tx[2]["add"]["element"] = {
        "family": "inet",
        "table": T,
        "name": "s",
        "elem": [{"prefix": {"addr": "10.0.0.0", "len": 25}}, "10.0.0.128/25"],
    }
    listed = {"nftables": [{"table": {"family": "inet", "name": T}},
                           {"set": {**decl, "elem": [{"range": ["10.0.0.0", "10.0.0.255"]}]}}]}  # fmt: skip
    keys = tables_of(tx)
    assert differences(view(listed, keys), wanted(tx, as_listing(structure(tx)))) == []


def test_many_elements_are_counted_and_a_few_named() -> None:
    decl = {"family": "inet", "table": T, "name": "s", "type": "ipv4_addr"}
    tx: list[JSON] = [
        {"add": {"table": {"family": "inet", "name": T}}},
        {"add": {"set": decl}},
        {"add": {"element": {**decl, "elem": [f"10.0.0.{i}" for i in range(1, 6)]}}},
    ]
    listed = {"nftables": [{"table": {"family": "inet", "name": T}},
                           {"set": {**decl, "elem": ["10.0.0.1", "10.9.9.9"]}}]}  # fmt: skip
    (d,) = differences(view(listed, tables_of(tx)), wanted(tx, as_listing(tx)))
    assert (
        d
        == "set s: 4 elements missing (10.0.0.2, 10.0.0.3, 10.0.0.4, …), 1 element extra (10.9.9.9)"
    )


# --- words ---------------------------------------------------------------------------------


def test_rules_read_as_nft_writes_them() -> None:
    expr = [
        {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}},
                   "right": "@s0_4"}},
        {"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}},
                   "right": {"set": [80, {"range": [8000, 8100]}]}}},
        {"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": ["established", "related"]}},
        {"match": {"op": "!=", "left": {"meta": {"key": "iifname"}}, "right": "eth0"}},
        {"counter": {"packets": 3, "bytes": 4}},
        {"log": {"prefix": "x: "}},
        {"jump": {"target": "c"}},
    ]  # fmt: skip
    assert render(expr) == (
        "ip saddr @s0_4 tcp dport { 80, 8000-8100 } ct state established,related "
        'meta iifname != eth0 counter log prefix "x: " jump c'
    )
    assert render([]) == "(empty)"


def test_a_summary_is_one_line_with_the_rest_counted() -> None:
    assert summary(["a", "b"]) == "a; b"
    assert summary([str(i) for i in range(8)], 3) == "0; 1; 2; and 5 more"


def test_a_rule_of_another_table_that_writes_the_mark_is_named() -> None:
    def chain(family: str, table: str, name: str, hook: str) -> JSON:
        return {"chain": {"family": family, "table": table, "name": name, "hook": hook,
                          "prio": -150, "type": "filter"}}  # fmt: skip

    def rule(family: str, table: str, name: str, *expr: Any) -> JSON:
        return {"rule": {"family": family, "table": table, "chain": name, "expr": list(expr)}}

    mark = {"mangle": {"key": {"meta": {"key": "mark"}}, "value": 0}}
    doc = {
        "nftables": [
            chain("inet", "evil", "p", "prerouting"),
            rule("inet", "evil", "p", {"counter": None}, mark),
            chain("ip", "mangle", "PREROUTING", "prerouting"),
            rule("ip", "mangle", "PREROUTING", {"xt": {"type": "target", "name": "MARK"}}),
            chain("inet", "quiet", "out", "output"),  # not on the packet's way
            rule("inet", "quiet", "out", mark),
            chain("inet", T, "forward", "forward"),  # ours
            rule("inet", T, "forward", mark),
            {"rule": {"family": "inet", "table": "evil", "chain": "p", "expr": [mark]}},
        ]
    }
    assert mark_writers(doc, T) == [
        "table inet evil chain p (prerouting, priority -150) writes the packet mark",
        "table ip mangle chain PREROUTING (prerouting, priority -150) writes the packet mark",
    ]
    assert mark_writers({"nftables": []}, T) == []


def test_a_port_range_in_a_concatenation_is_a_range_of_ports_not_of_addresses() -> None:
    from dockmesh.policy.drift import element_texts

    elem = {"concat": ["10.0.0.1", "10.0.0.2", "tcp", {"range": [8000, 8100]}]}
    assert element_texts(elem) == ["10.0.0.1 . 10.0.0.2 . tcp . 8000-8100"]
