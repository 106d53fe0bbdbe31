"""plan = diff(desired, live). Pure.

The plan is a list of changes (what the user reads) and an ordered list of steps (what `apply`
does): remove containers, then networks, then create networks, then containers in start
order. Replacing is removing and creating again: Docker cannot change a network's IPAM or a
container's configuration in place.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from dockmesh.model.labels import LABEL_CONFIG, LABEL_HASH, LABEL_PROJECT
from dockmesh.model.topology import Container, Network, Topology
from dockmesh.projectfile.desired import (
    Desired,
    DesiredContainer,
    DesiredNetwork,
)

Action = Literal["create", "remove", "replace"]
Kind = Literal["network", "container"]


@dataclass(frozen=True, slots=True)
class Change:
    action: Action
    kind: Kind
    name: str
    reason: str

    def to_json(self) -> dict[str, str]:
        return {"action": self.action, "kind": self.kind, "name": self.name, "reason": self.reason}


@dataclass(frozen=True, slots=True)
class Step:
    op: Literal["remove_container", "remove_network", "create_network", "create_container"]
    name: str
    network: DesiredNetwork | None = None
    container: DesiredContainer | None = None
    live_id: str | None = None  # what to remove


@dataclass(frozen=True, slots=True)
class Plan:
    project: str
    changes: tuple[Change, ...]
    steps: tuple[Step, ...]

    @property
    def empty(self) -> bool:
        return not self.changes

    def to_json(self) -> dict[str, Any]:
        return {"project": self.project, "changes": [c.to_json() for c in self.changes]}


def _changed_fields(live_labels: Mapping[str, str], desired: Mapping[str, Any]) -> list[str]:
    try:
        old = json.loads(live_labels.get(LABEL_CONFIG, ""))
    except ValueError:
        return []
    if not isinstance(old, dict):
        return []
    keys = sorted(set(old) | set(desired))
    return [k for k in keys if k != "network_hashes" and old.get(k) != desired.get(k)]


def _network_reason(live: Network, want: DesiredNetwork) -> str | None:
    if live.labels.get(LABEL_HASH) == want.hash:
        return None
    fields = _changed_fields(live.labels, want.config)
    return "changed: " + ", ".join(fields) if fields else "configuration changed"


def _container_reason(
    live: Container,
    want: DesiredContainer,
    replaced_networks: set[str],
    image_ids: Mapping[str, str],
) -> str | None:
    if live.labels.get(LABEL_HASH) != want.hash:
        fields = _changed_fields(live.labels, want.config)
        if fields:
            return "changed: " + ", ".join(fields)
        nets = sorted(replaced_networks & {a.network for a in want.networks})
        if nets:
            return "its network is replaced: " + ", ".join(nets)
        return "configuration changed"
    current = image_ids.get(want.image)
    if current and live.image_id and current != live.image_id:
        return f"image {want.image} was rebuilt"
    if not live.running:
        return f"container is {live.state}"
    return None


def make_plan(
    desired: Desired,
    live: Topology,
    image_ids: Mapping[str, str] | None = None,
    engine: str | None = None,
) -> Plan:
    """Diff on one engine (the first of `live` unless named)."""
    image_ids = image_ids or {}
    engine = engine or (live.engines[0].name if live.engines else "local")
    project = desired.project
    live_nets = {
        n.name: n
        for n in live.networks
        if n.engine == engine and n.labels.get(LABEL_PROJECT) == project
    }
    live_ctrs = {
        c.name: c
        for c in live.containers
        if c.engine == engine and c.labels.get(LABEL_PROJECT) == project
    }

    changes: list[Change] = []
    remove_c: list[Step] = []
    remove_n: list[Step] = []
    create_n: list[Step] = []
    create_c: list[Step] = []

    replaced_nets: set[str] = set()
    for want in desired.networks:
        have = live_nets.get(want.name)
        if have is None:
            changes.append(Change("create", "network", want.name, "not on the engine"))
            create_n.append(Step("create_network", want.name, network=want))
            continue
        why = _network_reason(have, want)
        if why:
            replaced_nets.add(want.name)
            changes.append(Change("replace", "network", want.name, why))
            remove_n.append(Step("remove_network", want.name, live_id=have.id))
            create_n.append(Step("create_network", want.name, network=want))
    wanted_nets = {n.name for n in desired.networks}
    for name, have in sorted(live_nets.items()):
        if name not in wanted_nets:
            changes.append(Change("remove", "network", name, "no longer in the file"))
            remove_n.append(Step("remove_network", name, live_id=have.id))

    container_changes: list[Change] = []
    for want_c in desired.containers:
        have_c = live_ctrs.get(want_c.name)
        if have_c is None:
            container_changes.append(
                Change("create", "container", want_c.name, "not on the engine")
            )
            create_c.append(Step("create_container", want_c.name, container=want_c))
            continue
        why = _container_reason(have_c, want_c, replaced_nets, image_ids)
        if why:
            container_changes.append(Change("replace", "container", want_c.name, why))
            remove_c.append(Step("remove_container", want_c.name, live_id=have_c.id))
            create_c.append(Step("create_container", want_c.name, container=want_c))
    wanted_ctrs = {c.name for c in desired.containers}
    for name, have_c in sorted(live_ctrs.items()):
        if name not in wanted_ctrs:
            container_changes.append(Change("remove", "container", name, "no longer in the file"))
            remove_c.append(Step("remove_container", name, live_id=have_c.id))

    steps = (*remove_c, *remove_n, *create_n, *create_c)
    return Plan(project, (*changes, *container_changes), steps)


def teardown_plan(project: str, live: Topology, engine: str | None = None) -> Plan:
    """Everything the project labelled, removed: containers first, then networks."""
    engine = engine or (live.engines[0].name if live.engines else "local")
    ctrs = sorted(
        c.name
        for c in live.containers
        if c.engine == engine and c.labels.get(LABEL_PROJECT) == project
    )
    nets = sorted(
        n.name
        for n in live.networks
        if n.engine == engine and n.labels.get(LABEL_PROJECT) == project
    )
    by_c = {c.name: c.id for c in live.containers if c.engine == engine}
    by_n = {n.name: n.id for n in live.networks if n.engine == engine}
    changes = [Change("remove", "container", n, "down") for n in ctrs]
    changes += [Change("remove", "network", n, "down") for n in nets]
    steps = [Step("remove_container", n, live_id=by_c[n]) for n in ctrs]
    steps += [Step("remove_network", n, live_id=by_n[n]) for n in nets]
    return Plan(project, tuple(changes), tuple(steps))
