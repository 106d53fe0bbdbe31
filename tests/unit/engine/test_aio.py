"""The asyncio bridge (dockmesh.engine.aio): versions reach a coroutine in order, a consumer
that falls behind gets the newest, closing the iterator unsubscribes, stopping ends it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from dockmesh.engine.aio import Mailbox, watch_topology
from dockmesh.engine.memory import MemoryEngine
from dockmesh.engine.watch import TopologyWatcher
from dockmesh.model.topology import Topology

WAIT = 10  # seconds; a guard against hanging, never a measure


def has(name: str) -> Callable[[Topology], bool]:
    return lambda t: t.container(name) is not None


async def settle(watcher: TopologyWatcher, predicate: Callable[[Topology], bool]) -> Topology:
    topo = await asyncio.to_thread(watcher.wait_for, predicate, WAIT)
    assert topo is not None
    return topo


def test_yields_the_current_topology_then_each_change() -> None:
    engine = MemoryEngine()
    watcher = TopologyWatcher([engine])
    first = watcher.start()

    async def main() -> list[Topology]:
        seen: list[Topology] = []
        made: list[str] = []
        async with contextlib.aclosing(watcher.updates()) as updates:
            async for topo in updates:
                seen.append(topo)
                if topo.container("b") is not None:
                    break
                # Each made once: a version may come (a resync, another event) before the
                # one that shows what was just made.
                want = "b" if topo.container("a") is not None else "a"
                if want not in made:
                    engine.create_container(want)
                    made.append(want)
        return seen

    try:
        seen = asyncio.run(asyncio.wait_for(main(), WAIT))
    finally:
        watcher.stop()
    assert seen[0] is first
    versions = [t.version for t in seen]
    assert versions == sorted(set(versions))
    assert seen[-1].container("a") is not None


def test_a_consumer_that_falls_behind_gets_the_newest() -> None:
    engine = MemoryEngine()
    watcher = TopologyWatcher([engine])
    watcher.start()

    async def main() -> tuple[Topology, Topology, Topology]:
        async with contextlib.aclosing(watcher.updates()) as updates:
            current = await anext(updates)
            for i in range(5):  # a version each, not consumed meanwhile
                engine.create_container(f"c{i}")
                newest = await settle(watcher, has(f"c{i}"))
            return current, await anext(updates), newest

    try:
        current, nxt, newest = asyncio.run(asyncio.wait_for(main(), WAIT))
    finally:
        watcher.stop()
    assert nxt.version == newest.version >= current.version + 5  # the ones between skipped


def test_closing_the_iterator_unsubscribes() -> None:
    engine = MemoryEngine()
    watcher = TopologyWatcher([engine])
    watcher.start()

    async def main() -> None:
        async with contextlib.aclosing(watcher.updates()) as updates:
            await anext(updates)
            assert len(watcher._subscriptions) == 1
        assert watcher._subscriptions == []

    try:
        asyncio.run(asyncio.wait_for(main(), WAIT))
    finally:
        watcher.stop()


def test_stopping_the_watcher_ends_the_iteration() -> None:
    engine = MemoryEngine()
    watcher = TopologyWatcher([engine])
    watcher.start()

    async def main() -> int:
        n = 0
        async for _ in watch_topology(watcher):
            n += 1
            await asyncio.to_thread(watcher.stop)
        return n

    assert asyncio.run(asyncio.wait_for(main(), WAIT)) == 1
    assert watcher._subscriptions == []


class CountingLoop:
    """Stands in for the event loop: records the callbacks scheduled from other threads."""

    def __init__(self) -> None:
        self.scheduled: list[Callable[[], object]] = []

    def call_soon_threadsafe(self, callback: Callable[[], object]) -> None:
        self.scheduled.append(callback)


def topo(version: int) -> Topology:
    return Topology(version, (), (), ())


def test_the_mailbox_keeps_one_topology_and_one_wake_up() -> None:
    loop = CountingLoop()
    box = Mailbox(loop)
    for v in range(1, 1001):
        box.put(topo(v))
    box.put(topo(3))  # an older one arriving late changes nothing
    assert len(loop.scheduled) == 1
    loop.scheduled.pop()()  # the loop runs the wake-up
    box.put(topo(1001))
    assert len(loop.scheduled) == 1

    async def take() -> Topology | None:
        return await box.get()

    got = asyncio.run(take())
    assert got is not None and got.version == 1001
    box.close()
    assert asyncio.run(take()) is None


def test_a_closed_loop_is_not_an_error() -> None:
    class ClosedLoop:
        def call_soon_threadsafe(self, callback: Callable[[], object]) -> None:
            raise RuntimeError("Event loop is closed")

    box = Mailbox(ClosedLoop())
    box.put(topo(1))  # from a watcher thread, after asyncio.run returned: dropped quietly
    box.put(topo(2))


def test_iterating_a_stopped_watcher_yields_its_last_topology_and_ends() -> None:
    watcher = TopologyWatcher([MemoryEngine()])
    last = watcher.start()
    watcher.stop()

    async def main() -> list[Topology]:
        return [t async for t in watcher.updates()]

    assert asyncio.run(asyncio.wait_for(main(), WAIT)) == [last]
