"""The watcher against an in-memory engine: whatever happens, in whatever order, with streams
dropped in between and slow reads, the live topology ends equal to the engine's state; and the
watcher's promises to its listeners (order, outside the lock, failures kept to themselves)."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dockmesh.engine.memory import MemoryEngine
from dockmesh.engine.watch import TopologyWatcher
from dockmesh.errors import EngineError
from dockmesh.model.topology import Container, Network, Topology, build_topology
from dockmesh.testing.engine import FlakyEngine

WAIT = 10  # seconds; a guard against hanging, never a measure

ops = st.lists(
    st.tuples(
        st.sampled_from(
            [
                "net",
                "rmnet",
                "ctr",
                "start",
                "stop",
                "connect",
                "disconnect",
                "rename",
                "health",
                "rmctr",
                "drop",
            ]
        ),
        st.integers(0, 1000),
    ),
    max_size=40,
)


def same(a: Topology, b: Topology) -> bool:
    return a.networks == b.networks and a.containers == b.containers


def run(engine: MemoryEngine, steps: list[tuple[str, int]]) -> None:
    """Carries out the steps; one the engine refuses (a name or subnet taken, a network in
    use) is skipped, as a user's failed command would be: the topology must converge all the
    same. Containers are connected and disconnected only while running: Docker announces
    no event for a created container's (dis)connection, so no watcher can see it before the
    container's next event."""
    nets: list[str] = []
    ctrs: list[str] = []
    running: set[str] = set()
    for op, n in steps:
        with contextlib.suppress(EngineError):
            if op == "net":
                nets.append(engine.create_network(f"n{n}", subnet=f"10.{n % 250}.0.0/24"))
            elif op == "rmnet" and nets:
                nid = nets[n % len(nets)]
                engine.remove_network(nid)
                nets.remove(nid)
            elif op == "ctr":
                ctrs.append(engine.create_container(f"c{n}"))
            elif op == "drop":
                engine.drop_streams()
            elif ctrs:
                cid = ctrs[n % len(ctrs)]
                if op == "start":
                    engine.start(cid)
                    running.add(cid)
                elif op == "stop":
                    engine.stop(cid)
                    running.discard(cid)
                elif op == "rename":
                    engine.rename(cid, f"r{n}")
                elif op == "health":
                    engine.set_health(cid, "healthy" if n % 2 else "unhealthy")
                elif op == "rmctr":
                    engine.remove_container(cid)
                    ctrs.remove(cid)
                    running.discard(cid)
                elif nets and cid in running:
                    nid = nets[n % len(nets)]
                    if op == "connect":
                        engine.connect(cid, nid, aliases=(f"a{n}",))
                    elif op == "disconnect":
                        engine.disconnect(cid, nid)


@contextlib.contextmanager
def watching(*engines: MemoryEngine, **kwargs: Any) -> Iterator[TopologyWatcher]:
    watcher = TopologyWatcher(list(engines), **kwargs)
    watcher.start()
    try:
        yield watcher
    finally:
        watcher.stop()


def settled(watcher: TopologyWatcher, *engines: MemoryEngine) -> Topology:
    truth = build_topology([e.snapshot() for e in engines], 0)
    topo = watcher.wait_for(lambda t: same(t, truth), WAIT)
    assert topo is not None, "did not converge"
    return topo


@settings(max_examples=40, deadline=None)
@given(ops, st.sampled_from([0.0, 0.001]))
def test_topology_converges_to_the_engine(steps: list[tuple[str, int]], delay: float) -> None:
    engine = MemoryEngine(read_delay_s=delay)
    with watching(engine, sleep=lambda s: None) as watcher:
        run(engine, steps)
        settled(watcher, engine)


def test_versions_grow_and_listeners_see_every_topology() -> None:
    engine = MemoryEngine()
    seen: list[int] = []
    watcher = TopologyWatcher([engine])
    watcher.subscribe(lambda t: seen.append(t.version))
    first = watcher.start()
    try:
        nid = engine.create_network("n")
        cid = engine.create_container("c")
        engine.start(cid)
        engine.connect(cid, nid, aliases=("api",))

        def linked(t: Topology) -> bool:
            net = t.network("n")
            return net is not None and bool(t.endpoints_of(net))

        topo = watcher.wait_for(linked, WAIT)
        assert topo is not None
        assert topo.version > first.version
        assert seen == sorted(seen) and seen[-1] == topo.version
        net = topo.network("n")
        assert net is not None
        [ep] = topo.endpoints_of(net)
        assert ep.aliases == ("api",)
    finally:
        watcher.stop()


