"""What the catalog sees of containers whose process the agent saw end (`without_dead`,
`still_dead`, `to_follow`), and what the engines' links say (`all_connected`)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from dockmesh.catalog.containers import derive_all
from dockmesh.model.labels import Discovery, encode_discovery
from dockmesh.model.liveness import (
    EngineLink,
    all_connected,
    still_dead,
    to_follow,
    with_pings,
    without_dead,
)
from dockmesh.model.topology import Container, Topology
from tests.unit.topos import container, network, topology

NAMES = [f"c{i}" for i in range(6)]
LABELS = encode_discovery(Discovery("web", 8080))


@st.composite
def scenes(draw: st.DrawFn) -> tuple[Topology, dict[str, int]]:
    """A topology of up to six labelled containers (running with a pid from a small range,
    or exited) and records of ended processes: some right, some for another pid, some for
    containers the topology does not hold."""
    net = network("mesh", "10.1.0.0/24")
    cs = []
    for i, name in enumerate(draw(st.lists(st.sampled_from(NAMES), unique=True, max_size=6))):
        running = draw(st.booleans())
        cs.append(
            container(
                name,
                {"mesh": f"10.1.0.{i + 2}"},
                LABELS,
                state="running" if running else "exited",
                pid=draw(st.integers(1, 4)),
            )
        )
    topo = topology([net], cs)
    ids = [c.id for c in cs] + ["f" * 64]
    dead = draw(st.dictionaries(st.sampled_from(ids), st.integers(1, 4), max_size=7))
    return topo, dead


def _ended(c: Container, dead: dict[str, int]) -> bool:
    return c.running and dead.get(c.id) == c.pid


@given(scenes())
def test_exactly_the_containers_running_with_the_pid_that_ended_are_shown_dead(
    scene: tuple[Topology, dict[str, int]],
) -> None:
    topo, dead = scene
    seen = without_dead(topo, dead)
    assert seen.version == topo.version and seen.networks == topo.networks
    assert [c.id for c in seen.containers] == [c.id for c in topo.containers]
    for before, after in zip(topo.containers, seen.containers, strict=True):
        if _ended(before, dead):
            assert (after.state, after.pid, after.health) == ("exited", None, None)
            assert after.attachments == before.attachments and after.labels == before.labels
        else:
            assert after == before  # another pid (restarted), exited, not recorded: as is
    assert without_dead(seen, dead) == seen  # once is enough


@given(scenes())
def test_the_catalog_holds_no_instance_of_a_dead_process_and_every_other(
    scene: tuple[Topology, dict[str, int]],
) -> None:
    topo, dead = scene
    held = {
        d.instance.container_id for d in derive_all(without_dead(topo, dead), "local", "local")[0]
    }
    assert held == {c.id for c in topo.containers if c.running and not _ended(c, dead)}


@given(scenes())
def test_records_are_kept_only_while_the_topology_has_not_overtaken_them(
    scene: tuple[Topology, dict[str, int]],
) -> None:
    topo, dead = scene
    kept = still_dead(topo, dead)
    assert kept.items() <= dead.items()
    assert set(kept) == {c.id for c in topo.containers if _ended(c, dead)}
    # What was forgotten changed nothing the catalog sees.
    assert without_dead(topo, kept) == without_dead(topo, dead)


@given(scenes())
def test_the_processes_followed_are_those_of_running_containers(
    scene: tuple[Topology, dict[str, int]],
) -> None:
    topo, dead = scene
    seen = without_dead(topo, dead)
    follow = to_follow(seen)
    assert follow == {c.id: c.pid for c in seen.containers if c.running and c.pid}
    assert not set(follow) & set(still_dead(topo, dead))  # a dead one is not followed again
    some = [c.id for c in topo.containers][:2]
    assert to_follow(seen, some) == {k: v for k, v in follow.items() if k in some}


def test_a_restarted_container_is_not_hidden_by_its_former_process() -> None:
    net = network("mesh", "10.1.0.0/24")
    before = topology([net], [container("a", {"mesh": "10.1.0.2"}, LABELS, pid=10)])
    cid = before.containers[0].id
    dead = {cid: 10}
    assert not without_dead(before, dead).containers[0].running
    after = topology([net], [container("a", {"mesh": "10.1.0.2"}, LABELS, pid=11)])
    assert still_dead(after, dead) == {}
    assert without_dead(after, dead) is after


@given(st.lists(st.tuples(st.booleans(), st.floats(0, 100)), max_size=4))
def test_the_engines_are_followed_only_when_every_one_is(
    states: list[tuple[bool, float]],
) -> None:
    links = [EngineLink(f"e{i}", up, age) for i, (up, age) in enumerate(states)]
    assert all_connected(links) == (bool(links) and all(up for up, _ in states))


@given(
    st.lists(st.tuples(st.booleans(), st.floats(0, 100)), max_size=4),
    st.dictionaries(st.sampled_from(["e0", "e1", "e2", "e9"]), st.floats(0, 50)),
)
def test_an_engine_that_does_not_answer_its_pings_is_not_followed_since_its_last_answer(
    states: list[tuple[bool, float]], silent: dict[str, float]
) -> None:
    links = [EngineLink(f"e{i}", up, age) for i, (up, age) in enumerate(states)]
    merged = with_pings(links, silent, 100.0)
    assert [k.engine for k in merged] == [k.engine for k in links]
    for before, after in zip(links, merged, strict=True):
        if before.connected and before.engine in silent:
            assert not after.connected and after.sync_age_s == 100.0 - silent[before.engine]
        else:
            assert after == before  # a lost stream says more: it keeps its own age
