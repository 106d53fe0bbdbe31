"""Durations as Go, Docker and Compose write them (dockmesh.model.durations): what is written
reads back, the units add up, and what the engine cannot hold is refused with a message."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dockmesh.model.durations import MAX_NS, format_duration_ns, parse_duration_ns
from tests.outcomes import Outcomes

UNITS = {"h": 3600 * 10**9, "m": 60 * 10**9, "s": 10**9, "ms": 10**6, "us": 10**3, "ns": 1}


@given(st.integers(0, 10**15))
def test_durations_round_trip(ns: int) -> None:
    assert parse_duration_ns(format_duration_ns(ns)) == ns


def test_durations_refuse_what_the_engine_cannot_hold() -> None:
    for bad in ("\u0661s", "\uff15s", "9999999999h", "", "s", "1x", "-1s", float("nan"), -1, True):
        try:
            parse_duration_ns(bad)
        except ValueError:
            continue
        raise AssertionError(f"{bad!r} was accepted")


@pytest.mark.parametrize(
    ("text", "ns"),
    [
        ("2s", 2 * 10**9),
        ("500ms", 5 * 10**8),
        ("1m30s", 90 * 10**9),
        ("1.5s", 15 * 10**8),
        ("1h1m1s1ms1us1ns", 3661 * 10**9 + 10**6 + 10**3 + 1),
        ("3µs", 3000),
        (" 5s ", 5 * 10**9),
        (2, 2 * 10**9),
        (0.25, 25 * 10**7),
        ("9223372036854775807ns", MAX_NS),
    ],
)
def test_what_each_spelling_means(text: str | int | float, ns: int) -> None:
    assert parse_duration_ns(text) == ns


@given(st.integers(0, MAX_NS))
def test_the_text_is_the_shortest_exact_one(ns: int) -> None:
    text = format_duration_ns(ns)
    number, unit = text.rstrip("hmsun"), text[len(text.rstrip("hmsun")) :]
    assert number.isdigit() and int(number) * UNITS[unit] == ns
    # No larger unit divides it (0 is written in nanoseconds).
    bigger = [u for u, size in UNITS.items() if size > UNITS[unit]]
    assert not ns or all(ns % UNITS[u] for u in bigger)


def test_any_text_is_a_duration_or_refused_with_a_message() -> None:
    """Parts as Go writes them, in any order and number, with any junk beside them: a count of
    nanoseconds the engine holds, or ValueError with the text in its message."""
    seen = Outcomes()
    parts = st.tuples(
        st.integers(0, 10**6) | st.decimals(0, 1000, places=3).map(str),
        st.sampled_from(["ns", "us", "µs", "ms", "s", "m", "h"]),
    ).map(lambda p: f"{p[0]}{p[1]}")
    junk = st.text(max_size=4)
    written = st.lists(parts, min_size=1, max_size=4).map("".join)
    spoiled = st.builds(lambda w, j, at: w[:at] + j + w[at:], written, junk, st.integers(0, 30))

    @settings(max_examples=200)
    @given(st.one_of(written, written, spoiled, junk))
    def run(text: str) -> None:
        try:
            ns = parse_duration_ns(text)
        except ValueError as e:
            message: str | None = str(e)
        else:
            message = None
        if message is not None:
            seen("refused")
            assert message
            return
        seen("parsed")
        assert 0 <= ns <= MAX_NS
        assert parse_duration_ns(format_duration_ns(ns)) == ns

    run()
    seen.require(parsed=0.3, refused=0.15)
