"""Rates and deltas between two counter samples (dockmesh.observe.rates): the growth over the
interval, interfaces and containers that were not there before left out, a counter that went
down (a recreated interface) restarting, and the orders a view sorts by."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dockmesh.codecs.procnet import IfaceCounters
from dockmesh.observe.counters import ContainerStats, InterfaceStats
from dockmesh.observe.rates import SORT_KEYS, Delta, deltas, rates


def k(name: str, rx: int = 0, tx: int = 0) -> IfaceCounters:
    return IfaceCounters(name, rx, 1, 0, 0, tx, 1, 0, 0)


def one(cid: str, rx: int, tx: int, iface: str = "eth0") -> ContainerStats:
    return ContainerStats(cid, cid, "local", (InterfaceStats(k(iface, rx, tx), "n"),))


def test_rates_sorted_and_restarts_left_out() -> None:
    before = [one("a", 0, 0), one("b", 0, 0), one("c", 1000, 0)]
    after = [one("a", 100, 0), one("b", 300, 100), one("c", 10, 0), one("d", 5, 5)]
    rows = rates(before, after, 2.0)
    assert [(r.container, r.rx_bytes_s, r.tx_bytes_s) for r in rows] == [
        ("b", 150.0, 50.0),
        ("a", 50.0, 0.0),
    ]
    assert rates(before, after, 0) == []


@given(
    st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 10**6)), min_size=1, max_size=20),
    st.sampled_from(sorted(SORT_KEYS)),
)
def test_rates_are_the_growth_over_the_interval(growth: list[tuple[int, int]], sort: str) -> None:
    before = [one(f"c{i}", 1000, 1000) for i in range(len(growth))]
    after = [one(f"c{i}", 1000 + r, 1000 + t) for i, (r, t) in enumerate(growth)]
    rows = rates(before, after, 0.5, sort)
    assert len(rows) == len(growth)
    assert sum(r.rx_bytes_s for r in rows) == sum(g[0] for g in growth) * 2
    assert len(deltas(before, after)) == len(growth)


def test_a_counter_that_went_down_and_a_new_interface_are_left_out() -> None:
    before = [ContainerStats("a", "a", "local", (InterfaceStats(k("eth0", 500, 500), "n"),))]
    after = [
        ContainerStats(
            "a",
            "a",
            "local",
            (
                InterfaceStats(replace(k("eth0", 600, 600), tx_packets=0), "n"),  # recreated
                InterfaceStats(k("eth1", 10, 10), "m"),  # appeared
            ),
        )
    ]
    assert deltas(before, after) == []


def test_a_delta_counts_every_field_and_its_json_gives_bits_per_second() -> None:
    before = [ContainerStats("web", "id", "local", (InterfaceStats(k("eth0"), "front"),))]
    grown = IfaceCounters("eth0", 1000, 11, 2, 3, 500, 6, 4, 5)
    after = [ContainerStats("web", "id", "local", (InterfaceStats(grown, "front"),))]
    (d,) = deltas(before, after)
    assert d == Delta(
        "web",
        "eth0",
        "front",
        {
            "rx_bytes": 1000,
            "tx_bytes": 500,
            "rx_packets": 10,
            "tx_packets": 5,
            "rx_errors": 2,
            "tx_errors": 4,
            "rx_dropped": 3,
            "tx_dropped": 5,
        },
    )
    doc = d.to_json(4.0)
    assert doc["rx_bits_per_second"] == 2000.0 and doc["tx_bits_per_second"] == 1000.0
    assert doc["container"] == "web" and doc["network"] == "front" and doc["rx_errors"] == 2
    assert "rx_bits_per_second" not in d.to_json(0)
    (row,) = rates(before, after, 2.0)
    assert row.errors_s == (2 + 4 + 3 + 5) / 2.0


def test_the_instance_identity_is_the_container_id_not_its_name() -> None:
    before = [ContainerStats("web", "old-id", "local", (InterfaceStats(k("eth0", 0, 0), "n"),))]
    after = [ContainerStats("web", "new-id", "local", (InterfaceStats(k("eth0", 9, 9), "n"),))]
    assert deltas(before, after) == []  # the container was replaced: no earlier value


@given(
    st.lists(
        st.tuples(st.sampled_from("abc"), st.sampled_from(["eth0", "eth1"]), st.integers(0, 3)),
        min_size=1,
        max_size=12,
        unique_by=lambda t: (t[0], t[1]),
    ),
    st.sampled_from(sorted(SORT_KEYS)),
)
def test_rows_are_in_the_sort_order_ties_by_container_and_interface(
    rows: list[tuple[str, str, int]], sort: str
) -> None:
    def sample(grow: bool) -> list[ContainerStats]:
        return [
            ContainerStats(c, c, "local", (InterfaceStats(k(i, g * grow, g * grow), "n"),))
            for c, i, g in rows
        ]

    got = rates(sample(False), sample(True), 1.0, sort)
    assert len(got) == len(rows)
    keys = [(SORT_KEYS[sort](r), r.container, r.interface) for r in got]
    assert keys == sorted(keys)


def test_an_unknown_sort_is_refused() -> None:
    with pytest.raises(KeyError):
        rates([], [], 1.0, "loudest")
