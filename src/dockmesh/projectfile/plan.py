"""plan = diff(desired, live). Pure.

The plan is a list of changes (what the user reads) and an ordered list of steps (what apply
does): remove containers; disconnect other projects' containers from networks about to be
replaced; remove networks; create networks; reconnect those containers; create containers in
start order. Replacing is removing and creating again: Docker cannot change a network's IPAM
or a container's configuration in place.

The live state is compared with the file, not only with the labels `up` wrote: a container
disconnected or connected by hand, a changed alias or address, a network recreated by hand
without its containers, a stopped container, a rebuilt image — each is a change.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from dockmesh.model.catalog import META_PROJECT, META_SHORT_NAME, Instance, name_collisions
from dockmesh.model.config import ContainerConfig, EndpointConfig, NetworkConfig, VolumeConfig
from dockmesh.model.labels import (
    LABEL_HASH,
    LABEL_PROJECT,
    LABEL_SERVICE,
    decode_discovery,
    project_of,
    stamped_config,
)
from dockmesh.model.topology import Container, Network, Topology
from dockmesh.projectfile.desired import Desired, DesiredContainer, DesiredNetwork

Action = Literal["create", "remove", "replace"]
# policy: a topology file's policy: section
Kind = Literal["network", "container", "volume", "policy"]
Op = Literal[
    "stop_containers",  # never in a plan: what apply reports while a run's removals stop
    "remove_container",
    "disconnect",
    "remove_network",
    "create_network",
    "reconnect",
    "create_volume",
    "create_container",
    "remove_volume",
]


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
    op: Op
    name: str  # the object the step creates or removes (for reconnect: the container)
    network: NetworkConfig | None = None  # create_network: what to create (stamped)
    container: ContainerConfig | None = None  # create_container: what to create (stamped)
    live_id: str | None = None  # remove_*, disconnect, reconnect: the live object
    endpoint: EndpointConfig | None = None  # disconnect / reconnect: the other container's place
    volume: VolumeConfig | None = None  # create_volume: what to create
    # create_container: containers to be healthy first (depends_on: condition: service_healthy)
    wait_healthy: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Plan:
    project: str
    changes: tuple[Change, ...]
    steps: tuple[Step, ...]
    # What the plan does not change but the user should know (a service name other projects
    # on the engine register too).
    warnings: tuple[str, ...] = ()
    # The project's containers of services no longer in the file, left alone because removing
    # them was not asked for (Compose's orphans: `up --remove-orphans` removes them).
    orphans: tuple[str, ...] = ()

    @property
    def empty(self) -> bool:
        return not self.changes

    def to_json(self) -> dict[str, Any]:
        return {
            "project": self.project,
            "changes": [c.to_json() for c in self.changes],
            "warnings": list(self.warnings),
            "orphans": list(self.orphans),
        }


def _changed_fields(live_labels: Mapping[str, str], desired: Mapping[str, Any]) -> list[str]:
    old = stamped_config(live_labels)
    if not isinstance(old, dict):
        return []
    keys = sorted(set(old) | set(desired))
    return [k for k in keys if old.get(k) != desired.get(k)]


def _network_reason(live: Network, want: DesiredNetwork) -> str | None:
    if live.labels.get(LABEL_HASH) != want.hash:
        fields = _changed_fields(live.labels, want.config.to_json())
        return "changed: " + ", ".join(fields) if fields else "configuration changed"
    # The labels match; does the network itself? (A hand-made copy carrying our labels.)
    cfg = want.config
    if live.driver != cfg.driver:
        return f"driver is {live.driver}, the file says {cfg.driver}"
    if live.internal != cfg.internal:
        return "internal differs from the file"
    if cfg.ipam:
        have = sorted(p.subnet for p in live.ipam)
        wanted = sorted(p.subnet for p in cfg.ipam)
        if have != wanted:
            return f"subnet is {', '.join(have) or 'none'}, the file says {', '.join(wanted)}"
    return None


def _implicit_aliases(c: Container) -> set[str]:
    """What the engine adds to every endpoint's aliases on its own."""
    return {c.id[:12], c.hostname, c.name}


