"""plan = diff(desired, live), on values: desired states built from documents in memory and
topologies made by hand or by simulating an apply."""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from dockmesh.model.labels import LABEL_PROJECT
from dockmesh.model.topology import (
    Attachment,
    Container,
    EngineInfo,
    EngineState,
    Topology,
    build_topology,
)
from dockmesh.projectfile.desired import Desired
from dockmesh.projectfile.plan import Plan, make_plan, teardown_plan
from tests.unit.helpers import desired_of, empty_topology, simulate_apply

DOC: dict[str, Any] = {
    "project": "p",
    "networks": {"front": {"subnet": "10.1.0.0/24"}, "db": {"internal": True}},
    "services": {
        "web": {
            "image": "img",
            "replicas": 2,
            "networks": {"front": {"aliases": ["web"]}},
            "environment": {"ID": "{{replica}}"},
            "depends_on": ["store"],
        },
        "store": {"image": "img", "networks": ["db", "front"]},
    },
}


def plan_for(doc: dict[str, Any], live: Topology | None = None) -> tuple[Desired, Plan]:
    desired = desired_of(doc)
    return desired, make_plan(desired, live or empty_topology())


def test_everything_is_created_in_start_order() -> None:
    _, plan = plan_for(DOC)
    assert [(c.action, c.kind, c.name) for c in plan.changes] == [
        ("create", "network", "p_front"),
        ("create", "network", "p_db"),
        ("create", "container", "p-store-1"),
        ("create", "container", "p-web-1"),
        ("create", "container", "p-web-2"),
    ]
    assert [s.op for s in plan.steps] == ["create_network"] * 2 + ["create_container"] * 3


def test_replica_substitution_and_labels() -> None:
    desired, _ = plan_for(DOC)
    web2 = next(c for c in desired.containers if c.name == "p-web-2")
    assert web2.config.environment == {"ID": "2"}
    assert web2.config.labels[LABEL_PROJECT] == "p"
    assert web2.config.hostname == "p-web-2"


def test_applied_plan_leaves_nothing_to_do() -> None:
    desired, _ = plan_for(DOC)
    assert make_plan(desired, simulate_apply(desired)).empty


def test_a_changed_service_replaces_only_its_containers() -> None:
    desired, _ = plan_for(DOC)
    live = simulate_apply(desired)
    doc = copy.deepcopy(DOC)
    doc["services"]["web"]["environment"]["ID"] = "x{{replica}}"
    _, plan = plan_for(doc, live)
    assert {(c.action, c.name, c.reason) for c in plan.changes} == {
        ("replace", "p-web-1", "changed: environment"),
        ("replace", "p-web-2", "changed: environment"),
    }
    assert [s.op for s in plan.steps] == ["remove_container"] * 2 + ["create_container"] * 2


def test_a_changed_network_replaces_it_and_what_is_attached() -> None:
    desired, _ = plan_for(DOC)
    live = simulate_apply(desired)
    doc = copy.deepcopy(DOC)
    doc["networks"]["db"]["internal"] = False
    _, plan = plan_for(doc, live)
    assert [(c.action, c.kind, c.name, c.reason) for c in plan.changes] == [
        ("replace", "network", "p_db", "changed: internal"),
        ("replace", "container", "p-store-1", "its network p_db is replaced"),
    ]
    assert [s.op for s in plan.steps] == [
        "remove_container",
        "remove_network",
        "create_network",
        "create_container",
    ]


def test_removed_service_and_stopped_container() -> None:
    desired, _ = plan_for(DOC)
    live = simulate_apply(desired)
    stopped = tuple(
        dataclasses.replace(c, state="exited") if c.name == "p-store-1" else c
        for c in live.containers
    )
    live = dataclasses.replace(live, containers=stopped)
    doc = copy.deepcopy(DOC)
    doc["services"]["web"]["replicas"] = 1
    _, plan = plan_for(doc, live)
    assert {(c.action, c.name, c.reason) for c in plan.changes} == {
        ("replace", "p-store-1", "container is exited"),
        ("remove", "p-web-2", "no longer in the file"),
    }


def test_rebuilt_image_replaces() -> None:
    desired, _ = plan_for(DOC)
    plan = make_plan(desired, simulate_apply(desired), {"img": "sha256:new"})
    assert {c.reason for c in plan.changes} == {"image img was rebuilt"}


def test_other_projects_are_not_touched() -> None:
    desired, _ = plan_for(DOC)
    other = dataclasses.replace(desired, project="q")
    live = simulate_apply(desired)
    assert teardown_plan("q", live).empty
    down = teardown_plan("p", live)
    assert [s.op for s in down.steps] == ["remove_container"] * 3 + ["remove_network"] * 2
    # q's plan sees none of p's objects as its own
    assert all(c.action == "create" for c in make_plan(other, live).changes)


