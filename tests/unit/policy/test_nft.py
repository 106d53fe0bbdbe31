"""The kernel side of the policy (dockmesh.policy.nft) without a kernel: reading a listed table
back (`parse_live`, every element form nft lists), whose table it is (`is_ours`), table
names, and the `nft` runner driven through a stand-in binary that records what it was sent.
(The in-memory nft, and the real one beside it: tests/unit/testing/test_nft.py and
tests/integration/test_memory_nft.py.)"""

from __future__ import annotations

import ipaddress
import json
import stat
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dockmesh.policy import nft as nft_module
from dockmesh.policy.compile import HASH_TAG, document, render_element
from dockmesh.policy.nft import (
    ForeignTable,
    Nft,
    NftError,
    check_table_name,
    is_ours,
    parse_live,
)
from tests.outcomes import Outcomes

# --- whose table it is ------------------------------------------------------------------------


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


def test_a_table_without_the_marker_is_not_ours() -> None:
    assert not is_ours(foreign_doc("t"), "t")
    assert not is_ours({"nftables": [{"table": {"family": "inet", "name": "t"}}]}, "t")
    assert is_ours(ours_doc("t"), "t")


def test_a_foreign_table_says_it_is_not_touched_and_which_option_names_another() -> None:
    e = ForeignTable("t")
    assert e.table == "t"
    assert "table inet t exists but was not made by dockmesh" in str(e)
    assert "'dockmesh_…' set" in str(e) and "no policy is recorded" in str(e)
    assert "--table" in str(e)


def test_only_the_first_rule_carries_the_marker() -> None:
    doc = ours_doc("t")
    rules = doc["nftables"]
    rules.insert(2, {"rule": {**rules[2]["rule"], "handle": 9, "comment": "first"}})
    assert not is_ours(doc, "t")


def test_another_table_s_marker_is_not_this_one_s() -> None:
    assert not is_ours(ours_doc("other"), "t")
    assert is_ours(ours_doc("other"), "other")


# --- reading a listed table back --------------------------------------------------------------


def test_parse_live_reads_elements_counters_and_the_hash() -> None:
    doc = {
        "nftables": [
            {"metainfo": {"json_schema_version": 1}},
            {"table": {"family": "inet", "name": "t", "handle": 1}},
            {
                "set": {
                    "family": "inet",
                    "name": "s0_4",
                    "table": "t",
                    "type": "ipv4_addr",
                    "elem": ["10.0.0.2"],
                }
            },
            {
                "set": {
                    "family": "inet",
                    "name": "n0_4",
                    "table": "t",
                    "type": "ipv4_addr",
                    "flags": ["interval"],
                    "elem": [
                        {"prefix": {"addr": "10.1.0.0", "len": 24}},
                        {"range": ["10.2.0.0", "10.2.1.255"]},
                    ],
                }
            },
            {
                "set": {
                    "family": "inet",
                    "name": "s0_6",
                    "table": "t",
                    "type": "ipv6_addr",
                    "elem": ["fd00:0::1"],
                }
            },
            {"chain": {"family": "inet", "table": "t", "name": "forward", "handle": 2}},
            {
                "rule": {
                    "family": "inet",
                    "table": "t",
                    "chain": "forward",
                    "handle": 3,
                    "comment": "dockmesh policy abc",
                    "expr": [{"accept": None}],
                }
            },
            {
                "rule": {
                    "family": "inet",
                    "table": "t",
                    "chain": "forward",
                    "handle": 4,
                    "comment": "rule 1",
                    "expr": [{"counter": {"packets": 3, "bytes": 180}}, {"accept": None}],
                }
            },
        ]
    }
    live = parse_live(doc, "t")
    assert live.structure_hash == "abc"
    assert live.elements == {
        "s0_4": frozenset({"10.0.0.2"}),
        "n0_4": frozenset({"10.1.0.0/24", "10.2.0.0/23"}),
        "s0_6": frozenset({"fd00::1"}),
    }
    assert [(r.comment, r.packets) for r in live.rules] == [
        ("dockmesh policy abc", None),
        ("rule 1", 3),
    ]


def listed(*items: Any) -> dict[str, Any]:
    return {"nftables": [{"metainfo": {"json_schema_version": 1}}, *items]}


def a_set(name: str, elem: list[Any], table: str = "t") -> dict[str, Any]:
    return {
        "set": {"family": "inet", "table": table, "name": name, "type": "ipv4_addr", "elem": elem}
    }


