"""The newest topology for `GET /v1/dockmesh/topology`, with blocking reads on its version.

`make_app` takes two callables, a provider and a waiter; `TopologyFeed` is one object that
gives both, for an agent that pushes each new topology into it (and for tests).
"""

from __future__ import annotations

import asyncio

from dockmesh.model.topology import Topology


class TopologyFeed:
    """Holds the newest topology; `wait(version, timeout)` returns once a topology newer than
    `version` is held, or the current one (possibly None) after `timeout` seconds.

    Runs on the event loop: `publish` must be called from the loop's thread."""

    def __init__(self, topology: Topology | None = None) -> None:
        self._current = topology
        self._changed = asyncio.Event()

    def current(self) -> Topology | None:
        return self._current

    def publish(self, topology: Topology) -> None:
        """Holds `topology` if it is newer than the one held (versions only grow)."""
        if self._current is not None and topology.version <= self._current.version:
            return
        self._current = topology
        event, self._changed = self._changed, asyncio.Event()
        event.set()

    async def wait(self, version: int, timeout_s: float) -> Topology | None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(0.0, timeout_s)
        while True:
            current = self._current
            if current is not None and current.version > version:
                return current
            left = deadline - loop.time()
            if left <= 0:
                return current
            try:
                await asyncio.wait_for(self._changed.wait(), left)
            except TimeoutError:
                return self._current