def test_two_engines_changing_at_once_deliver_every_version_in_order() -> None:
    one, two = MemoryEngine("one"), MemoryEngine("two")
    seen: list[int] = []
    watcher = TopologyWatcher([one, two])
    watcher.subscribe(lambda t: seen.append(t.version))
    first = watcher.start()
    try:
        # Two writers so that both appliers freeze versions concurrently.
        writers = [
            threading.Thread(target=lambda e=e: [e.create_container(f"c{i}") for i in range(30)])
            for e in (one, two)
        ]
        for w in writers:
            w.start()
        for w in writers:
            w.join()
        last = settled(watcher, one, two)
    finally:
        watcher.stop()
    assert seen[: seen.index(last.version) + 1] == list(range(first.version, last.version + 1))


class CountingEngine(MemoryEngine):
    def __init__(self) -> None:
        super().__init__(read_delay_s=0.05)
        self.reads = 0

    def container(self, container_id: str) -> Container | None:
        self.reads += 1
        return super().container(container_id)


def test_events_for_one_object_are_read_once_per_batch() -> None:
    engine = CountingEngine()
    with watching(engine) as watcher:
        cid = engine.create_container("c")
        for i in range(30):
            engine.rename(cid, f"c{i}")
        assert watcher.wait_for(lambda t: t.container("c29") is not None, WAIT)
        assert engine.reads < 31  # 31 events: the slow reads let later ones coalesce


# --- reads at the engine's own speed ----------------------------------------------------------


class HeldEngine(MemoryEngine):
    """Inspects of the containers in `held` return what they found only once `release` is set
    (the engine holds a container's lock while it starts it); every network read is counted."""

    def __init__(self) -> None:
        super().__init__()
        self.held: set[str] = set()
        self.release = threading.Event()
        self.network_reads: list[str] = []

    def container(self, container_id: str) -> Container | None:
        found = super().container(container_id)  # as it was when the inspect began
        if container_id in self.held:
            assert self.release.wait(WAIT), "never released"
        return found

    def network(self, network_id: str) -> Network | None:
        self.network_reads.append(network_id)
        return super().network(network_id)


def running(name: str) -> Any:
    def check(t: Topology) -> bool:
        c = t.container(name)
        return c is not None and c.running

    return check


def test_a_slow_inspect_does_not_hold_up_another_containers_start() -> None:
    engine = HeldEngine()
    slow = engine.create_container("slow")
    fast = engine.create_container("fast")
    with watching(engine) as watcher:
        engine.held.add(slow)
        try:
            engine.start(slow)  # its re-read now waits on the engine
            engine.start(fast)
            assert watcher.wait_for(running("fast"), WAIT), "held up by the slow inspect"
            assert not running("slow")(watcher.topology)
        finally:
            engine.release.set()
        assert watcher.wait_for(running("slow"), WAIT)
        settled(watcher, engine)


def test_a_die_during_a_slow_inspect_is_not_undone_by_it() -> None:
    """The inspect began while the container ran and returns after its `die` was heard: the
    model keeps it exited (the `die`'s own re-read follows)."""
    engine = HeldEngine()
    cid = engine.create_container("c")
    engine.start(cid)
    with watching(engine) as watcher:
        assert watcher.wait_for(running("c"), WAIT)
        engine.held.add(cid)
        engine.rename(cid, "c")  # an event whose re-read is held (and sees it running)
        time.sleep(0.05)  # the reader has taken it
        engine.stop(cid)
        assert watcher.wait_for(lambda t: not running("c")(t), WAIT)
        seen: list[bool] = []
        watcher.subscribe(lambda t: seen.append(running("c")(t)))
        engine.held.discard(cid)
        engine.release.set()
        settled(watcher, engine)
        assert not any(seen), "a read from before the die brought 'running' back"


def test_connecting_a_container_reads_the_container_not_the_network() -> None:
    engine = HeldEngine()
    nid = engine.create_network("n", subnet="10.8.0.0/24")
    cid = engine.create_container("c")
    engine.start(cid)
    with watching(engine) as watcher:
        engine.connect(cid, nid, aliases=("api",))

        def attached(t: Topology) -> bool:
            c = t.container("c")
            return c is not None and any(a.network == "n" and a.ipv4 for a in c.attachments)

        assert watcher.wait_for(attached, WAIT)
        engine.disconnect(cid, nid)
        settled(watcher, engine)
        assert engine.network_reads == []
        # A network the model does not hold yet (made while no event of it was read) is
        # read when a container turns out to be on it.
        with watcher._lock:
            del watcher._states[0].networks[nid]
        engine.connect(cid, nid)
        settled(watcher, engine)
        assert engine.network_reads == [nid]


# --- listeners ------------------------------------------------------------------------------


