"""The in-memory engine whose connection fails (dockmesh.testing.engine): unplugged, every read
the watcher makes fails as a gone socket does while changes still happen on the engine;
refused stream reconnections after the first; one failed container read; attempts recorded
at the clock's instants."""

from __future__ import annotations

import pytest

from dockmesh.errors import EngineError
from dockmesh.testing.clock import ManualClock
from dockmesh.testing.engine import FlakyEngine


def test_unplugged_every_read_fails_and_changes_still_happen() -> None:
    clock = ManualClock(10.0)
    engine = FlakyEngine("e", clock=clock)
    engine.unplug()
    cid = engine.create_container("c")
    for read in (
        engine.events,
        engine.snapshot,
        lambda: engine.container(cid),
        lambda: engine.network("x"),
    ):
        with pytest.raises(EngineError, match=r"^engine e \(memory://e\) does not answer$"):
            read()
    clock.advance(2)
    with pytest.raises(EngineError):
        engine.events()
    assert engine.opened_at == [10.0, 12.0]
    engine.plug()
    assert engine.container(cid) is not None and cid in engine.snapshot().containers
    engine.events().close()
    assert engine.opened == 3


def test_refused_reconnections_and_a_failed_read() -> None:
    engine = FlakyEngine()
    engine.refuse_streams(2)
    engine.events().close()  # the first opening is never refused
    for _ in range(2):
        with pytest.raises(EngineError, match="connection refused"):
            engine.events()
    engine.events().close()
    cid = engine.create_container("c")
    engine.fail_next_read()
    with pytest.raises(EngineError, match="inspect timed out"):
        engine.container(cid)
    assert engine.container(cid) is not None  # once
