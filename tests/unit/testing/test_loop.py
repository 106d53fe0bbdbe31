"""The virtual-time loop (dockmesh.testing.loop): time jumps to the next timer when the loop
is idle, and stands still while a thread works for it."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from dockmesh.testing import loop


def test_time_jumps_to_the_next_timer_when_nothing_else_is_to_do() -> None:
    async def main() -> list[float]:
        seen = []
        for delay in (5.0, 0.25, 3600.0):
            await asyncio.sleep(delay)
            seen.append(asyncio.get_running_loop().time())
        return seen

    assert loop.run(main) == [5.0, 5.25, 3605.25]


def test_a_thread_working_for_the_loop_holds_the_clock() -> None:
    async def main() -> tuple[float, float]:
        ticker = asyncio.ensure_future(asyncio.sleep(1.0))  # a timer due while the job runs
        await asyncio.to_thread(time.sleep, 0.05)
        during = asyncio.get_running_loop().time()
        await ticker
        return during, asyncio.get_running_loop().time()

    assert loop.run(main) == (0.0, 1.0)


def test_until_waits_in_real_time_for_another_threads_change() -> None:
    flag = threading.Event()

    async def main() -> float:
        timer = asyncio.ensure_future(asyncio.sleep(60))  # due, were the clock free to move
        threading.Timer(0.05, flag.set).start()
        await loop.until(flag.is_set)
        timer.cancel()
        return asyncio.get_running_loop().time()

    assert loop.run(main) == 0.0


def test_until_gives_up_after_its_real_timeout() -> None:
    async def main() -> None:
        await loop.until(lambda: False, real_timeout_s=0.05)

    with pytest.raises(TimeoutError):
        loop.run(main)