def lock_is_free(watcher: TopologyWatcher) -> bool:
    """Whether another thread could take the watcher's lock right now."""
    free: list[bool] = []

    def probe() -> None:
        got = watcher._lock.acquire(blocking=False)
        if got:
            watcher._lock.release()
        free.append(got)

    t = threading.Thread(target=probe)
    t.start()
    t.join()
    return free[0]


def test_listeners_are_called_outside_the_lock() -> None:
    engine = MemoryEngine()
    watcher = TopologyWatcher([engine])
    free: list[bool] = []
    heard = threading.Event()

    def listener(t: Topology) -> None:
        free.append(lock_is_free(watcher))
        assert watcher.topology.version >= t.version  # reading it from a listener is fine
        heard.set()

    watcher.subscribe(listener)
    watcher.start()  # the first version: delivered on this thread
    try:
        heard.clear()
        engine.create_container("c")  # later ones: on the applier's thread
        assert heard.wait(WAIT)
    finally:
        watcher.stop()
    assert free and all(free)


def test_a_failing_listener_is_logged_and_does_not_disturb_the_engine(
    caplog: pytest.LogCaptureFixture,
) -> None:
    engine = MemoryEngine()
    later: list[int] = []

    def broken(t: Topology) -> None:
        raise RuntimeError("listener bug")

    with watching(engine, sleep=lambda s: None) as watcher:
        watcher.subscribe(broken)
        watcher.subscribe(lambda t: later.append(t.version))
        with caplog.at_level(logging.DEBUG, logger="dockmesh.engine.watch"):
            engine.create_container("a")
            engine.create_container("b")
            topo = settled(watcher, engine)
    assert watcher.resyncs == 0  # not taken for an engine failure
    assert later[-1] == topo.version  # the next listener still heard
    failures = [r for r in caplog.records if "listener" in r.getMessage()]
    assert failures and all(r.levelno == logging.ERROR and r.exc_info for r in failures)
    assert all(r.name == "dockmesh.engine.watch" for r in failures)
    assert not [r for r in caplog.records if "stream lost" in r.getMessage()]


def test_unsubscribed_listeners_hear_nothing_more() -> None:
    engine = MemoryEngine()
    gone: list[int] = []
    staying: list[int] = []

    def listener(t: Topology) -> None:
        gone.append(t.version)

    with watching(engine) as watcher:
        watcher.subscribe(listener)
        watcher.subscribe(lambda t: staying.append(t.version))
        engine.create_container("a")
        settled(watcher, engine)
        watcher.unsubscribe(listener)
        engine.create_container("b")
        last = settled(watcher, engine)
        # Listeners run in subscription order: once `staying` heard the last version, a
        # still-subscribed `listener` would have heard it first.
        assert watcher.wait_for(lambda t: staying[-1:] == [last.version], WAIT)
    assert last.version not in gone


def test_stop_tells_subscribers_once_the_threads_are_done() -> None:
    engine = MemoryEngine()
    stopped: list[str] = []
    watcher = TopologyWatcher([engine])
    watcher.start()
    watcher.subscribe(lambda t: None, on_stop=lambda: stopped.append("before"))
    watcher.stop()
    assert all(not t.is_alive() for t in watcher._threads)
    watcher.stop()  # a second stop tells nobody again
    watcher.subscribe(lambda t: None, on_stop=lambda: stopped.append("after"))
    assert stopped == ["before", "after"]