# --- generated specs -----------------------------------------------------------------------

names = st.sampled_from(["a", "b", "c", "d"])


@st.composite
def docs(draw: Any) -> dict[str, Any]:
    nets = draw(st.lists(names, unique=True, max_size=3))
    networks = {
        n: {"subnet": f"10.{i + 1}.0.0/24", "internal": draw(st.booleans())}
        for i, n in enumerate(nets)
    }
    services: dict[str, Any] = {}
    svc_names = draw(st.lists(names, unique=True, max_size=4))
    for i, s in enumerate(svc_names):
        services[s] = {
            "image": draw(st.sampled_from(["img", "img2"])),
            "replicas": draw(st.integers(0, 3)),
            "networks": draw(st.lists(st.sampled_from(nets), unique=True)) if nets else [],
            "environment": {"N": draw(st.sampled_from(["1", "2", "{{replica}}"]))},
            # depend only on earlier services: no cycles
            "depends_on": draw(st.lists(st.sampled_from(svc_names[:i]), unique=True)) if i else [],
        }
    return {"project": "g", "networks": networks, "services": services}


@settings(max_examples=60, deadline=None)
@given(docs(), docs())
def test_plan_converges_from_any_previous_state(
    before: dict[str, Any], after: dict[str, Any]
) -> None:
    old, _ = plan_for(before)
    live = simulate_apply(old)
    new, plan = plan_for(after, live)
    # every change names an object of the old or new state, once
    names_ = [(c.kind, c.name) for c in plan.changes]
    assert len(names_) == len(set(names_))
    # after applying, nothing is left to do
    assert make_plan(new, simulate_apply(new)).empty
    # containers start after what they depend on
    order = [s.name for s in plan.steps if s.op == "create_container"]
    by_name = {c.name: c for c in new.containers}
    for s in plan.steps:
        if s.container is not None:
            for dep in by_name[s.name].depends_on:
                deps = [n for n in order if n.startswith(f"g-{dep}-")]
                assert all(order.index(d) < order.index(s.name) for d in deps)


def test_merge_keeps_one_swarm_network() -> None:
    topo = build_topology([], 3)
    assert topo.to_json() == {"version": 3, "engines": [], "networks": [], "containers": []}


# --- the live state, not only the labels -------------------------------------------------


def _edit(live: Topology, name: str, **changes: Any) -> Topology:
    ctrs = tuple(
        dataclasses.replace(c, **changes) if c.name == name else c for c in live.containers
    )
    return dataclasses.replace(live, containers=ctrs)


def _container(live: Topology, name: str) -> Container:
    found = live.container(name)
    assert found is not None
    return found


def test_a_container_disconnected_by_hand_is_replaced() -> None:
    desired, _ = plan_for(DOC)
    live = simulate_apply(desired)
    store = _container(live, "p-store-1")
    live = _edit(live, "p-store-1", attachments=store.attachments[:1])
    _, plan = plan_for(DOC, live)
    assert [(c.action, c.name) for c in plan.changes] == [("replace", "p-store-1")]
    assert "disconnected by hand" in plan.changes[0].reason


def test_a_container_connected_by_hand_is_replaced() -> None:
    desired, _ = plan_for(DOC)
    live = simulate_apply(desired)
    web = _container(live, "p-web-1")
    extra = Attachment("x" * 64, "p_db", aliases=())
    live = _edit(live, "p-web-1", attachments=(*web.attachments, extra))
    _, plan = plan_for(DOC, live)
    assert [(c.name, c.reason) for c in plan.changes] == [("p-web-1", "connected by hand to p_db")]


def test_a_changed_alias_is_a_change() -> None:
    desired, _ = plan_for(DOC)
    live = simulate_apply(desired)
    web = _container(live, "p-web-2")
    att = dataclasses.replace(web.attachments[0], aliases=("other", web.id[:12], web.hostname))
    live = _edit(live, "p-web-2", attachments=(att,))
    _, plan = plan_for(DOC, live)
    assert [c.name for c in plan.changes] == ["p-web-2"]
    assert "aliases on p_front are other" in plan.changes[0].reason


def test_a_network_recreated_by_hand_replaces_its_containers() -> None:
    desired, _ = plan_for(DOC)
    live = simulate_apply(desired)
    nets = tuple(
        dataclasses.replace(n, id="f" * 64) if n.name == "p_db" else n for n in live.networks
    )
    live = dataclasses.replace(live, networks=nets)
    _, plan = plan_for(DOC, live)
    assert [(c.name, c.reason) for c in plan.changes] == [
        ("p-store-1", "its network p_db was recreated")
    ]


