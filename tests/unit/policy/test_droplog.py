"""Every drop named: the compiler's drop logs (`with_drop_log`) and reading them back
(dockmesh.policy.droplog) — what the kernel lists parses back to the flows it holds, flows are
named by the topology's containers, and the metrics' tally counts up exactly and stays
bounded."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from dockmesh.model.policy import Policy
from dockmesh.model.topology import Topology
from dockmesh.policy.compile import (
    HASH_TAG,
    LOG_TIMEOUT_S,
    PORTED,
    compile_policy,
    element_delta,
    full_transaction,
    is_log_set,
    with_drop_log,
)
from dockmesh.policy.droplog import (
    OTHER,
    DropTally,
    Flow,
    describe,
    name_flow,
    name_flows,
    news,
    parse_flows,
    port_text,
)
from dockmesh.policy.nft import parse_live
from dockmesh.testing.nft import MemoryNft
from tests.unit.policy.test_compile import POLICIES, chapter, seg_policy, topologies

# --- the compiler's step ---------------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(topologies(), POLICIES, st.sampled_from(["enforce", "audit"]))
def test_each_drop_rule_has_a_log_and_only_those(topo: Topology, policy: Policy, mode: Any) -> None:
    rs = compile_policy(policy, topo, mode)
    logged = [r for r in rs.rules if r.log is not None]
    assert [r.log for r in logged] == [lg.name for lg in rs.logs]
    # The bridge table's drops (a VLAN tag, a bound address on another port) count only: a
    # log is a chain of the inet table, which a bridge chain cannot go to.
    for r in rs.rules:
        inet = r.table_family == "inet"
        assert (r.log is not None) == (
            r.action in ("drop", "audit") and r.family is not None and inet
        )
    for lg in rs.logs:
        assert is_log_set(lg.name) and lg.name.endswith(f"_{lg.family}")
    # Not topology sets: the elements, and so element_delta, leave them out.
    assert not any(is_log_set(s.name) for s in rs.sets)
    assert element_delta(rs.elements(), rs) == []
    assert with_drop_log(rs) is rs  # applied once
    # The marker carries the hash that covers the logs.
    assert rs.rules[0].comment == HASH_TAG + rs.structure_hash


def test_the_hash_covers_the_logs_and_the_table_lists_back_without_them() -> None:
    rs = compile_policy(seg_policy(), chapter(), "enforce", "t")
    assert rs.logs
    nft = MemoryNft()
    nft.run(full_transaction(rs))
    live = parse_live(nft.list_table("t"), "t")
    assert live.structure_hash == rs.structure_hash
    assert live.elements == rs.elements()  # the logs' sets are not the topology's
    audit = compile_policy(seg_policy(), chapter(), "audit", "t")
    assert audit.structure_hash != rs.structure_hash
    assert [lg.action for lg in audit.logs] == ["audit"] * len(audit.logs)


def test_log_set_names() -> None:
    assert is_log_set("log0_4") and is_log_set("log12_6")
    assert not any(is_log_set(n) for n in ("s0_4", "n1_6", "all_4", "log_4", "logx_4", "log1_5"))


# --- reading the kernel's listing back ---------------------------------------------------------

ADDRS4 = st.sampled_from(["10.0.0.2", "10.0.0.3", "10.0.1.9", "172.17.0.2"])
PROTOS = st.sampled_from(["tcp", "udp", "sctp", "icmp", 253])
flows4 = st.builds(
    lambda log, s, d, proto, port, packets, nbytes, expires: (
        log,
        s,
        d,
        proto,
        port if proto in PORTED else 0,
        packets,
        nbytes,
        expires,
    ),
    st.sampled_from(["log0_4", "log1_4"]),
    ADDRS4,
    ADDRS4,
    PROTOS,
    st.integers(1, 65535),
    st.integers(1, 10**9),
    st.integers(1, 10**12),
    st.integers(0, LOG_TIMEOUT_S),
)


def listing(table: str, elems: list[tuple[Any, ...]]) -> dict[str, Any]:
    """What `nft -j list table` shows for drop logs holding `elems` (nft 1.0.6's shape)."""
    sets: dict[str, list[Any]] = {}
    for log, s, d, proto, port, packets, nbytes, expires in elems:
        sets.setdefault(log, []).append(
            {
                "elem": {
                    "val": {"concat": [s, d, proto, port]},
                    "expires": expires,
                    "counter": {"packets": packets, "bytes": nbytes},
                }
            }
        )
    items: list[Any] = [{"metainfo": {"json_schema_version": 1}}]
    items.append({"set": {"family": "inet", "table": table, "name": "s0_4", "elem": ["10.0.0.2"]}})
    for name, elem in sets.items():
        items.append(
            {
                "set": {
                    "family": "inet",
                    "name": name,
                    "table": table,
                    "type": ["ipv4_addr", "ipv4_addr", "inet_proto", "inet_service"],
                    "flags": ["timeout"],
                    "timeout": LOG_TIMEOUT_S,
                    "elem": elem,
                }
            }
        )
    return {"nftables": items}


@settings(max_examples=200)
@given(st.lists(flows4, max_size=12, unique_by=lambda e: e[:5]))
def test_the_listing_parses_back_to_its_flows(elems: list[tuple[Any, ...]]) -> None:
    got = parse_flows(listing("t", elems), "t")
    assert len(got) == len(elems)
    order = list(dict.fromkeys(e[0] for e in elems))  # listed set by set
    elems = sorted(elems, key=lambda e: order.index(e[0]))
    for f, (log, s, d, proto, port, packets, nbytes, expires) in zip(got, elems, strict=True):
        assert (f.log, f.saddr, f.daddr, f.protocol) == (log, s, d, str(proto))
        assert f.port == (port if proto in PORTED else None)
        assert (f.packets, f.bytes) == (packets, nbytes)
        assert f.last_seen_s == LOG_TIMEOUT_S - expires
    assert parse_flows(listing("t", elems), "other") == []


@given(
    st.recursive(
        st.none() | st.integers() | st.text(max_size=5),
        lambda c: st.lists(c) | st.dictionaries(st.text(max_size=5), c),
    )
)
def test_any_listing_parses_without_error(doc: Any) -> None:
    parse_flows(doc, "t")
    parse_flows({"nftables": [{"set": {"table": "t", "name": "log0_4", "elem": [doc]}}]}, "t")


def test_ports_are_said_as_the_policy_says_them() -> None:
    assert port_text("tcp", 8080) == "8080/tcp"
    assert port_text("icmp", None) == port_text("ipv6-icmp", None) == "icmp"
    assert port_text("253", None) == "253"


# --- naming ----------------------------------------------------------------------------------

WHO = {"10.0.0.2": "web-1", "10.0.0.3": "db-1"}


def flow(s: str, d: str, packets: int, port: int | None = 5432, log: str = "log0_4") -> Flow:
    return Flow(log, s, d, "tcp", port, packets, packets * 60, 3.0)


def test_flows_are_named_by_container_and_rule() -> None:
    rs = compile_policy(seg_policy(), chapter(), "enforce")
    logs = describe(rs.logs)
    (seg_deny,) = (
        g.name for g in rs.logs if g.rule == "network seg default deny" and g.family == 4
    )
    [d] = name_flows([flow("10.0.0.2", "10.0.0.3", 4, log=seg_deny)], logs, WHO.get)
    assert (d.src, d.dst, d.port, d.rule, d.verdict) == (
        "web-1",
        "db-1",
        "5432/tcp",
        "network seg default deny",
        "drop",
    )
    assert (
        d.line()
        == "web-1 → db-1:5432/tcp  dropped by network seg default deny  4 packets, last 3s ago"
    )
    # An address no container holds now is said as the address; an unknown log by its name.
    [u] = name_flows([flow("10.0.0.9", "10.0.0.3", 1, log="log99_4")], logs, WHO.get, audit=True)
    assert (u.src, u.rule, u.verdict) == ("10.0.0.9", "log99_4", "would_drop")
    assert "would drop (audit): log99_4  1 packet," in u.line()
    assert set(d.to_json()) >= {"src", "dst", "port", "rule", "verdict"}


def test_follow_prints_new_and_grown_flows_only() -> None:
    a, b = flow("10.0.0.2", "10.0.0.3", 4), flow("10.0.0.3", "10.0.0.2", 1)
    seen = {a.key: 4, b.key: 1}
    grown = flow("10.0.0.2", "10.0.0.3", 6)
    again = flow("10.0.0.3", "10.0.0.2", 1)
    fresh = flow("10.0.0.2", "10.0.0.3", 1, port=22)
    assert news(seen, [grown, again, fresh]) == [grown, fresh]


# --- the metrics' tally ----------------------------------------------------------------------


@settings(max_examples=200)
@given(
    st.lists(
        st.lists(st.tuples(st.sampled_from([*WHO, "10.0.0.9"]), st.integers(0, 5)), max_size=4),
        max_size=8,
    )
)
def test_the_tally_counts_what_each_reading_adds(readings: list[list[tuple[str, int]]]) -> None:
    """Each reading: per source, packets added since the last one, or 0: the flow was
    forgotten and is absent from this reading. The totals equal every packet added."""
    tally = DropTally()
    live: dict[str, int] = {}
    added = 0
    for reading in readings:
        gone = {src for src, more in reading if more == 0}
        for src in gone:
            live.pop(src, None)  # absent from this reading: next time it counts from nothing
        for src, more in reading:
            if more and src not in gone:
                live[src] = live.get(src, 0) + more
                added += more
        flows = [flow(s, "10.0.0.3", n) for s, n in live.items()]
        tally.observe(flows, lambda f: name_flow(f, {}, WHO.get))
    assert sum(tally.totals.values()) == added


def test_the_tally_is_bounded() -> None:
    tally = DropTally(max_series=3)
    flows = [flow(f"10.1.0.{i}", "10.0.0.3", 1) for i in range(10)]
    tally.observe(flows, lambda f: name_flow(f, {}, WHO.get))
    assert len(tally.totals) == 4  # three pairs, and the rest together
    assert tally.totals[("log0_4", OTHER, OTHER, "drop")] == 7
