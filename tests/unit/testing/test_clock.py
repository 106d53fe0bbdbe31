"""The manual clock (dockmesh.testing.clock): it reads what it was set to and moves only when
told."""

from __future__ import annotations

from dockmesh.testing.clock import ManualClock


def test_it_moves_only_when_told() -> None:
    clock = ManualClock(5.0)
    assert clock() == clock() == 5.0
    assert clock.advance(2.5) == 7.5 == clock()
    clock.t += 1
    assert clock() == 8.5
    assert ManualClock()() == 0.0
