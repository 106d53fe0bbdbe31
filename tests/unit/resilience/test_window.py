"""The sliding window of counts that failure ratios and the retry budget are measured over."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dockmesh.resilience.window import SlidingCounts


@given(st.lists(st.tuples(st.floats(0, 3), st.integers(0, 1), st.integers(1, 5)), max_size=200))
def test_totals_are_the_counts_of_the_last_window(steps: list[tuple[float, int, int]]) -> None:
    w = SlidingCounts(10.0, 10, 2)
    now = 0.0
    seen: list[tuple[float, int, int]] = []
    for dt, kind, n in steps:
        now += dt
        w.add(now, kind, n)
        seen.append((now, kind, n))
        totals = w.read(now)
        # A count is in the window while its slot is one of the last ten: at most 1 s older
        # than `now - 10` (the slot's start), never younger than `now - 9`.
        for k in (0, 1):
            surely = sum(c for t, kk, c in seen if kk == k and t > now - 9)
            maybe = sum(c for t, kk, c in seen if kk == k and t > now - 11)
            assert surely <= totals[k] <= maybe


def test_time_going_backwards_resurrects_nothing() -> None:
    w = SlidingCounts(10.0, 10, 1)
    w.add(0.0, 0, 5)
    assert w.read(25.0) == [0]
    w.add(1.0, 0, 1)  # an old time: counted in the newest slot, the old counts stay gone
    assert w.read(25.0) == [1]


def test_reset_and_bad_arguments() -> None:
    w = SlidingCounts(1.0, 4, 2)
    w.add(0.5, 1, 3)
    w.reset()
    assert w.read(0.5) == [0, 0]
    with pytest.raises(ValueError, match="window_s"):
        SlidingCounts(0.0)