def test_elements_with_options_other_tables_and_odd_items() -> None:
    doc = listed(
        a_set("s", [{"elem": {"val": "10.0.0.2", "comment": "a"}}, "10.0.0.3"]),
        a_set("s", ["10.9.9.9"], table="other"),
        {"set": {"family": "inet", "table": "t", "name": "empty", "type": "ipv4_addr"}},
        {"rule": {"family": "inet", "table": "other", "chain": "c", "comment": HASH_TAG + "x"}},
        {"rule": {"family": "inet", "table": "t", "chain": "c", "handle": 7}},
        "not an item",
        {"chain": {"family": "inet", "table": "t", "name": "forward"}},
    )
    live = parse_live(doc, "t")
    assert live.elements == {"s": frozenset({"10.0.0.2", "10.0.0.3"}), "empty": frozenset()}
    assert live.structure_hash is None  # the other table's marker is not this one's
    assert [(r.comment, r.packets, r.bytes, r.handle) for r in live.rules] == [("", None, None, 7)]
    assert live.chains == ("forward",)


@pytest.mark.parametrize(
    "doc", [None, [], "nftables", {}, {"nftables": []}, {"nftables": ["x", 1, None]}]
)
def test_a_listing_of_another_shape_is_an_empty_table(doc: Any) -> None:
    live = parse_live(doc, "t")
    assert (live.structure_hash, live.elements, live.rules, live.chains) == (None, {}, (), ())


networks = st.one_of(
    st.ip_addresses().map(ipaddress.ip_network),
    st.builds(
        lambda a, n: ipaddress.ip_network(f"{a}/{n}", strict=False),
        st.ip_addresses(v=4),
        st.integers(8, 32),
    ),
    st.builds(
        lambda a, n: ipaddress.ip_network(f"{a}/{n}", strict=False),
        st.ip_addresses(v=6),
        st.integers(32, 128),
    ),
)


def addresses(texts: frozenset[str]) -> list[tuple[int, int, int]]:
    """The (version, first, last) address ranges the texts cover, adjacent ones merged."""
    spans = sorted(
        (n.version, int(n.network_address), int(n.broadcast_address))
        for n in map(ipaddress.ip_network, texts)
    )
    merged: list[tuple[int, int, int]] = []
    for v, first, last in spans:
        if merged and merged[-1][0] == v and merged[-1][2] + 1 >= first:
            merged[-1] = (v, merged[-1][1], max(merged[-1][2], last))
        else:
            merged.append((v, first, last))
    return merged


def test_every_element_form_nft_lists_reads_back_as_the_addresses_it_covers() -> None:
    """A set of networks, each listed as nft may list it (an address, a prefix, a range, an
    element with options): the texts read back cover exactly those addresses, each in the
    compiler's form (an address for a single one, `net/len` otherwise)."""
    seen = Outcomes()

    @given(st.lists(networks, min_size=1, max_size=6), st.data())
    def run(nets: list[Any], data: st.DataObject) -> None:
        # nft lists an interval set's elements without overlaps: keep the first of each.
        kept: list[Any] = []
        for n in nets:
            if all(n.version != m.version or not n.overlaps(m) for m in kept):
                kept.append(n)
        elem: list[Any] = []
        for n in kept:
            how = data.draw(st.sampled_from(["compiler", "range", "options"]))
            text = str(n.network_address) if n.prefixlen == n.max_prefixlen else str(n)
            seen("single" if n.num_addresses == 1 else "network")
            if how == "range":
                elem.append({"range": [str(n.network_address), str(n.broadcast_address)]})
            elif how == "options":
                elem.append({"elem": {"val": render_element(text), "timeout": 5}})
            else:
                elem.append(render_element(text))
        (texts,) = parse_live(listed(a_set("s", elem)), "t").elements.values()
        want = frozenset(
            str(n.network_address) if n.prefixlen == n.max_prefixlen else str(n) for n in kept
        )
        assert addresses(texts) == addresses(want)
        for t in texts:
            n = ipaddress.ip_network(t)
            assert t == (str(n.network_address) if n.num_addresses == 1 else str(n))

    run()
    seen.require(single=0.1, network=0.4)


# --- table names --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["dockmesh", "a", "t-1_x", "A" + "b" * 63])
def test_a_table_name_nft_takes(name: str) -> None:
    assert check_table_name(name) == name


