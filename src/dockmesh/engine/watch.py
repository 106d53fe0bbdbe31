"""A live topology: a snapshot of each engine, kept current by its event stream.

Per engine, one thread reads the event stream and a few others re-read the objects the events
name, each object on its own, concurrently, and install each read as soon as it returns: a slow
inspect (the engine holds a container's lock while it starts it) holds up only its own object.
Each change freezes a new `Topology` with the version bumped. When a stream ends or breaks
(the engine restarted, the socket went away, a re-read failed) the reader reconnects with
back-off and resyncs from a full snapshot; the version is bumped only if the resync found a
difference. Which objects to re-read and when, whether reads are still current, and how long
to back off are decided by `dockmesh.engine.coalesce` (pure); this module only carries those
decisions out.

Listeners hear of every version, in order, from one thread at a time, and never while the
watcher holds its lock: a listener may read `topology`, subscribe or unsubscribe. A listener
that raises is logged and skipped; it is not mistaken for an engine failure.

The watcher reads engines through the small `EngineSource` interface: `DockerBackend` is the
real one, `dockmesh.engine.memory.MemoryEngine` an in-memory one for tests of logic built on
a live topology. For asyncio code, `updates()` (see `dockmesh.engine.aio`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import AsyncGenerator, Callable, Sequence
from dataclasses import dataclass, replace

from dockmesh.engine.aio import watch_topology
from dockmesh.engine.backend import EngineRef, EngineSource, EventSource
from dockmesh.engine.coalesce import EngineFollow, Phase, Read
from dockmesh.engine.events import refreshes_for
from dockmesh.model.liveness import EngineLink
from dockmesh.model.topology import Container, EngineState, Network, Topology, build_topology

log = logging.getLogger(__name__)

Listener = Callable[[Topology], None]
# Called after each engine event has been applied: (the event, time_ns() when applied).
EventHook = Callable[[dict[str, object], int], None]
Event = dict[str, object]

# Re-reads in flight at once per engine. Reads of different objects run concurrently (the
# engine serves them in parallel; one blocked on a container's lock must not hold up the
# others); reads of one object never do (see `dockmesh.engine.coalesce`).
READERS = 8


def _connect(ref: EngineRef) -> EngineSource:
    from dockmesh.engine.docker import DockerBackend

    return DockerBackend(ref)


@dataclass(frozen=True, slots=True, eq=False)
class _Subscription:
    listener: Listener
    on_stop: Callable[[], None] | None


class TopologyWatcher:
    """The live topology of a set of engines, as the module describes: `start()` reads a
    snapshot of each and follows their events until `stop()`. `topology` is always a frozen
    `Topology` whose version only grows; every listener hears every version, in order, one
    call at a time and never under the watcher's lock. Thread-safe."""

    def __init__(
        self,
        engines: Sequence[EngineRef | EngineSource],
        *,
        readers: int = READERS,
        clock: Callable[[], float] = time.monotonic,
        time_ns: Callable[[], int] = time.time_ns,
        sleep: Callable[[float], object] | None = None,
        initial_backoff: float = 0.1,
        max_backoff: float = 5.0,
        link_clock: Callable[[], float] = time.monotonic,
        stop_timeout: float = 5.0,
    ) -> None:
        """`engines`: references to connect to, or engine sources already made; `readers`:
        how many re-reads each engine may have in flight at once.

        `clock` measures `wait_for`'s timeout; `time_ns` stamps the event hook's calls;
        `sleep(seconds)` waits out a reconnect back-off (by default on the stop event, so
        that `stop()` cuts it short; a replacement need not return early on stop, the loop
        checks after it returns). `link_clock` dates what `links()` says. `stop()` waits at
        most `stop_timeout` seconds in all for the threads (one blocked on a frozen engine is
        left behind: they are daemons)."""
        self._clients: list[EngineSource] = [
            _connect(e) if isinstance(e, EngineRef) else e for e in engines
        ]
        n = len(self._clients)
        self._clock = clock
        self._time_ns = time_ns
        self._stop = threading.Event()
        self._sleep: Callable[[float], object] = sleep or self._stop.wait
        if readers < 1:
            raise ValueError(f"readers: need at least 1, not {readers}")
        self._readers = readers
        self._stop_timeout = stop_timeout
        # Lock order: `_lock`, then an engine's `_work[i]`; `_delivering` is never taken with
        # either held.
        self._lock = threading.Condition()  # states, version, topology, outbox, subscriptions
        self._work = [threading.Condition() for _ in range(n)]  # guards _follows[i]
        self._delivering = threading.Lock()  # one thread calls listeners at a time, in order
        self._follows: list[EngineFollow[Event]] = [
            EngineFollow(initial_backoff, max_backoff) for _ in range(n)
        ]
        self._states: list[EngineState] = []
        self._version = 0
        self._topology: Topology | None = None
        self._outbox: list[Topology] = []  # frozen, not yet handed to listeners
        self._subscriptions: list[_Subscription] = []
        self._stopped = False  # stop() has told the subscriptions it made
        self._streams: list[EventSource | None] = [None] * n
        # Why another thread ended engine i's stream, for the reader's log line.
        self._break_reasons: list[str | None] = [None] * n
        self._threads: list[threading.Thread] = []
        self.event_hook: EventHook | None = None
        self.resyncs = 0
        # Per engine, for `links()`: whether its stream is open, and when (on `clock`) the
        # topology was last known to match it — set when the stream opens, when it is lost
        # (the events up to then were read), and from the start before the first read.
        self._link_clock = link_clock
        self._connected = [False] * n
        self._synced_at = [link_clock()] * n

    # --- public --------------------------------------------------------------------------

    @property
    def topology(self) -> Topology:
        with self._lock:
            assert self._topology is not None, "start() first"
            return self._topology

    def links(self) -> tuple[EngineLink, ...]:
        """Each engine's connection: whether its event stream is open, and how long the
        topology has not been known to match it (0 while the stream is open)."""
        now = self._link_clock()
        return tuple(
            EngineLink(c.ref.name, up, 0.0 if up else max(0.0, now - at))
            for c, up, at in zip(self._clients, self._connected, self._synced_at, strict=True)
        )

    def _linked(self, i: int, up: bool) -> None:
        if up or self._connected[i]:  # a failed retry does not make the view any fresher
            self._synced_at[i] = self._link_clock()
        self._connected[i] = up

    def subscribe(self, listener: Listener, *, on_stop: Callable[[], None] | None = None) -> None:
        """Calls `listener` with each version frozen from now on, in version order, on one of
        the watcher's threads. `on_stop` is called once `stop()` has stopped the threads (at
        once, when it already has)."""
        with self._lock:
            self._subscriptions.append(_Subscription(listener, on_stop))
            stopped = self._stopped
        if stopped and on_stop is not None:
            self._tell_stopped([_Subscription(listener, on_stop)])

    def unsubscribe(self, listener: Listener) -> None:
        """Forgets `listener` (the first subscription of it). A delivery already under way on
        another thread may still call it once."""
        with self._lock:
            for i, sub in enumerate(self._subscriptions):
                if sub.listener == listener:
                    del self._subscriptions[i]
                    return

    def updates(self) -> AsyncGenerator[Topology, None]:
        """For asyncio code: the current topology, then each newer version (the newest only,
        when a consumer falls behind), until `stop()`. See `dockmesh.engine.aio`."""
        return watch_topology(self)

    def start(self) -> Topology:
        """Takes the first snapshot of every engine (streams opened first) and starts
        following them. Raises EngineError when an engine does not answer."""
        streams: list[EventSource] = []
        try:
            for c in self._clients:
                streams.append(c.events())
            states = [c.snapshot() for c in self._clients]
        except Exception:
            for s in streams:
                self._close_quietly(s, "start failed")
            raise
        self._streams = list(streams)
        with self._lock:
            self._states = states
            for i, follow in enumerate(self._follows):
                with self._work[i]:
                    follow.resynced()
            self._freeze()
        for i in range(len(self._clients)):
            self._linked(i, True)
        self._deliver()
        for i, c in enumerate(self._clients):
            t = threading.Thread(
                target=self._read_loop, args=(i,), daemon=True, name=f"watch-{c.ref.name}"
            )
            t.start()
            self._threads.append(t)
        return self.topology

    def wait_for(self, predicate: Callable[[Topology], bool], timeout: float) -> Topology | None:
        """Blocks until the topology satisfies `predicate` (or `timeout` seconds pass)."""
        deadline = self._clock() + timeout
        with self._lock:
            while True:
                if self._topology is not None and predicate(self._topology):
                    return self._topology
                left = deadline - self._clock()
                if left <= 0:
                    return None
                self._lock.wait(left)

    def stop(self) -> None:
        """Stops following the engines and closes them. Call it from outside the listeners:
        from one, it cannot wait for the thread it runs on (and waits up to 5 s for that
        thread's partner)."""
        self._stop.set()
        for i, follow in enumerate(self._follows):
            with self._work[i]:
                follow.stop()
                self._work[i].notify_all()
        for i in range(len(self._streams)):
            self._drop_stream(i, "stopping")
        me = threading.current_thread()
        # One deadline for all: each engine's thread blocked on a frozen engine waited its
        # own 5 s, and an agent over two such engines outlived `docker stop`'s 10 s.
        deadline = time.monotonic() + self._stop_timeout
        for t in self._threads:
            if t is not me:  # joining oneself raises
                t.join(timeout=max(0.0, deadline - time.monotonic()))
        for c in self._clients:
            try:
                c.close()
            except Exception as e:  # a connection already gone is closed enough
                log.debug("engine %s: closing: %s", c.ref.name, e)
        with self._lock:
            subs = [] if self._stopped else list(self._subscriptions)
            self._stopped = True
        self._tell_stopped(subs)

    def _tell_stopped(self, subs: list[_Subscription]) -> None:
        for sub in subs:
            if sub.on_stop is not None:
                try:
                    sub.on_stop()
                except Exception:
                    log.exception("on_stop callback %r failed", sub.on_stop)

    # --- inside: model and listeners -----------------------------------------------------

    def _freeze(self) -> None:
        """With `_lock` held: a new version from the states; listeners hear of it in
        `_deliver`, once the lock is released."""
        self._version += 1
        self._topology = build_topology(self._states, self._version)
        self._outbox.append(self._topology)
        self._lock.notify_all()

    def _deliver(self) -> None:
        """Hands every frozen version to the listeners. Whoever froze a version calls this
        after releasing `_lock`; draining under `_delivering` keeps versions in order even when
        two engines' threads freeze at once."""
        with self._delivering:
            with self._lock:
                outbox, self._outbox = self._outbox, []
                subs = list(self._subscriptions)
            for topo in outbox:
                for sub in subs:
                    try:
                        sub.listener(topo)
                    except Exception:
                        log.exception(
                            "listener %r failed on topology version %d", sub.listener, topo.version
                        )

    # --- inside: following one engine ----------------------------------------------------

    def _name(self, i: int) -> str:
        return self._clients[i].ref.name

    def _read_loop(self, i: int) -> None:
        """Engine i's event stream, into its follow state; reader threads re-read what it
        names, so reading the stream never waits on the engine's answers: events for an
        object whose inspect is slow (the engine holds a container's lock while it connects
        it) queue up as one read of it, made once the slow one returns."""
        appliers = [
            threading.Thread(
                target=self._apply_loop, args=(i,), daemon=True, name=f"apply-{self._name(i)}-{k}"
            )
            for k in range(self._readers)
        ]
        for a in appliers:
            a.start()
        follow, work = self._follows[i], self._work[i]
        try:
            while not self._stop.is_set():
                try:
                    stream = self._streams[i]
                    if stream is None:
                        stream = self._clients[i].events()
                        self._streams[i] = stream
                        if self._stop.is_set():  # stop() may have missed this stream
                            break
                        self._resync(i)
                    for event in stream:
                        hook = self.event_hook
                        refreshes = refreshes_for(event)
                        with work:
                            follow.received(refreshes, event if hook else None)
                            epoch = follow.epoch
                            if follow.takeable:
                                work.notify()
                        exited = [r.id for r in refreshes if r.exited]
                        if exited:
                            self._mark_exited(i, exited, epoch)
                    reason = self._break_reasons[i] or "the engine ended it"
                except Exception as e:
                    reason = self._break_reasons[i] or f"{type(e).__name__}: {e}"
                self._break_reasons[i] = None
                if self._stop.is_set():
                    log.debug("engine %s: event stream ended on stop (%s)", self._name(i), reason)
                    break
                self._drop_stream(i, reason)
                self._linked(i, False)
                with work:
                    delay = follow.stream_lost()
                log.warning(
                    "engine %s: event stream lost (%s); resyncing in %.1f s",
                    self._name(i),
                    reason,
                    delay,
                )
                self._sleep(delay)
        finally:
            self._drop_stream(i, "stopping")
            for a in appliers:
                a.join(timeout=5)

    def _resync(self, i: int) -> None:
        fresh = self._clients[i].snapshot()
        with self._lock:
            with self._work[i]:
                if not self._follows[i].resynced():
                    return  # stopped meanwhile
            self.resyncs += 1
            old = self._states[i]
            changed = old.networks != fresh.networks or old.containers != fresh.containers
            if changed:
                self._states[i] = fresh
                self._freeze()
        self._linked(i, True)
        log.info("engine %s: resynced (%s)", self._name(i), "changed" if changed else "no change")
        self._deliver()

    def _apply_loop(self, i: int) -> None:
        """One of engine i's readers: takes one object at a time, re-reads it and installs
        the read at once."""
        follow, work = self._follows[i], self._work[i]
        while True:
            with work:
                while (read := follow.take()) is None:
                    if follow.phase is Phase.STOPPED:
                        return
                    work.wait()
                if follow.takeable:
                    work.notify()  # more to read: wake another reader
            try:
                found = self._read(i, read)
            except Exception as e:
                with work:
                    follow.finished(read)
                    work.notify()
                if self._stop.is_set():
                    log.debug("engine %s: re-read ended on stop: %s", self._name(i), e)
                    return
                # The reader sees its stream end, backs off and resyncs: the snapshot covers
                # whatever this read was for.
                self._break_stream(i, f"re-reading failed: {type(e).__name__}: {e}")
                continue
            try:
                self._install(i, read, found)
            except Exception:
                # A bug, not the engine; the state may be half updated, so start it afresh.
                log.exception("engine %s: installing a re-read failed; resyncing", self._name(i))
                self._break_stream(i, "installing a re-read failed (logged above)")
                continue
            self._deliver()
            self._run_hook(read.events)

    def _mark_exited(self, i: int, ids: list[str], epoch: int) -> None:
        """A `die` event says the process has ended: the model shows it as soon as the event
        is read — before the re-read that fills in the rest, and even while a reader waits
        on an earlier, slow inspect — so that what follows the model (the catalog, DNS) drops
        the container within milliseconds of its death however slow the engine answers."""
        with self._lock:
            with self._work[i]:
                if self._follows[i].epoch != epoch:
                    return  # a resync came in between: its snapshot says more than we do
            state = self._states[i]
            changed = False
            for cid in ids:
                c = state.containers.get(cid)
                if c is not None and c.running:
                    exited = replace(c, state="exited", pid=None, health=None)
                    changed |= state.upsert_container(exited)
            if changed:
                self._freeze()
        self._deliver()

    def _read(self, i: int, read: Read[Event]) -> Network | Container | None:
        """The engine round trip, made with no lock held: it is the slow part."""
        r = read.refresh
        if r is None or r.gone:
            return None
        client = self._clients[i]
        return client.network(r.id) if r.kind == "network" else client.container(r.id)

    def _install(self, i: int, read: Read[Event], found: Network | Container | None) -> None:
        r = read.refresh
        with self._lock:
            follow, work = self._follows[i], self._work[i]
            with work:
                running = isinstance(found, Container) and found.running
                install = follow.finished(read, shows_running=running)
                if r is not None and install and isinstance(found, Container):
                    # A container on a network the model does not hold (its create event's
                    # read not back yet, or missed): read the network too.
                    networks = self._states[i].networks
                    for a in found.attachments:
                        if a.network_id and a.network_id not in networks:
                            follow.want("network", a.network_id)
                if follow.takeable:
                    work.notify()
            if r is None:
                return
            if not install:
                log.debug(
                    "engine %s: dropping a re-read of %s %s (a resync or a `die` overtook it)",
                    self._name(i),
                    r.kind,
                    r.id[:12],
                )
                return
            state = self._states[i]
            if found is None:  # gone, or not found
                changed = (
                    state.drop_network(r.id) if r.kind == "network" else state.drop_container(r.id)
                )
            elif isinstance(found, Network):
                changed = state.upsert_network(found)
            else:
                changed = state.upsert_container(found)
            if changed:
                self._freeze()

    def _run_hook(self, events: tuple[Event, ...]) -> None:
        hook = self.event_hook
        if hook is None or not events:
            return
        now = self._time_ns()
        for event in events:
            try:
                hook(event, now)
            except Exception:
                log.exception("event hook %r failed", hook)

    def _break_stream(self, i: int, reason: str) -> None:
        """Ends engine i's stream from outside its reader, which logs `reason`, backs off
        and resyncs."""
        stream = self._streams[i]
        if stream is not None:
            self._break_reasons[i] = reason
            self._close_quietly(stream, reason)

    def _drop_stream(self, i: int, why: str) -> None:
        stream, self._streams[i] = self._streams[i], None
        if stream is not None:
            self._close_quietly(stream, why)

    def _close_quietly(self, stream: EventSource, why: str) -> None:
        try:
            stream.close()
        except Exception as e:  # closing a half-dead connection may itself fail
            log.debug("closing an event stream (%s): %s", why, e)
