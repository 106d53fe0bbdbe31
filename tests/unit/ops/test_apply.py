"""apply on the in-memory engine: plans converge, failures roll back, and what is removed
to be replaced comes back when its replacement fails."""

from __future__ import annotations

import contextlib
import copy
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dockmesh.engine.memory import MemoryEngine
from dockmesh.errors import EngineError, Interrupted
from dockmesh.model.config import ContainerConfig, EndpointConfig
from dockmesh.model.labels import LABEL_PROJECT
from dockmesh.model.topology import Topology, build_topology
from dockmesh.ops.apply import apply_plan
from dockmesh.projectfile.desired import Desired
from dockmesh.projectfile.plan import Plan, make_plan, teardown_plan
from tests.unit.helpers import desired_of

DOC: dict[str, Any] = {
    "project": "p",
    "networks": {"front": {"subnet": "10.1.0.0/24"}, "db": {"internal": True}},
    "services": {
        "web": {
            "image": "dockmesh/toolbox",
            "replicas": 2,
            "networks": {"front": {"aliases": ["web"]}, "db": {}},
            "environment": {"ID": "{{replica}}"},
            "depends_on": ["store"],
        },
        "store": {"image": "dockmesh/toolbox", "networks": ["db"]},
    },
}


def live(mem: MemoryEngine) -> Topology:
    return build_topology([mem.snapshot()], 1)


def plan_on(mem: MemoryEngine, desired: Desired) -> Plan:
    images = {c.config.image for c in desired.containers}
    ids = {i: info.id for i in images if (info := mem.image(i)) is not None}
    return make_plan(desired, live(mem), ids, engine=mem.ref.name)


def up(mem: MemoryEngine, desired: Desired) -> Plan:
    plan = plan_on(mem, desired)
    apply_plan(mem, plan)
    return plan


def shape(mem: MemoryEngine, project: str = "p") -> dict[str, Any]:
    """What a user sees of the project: names, states, networks and aliases (not ids)."""
    t = live(mem)
    return {
        "networks": sorted(n.name for n in t.networks if n.labels.get(LABEL_PROJECT) == project),
        "containers": sorted(
            (c.name, c.state, tuple(sorted((a.network, a.aliases[:-2]) for a in c.attachments)))
            for c in t.containers
            if c.labels.get(LABEL_PROJECT) == project
        ),
    }


def test_up_then_nothing_to_do_then_down() -> None:
    mem = MemoryEngine()
    desired = desired_of(DOC)
    first = up(mem, desired)
    assert len(first.changes) == 5
    assert plan_on(mem, desired).empty
    web1 = live(mem).container("p-web-1")
    assert web1 is not None and web1.running
    assert [a.network for a in web1.attachments] == ["p_db", "p_front"]
    apply_plan(mem, teardown_plan("p", live(mem)))
    assert shape(mem) == {"networks": [], "containers": []}


def test_a_failed_replace_puts_back_what_it_removed() -> None:
    mem = MemoryEngine()
    up(mem, desired_of(DOC))
    before = shape(mem)
    doc = copy.deepcopy(DOC)
    doc["services"]["web"]["environment"]["ID"] = "v2"
    doc["networks"]["front"]["subnet"] = "10.2.0.0/24"
    mem.fail("start", "p-web-2")
    with pytest.raises(EngineError, match="rolled back"):
        up(mem, desired_of(doc))
    assert shape(mem) == before
    # the restored project is the old file's, exactly: nothing to do for it
    assert plan_on(mem, desired_of(DOC)).empty


def test_rollback_removes_only_what_the_run_created() -> None:
    mem = MemoryEngine()
    up(mem, desired_of(DOC))
    # someone else's container on the project's network, and a same-named stranger
    guest = mem.create_container(
        ContainerConfig("guest", "dockmesh/toolbox", networks=(EndpointConfig("p_db", ("g",)),))
    )
    mem.start(guest)
    doc = copy.deepcopy(DOC)
    doc["networks"]["db"]["internal"] = False  # replaces p_db: guest is disconnected, then back
    mem.fail("start", "p-web-1")
    with pytest.raises(EngineError, match="rolled back"):
        up(mem, desired_of(doc))
    g = live(mem).container("guest")
    assert g is not None and g.running
    assert [(a.network, a.aliases[0]) for a in g.attachments] == [("p_db", "g")]
    assert plan_on(mem, desired_of(DOC)).empty


