"""A sliding window of counts over time, in buckets: what a failure ratio or a retry budget
is measured over. Pure; the time is passed in.

The window is `buckets` slots of `window_s / buckets` seconds each. A count lands in the slot
of its time; a slot whose time has passed the window is cleared before it is reused. Totals
are kept alongside so reading them is O(1). Time going backwards (a clock that is not
monotonic) never resurrects old counts: the newest time seen is the window's "now".
"""

from __future__ import annotations

import math


class SlidingCounts:
    """Counts of `width` kinds of events (e.g. requests and failures) over the last window."""

    __slots__ = ("_counts", "_epochs", "_newest", "_slot_s", "buckets", "totals")

    def __init__(self, window_s: float, buckets: int = 10, width: int = 2) -> None:
        if window_s <= 0 or buckets < 1 or width < 1:
            raise ValueError("window_s > 0, buckets >= 1 and width >= 1 are required")
        self.buckets = buckets
        self._slot_s = window_s / buckets
        self._counts = [[0] * width for _ in range(buckets)]
        # The slot number (time // slot_s) each bucket's counts belong to.
        self._epochs = [-(10**18)] * buckets
        self._newest = -(10**18)
        self.totals = [0] * width

    def _advance(self, now: float) -> int:
        epoch = math.floor(now / self._slot_s)
        if epoch <= self._newest:
            return self._newest
        # Clear every slot that falls out of the window between the newest time and now.
        for e in range(max(self._newest + 1, epoch - self.buckets + 1), epoch + 1):
            i = e % self.buckets
            if self._epochs[i] != e:
                old = self._counts[i]
                for k, v in enumerate(old):
                    self.totals[k] -= v
                    old[k] = 0
                self._epochs[i] = e
        self._newest = epoch
        return epoch

    def add(self, now: float, kind: int, n: int = 1) -> None:
        epoch = math.floor(now / self._slot_s)
        if epoch != self._newest:  # the common case (same slot as the last count) skips this
            epoch = self._advance(now)
        i = epoch % self.buckets
        self._counts[i][kind] += n
        self.totals[kind] += n

    def read(self, now: float) -> list[int]:
        """The totals of each kind over the window ending at `now`."""
        self._advance(now)
        return list(self.totals)

    def reset(self) -> None:
        for c in self._counts:
            for k in range(len(c)):
                c[k] = 0
        self.totals = [0] * len(self.totals)
