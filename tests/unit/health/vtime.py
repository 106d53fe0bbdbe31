"""An asyncio loop whose clock is virtual: when nothing is ready, time jumps to the next timer.

`asyncio.sleep`, `asyncio.timeout` and `call_later` all read `loop.time()`, so code under test
runs unchanged, as fast as the CPU allows and in the same order every time: a test asserts
on virtual instants, never on how long something took. Waiting with nothing scheduled (no
timer, no ready callback) is a deadlock in such a test and fails it instead of hanging.
"""

from __future__ import annotations

import asyncio
import selectors
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

# How long a test may wait for real I/O (a thread's call_soon_threadsafe) with no timer due.
REAL_WAIT_S = 10.0


class _Selector(selectors.DefaultSelector):
    def __init__(self, loop: VirtualTimeLoop) -> None:
        super().__init__()
        self._loop = loop

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        ready = super().select(0)
        if ready or timeout == 0:
            return ready
        if timeout is None:
            ready = super().select(REAL_WAIT_S)
            if not ready:
                raise RuntimeError("deadlock: nothing scheduled and nothing to read")
            return ready
        self._loop.now += timeout
        return []


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    def __init__(self) -> None:
        self.now = 0.0
        super().__init__(_Selector(self))

    def time(self) -> float:
        return self.now


def run(main: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """`asyncio.run(main())` on a virtual-time loop that starts at 0."""
    with asyncio.Runner(loop_factory=VirtualTimeLoop) as runner:
        return runner.run(main())
