"""An asyncio loop whose clock is virtual: when nothing is ready, time jumps to the next timer.

`asyncio.sleep`, `asyncio.timeout` and `call_later` all read `loop.time()`, so code under test
runs unchanged, as fast as the CPU allows and in the same order every time: a test asserts
on virtual instants, never on how long something took.

Time stands still while a thread works for the loop: a job of `run_in_executor` (and so of
`asyncio.to_thread`) that has not handed back its result holds the clock, and the loop waits
for it in real time, as it waits for a socket. Code that pushes blocking calls to a thread
(the agent's engine reads, its nft transactions) therefore sees no virtual time pass during
them, however slow the machine. Threads the loop did not start (a watcher's reader) do not
hold it: a test that needs their result waits for it with `until`, which holds the clock too.

Waiting with nothing scheduled (no timer, no ready callback, no job) for more than
`REAL_WAIT_S` is a deadlock in such a test and fails it instead of hanging; so does a job
that takes longer than that.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import selectors
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar, TypeVarTuple

T = TypeVar("T")
Ts = TypeVarTuple("Ts")

# How long a test may wait in real time for a thread's answer or a socket with no timer due.
REAL_WAIT_S = 10.0


class _Selector(selectors.DefaultSelector):
    def __init__(self, loop: VirtualTimeLoop) -> None:
        super().__init__()
        self._loop = loop

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        ready = super().select(0)
        if ready or timeout == 0:
            return ready
        if timeout is None or self._loop.jobs:
            ready = super().select(REAL_WAIT_S)
            if not ready:
                what = "a thread's job" if self._loop.jobs else "nothing scheduled"
                raise RuntimeError(f"deadlock: {what}, and nothing to read for {REAL_WAIT_S} s")
            return ready
        self._loop.now += timeout
        return []


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    def __init__(self) -> None:
        self.now = 0.0
        self.jobs = 0  # executor jobs not yet finished: they hold the clock
        super().__init__(_Selector(self))

    def time(self) -> float:
        return self.now

    def run_in_executor(
        self,
        executor: concurrent.futures.Executor | None,
        func: Callable[[*Ts], T],
        *args: *Ts,
    ) -> asyncio.Future[T]:
        future = super().run_in_executor(executor, func, *args)
        self.jobs += 1
        future.add_done_callback(self._job_done)
        return future

    def _job_done(self, _: asyncio.Future[Any]) -> None:
        self.jobs -= 1


def run(main: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """`asyncio.run(main())` on a virtual-time loop that starts at 0."""
    with asyncio.Runner(loop_factory=VirtualTimeLoop) as runner:
        return runner.run(main())


async def until(predicate: Callable[[], bool], real_timeout_s: float = REAL_WAIT_S) -> None:
    """Returns once `predicate()` holds, polling in real time while the virtual clock stands
    still: for state that another thread changes (a topology a watcher's thread delivers).
    TimeoutError when it does not hold within `real_timeout_s` real seconds."""
    deadline = time.monotonic() + real_timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"not reached within {real_timeout_s} real seconds: {predicate}")
        await asyncio.to_thread(time.sleep, 0.002)