def _attachment_reason(
    live: Container, want: ContainerConfig, live_nets: Mapping[str, Network]
) -> str | None:
    if want.network_mode is not None:
        return None
    # No networks in the file: the engine's default bridge, as with `docker run`.
    wanted = {e.network: e for e in want.networks or (EndpointConfig("bridge"),)}
    have = {a.network: a for a in live.attachments}
    missing = sorted(set(wanted) - set(have))
    if missing:
        return "not connected to " + ", ".join(missing) + " (disconnected by hand?)"
    extra = sorted(set(have) - set(wanted))
    if extra:
        return "connected by hand to " + ", ".join(extra)
    implicit = _implicit_aliases(live)
    for name, e in sorted(wanted.items()):
        a = have[name]
        net = live_nets.get(name)
        if net is not None and a.network_id and a.network_id != net.id:
            return f"its network {name} was recreated"
        aliases = {x for x in a.aliases if x not in implicit}
        if aliases != set(e.aliases) - implicit:
            shown = ", ".join(sorted(aliases)) or "none"
            return f"aliases on {name} are {shown}, the file says {', '.join(e.aliases) or 'none'}"
        if e.ipv4_address and live.running and a.ipv4 != e.ipv4_address:
            return f"address on {name} is {a.ipv4}, the file says {e.ipv4_address}"
    return None


def _container_reason(
    live: Container,
    want: DesiredContainer,
    touched_networks: Mapping[str, str],
    image_ids: Mapping[str, str],
    live_nets: Mapping[str, Network],
) -> str | None:
    if live.labels.get(LABEL_HASH) != want.hash:
        fields = _changed_fields(live.labels, want.config.to_json())
        if fields:
            return "changed: " + ", ".join(fields)
    for e in want.config.networks:
        if e.network in touched_networks:
            return f"its network {e.network} is {touched_networks[e.network]}"
    if live.labels.get(LABEL_HASH) != want.hash:
        return "configuration changed"
    current = image_ids.get(want.config.image)
    if current and live.image_id and current != live.image_id:
        return f"image {want.config.image} was rebuilt"
    if not live.running:
        return f"container is {live.state}"
    return _attachment_reason(live, want.config, live_nets)


def _owned(labels: Mapping[str, str], project: str) -> bool:
    return labels.get(LABEL_PROJECT) == project


def _foreign_on(
    live: Topology, network: Network, project: str, leaving: set[str]
) -> list[tuple[Container, EndpointConfig]]:
    """Containers on `network` that are not this project's (or that this plan keeps)."""
    out = []
    for c in live.containers:
        if c.engine != network.engine or c.name in leaving:
            continue
        a = c.attachment(network.id)
        if a is None:
            continue
        implicit = _implicit_aliases(c)
        aliases = tuple(x for x in a.aliases if x not in implicit)
        out.append((c, EndpointConfig(network.name, aliases)))
    return sorted(out, key=lambda x: x[0].name)


