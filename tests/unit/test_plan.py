"""plan = diff(desired, live), on in-memory topologies."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dockmesh.model.labels import LABEL_PROJECT
from dockmesh.model.topology import build_topology
from dockmesh.projectfile.facts import Facts
from dockmesh.projectfile.plan import make_plan, teardown_plan
from tests.unit.helpers import empty_topology, loaded, simulate_apply

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


def plan_for(tmp_path: Path, doc: dict[str, Any], live: Any = None) -> Any:
    desired = loaded(tmp_path, doc).check(Facts())
    return desired, make_plan(desired, live or empty_topology())


def test_everything_is_created_in_start_order(tmp_path: Path) -> None:
    _, plan = plan_for(tmp_path, DOC)
    assert [(c.action, c.kind, c.name) for c in plan.changes] == [
        ("create", "network", "p_front"),
        ("create", "network", "p_db"),
        ("create", "container", "p-store-1"),
        ("create", "container", "p-web-1"),
        ("create", "container", "p-web-2"),
    ]
    assert [s.op for s in plan.steps] == ["create_network"] * 2 + ["create_container"] * 3


def test_replica_substitution_and_labels(tmp_path: Path) -> None:
    desired, _ = plan_for(tmp_path, DOC)
    web2 = next(c for c in desired.containers if c.name == "p-web-2")
    assert web2.environment == {"ID": "2"}
    assert web2.labels[LABEL_PROJECT] == "p"
    assert web2.hostname == "p-web-2"


def test_applied_plan_leaves_nothing_to_do(tmp_path: Path) -> None:
    desired, _ = plan_for(tmp_path, DOC)
    assert make_plan(desired, simulate_apply(desired)).empty


def test_a_changed_service_replaces_only_its_containers(tmp_path: Path) -> None:
    desired, _ = plan_for(tmp_path, DOC)
    live = simulate_apply(desired)
    doc = copy.deepcopy(DOC)
    doc["services"]["web"]["environment"]["ID"] = "x{{replica}}"
    _, plan = plan_for(tmp_path, doc, live)
    assert {(c.action, c.name, c.reason) for c in plan.changes} == {
        ("replace", "p-web-1", "changed: environment"),
        ("replace", "p-web-2", "changed: environment"),
    }
    assert [s.op for s in plan.steps] == ["remove_container"] * 2 + ["create_container"] * 2


def test_a_changed_network_replaces_it_and_what_is_attached(tmp_path: Path) -> None:
    desired, _ = plan_for(tmp_path, DOC)
    live = simulate_apply(desired)
    doc = copy.deepcopy(DOC)
    doc["networks"]["db"]["internal"] = False
    _, plan = plan_for(tmp_path, doc, live)
    assert [(c.action, c.kind, c.name, c.reason) for c in plan.changes] == [
        ("replace", "network", "p_db", "changed: internal"),
        ("replace", "container", "p-store-1", "its network is replaced: p_db"),
    ]
    assert [s.op for s in plan.steps] == [
        "remove_container",
        "remove_network",
        "create_network",
        "create_container",
    ]


def test_removed_service_and_stopped_container(tmp_path: Path) -> None:
    desired, _ = plan_for(tmp_path, DOC)
    live = simulate_apply(desired)
    stopped = tuple(
        dataclasses.replace(c, state="exited") if c.name == "p-store-1" else c
        for c in live.containers
    )
    live = dataclasses.replace(live, containers=stopped)
    doc = copy.deepcopy(DOC)
    doc["services"]["web"]["replicas"] = 1
    _, plan = plan_for(tmp_path, doc, live)
    assert {(c.action, c.name, c.reason) for c in plan.changes} == {
        ("replace", "p-store-1", "container is exited"),
        ("remove", "p-web-2", "no longer in the file"),
    }


def test_rebuilt_image_replaces(tmp_path: Path) -> None:
    desired, _ = plan_for(tmp_path, DOC)
    plan = make_plan(desired, simulate_apply(desired), {"img": "sha256:new"})
    assert {c.reason for c in plan.changes} == {"image img was rebuilt"}


def test_other_projects_are_not_touched(tmp_path: Path) -> None:
    desired, _ = plan_for(tmp_path, DOC)
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


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(docs(), docs())
def test_plan_converges_from_any_previous_state(
    tmp_path: Path, before: dict[str, Any], after: dict[str, Any]
) -> None:
    old, _ = plan_for(tmp_path, before)
    live = simulate_apply(old)
    new, plan = plan_for(tmp_path, after, live)
    # every change names an object of the old or new state, once
    names_ = [(c.kind, c.name) for c in plan.changes]
    assert len(names_) == len(set(names_))
    # after applying, nothing is left to do
    assert make_plan(new, simulate_apply(new)).empty
    # containers start after what they depend on
    order = [s.name for s in plan.steps if s.op == "create_container"]
    for s in plan.steps:
        if s.container is not None:
            for dep in s.container.depends_on:
                deps = [n for n in order if n.startswith(f"g-{dep}-")]
                assert all(order.index(d) < order.index(s.name) for d in deps)


def test_merge_keeps_one_swarm_network() -> None:
    topo = build_topology([], 3)
    assert topo.to_json() == {"version": 3, "engines": [], "networks": [], "containers": []}