def test_a_network_replace_reconnects_other_projects_containers() -> None:
    mem = MemoryEngine()
    up(mem, desired_of(DOC))
    guest = mem.create_container(
        ContainerConfig("guest", "dockmesh/toolbox", networks=(EndpointConfig("p_db", ("g",)),))
    )
    mem.start(guest)
    doc = copy.deepcopy(DOC)
    doc["networks"]["db"]["internal"] = False
    plan = up(mem, desired_of(doc))
    assert "reconnects guest" in plan.changes[0].reason
    g = live(mem).container("guest")
    db = live(mem).network("p_db")
    assert g is not None and db is not None and not db.internal
    assert g.attachment(db.id) is not None
    assert plan_on(mem, desired_of(doc)).empty


def test_stopping_between_steps_says_what_was_done() -> None:
    mem = MemoryEngine()
    calls = iter([False, False, False, True])
    plan = plan_on(mem, desired_of(DOC))
    with pytest.raises(Interrupted, match="created p_front, p_db, p-store-1"):
        apply_plan(mem, plan, should_stop=lambda: next(calls))
    # up again finishes the job
    up(mem, desired_of(DOC))
    assert plan_on(mem, desired_of(DOC)).empty


# --- any sequence of file edits and hand-made changes converges --------------------------

names = st.sampled_from(["a", "b", "c"])


@st.composite
def docs(draw: Any) -> dict[str, Any]:
    nets = draw(st.lists(names, unique=True, max_size=3))
    networks = {
        n: {"subnet": f"10.{i + 1}.{draw(st.integers(0, 1))}.0/24", "internal": draw(st.booleans())}
        for i, n in enumerate(nets)
    }
    services: dict[str, Any] = {}
    svc_names = draw(st.lists(names, unique=True, max_size=3))
    for i, s in enumerate(svc_names):
        attach = draw(st.lists(st.sampled_from(nets), unique=True)) if nets else []
        services[s] = {
            "image": draw(st.sampled_from(["dockmesh/toolbox", "dockmesh/python"])),
            "replicas": draw(st.integers(0, 2)),
            "networks": {
                n: {"aliases": draw(st.lists(names, unique=True, max_size=1))} for n in attach
            },
            "environment": {"N": draw(st.sampled_from(["1", "2", "{{replica}}"]))},
            "depends_on": draw(st.lists(st.sampled_from(svc_names[:i]), unique=True)) if i else [],
        }
    return {"project": "g", "networks": networks, "services": services}


hand_made = st.lists(
    st.tuples(
        st.sampled_from(["stop", "remove", "disconnect", "connect", "guest", "rmnet"]),
        st.integers(0, 50),
    ),
    max_size=4,
)


def meddle(mem: MemoryEngine, op: str, n: int) -> None:
    """A person's change by hand; one the engine refuses is simply not made."""
    t = live(mem)
    ctrs = [c for c in t.containers if c.labels.get(LABEL_PROJECT) == "g"]
    nets = [x for x in t.networks if x.labels.get(LABEL_PROJECT) == "g"]
    with contextlib.suppress(EngineError):
        if op == "guest" and nets:
            net = nets[n % len(nets)]
            cid = mem.create_container(
                ContainerConfig(
                    f"guest{n}", "dockmesh/toolbox", networks=(EndpointConfig(net.name),)
                )
            )
            mem.start(cid)
        elif op == "rmnet" and nets:
            mem.remove_network(nets[n % len(nets)].id)
        elif ctrs:
            c = ctrs[n % len(ctrs)]
            if op == "stop":
                mem.stop(c.id)
            elif op == "remove":
                mem.remove_container(c.id)
            elif op == "disconnect" and c.attachments:
                mem.disconnect(c.id, c.attachments[n % len(c.attachments)].network)
            elif op == "connect" and nets:
                mem.connect(c.id, EndpointConfig(nets[n % len(nets)].name))


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(docs(), hand_made), min_size=1, max_size=3))
def test_any_edits_and_meddling_converge(
    rounds: list[tuple[dict[str, Any], list[tuple[str, int]]]],
) -> None:
    mem = MemoryEngine()
    guests: set[str] = set()
    for doc, meddling in rounds:
        desired = desired_of(doc)
        up(mem, desired)
        assert plan_on(mem, desired).empty, plan_on(mem, desired).changes
        for op, n in meddling:
            meddle(mem, op, n)
        guests |= {c.name for c in live(mem).containers if c.name.startswith("guest")}
        up(mem, desired)
        assert plan_on(mem, desired).empty, plan_on(mem, desired).changes
        # other people's containers survive every up
        assert guests <= {c.name for c in live(mem).containers}