def make_plan(
    desired: Desired,
    live: Topology,
    image_ids: Mapping[str, str] | None = None,
    engine: str | None = None,
    keep_orphans_of: Collection[str] | None = None,
    volumes: Mapping[str, Mapping[str, str]] | None = None,
) -> Plan:
    """Diff on one engine (the first of `live` unless named). Given the file's services
    (`keep_orphans_of`), the containers of services it no longer has stay (`Plan.orphans`),
    with the networks they are on; a container of a service still in the file (a replica
    scaled away, down to none) goes. `volumes`: the engine's volumes (name → labels); a
    named volume the file declares is created when missing and otherwise kept as it is, data
    and all (only `down --volumes` removes it); one another project made is used as it is,
    with a warning."""
    image_ids = image_ids or {}
    engine = engine or (live.engines[0].name if live.engines else "local")
    project = desired.project
    engine_nets = {n.name: n for n in live.networks if n.engine == engine or engine in n.engines}
    live_nets = {name: n for name, n in engine_nets.items() if _owned(n.labels, project)}
    live_ctrs = {
        c.name: c for c in live.containers if c.engine == engine and _owned(c.labels, project)
    }

    changes: list[Change] = []
    remove_c: list[Step] = []
    disconnect: list[Step] = []
    remove_n: list[Step] = []
    create_n: list[Step] = []
    reconnect: list[Step] = []
    create_c: list[Step] = []

    # Which of the project's containers go (removed or replaced): decided first, so that a
    # network replacement knows which endpoints are someone else's.
    wanted_ctrs = {c.name: c for c in desired.containers}
    touched: dict[str, str] = {}  # network name → "replaced" / "created"
    net_reasons: dict[str, str] = {}
    for want in desired.networks:
        have = live_nets.get(want.name)
        if have is None:
            touched[want.name] = "created"
            continue
        why = _network_reason(have, want)
        if why:
            touched[want.name] = "replaced"
            net_reasons[want.name] = why

    ctr_changes: list[Change] = []
    leaving: set[str] = set()
    for want_c in desired.containers:
        have_c = live_ctrs.get(want_c.name)
        if have_c is None:
            ctr_changes.append(Change("create", "container", want_c.name, "not on the engine"))
            create_c.append(
                Step(
                    "create_container",
                    want_c.name,
                    container=want_c.stamped(),
                    wait_healthy=want_c.wait_for,
                )
            )
            continue
        why = _container_reason(have_c, want_c, touched, image_ids, engine_nets)
        if why:
            leaving.add(want_c.name)
            ctr_changes.append(Change("replace", "container", want_c.name, why))
            remove_c.append(Step("remove_container", want_c.name, live_id=have_c.id))
            create_c.append(
                Step(
                    "create_container",
                    want_c.name,
                    container=want_c.stamped(),
                    wait_healthy=want_c.wait_for,
                )
            )
    orphans: list[str] = []
    for name, have_c in sorted(live_ctrs.items()):
        if name not in wanted_ctrs:
            service = have_c.labels.get(LABEL_SERVICE)
            if keep_orphans_of is not None and service not in keep_orphans_of:
                orphans.append(name)
                continue
            leaving.add(name)
            ctr_changes.append(Change("remove", "container", name, "no longer in the file"))
            remove_c.append(Step("remove_container", name, live_id=have_c.id))

    for want in desired.networks:
        have = live_nets.get(want.name)
        if have is None:
            if want.name in engine_nets:  # same name, not ours: validation refuses this
                continue
            changes.append(Change("create", "network", want.name, "not on the engine"))
            create_n.append(Step("create_network", want.name, network=want.stamped()))
            continue
        if want.name not in net_reasons:
            continue
        why = net_reasons[want.name]
        others = _foreign_on(live, have, project, leaving)
        if others:
            why += "; reconnects " + ", ".join(c.name for c, _ in others) + " afterwards"
        changes.append(Change("replace", "network", want.name, why))
        for c, ep in others:
            disconnect.append(Step("disconnect", c.name, live_id=c.id, endpoint=ep))
            reconnect.append(Step("reconnect", c.name, live_id=c.id, endpoint=ep))
        remove_n.append(Step("remove_network", want.name, live_id=have.id))
        create_n.append(Step("create_network", want.name, network=want.stamped()))
    wanted_nets = {n.name for n in desired.networks}
    for name, have in sorted(live_nets.items()):
        if name in wanted_nets:
            continue
        if any(have_c.attachment(have.id) for n, have_c in live_ctrs.items() if n in orphans):
            continue  # an orphan kept is still on it
        why = "no longer in the file"
        others = _foreign_on(live, have, project, leaving)
        if others:
            why += "; disconnects " + ", ".join(c.name for c, _ in others)
        changes.append(Change("remove", "network", name, why))
        for c, ep in others:
            disconnect.append(Step("disconnect", c.name, live_id=c.id, endpoint=ep))
        remove_n.append(Step("remove_network", name, live_id=have.id))

    create_v: list[Step] = []
    foreign: list[str] = []
    for vol in desired.volumes:
        have_v = (volumes or {}).get(vol.name)
        if have_v is None:
            changes.append(Change("create", "volume", vol.name, "not on the engine"))
            create_v.append(Step("create_volume", vol.name, volume=vol))
        elif not _owned(have_v, project):
            # As Compose does: used as it is, data and all, and said.
            foreign.append(
                f"volume {vol.name} is on the engine already and not of project {project}: "
                "its containers use it as it is, with its data (down --volumes leaves it)"
            )
    steps = (*remove_c, *disconnect, *remove_n, *create_n, *create_v, *reconnect, *create_c)
    warnings = (*foreign, *name_warnings(desired, live, engine))
    return Plan(project, (*changes, *ctr_changes), steps, warnings, tuple(orphans))


