"""Statistics of latency samples and their histogram (pure).

Percentiles interpolate linearly between the two nearest ranks (numpy's default, "type 7"):
p50 of an even count is the mean of the middle two, and p0/p100 are the min and max, so
min <= p50 <= p95 <= p99 <= max always holds. The deviation is the population one: the
samples are everything measured, not an estimate of a larger set.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class LatencySummary:
    samples: int
    lost: int
    min_ms: float
    avg_ms: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    stddev_ms: float

    def to_json(self) -> dict[str, float | int]:
        def r(x: float) -> float:
            return round(x, 4)

        return {
            "samples": self.samples,
            "lost": self.lost,
            "min_ms": r(self.min_ms),
            "avg_ms": r(self.avg_ms),
            "p50_ms": r(self.p50_ms),
            "p95_ms": r(self.p95_ms),
            "p99_ms": r(self.p99_ms),
            "max_ms": r(self.max_ms),
            "stddev_ms": r(self.stddev_ms),
        }


def percentile(ordered: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) of already sorted values, interpolated."""
    if not ordered:
        raise ValueError("no samples")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile {q} outside 0..100")
    pos = (len(ordered) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    frac = pos - lo
    # The two-term form keeps the result between its neighbours despite rounding.
    return min(max(ordered[lo] * (1 - frac) + ordered[hi] * frac, ordered[lo]), ordered[hi])


def summarize(samples_ms: Sequence[float], lost: int = 0) -> LatencySummary:
    """The summary of the answered samples; `samples` counts those, `lost` the rest. With
    no answered sample every time is 0 (and `samples` says so)."""
    if not samples_ms:
        return LatencySummary(0, lost, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
    ordered = sorted(samples_ms)
    n = len(ordered)
    avg = math.fsum(ordered) / n
    avg = min(max(avg, ordered[0]), ordered[-1])
    var = math.fsum((x - avg) ** 2 for x in ordered) / n
    return LatencySummary(
        samples=n,
        lost=lost,
        min_ms=ordered[0],
        avg_ms=avg,
        p50_ms=percentile(ordered, 50),
        p95_ms=percentile(ordered, 95),
        p99_ms=percentile(ordered, 99),
        max_ms=ordered[-1],
        stddev_ms=math.sqrt(var),
    )


@dataclass(frozen=True, slots=True)
class Bin:
    low_ms: float
    high_ms: float
    count: int


def histogram(samples_ms: Sequence[float], bins: int = 12) -> list[Bin]:
    """`bins` equal-width bins from the smallest to the largest sample (the last one
    closed), each sample in exactly one. The top 1% is folded into the last bin when it
    would stretch the range more than tenfold, so a few outliers do not squash the rest
    into one bar."""
    if not samples_ms or bins < 1:
        return []
    ordered = sorted(samples_ms)
    low, high = ordered[0], ordered[-1]
    p99 = percentile(ordered, 99)
    if p99 > low and high - low > 10 * (p99 - low):
        high = p99
    width = (high - low) / bins
    if width <= 0:
        return [Bin(low, ordered[-1], len(ordered))]
    counts = [0] * bins
    for x in ordered:
        i = min(int((x - low) / width), bins - 1)
        counts[i] += 1
    edges = [low + width * i for i in range(bins)] + [ordered[-1]]
    out = [Bin(edges[i], edges[i + 1], counts[i]) for i in range(bins)]
    out[-1] = Bin(edges[-2], ordered[-1], counts[-1])
    return out


def histogram_lines(hist: Sequence[Bin], width: int = 40) -> list[str]:
    """A terminal histogram: one line per bin, a bar scaled to the fullest bin."""
    if not hist:
        return []
    top = max(b.count for b in hist) or 1
    lines = []
    for b in hist:
        bar = "█" * max(1 if b.count else 0, round(b.count / top * width))
        lines.append(f"{b.low_ms:9.3f} - {b.high_ms:9.3f} ms │{bar} {b.count}")
    return lines
