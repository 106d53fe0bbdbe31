"""A clock that moves only when told, for the pure decisions that read `now` from a callable
(the breaker, outlier ejection, the retry budget, the catalog's checks): `clock()` reads it,
`clock.t += dt` (or `clock.advance(dt)`) moves it. For code that sleeps on an event loop, use
`dockmesh.testing.loop` instead: its clock moves by itself when the loop has nothing to do."""

from __future__ import annotations


class ManualClock:
    def __init__(self, t: float = 0.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, dt: float) -> float:
        self.t += dt
        return self.t
