"""The network report (dockmesh.observe.report): the ring of probe pairs on each network, and
the report document built from the measurements it is given."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import given
from hypothesis import strategies as st

from dockmesh.observe.flows import Edge
from dockmesh.observe.rates import Delta
from dockmesh.observe.report import Expected, Pair, build_report, connectivity_pairs, status
from tests.unit.topos import container, network, topology

LOCAL = frozenset({"local"})


def ring(n: int, per_network: int = 50) -> list[Pair]:
    topo = topology(
        [network("n", "10.0.0.0/24")],
        [container(f"c{i}", {"n": f"10.0.0.{i + 2}"}) for i in range(n)],
    )
    return connectivity_pairs(topo, LOCAL, per_network)


def test_each_container_probes_the_next_in_a_ring() -> None:
    pairs = ring(3)
    assert [(p.src.name, p.dst.name, p.address) for p in pairs] == [
        ("c0", "c1", "10.0.0.3"),
        ("c1", "c2", "10.0.0.4"),
        ("c2", "c0", "10.0.0.2"),
    ]
    assert {p.network for p in pairs} == {"n"}


@given(st.integers(0, 12), st.integers(1, 12))
def test_n_containers_make_n_probes_at_most_per_network(n: int, per_network: int) -> None:
    pairs = ring(n, per_network)
    assert len(pairs) == (0 if n < 2 else min(n, per_network))
    assert all(p.src.id != p.dst.id for p in pairs)
    # every container probed is also a prober, as long as the ring is not cut short
    if n <= per_network:
        assert {p.src.name for p in pairs} == {p.dst.name for p in pairs}


def test_containers_that_cannot_be_read_here_neither_probe_nor_are_probed() -> None:
    topo = topology(
        [network("n", "10.0.0.0/24"), network("m", "10.1.0.0/24")],
        [
            container("a", {"n": "10.0.0.2", "m": "10.1.0.2"}),
            container("b", {"n": "10.0.0.3"}),
            container("stopped", {"n": "10.0.0.4"}, state="exited"),
            replace(container("far", {"n": "10.0.0.5"}), engine="remote"),
            container("alone", {"m": "10.1.0.3"}, state="exited"),
        ],
    )
    pairs = connectivity_pairs(topo, LOCAL)
    assert [(p.network, p.src.name, p.dst.name) for p in pairs] == [
        ("n", "a", "b"),
        ("n", "b", "a"),
    ]


def test_the_report_document() -> None:
    topo = topology(
        [network("n", "10.0.0.0/24")],
        [
            container("a", {"n": "10.0.0.2"}),
            container("b", {"n": "10.0.0.3"}),
            container("c", {"n": "10.0.0.4"}, state="exited"),
        ],
    )
    pairs = connectivity_pairs(topo, LOCAL)
    a, b = pairs[0].src, pairs[1].src
    traffic = [
        Delta("a", "eth0", "n", {"rx_bytes": 100, "tx_bytes": 40}),
        Delta("b", "eth0", "n", {"rx_bytes": 1, "tx_bytes": 2}),
    ]
    edges = [Edge("a", "b", "tcp", 80, connections=1)]
    results = {(a.id, "10.0.0.3"): 0.123456, (b.id, "10.0.0.2"): None}
    doc = build_report("2024-01-01T00:00:00Z", 2.0, topo, traffic, edges, results, pairs, "on")
    assert doc["timestamp"] == "2024-01-01T00:00:00Z" and doc["duration_s"] == 2.0
    assert doc["topology"] == topo.to_json()
    assert doc["traffic"] == [d.to_json(2.0) for d in traffic]
    assert doc["flows"] == [edges[0].to_json()]
    assert doc["connectivity"] == [
        {
            "network": "n",
            "src": "a",
            "dst": "b",
            "address": "10.0.0.3",
            "reachable": True,
            "rtt_ms": 0.1235,
            "expected": None,
            "status": "reachable",
            "reason": "",
            "detail": "",
        },
        {
            "network": "n",
            "src": "b",
            "dst": "a",
            "address": "10.0.0.2",
            "reachable": False,
            "rtt_ms": None,
            "expected": None,
            "status": "unreachable",
            "reason": "",
            "detail": "",
        },
    ]
    assert doc["summary"] == {
        "containers": 3,
        "running": 2,
        "networks": 1,
        "rx_bytes": 101,
        "tx_bytes": 42,
        "flow_edges": 1,
        "pairs_probed": 2,
        "pairs_unreachable": 1,
        "pairs_denied": 0,
        "pairs_mismatched": 1,
        "conntrack_accounting": "on",
        "connectivity_s": None,
    }


def test_a_pair_without_a_result_is_unreachable() -> None:
    pairs = ring(2)
    doc = build_report("t", 1.0, topology([], []), [], [], {}, pairs, "off")
    assert [c["reachable"] for c in doc["connectivity"]] == [False, False]  # type: ignore[attr-defined]


def test_a_pair_the_policy_drops_is_denied_with_its_reason_not_unreachable() -> None:
    pairs = ring(3)
    keys = [(p.src.id, p.address) for p in pairs]
    rule = "no rule allows it; network n's default denies it (ping (ICMP) on n)"
    expected = {
        keys[0]: Expected(True, "rule 1 allows it"),
        keys[1]: Expected(False, rule),
        keys[2]: Expected(False, rule),
    }
    results = {keys[0]: 0.2, keys[1]: None, keys[2]: 0.3}
    details = {keys[1]: "no reply within 1 s"}
    doc = build_report("t", 1.0, topology([], []), [], [], results, pairs, "on", expected, details)
    conn: list[dict[str, object]] = doc["connectivity"]  # type: ignore[assignment]
    assert [c["status"] for c in conn] == ["reachable", "denied", "unexpected"]
    assert conn[1]["reason"] == rule and conn[1]["detail"] == "no reply within 1 s"
    assert conn[1]["expected"] is False and conn[1]["reachable"] is False
    summary: dict[str, object] = doc["summary"]  # type: ignore[assignment]
    assert summary["pairs_unreachable"] == 1  # what did not answer, as before
    assert summary["pairs_denied"] == 1 and summary["pairs_mismatched"] == 1


@given(st.booleans(), st.one_of(st.none(), st.booleans()))
def test_the_status_is_a_mismatch_exactly_when_observation_and_analysis_differ(
    answered: bool, should: bool | None
) -> None:
    want = None if should is None else Expected(should, "")
    got = status(answered, want)
    assert got in ("reachable", "denied", "unreachable", "unexpected")
    assert (got in ("unreachable", "unexpected")) == (answered != (should is not False))
    assert (got in ("reachable", "unexpected")) == answered
