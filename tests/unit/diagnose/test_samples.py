"""Latency statistics and the histogram."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dockmesh.diagnose.samples import histogram, histogram_lines, percentile, summarize

times = st.floats(min_value=0.0, max_value=1e5, allow_nan=False, allow_infinity=False)


def test_known_values() -> None:
    s = summarize([1.0, 2.0, 3.0, 4.0], lost=1)
    assert (s.samples, s.lost, s.min_ms, s.max_ms, s.avg_ms, s.p50_ms) == (4, 1, 1.0, 4.0, 2.5, 2.5)
    assert s.stddev_ms == pytest.approx(math.sqrt(1.25))
    assert percentile([1.0, 2.0, 3.0, 4.0, 5.0], 95) == pytest.approx(4.8)
    assert summarize([], lost=3).to_json()["samples"] == 0


@given(st.lists(times, min_size=1, max_size=300), st.integers(0, 5))
def test_order_holds(xs: list[float], lost: int) -> None:
    s = summarize(xs, lost)
    assert s.min_ms <= s.p50_ms <= s.p95_ms <= s.p99_ms <= s.max_ms
    assert s.min_ms <= s.avg_ms <= s.max_ms
    assert s.stddev_ms >= 0
    assert s.samples == len(xs) and s.lost == lost


@given(st.lists(times, min_size=1, max_size=300), st.integers(1, 30))
def test_histogram_holds_every_sample_once(xs: list[float], bins: int) -> None:
    h = histogram(xs, bins)
    assert sum(b.count for b in h) == len(xs)
    assert all(b.low_ms <= b.high_ms for b in h)
    assert len(histogram_lines(h)) == len(h)
