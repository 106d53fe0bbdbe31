"""An in-memory engine whose connection misbehaves, as a real engine's socket does: for the
watcher's reconnects and back-off, and for an agent that starts before its engine answers.

    engine = FlakyEngine(clock=loop.time)
    engine.unplug()          # every read fails, as while the engine's socket is gone
    engine.refuse_streams(3) # the next three reconnections of the event stream are refused
    engine.fail_next_read()  # the next container read fails (an inspect that timed out)

Changes made through it (`create_container`, `start`, ...) always work: they stand for what
happens on the engine, which a broken connection does not stop. Everything else is
`dockmesh.engine.memory.MemoryEngine`'s.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from dockmesh.engine.memory import MemoryEngine, MemoryEventStream
from dockmesh.errors import EngineError
from dockmesh.model.topology import Container, EngineState, Network


class FlakyEngine(MemoryEngine):
    """`opened_at` records `clock()` at every attempt to open the event stream, refused ones
    included (a virtual-time loop's clock stands still while the watcher's thread tries)."""

    def __init__(
        self, name: str = "mem", clock: Callable[[], float] = time.monotonic, **kw: Any
    ) -> None:
        super().__init__(name, **kw)
        self.plugged = True
        self.opened_at: list[float] = []
        self._clock = clock
        self._refusals = 0
        self._fail_read = False

    # --- controls ---------------------------------------------------------------------

    def unplug(self) -> None:
        self.plugged = False

    def plug(self) -> None:
        self.plugged = True

    def refuse_streams(self, n: int) -> None:
        """The next `n` attempts to open the event stream after the first are refused."""
        self._refusals = n

    def fail_next_read(self) -> None:
        self._fail_read = True

    @property
    def opened(self) -> int:
        return len(self.opened_at)

    # --- the reads the watcher makes ------------------------------------------------------

    def _check(self) -> None:
        if not self.plugged:
            raise EngineError(f"engine {self.ref.name} ({self.ref.url}) does not answer")

    def events(self) -> MemoryEventStream:
        self.opened_at.append(self._clock())
        self._check()
        if len(self.opened_at) > 1 and self._refusals > 0:
            self._refusals -= 1
            raise EngineError("engine flaky: connection refused")
        return super().events()

    def snapshot(self) -> EngineState:
        self._check()
        return super().snapshot()

    def container(self, container_id: str) -> Container | None:
        self._check()
        if self._fail_read:
            self._fail_read = False
            raise EngineError("engine flaky: inspect timed out")
        return super().container(container_id)

    def network(self, network_id: str) -> Network | None:
        self._check()
        return super().network(network_id)
