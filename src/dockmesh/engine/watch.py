"""A live topology: a snapshot of each engine, kept current by its event stream.

One thread per engine follows the stream. Each event re-reads the object it names and, when
that changes the model, freezes a new `Topology` with the version bumped. When a stream drops
(the engine restarted, the socket went away) the thread reconnects with back-off and resyncs
from a full snapshot; the version is bumped only if the resync found a difference.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from dockmesh.engine.client import EngineClient, EngineError, EngineRef, EventStream
from dockmesh.engine.events import refreshes_for
from dockmesh.model.topology import EngineState, Topology, build_topology

Listener = Callable[[Topology], None]


class TopologyWatcher:
    def __init__(self, refs: list[EngineRef]) -> None:
        self._clients = [EngineClient(r) for r in refs]
        self._states: list[EngineState] = []
        self._lock = threading.Condition()
        self._version = 0
        self._topology: Topology | None = None
        self._streams: list[EventStream | None] = [None] * len(refs)
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()
        self._listeners: list[Listener] = []
        self.resyncs = 0

    # --- public --------------------------------------------------------------------------

    @property
    def topology(self) -> Topology:
        with self._lock:
            assert self._topology is not None, "start() first"
            return self._topology

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def start(self) -> Topology:
        """Takes the first snapshot of every engine (streams opened first) and starts
        following them. Raises EngineError when an engine does not answer."""
        streams = [c.events() for c in self._clients]
        self._states = [c.snapshot() for c in self._clients]
        self._streams = list(streams)
        with self._lock:
            self._freeze()
        for i in range(len(self._clients)):
            t = threading.Thread(
                target=self._follow,
                args=(i,),
                daemon=True,
                name=f"watch-{self._clients[i].ref.name}",
            )
            t.start()
            self._threads.append(t)
        return self.topology

    def wait_for(self, predicate: Callable[[Topology], bool], timeout: float) -> Topology | None:
        """Blocks until the topology satisfies `predicate` (or `timeout` seconds pass)."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while True:
                if self._topology is not None and predicate(self._topology):
                    return self._topology
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._lock.wait(left)

    def stop(self) -> None:
        self._stop.set()
        for s in self._streams:
            if s is not None:
                s.close()
        for t in self._threads:
            t.join(timeout=5)
        for c in self._clients:
            c.close()

    # --- inside ---------------------------------------------------------------------------

    def _freeze(self) -> None:
        self._version += 1
        self._topology = build_topology(self._states, self._version)
        self._lock.notify_all()
        topo = self._topology
        for listener in self._listeners:
            listener(topo)

    def _follow(self, i: int) -> None:
        backoff = 0.1
        while not self._stop.is_set():
            stream = self._streams[i]
            try:
                if stream is None:
                    stream = self._clients[i].events()
                    self._streams[i] = stream
                    self._resync(i)
                for event in stream:
                    if self._stop.is_set():
                        return
                    self._apply(i, event)
                    backoff = 0.1
                # The stream ended: the engine closed it (restart, shutdown).
            except (EngineError, OSError, Exception):
                if self._stop.is_set():
                    return
            self._streams[i] = None
            self._stop.wait(backoff)
            backoff = min(backoff * 2, 5.0)

    def _resync(self, i: int) -> None:
        fresh = self._clients[i].snapshot()
        with self._lock:
            self.resyncs += 1
            old = self._states[i]
            if old.networks != fresh.networks or old.containers != fresh.containers:
                self._states[i] = fresh
                self._freeze()

    def _apply(self, i: int, event: dict[str, object]) -> None:
        client, state = self._clients[i], self._states[i]
        for r in refreshes_for(event):
            # Read outside the lock: the engine round trip is the slow part.
            if r.kind == "container":
                c = None if r.gone else client.container(r.id)
                with self._lock:
                    changed = state.upsert_container(c) if c else state.drop_container(r.id)
                    if changed:
                        self._freeze()
            else:
                n = None if r.gone else client.network(r.id)
                with self._lock:
                    changed = state.upsert_network(n) if n else state.drop_network(r.id)
                    if changed:
                        self._freeze()
