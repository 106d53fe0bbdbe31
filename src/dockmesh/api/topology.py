"""The newest topology for `GET /v1/dockmesh/topology`, with blocking reads on its version.

`make_app` takes two callables, a provider and a waiter; `TopologyFeed` is one object that
gives both (`current` and `wait`), for the agent, which publishes each new topology into it,
and for tests.
"""

from __future__ import annotations

import asyncio

from dockmesh.api.query import MAX_WAIT_S
from dockmesh.model.topology import Topology


class TopologyFeed:
    """Holds the newest topology; `wait(version, timeout_s)` is a blocking read on it.

    Three rules, as for Consul's blocking queries (tested with hypothesis):
    - versions only grow: `publish` of a topology no newer than the one held changes
      nothing, so a late or repeated update never takes a reader back in time;
    - `wait` returns at once when `version` ≤ 0 (a reader that has seen nothing yet) or when
      the held topology is newer than `version`; else when a newer one is published;
    - it waits at most `timeout_s`, capped at MAX_WAIT_S (ten minutes, Consul's cap), and
      then returns the held topology (None before the first).

    Runs on one event loop, whose clock times the waits: call `publish` on the loop's thread.
    """

    def __init__(self, topology: Topology | None = None) -> None:
        self._current = topology
        self._changed = asyncio.Event()

    def current(self) -> Topology | None:
        return self._current

    def publish(self, topology: Topology) -> bool:
        """Holds `topology` when it is newer than the one held; whether it did."""
        if self._current is not None and topology.version <= self._current.version:
            return False
        self._current = topology
        event, self._changed = self._changed, asyncio.Event()
        event.set()
        return True

    async def wait(self, version: int, timeout_s: float) -> Topology | None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + min(max(0.0, timeout_s), MAX_WAIT_S)
        while True:
            current = self._current
            if version <= 0 or (current is not None and current.version > version):
                return current
            left = deadline - loop.time()
            if left <= 0:
                return current
            try:
                await asyncio.wait_for(self._changed.wait(), left)
            except TimeoutError:
                return self._current