def test_other_projects_containers_are_named_and_reconnected() -> None:
    desired, _ = plan_for(DOC)
    live = simulate_apply(desired)
    db = live.network("p_db")
    assert db is not None
    guest = Container(
        "g" * 64,
        "guest",
        "local",
        "img",
        "running",
        hostname="guest",
        attachments=(Attachment(db.id, "p_db", aliases=("cache", "g" * 12, "guest")),),
    )
    live = dataclasses.replace(live, containers=(*live.containers, guest))
    doc = copy.deepcopy(DOC)
    doc["networks"]["db"]["internal"] = False
    _, plan = plan_for(doc, live)
    assert plan.changes[0].name == "p_db"
    assert plan.changes[0].reason.endswith("reconnects guest afterwards")
    ops = [(s.op, s.name) for s in plan.steps]
    assert ops.index(("disconnect", "guest")) < ops.index(("remove_network", "p_db"))
    assert ops.index(("create_network", "p_db")) < ops.index(("reconnect", "guest"))
    reconnect = next(s for s in plan.steps if s.op == "reconnect")
    assert reconnect.endpoint is not None and reconnect.endpoint.aliases == ("cache",)
    # down disconnects it too, and says so
    down = teardown_plan("p", live)
    assert any("disconnects guest" in c.reason for c in down.changes)


def _other_projects_api(project: str, claims: bool = False) -> Container:
    labels = {"dockmesh.service": "api", "dockmesh.port": "80", LABEL_PROJECT: project}
    if claims:
        labels["dockmesh.short-name"] = "true"
    return Container("f" * 64, f"{project}-api-1", "local", "img", "running", labels=labels, pid=1)


def test_a_service_name_another_project_registers_is_a_warning() -> None:
    doc: dict[str, Any] = {
        "project": "p",
        "services": {"api": {"image": "img", "discovery": {"port": 80}}, "db": {"image": "img"}},
    }
    engine = EngineState(EngineInfo("local", "unix:///x"))
    engine.containers["f" * 64] = _other_projects_api("q")
    live = build_topology([engine], version=1)
    _, plan = plan_for(doc, live)
    [w] = plan.warnings
    assert w.startswith("service name 'api' is used by projects p, q: the short name answers")
    assert "api.p, api.q" in w and plan.to_json()["warnings"] == [w]
    # Named explicitly: the short name is this project's (unless the other claims it too).
    doc["services"]["api"]["discovery"]["name"] = "api"
    _, plan = plan_for(doc, live)
    assert "answers project p's only" in plan.warnings[0]
    _, alone = plan_for(doc)
    assert alone.warnings == ()


# --- orphans: services no longer in the file ----------------------------------------------


def test_orphans_stay_with_their_networks_unless_asked() -> None:
    desired, _ = plan_for(DOC)
    live = simulate_apply(desired)
    doc = copy.deepcopy(DOC)
    del doc["services"]["store"], doc["networks"]["db"]
    doc["services"]["web"]["replicas"] = 1
    doc["services"]["web"]["depends_on"] = []
    new = desired_of(doc)
    kept = make_plan(new, live, keep_orphans_of={"web"})
    # a replica scaled away is no orphan: its service is still in the file
    assert [(c.action, c.name) for c in kept.changes] == [("remove", "p-web-2")]
    assert kept.orphans == ("p-store-1",)
    assert kept.to_json()["orphans"] == ["p-store-1"]
    gone = make_plan(new, live)
    assert gone.orphans == ()
    assert {(c.action, c.kind, c.name) for c in gone.changes} == {
        ("remove", "container", "p-web-2"),
        ("remove", "container", "p-store-1"),
        ("remove", "network", "p_db"),
    }


@settings(max_examples=60, deadline=None)
@given(docs(), docs())
def test_orphans_kept_lose_nothing(before: dict[str, Any], after: dict[str, Any]) -> None:
    old, _ = plan_for(before)
    live = simulate_apply(old)
    new = desired_of(after)
    services = set(after["services"])
    plan = make_plan(new, live, keep_orphans_of=services)
    orphans = {c.name for c in old.containers if c.service not in services}
    assert set(plan.orphans) == orphans
    removed = {s.name for s in plan.steps if s.op == "remove_container"}
    assert not removed & orphans
    # a network an orphan is on stays (replaced at most, the orphan reconnected)
    used = {e.network for c in old.containers if c.name in orphans for e in c.config.networks}
    dropped = {s.name for s in plan.steps if s.op == "remove_network"}
    created = {s.name for s in plan.steps if s.op == "create_network"}
    assert (used & dropped) <= created
    reconnected = {s.name for s in plan.steps if s.op == "reconnect"}
    for c in old.containers:
        if c.name in orphans and any(e.network in dropped for e in c.config.networks):
            assert c.name in reconnected