class FrozenEngine(FlakyEngine):
    """Once frozen, a reconnect's event stream is never answered (a socket that accepts and
    says nothing), until released."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.frozen = threading.Event()
        self.released = threading.Event()
        self.waiting = threading.Event()

    def events(self) -> Any:
        if self.frozen.is_set():
            self.waiting.set()
            self.released.wait()
            raise EngineError("engine frozen: gave up")
        return super().events()


def test_a_stop_waits_once_for_every_engine_blocked_on_a_frozen_one() -> None:
    engines = [FrozenEngine("f1"), FrozenEngine("f2")]
    watcher = TopologyWatcher(engines, initial_backoff=0.01, stop_timeout=0.5)
    watcher.start()
    try:
        for e in engines:
            e.frozen.set()
            e.drop_streams()
        for e in engines:
            assert e.waiting.wait(WAIT)
        t0 = time.monotonic()
        watcher.stop()
        took = time.monotonic() - t0
        assert took < 0.9, f"stopping took {took:.2f} s: each frozen engine waited its own 0.5 s"
    finally:
        for e in engines:
            e.released.set()


# --- engine failures, back-off, clocks -------------------------------------------------------


def test_reconnects_back_off_and_every_failure_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    engine = FlakyEngine()
    engine.refuse_streams(3)
    waits: list[float] = []
    with caplog.at_level(logging.DEBUG, logger="dockmesh.engine.watch"):
        with watching(engine, sleep=waits.append, initial_backoff=0.5, max_backoff=1.5) as w:
            engine.drop_streams()
            engine.create_container("late")  # made while no stream is open
            assert w.wait_for(lambda t: t.container("late") is not None, WAIT)
            assert w.resyncs == 1
        # The stream drop, then three refused reconnects, each waiting longer (to a ceiling).
        assert waits == [0.5, 1.0, 1.5, 1.5]
    lost = [r for r in caplog.records if "stream lost" in r.getMessage()]
    assert len(lost) == 4 and all(r.levelno == logging.WARNING for r in lost)
    assert sum("connection refused" in r.getMessage() for r in lost) == 3
    # Stopping ends the stream too: that is expected, not a warning.
    assert [r for r in caplog.records if "ended on stop" in r.getMessage()]
    assert all(r.levelno < logging.WARNING for r in caplog.records if "stop" in r.getMessage())


def test_a_failed_re_read_resyncs(caplog: pytest.LogCaptureFixture) -> None:
    engine = FlakyEngine()
    with (
        caplog.at_level(logging.WARNING, logger="dockmesh.engine.watch"),
        watching(engine, sleep=lambda s: None) as watcher,
    ):
        engine.fail_next_read()
        engine.create_container("c")
        assert watcher.wait_for(lambda t: t.container("c") is not None, WAIT)
        assert watcher.resyncs == 1
    [lost] = [r for r in caplog.records if "stream lost" in r.getMessage()]
    assert "re-reading failed" in lost.getMessage() and "inspect timed out" in lost.getMessage()


def test_wait_for_reads_the_injected_clock() -> None:
    ticks = iter([0.0, 100.0])
    with watching(MemoryEngine(), clock=lambda: next(ticks)) as watcher:
        # The clock jumps past the deadline at the first look: no real waiting happens.
        assert watcher.wait_for(lambda t: False, 5) is None


def test_the_event_hook_is_stamped_by_the_injected_time() -> None:
    engine = MemoryEngine()
    hooked: list[tuple[object, int]] = []
    done = threading.Event()

    def hook(event: dict[str, object], applied_ns: int) -> None:
        hooked.append((event.get("Action"), applied_ns))
        done.set()

    with watching(engine, time_ns=lambda: 42) as watcher:
        watcher.event_hook = hook
        engine.create_container("c")
        assert done.wait(WAIT)
    assert hooked[0] == ("create", 42)


def test_a_die_shows_before_a_slow_reread() -> None:
    """The engine answers inspects slowly (it is under load): a `die` still reaches the model
    at once, and the re-read then fills in the rest."""
    engine = MemoryEngine(read_delay_s=0.0)
    nid = engine.create_network("n", subnet="10.9.0.0/24")
    cid = engine.create_container("c")
    engine.connect(cid, nid)
    engine.start(cid)
    watcher = TopologyWatcher([engine])
    watcher.start()
    try:
        assert watcher.wait_for(lambda t: bool(t.containers) and t.containers[0].running, 10)
        engine._read_delay_s = 2.0  # every inspect from now on takes two seconds
        engine.stop(cid)
        seen = watcher.wait_for(lambda t: not t.containers[0].running, 1.0)
        assert seen is not None, "the die waited for the re-read"
    finally:
        engine._read_delay_s = 0.0
        watcher.stop()


def test_links_say_whether_each_engine_is_followed_and_since_when_it_is_not() -> None:
    import time

    now = [100.0]
    engine = FlakyEngine("flaky")
    watcher = TopologyWatcher(
        [engine], link_clock=lambda: now[0], sleep=lambda s: time.sleep(0.005)
    )
    now[0] = 103.0
    # Never read yet: not followed, for as long as the watcher has been.
    [link] = watcher.links()
    assert (link.engine, link.connected, link.sync_age_s) == ("flaky", False, 3.0)
    watcher.start()
    try:
        assert [(k.connected, k.sync_age_s) for k in watcher.links()] == [(True, 0.0)]
        engine.unplug()
        engine.drop_streams()
        deadline = time.monotonic() + WAIT
        while watcher.links()[0].connected:
            assert time.monotonic() < deadline, "the loss was not noticed"
            time.sleep(0.005)
        lost_at = now[0]
        time.sleep(0.05)  # failed retries meanwhile: they do not make the view fresher
        now[0] += 7.5
        assert watcher.links()[0].sync_age_s == pytest.approx(now[0] - lost_at)
        engine.plug()
        while not watcher.links()[0].connected:
            assert time.monotonic() < deadline, "the engine was not followed again"
            time.sleep(0.005)
        assert watcher.links()[0].sync_age_s == 0.0
    finally:
        watcher.stop()