def _registered_as(name: str, labels: Mapping[str, str], project: str | None) -> Instance | None:
    """What a container with these labels registers as in the catalog, as far as names go."""
    d, _ = decode_discovery(labels)
    if d is None:
        return None
    meta = {META_PROJECT: project} if project else {}
    if d.short_name:
        meta[META_SHORT_NAME] = "true"
    return Instance(id=name, service=d.service, address="", port=0, meta=meta)


def name_warnings(desired: Desired, live: Topology, engine: str) -> tuple[str, ...]:
    """The project's catalog names other projects' running containers on the engine have
    too: the short name is then shared (`model.catalog.name_collisions`), never merged."""
    project = desired.project
    mine = [
        i
        for c in desired.containers
        if (i := _registered_as(c.name, c.config.labels, project)) is not None
    ]
    names = {i.service for i in mine}
    theirs = [
        i
        for c in live.containers
        if c.engine == engine and c.running and project_of(c.labels) != project
        if (i := _registered_as(c.name, c.labels, project_of(c.labels))) is not None
        and i.service in names
    ]
    return tuple(c.warning() for c in name_collisions([*mine, *theirs]) if project in c.projects)


def teardown_plan(
    project: str,
    live: Topology,
    engine: str | None = None,
    volumes: Mapping[str, Mapping[str, str]] | None = None,
) -> Plan:
    """Everything the project labelled, removed: containers first, then networks (other
    projects' containers still on them are disconnected first, and named), then — only
    when `volumes` are given (`down --volumes`) — those of them the project labelled."""
    engine = engine or (live.engines[0].name if live.engines else "local")
    ctrs = sorted(
        (c for c in live.containers if c.engine == engine and _owned(c.labels, project)),
        key=lambda c: c.name,
    )
    nets = sorted(
        (n for n in live.networks if n.engine == engine and _owned(n.labels, project)),
        key=lambda n: n.name,
    )
    leaving = {c.name for c in ctrs}
    changes = [Change("remove", "container", c.name, "down") for c in ctrs]
    steps = [Step("remove_container", c.name, live_id=c.id) for c in ctrs]
    removals: list[Step] = []
    for n in nets:
        others = _foreign_on(live, n, project, leaving)
        why = "down"
        if others:
            why += "; disconnects " + ", ".join(c.name for c, _ in others)
        changes.append(Change("remove", "network", n.name, why))
        steps += [Step("disconnect", c.name, live_id=c.id, endpoint=ep) for c, ep in others]
        removals.append(Step("remove_network", n.name, live_id=n.id))
    for name, labels in sorted((volumes or {}).items()):
        if _owned(labels, project):
            changes.append(Change("remove", "volume", name, "down --volumes"))
            removals.append(Step("remove_volume", name))
    return Plan(project, tuple(changes), (*steps, *removals))