@pytest.mark.parametrize("name", ["", "1abc", "-x", "a b", "a;b", "a" * 65, "ä", "a\n"])
def test_a_table_name_nft_would_refuse(name: str) -> None:
    with pytest.raises(ValueError, match="is not a table name"):
        check_table_name(name)


@given(st.text(max_size=70))
def test_a_table_name_is_a_letter_then_up_to_63_of_letters_digits_underscore_dash(
    name: str,
) -> None:
    ascii_letters = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
    good = (
        0 < len(name) <= 64
        and name[0] in ascii_letters
        and all(c in ascii_letters + "0123456789_-" for c in name)
    )
    try:
        check_table_name(name)
    except ValueError:
        assert not good
    else:
        assert good


# --- the nft runner, through a stand-in binary --------------------------------------------------


def stand_in(tmp_path: Path, stdout: str = "", stderr: str = "", code: int = 0) -> Nft:
    """An `nft` that records its arguments and what it read, then prints and exits as told."""
    script = tmp_path / "nft"
    (tmp_path / "out").write_text(stdout)
    (tmp_path / "err").write_text(stderr)
    script.write_text(
        "#!/bin/sh\n"
        f'echo "$@" > "{tmp_path}/args"\n'
        f'cat > "{tmp_path}/stdin"\n'
        f'cat "{tmp_path}/out"; cat "{tmp_path}/err" >&2\n'
        f"exit {code}\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return Nft(str(script))


def test_a_transaction_is_one_json_document_on_stdin(tmp_path: Path) -> None:
    cmds: list[Any] = [{"add": {"table": {"family": "inet", "name": "t"}}}]
    stand_in(tmp_path).run(cmds)
    assert (tmp_path / "args").read_text().split() == ["-j", "-f", "-"]
    assert json.loads((tmp_path / "stdin").read_text()) == document(cmds)


def test_no_commands_run_nothing(tmp_path: Path) -> None:
    stand_in(tmp_path).run([])
    assert not (tmp_path / "args").exists()


def test_a_refusal_is_nft_s_first_line(tmp_path: Path) -> None:
    nft = stand_in(
        tmp_path, stderr="\n  Error: Could not process rule: Device busy\nmore\n", code=1
    )
    with pytest.raises(NftError, match=r"^Error: Could not process rule: Device busy$"):
        nft.run([{"add": {"table": {"family": "inet", "name": "t"}}}])
    with pytest.raises(NftError, match=r"^nft exited with 3$"):
        stand_in(tmp_path, code=3).run([{"add": {"table": {}}}])


def test_listing_a_table(tmp_path: Path) -> None:
    doc = listed(a_set("s", ["10.0.0.2"]))
    # Both tables are asked for (inet, then bridge) and answered as one listing; the stand-in
    # answers the same to both.
    items = [x for x in doc["nftables"] if "metainfo" not in x]
    assert stand_in(tmp_path, stdout=json.dumps(doc)).list_table("t") == {"nftables": items * 2}
    assert (tmp_path / "args").read_text().split() == ["-j", "list", "table", "bridge", "t"]
    missing = "Error: No such file or directory\nlist table inet t\n"
    assert stand_in(tmp_path, stderr=missing, code=1).list_table("t") is None
    with pytest.raises(NftError, match="Operation not permitted"):
        stand_in(tmp_path, stderr="Error: Operation not permitted\n", code=1).list_table("t")
    with pytest.raises(NftError, match="printed something that is not JSON"):
        stand_in(tmp_path, stdout="table inet t {\n").list_table("t")
    with pytest.raises(ValueError, match="is not a table name"):
        stand_in(tmp_path).list_table("t; flush ruleset")


def test_a_missing_binary_and_one_that_does_not_answer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gone = Nft(str(tmp_path / "no-such-nft"))
    assert not gone.available()
    with pytest.raises(NftError, match="is not installed"):
        gone.list_table("t")
    slow = tmp_path / "slow-nft"
    slow.write_text("#!/bin/sh\nexec sleep 5\n")
    slow.chmod(0o755)
    monkeypatch.setattr(nft_module, "TIMEOUT_S", 0.2)
    assert Nft(str(slow)).available()
    with pytest.raises(NftError, match="did not answer within 0 s"):
        Nft(str(slow)).run([{"add": {"table": {}}}])
