"""A live topology: a snapshot of each engine, kept current by its event stream.

Per engine, one thread reads the stream and another applies it in batches. Each event re-reads
the object it names (once per batch) and, when that changes the model, freezes a new `Topology`
with the version bumped. When a stream drops (the engine restarted, the socket went away) the
reader reconnects with back-off and resyncs from a full
snapshot; the version is bumped only if the resync found a difference.

The watcher reads engines through the small `EngineSource` interface: `EngineClient` is the
real one, `dockmesh.engine.memory.MemoryEngine` an in-memory one for tests of logic built on
a live topology.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol

from dockmesh.engine.client import EngineClient, EngineRef
from dockmesh.engine.events import Refresh, refreshes_for
from dockmesh.model.topology import Container, EngineState, Network, Topology, build_topology

Listener = Callable[[Topology], None]
# Called after each engine event has been applied: (the event, time.time_ns() when applied).
EventHook = Callable[[dict[str, object], int], None]


class EventSource(Protocol):
    def __iter__(self) -> Iterator[dict[str, Any]]: ...
    def close(self) -> None: ...


class EngineSource(Protocol):
    """What the watcher needs of an engine."""

    ref: EngineRef

    def snapshot(self) -> EngineState: ...
    def events(self) -> EventSource: ...
    def container(self, container_id: str) -> Container | None: ...
    def network(self, network_id: str) -> Network | None: ...
    def close(self) -> None: ...


class TopologyWatcher:
    def __init__(self, engines: Sequence[EngineRef | EngineSource]) -> None:
        """`engines`: references to connect to, or engine sources already made."""
        self._clients: list[EngineSource] = [
            EngineClient(e) if isinstance(e, EngineRef) else e for e in engines
        ]
        self._states: list[EngineState] = []
        self._lock = threading.Condition()
        self._version = 0
        self._topology: Topology | None = None
        self._streams: list[EventSource | None] = [None] * len(engines)
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()
        self._listeners: list[Listener] = []
        self.event_hook: EventHook | None = None
        self.resyncs = 0
        # Bumped by each resync of an engine: reads begun before it are older than it.
        self._epochs = [0] * len(engines)

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
        streams: list[EventSource] = []
        try:
            for c in self._clients:
                streams.append(c.events())
            self._states = [c.snapshot() for c in self._clients]
        except Exception:
            for s in streams:
                s.close()
            raise
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
        """Reads engine i's stream into a queue; a second thread applies it. Reading never
        waits on the engine's answers, so events queue up while an inspect is slow (the
        engine holds a container's lock while it connects it) and are then applied in one
        batch, each object re-read once however many events named it."""
        pending: queue.SimpleQueue[dict[str, object] | None] = queue.SimpleQueue()
        applier = threading.Thread(
            target=self._apply_loop,
            args=(i, pending),
            daemon=True,
            name=f"apply-{self._clients[i].ref.name}",
        )
        applier.start()
        backoff = 0.1
        try:
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
                        pending.put(event)
                        backoff = 0.1
                    # The stream ended: the engine closed it (restart, shutdown).
                except Exception:
                    if self._stop.is_set():
                        return
                self._streams[i] = None
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 5.0)
        finally:
            pending.put(None)
            applier.join(timeout=5)

    def _apply_loop(self, i: int, pending: queue.SimpleQueue[dict[str, object] | None]) -> None:
        while True:
            first = pending.get()
            if first is None:
                return
            batch = [first]
            while True:
                try:
                    nxt = pending.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    return
                batch.append(nxt)
            try:
                self._apply(i, batch)
            except Exception:
                stream = self._streams[i]
                if stream is not None:
                    stream.close()  # the reader reconnects and resyncs
                continue
            if self.event_hook is not None:
                now = time.time_ns()
                for event in batch:
                    self.event_hook(event, now)

    def _resync(self, i: int) -> None:
        fresh = self._clients[i].snapshot()
        with self._lock:
            self.resyncs += 1
            self._epochs[i] += 1
            old = self._states[i]
            if old.networks != fresh.networks or old.containers != fresh.containers:
                self._states[i] = fresh
                self._freeze()

    def _apply(self, i: int, batch: list[dict[str, object]]) -> None:
        client = self._clients[i]
        epoch = self._epochs[i]
        # Each object once, the last word on it deciding whether it is gone.
        todo: dict[tuple[str, str], Refresh] = {}
        for event in batch:
            for r in refreshes_for(event):
                todo.pop((r.kind, r.id), None)
                todo[(r.kind, r.id)] = r
        # Read outside the lock: the engine round trips are the slow part.
        networks = {
            r.id: (None if r.gone else client.network(r.id))
            for r in todo.values()
            if r.kind == "network"
        }
        containers = {
            r.id: (None if r.gone else client.container(r.id))
            for r in todo.values()
            if r.kind == "container"
        }
        with self._lock:
            if self._epochs[i] != epoch:
                # A resync came in between. Its snapshot was taken after its stream opened,
                # so every change since is an event still to come: drop these reads, which
                # may be older than the snapshot.
                return
            state = self._states[i]
            changed = False
            for nid, n in networks.items():
                changed |= state.upsert_network(n) if n else state.drop_network(nid)
            for cid, c in containers.items():
                changed |= state.upsert_container(c) if c else state.drop_container(cid)
            if changed:
                self._freeze()
