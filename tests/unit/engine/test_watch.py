"""The watcher against an in-memory engine: whatever happens, in whatever order, with streams
dropped in between and slow reads, the live topology ends equal to the engine's state."""

from __future__ import annotations

import contextlib

from hypothesis import given, settings
from hypothesis import strategies as st

from dockmesh.engine.memory import MemoryEngine
from dockmesh.engine.watch import TopologyWatcher
from dockmesh.errors import EngineError
from dockmesh.model.topology import Container, Topology, build_topology

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
    """Carries out the steps; one the engine refuses (a name or subnet taken) is skipped, as
    a user's failed command would be: the topology must converge all the same."""
    nets: list[str] = []
    ctrs: list[str] = []
    links: set[tuple[str, str]] = set()
    for op, n in steps:
        if op == "net":
            with contextlib.suppress(EngineError):
                nets.append(engine.create_network(f"n{n}", subnet=f"10.{n % 250}.0.0/24"))
        elif op == "rmnet" and nets:
            nid = nets[n % len(nets)]
            if not any(x[1] == nid for x in links):
                engine.remove_network(nid)
                nets.remove(nid)
        elif op == "ctr":
            with contextlib.suppress(EngineError):  # the name is taken
                ctrs.append(engine.create_container(f"c{n}"))
        elif op == "drop":
            engine.drop_streams()
        elif ctrs:
            cid = ctrs[n % len(ctrs)]
            if op == "start":
                engine.start(cid)
            elif op == "stop":
                engine.stop(cid)
            elif op == "rename":
                engine.rename(cid, f"r{n}")
            elif op == "health":
                engine.set_health(cid, "healthy" if n % 2 else "unhealthy")
            elif op == "rmctr":
                engine.remove_container(cid)
                ctrs.remove(cid)
                links = {x for x in links if x[0] != cid}
            elif nets:
                nid = nets[n % len(nets)]
                if op == "connect" and (cid, nid) not in links:
                    engine.connect(cid, nid, aliases=(f"a{n}",))
                    links.add((cid, nid))
                elif op == "disconnect" and (cid, nid) in links:
                    engine.disconnect(cid, nid)
                    links.discard((cid, nid))


@settings(max_examples=40, deadline=None)
@given(ops, st.sampled_from([0.0, 0.001]))
def test_topology_converges_to_the_engine(steps: list[tuple[str, int]], delay: float) -> None:
    engine = MemoryEngine(read_delay_s=delay)
    watcher = TopologyWatcher([engine])
    watcher.start()
    try:
        run(engine, steps)
        truth = build_topology([engine.snapshot()], 0)
        assert watcher.wait_for(lambda t: same(t, truth), 10) is not None, "did not converge"
    finally:
        watcher.stop()


def test_versions_grow_and_listeners_see_every_topology() -> None:
    engine = MemoryEngine()
    seen: list[int] = []
    watcher = TopologyWatcher([engine])
    watcher.subscribe(lambda t: seen.append(t.version))
    first = watcher.start()
    try:
        nid = engine.create_network("n")
        cid = engine.create_container("c")
        engine.connect(cid, nid, aliases=("api",))

        def linked(t: Topology) -> bool:
            net = t.network("n")
            return net is not None and bool(t.endpoints_of(net))

        topo = watcher.wait_for(linked, 5)
        assert topo is not None
        assert topo.version > first.version
        assert seen == sorted(seen) and seen[-1] == topo.version
        net = topo.network("n")
        assert net is not None
        [ep] = topo.endpoints_of(net)
        assert ep.aliases == ("api",)
    finally:
        watcher.stop()


class CountingEngine(MemoryEngine):
    def __init__(self) -> None:
        super().__init__(read_delay_s=0.05)
        self.reads = 0

    def container(self, container_id: str) -> Container | None:
        self.reads += 1
        return super().container(container_id)


def test_events_for_one_object_are_read_once_per_batch() -> None:
    engine = CountingEngine()
    watcher = TopologyWatcher([engine])
    watcher.start()
    try:
        cid = engine.create_container("c")
        for i in range(30):
            engine.rename(cid, f"c{i}")
        assert watcher.wait_for(lambda t: t.container("c29") is not None, 10)
        assert engine.reads < 31  # 31 events: the slow reads let later ones coalesce
    finally:
        watcher.stop()
