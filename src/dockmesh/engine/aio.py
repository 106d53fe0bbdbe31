"""The live topology for asyncio code: `async for topology in watch_topology(watcher)`.

The watcher runs on threads and tells its listeners of each new version from there. This
bridge hands versions to one event loop with `loop.call_soon_threadsafe` and keeps only the
newest: a consumer that falls behind gets the latest topology next, never a backlog, and the
loop never holds more than one pending wake-up per iterator.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncGenerator, Callable
from typing import Protocol

from dockmesh.model.topology import Topology

log = logging.getLogger(__name__)

Listener = Callable[[Topology], None]


class Watchable(Protocol):
    """What the bridge needs of a watcher (`TopologyWatcher` is one)."""

    @property
    def topology(self) -> Topology: ...

    def subscribe(
        self, listener: Listener, *, on_stop: Callable[[], None] | None = None
    ) -> None: ...

    def unsubscribe(self, listener: Listener) -> None: ...


class _LoopLike(Protocol):
    def call_soon_threadsafe(self, callback: Callable[[], object]) -> object: ...


class Mailbox:
    """One slot holding the newest topology, filled from any thread and read on the loop."""

    def __init__(self, loop: _LoopLike) -> None:
        self._loop = loop
        self._lock = threading.Lock()
        self._newest: Topology | None = None
        self._closed = False
        self._wake_scheduled = False
        self._taken_version = -1
        # Created lazily on the loop: asyncio objects belong to the loop they are used on.
        self._changed: asyncio.Event | None = None

    def put(self, topology: Topology) -> None:
        """From any thread: `topology` is the newest now, unless a newer one is here."""
        with self._lock:
            if self._newest is None or topology.version > self._newest.version:
                self._newest = topology
            self._schedule_wake()

    def close(self) -> None:
        """From any thread: no more versions will come; `get` returns None once drained."""
        with self._lock:
            self._closed = True
            self._schedule_wake()

    def _schedule_wake(self) -> None:
        # Called with the lock held. One wake-up in flight is enough: it reads the slot when it
        # runs, so later puts ride on it.
        if self._wake_scheduled:
            return
        try:
            self._loop.call_soon_threadsafe(self._wake)
        except RuntimeError as e:  # the loop is closed: nobody is left to read this
            log.debug("topology update not delivered, the event loop is closed: %s", e)
            return
        self._wake_scheduled = True

    def _wake(self) -> None:
        with self._lock:
            self._wake_scheduled = False
        if self._changed is not None:
            self._changed.set()

    async def get(self) -> Topology | None:
        """The newest topology not yet returned, waiting for one; None once closed."""
        if self._changed is None:
            self._changed = asyncio.Event()
        while True:
            self._changed.clear()
            with self._lock:
                newest, closed = self._newest, self._closed
                if newest is not None and newest.version > self._taken_version:
                    self._taken_version = newest.version
                    return newest
            if closed:
                return None
            await self._changed.wait()


async def watch_topology(watcher: Watchable) -> AsyncGenerator[Topology, None]:
    """Yields the watcher's current topology, then each newer version as it comes (the newest
    only, when several came since the last one was taken), until the watcher stops.

    Start the watcher first. Closing the iterator unsubscribes it: use
    `contextlib.aclosing(watch_topology(w))` (or `w.updates()`) when leaving the loop early,
    rather than waiting for the garbage collector to close it.
    """
    mailbox = Mailbox(asyncio.get_running_loop())
    listener = mailbox.put  # one bound method object, so unsubscribe finds the same one
    watcher.subscribe(listener, on_stop=mailbox.close)
    try:
        mailbox.put(watcher.topology)
        while (topology := await mailbox.get()) is not None:
            yield topology
    finally:
        watcher.unsubscribe(listener)
