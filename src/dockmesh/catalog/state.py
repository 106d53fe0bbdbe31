"""The catalog: instances, their checks, and the KV store, with Consul's raft-like index.

Pure and single-threaded: the agent owns one and changes it only through these methods, on
its event loop. Time comes in as `now` (seconds of an injected clock).

Theory of operation
-------------------
- `index` grows by one on every change that a reader could see, never otherwise; a change
  records the index on the *topics* it touches (`services`, `service:<name>`, `checks`,
  `kv`, `nodes`). A blocking query on a topic waits until that topic's index passes the one
  the client holds; a client never misses a change and never wakes for an unrelated one.
- Instances come from two sources. Container-derived instances are replaced as a whole per
  engine by `sync_containers` (they are rebuilt from the engine at start, so they are never
  persisted); API-registered instances come and go one by one and are what a `Store` keeps.
- An instance is passing when all its checks are (`model.catalog.worst`); an instance with
  no checks is passing, as in Consul.
- Every mutation returns whether it changed anything: the agent persists and notifies only then.

Names scoped per project
------------------------
A catalog service is named as its instances say (`api`: what a Consul client asks for), and
each instance may belong to a project (`Instance.project`, from `Meta.project`). Every read by
name (`entries`, `service_checks`; HTTP and DNS alike) goes through `members`:
- `<service>.<project>` is that project's instances of `<service>` and nothing else, while
  it has any: a service literally named so (any container's label, any registration could
  take that name) never stands in for them — it is reported (`shadowed`) and answers only
  while the project has no such instance;
- the short name `<service>` is all its instances while at most one project has it (instances
  of no project — hand-labelled containers, registrations without `Meta.project` — always
  belong to it); once two projects have it, it is a *collision* (`collisions`): the short name
  keeps the instances of no project and those of the one project that claims it
  (`Instance.claims_short_name`, a topology file's explicit `discovery.name`), if exactly one
  does, and never merges the projects' instances. The agent reports every collision.
A change of an instance touches its service's topic and its scoped name's, so a blocking
query on either wakes.

One instance per ID, never shadowed
-----------------------------------
A service ID is held by a container or by a registration through the API, never both: the
first holds it. A registration over a container's ID is refused (`register` raises `IdTaken`;
the API answers 400 before); a container whose ID a registration holds is not registered and
is listed in `refusals()` with the reason (the agent's warnings), and takes its place as soon
as that registration goes.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

from dockmesh.catalog import checks as health
from dockmesh.model.catalog import (
    CheckSpec,
    CheckState,
    Collision,
    Instance,
    KVEntry,
    Status,
    name_collisions,
    scoped_name,
    worst,
)

# What a container refused for its ID waits with: its instance and checks.
_Waiting = tuple[Instance, tuple[CheckSpec, ...]]

TOPIC_SERVICES = "services"
TOPIC_CHECKS = "checks"
TOPIC_KV = "kv"
TOPIC_NODES = "nodes"


def service_topic(name: str) -> str:
    return f"service:{name}"


class IdTaken(ValueError):
    """A registration through the API over the ID a container's instance holds."""


def _short_members(members: Iterable[Instance]) -> list[Instance]:
    """The instances the short name answers (see the module's theory of operation)."""
    members = list(members)
    projects = {i.project for i in members} - {None}
    if len(projects) <= 1:
        return members
    claimers = {i.project for i in members if i.project is not None and i.claims_short_name}
    owner = claimers.pop() if len(claimers) == 1 else None
    return [i for i in members if i.project is None or i.project == owner]


@dataclass(frozen=True, slots=True)
class Entry:
    """An instance with its checks and their aggregate status: one row of
    `/v1/health/service/<name>`."""

    instance: Instance
    checks: tuple[CheckState, ...]

    @property
    def status(self) -> Status:
        return worst([c.status for c in self.checks])


class Catalog:
    """The catalog's whole state: instances (by id and by service), their checks, the KV
    store, and the index (see the module's theory of operation). Invariants: `index` only
    grows, by one per change a reader could see, and each topic's index is the index of its
    last change; `_by_service` and `_checks_by_instance` index exactly what `_instances` and
    `_checks` hold; every mutation returns whether it changed anything. Not thread-safe: it
    has one owner (`LiveCatalog`, on the agent's event loop)."""

    def __init__(self, node: str = "dockmesh") -> None:
        self.node = node
        self.index = 1
        self._instances: dict[str, Instance] = {}
        self._checks: dict[str, CheckState] = {}
        self._checks_by_instance: dict[str, list[str]] = {}
        self._by_service: dict[str, dict[str, Instance]] = {}
        self._kv: dict[str, KVEntry] = {}
        self._topics: dict[str, int] = {}
        # Containers refused because a registration through the API holds their ID.
        self._refused: dict[str, _Waiting] = {}

    # --- indexes ----------------------------------------------------------------------

    def topic_index(self, topic: str) -> int:
        """The index of the last change on `topic` (at least 1, as Consul never returns 0)."""
        return self._topics.get(topic, 1)

    def _touch(self, *topics: str) -> None:
        self.index += 1
        for t in topics:
            self._topics[t] = self.index

    # --- reading ----------------------------------------------------------------------

    def instance(self, instance_id: str) -> Instance | None:
        return self._instances.get(instance_id)

    def instances(self) -> list[Instance]:
        return sorted(self._instances.values(), key=lambda i: (i.service, i.id))

    def check(self, check_id: str) -> CheckState | None:
        return self._checks.get(check_id)

    def checks(self) -> list[CheckState]:
        return [self._checks[k] for k in sorted(self._checks)]

    def checks_of(self, instance_id: str) -> tuple[CheckState, ...]:
        return tuple(self._checks[c] for c in self._checks_by_instance.get(instance_id, ()))

    def services(self) -> dict[str, list[str]]:
        """Service name → the union of its instances' tags (`/v1/catalog/services`)."""
        out: dict[str, list[str]] = {}
        for name in sorted(self._by_service):
            tags = {t for i in self._by_service[name].values() for t in i.tags}
            out[name] = sorted(tags)
        return out

    def members(self, name: str) -> list[Instance]:
        """The instances a service name answers, sorted by id: a catalog service's (its short
        name's: never two projects' at once), or `<service>.<project>`'s."""
        found = self._scoped(name)
        if not found:
            found = _short_members(self._by_service.get(name, {}).values())
        return sorted(found, key=lambda i: i.id)

    def _scoped(self, name: str) -> list[Instance]:
        """`<service>.<project>`'s instances: that project's of that service (none: not a
        scoped name, or the project has none)."""
        service, dot, project = name.rpartition(".")
        members = self._by_service.get(service, {}) if dot else {}
        return [i for i in members.values() if i.project == project]

    def shadowed(self) -> list[str]:
        """Why each service named as a project's scoped name (`api.shop` beside project
        shop's `api`) is not what that name answers, sorted: the project's instances are."""
        out = []
        for name in sorted(self._by_service):
            service, _, project = name.rpartition(".")
            if not self._scoped(name):
                continue
            out.append(
                f"service name {name!r} is project {project}'s scoped name for its service "
                f"{service!r}: the name answers project {project}'s instances, not "
                + ", ".join(sorted(self._by_service[name]))
                + " (give that service another name)"
            )
        return out

    def service_names(self) -> list[str]:
        """Every name `members` answers: each service's, and `<service>.<project>` for each
        project that has instances of it."""
        out = set(self._by_service)
        for name, members in self._by_service.items():
            out.update(scoped_name(name, i.project) for i in members.values() if i.project)
        return sorted(out)

    def collisions(self) -> list[Collision]:
        """Every short name two or more projects have, sorted."""
        return name_collisions(self._instances.values())

    def refusals(self) -> list[str]:
        """Why each container waiting for its ID is not in the catalog, sorted."""
        return [
            f"{inst.container or inst.id}: not registered: its service ID {iid!r} is held by a "
            "registration through the API (PUT /v1/agent/service/register); it registers once "
            f"that goes (PUT /v1/agent/service/deregister/{iid})"
            for iid, (inst, _) in sorted(self._refused.items())
        ]

    def entries(self, service: str, tag: str | None = None, passing: bool = False) -> list[Entry]:
        """`/v1/health/service/<name>[?tag=][&passing]`, sorted by instance id (`members`)."""
        found = []
        for inst in self.members(service):
            if tag is not None and tag not in inst.tags:
                continue
            e = Entry(inst, self.checks_of(inst.id))
            if passing and e.status != "passing":
                continue
            found.append(e)
        return found

    def entries_any_case(self, names: Sequence[str], passing: bool = False) -> list[Entry]:
        """What one DNS name answers, given the catalog's names that spell it (`service_names`
        differing in case only: DNS does not tell `API` from `api`). Their instances together,
        as Consul's case-blind names are one service, but never two projects': a project's
        scoped name beats a service literally spelled so in another case (`API.shop`), and of
        projects spelled alike (`shop`, a label's `Shop`) the lower-case one answers, as
        Compose and dockmesh name projects."""
        found = {i.id: i for n in names for i in self._scoped(n)}
        if found:
            projects = {i.project for i in found.values()}
            if len(projects) > 1:
                found = {k: i for k, i in found.items() if i.project == (i.project or "").lower()}
        else:
            found = {
                i.id: i
                for i in _short_members(
                    i for n in names for i in self._by_service.get(n, {}).values()
                )
            }
        out = []
        for inst in sorted(found.values(), key=lambda i: i.id):
            e = Entry(inst, self.checks_of(inst.id))
            if not passing or e.status == "passing":
                out.append(e)
        return out

    def service_checks(self, service: str) -> list[CheckState]:
        return [c for inst in self.members(service) for c in self.checks_of(inst.id)]

    # --- instances --------------------------------------------------------------------

    def register(self, instance: Instance, checks: Sequence[CheckSpec], now: float) -> bool:
        """Adds or replaces an instance and its checks. A check whose spec did not change
        keeps its state (a re-registration does not reset health); a new one starts in its
        initial status. Raises `IdTaken` for an instance over another source's (a container's
        ID is never taken over; `sync_containers` keeps a container off a registration's)."""
        old = self._instances.get(instance.id)
        if old is not None and old.source != instance.source:
            raise IdTaken(
                f"service ID {instance.id!r} is the registration of "
                + (f"container {old.container!r}" if old.container else "another source")
            )
        old_checks = {c: self._checks[c] for c in self._checks_by_instance.get(instance.id, ())}
        new_ids = [c.id for c in checks]
        if (
            old == instance
            and list(old_checks) == new_ids
            and all(old_checks[c.id].spec == c for c in checks)
        ):
            return False
        topics = {TOPIC_SERVICES, TOPIC_CHECKS, *_topics_of(instance)}
        if old is not None:
            topics.update(_topics_of(old))
            self._by_service.get(old.service, {}).pop(old.id, None)
            if not self._by_service.get(old.service):
                self._by_service.pop(old.service, None)
        for cid in old_checks:
            if cid not in new_ids:
                del self._checks[cid]
        self._instances[instance.id] = instance
        self._by_service.setdefault(instance.service, {})[instance.id] = instance
        self._checks_by_instance[instance.id] = new_ids
        self._touch(*topics)
        for spec in checks:
            prev = old_checks.get(spec.id)
            if prev is not None and prev.spec == spec:
                continue
            self._checks[spec.id] = replace(health.initial(spec, now), modify_index=self.index)
        return True

    def deregister(self, instance_id: str, now: float = 0.0) -> bool:
        """Removes an instance; a container waiting for its ID takes it (registered at
        `now`)."""
        inst = self._instances.pop(instance_id, None)
        if inst is None:
            return False
        for cid in self._checks_by_instance.pop(instance_id, ()):
            self._checks.pop(cid, None)
        members = self._by_service.get(inst.service, {})
        members.pop(instance_id, None)
        if not members:
            self._by_service.pop(inst.service, None)
        self._touch(TOPIC_SERVICES, TOPIC_CHECKS, *_topics_of(inst))
        waiting = self._refused.pop(instance_id, None)
        if waiting is not None:
            self.register(waiting[0], waiting[1], now)
        return True

    def sync_containers(
        self,
        engine: str,
        wanted: Iterable[tuple[Instance, Sequence[CheckSpec]]],
        now: float,
    ) -> bool:
        """Makes the container-derived instances of `engine` exactly `wanted`."""
        wanted = list(wanted)
        keep = {inst.id for inst, _ in wanted}
        changed = False
        for inst in list(self._instances.values()):
            if inst.source == "container" and inst.engine == engine and inst.id not in keep:
                changed |= self.deregister(inst.id, now)
        for iid, (inst, _) in list(self._refused.items()):
            if inst.engine == engine:
                del self._refused[iid]
        for inst, checks in wanted:
            current = self._instances.get(inst.id)
            if current is not None and current.source != "container":
                # The registration came first and holds the ID: this container waits, said.
                self._refused[inst.id] = (inst, tuple(checks))
                continue
            changed |= self.register(inst, checks, now)
        return changed

    # --- checks -----------------------------------------------------------------------

    def _set_check(self, new: CheckState) -> bool:
        old = self._checks.get(new.spec.id)
        if old is None:
            return False
        if (old.status, old.output) == (new.status, new.output):
            # Counters and deadlines move without a reader seeing a change.
            self._checks[new.spec.id] = replace(new, modify_index=old.modify_index)
            return False
        topics = [TOPIC_CHECKS]
        if new.spec.service_id is not None and new.spec.service_id in self._instances:
            topics += _topics_of(self._instances[new.spec.service_id])
        self._touch(*topics)
        self._checks[new.spec.id] = replace(new, modify_index=self.index)
        return True

    def observe(self, check_id: str, result: Status, output: str, now: float) -> bool:
        """A probe's result, through the check's rise/fall thresholds."""
        state = self._checks.get(check_id)
        if state is None:
            return False
        return self._set_check(health.observe(state, result, output, now))

    def update_check(self, check_id: str, status: Status, output: str, now: float) -> bool:
        """A status set from outside (TTL pass/warn/fail, Docker's health): no thresholds."""
        state = self._checks.get(check_id)
        if state is None:
            return False
        return self._set_check(health.update_ttl(state, status, output, now))

    def tick(self, now: float) -> tuple[bool, list[str]]:
        """Expires TTLs and deregisters instances critical for longer than their
        DeregisterCriticalServiceAfter. Returns (changed, deregistered instance ids)."""
        changed = False
        for state in list(self._checks.values()):
            changed |= self._set_check(health.expire(state, now))
        gone = sorted(
            {
                s.spec.service_id
                for s in self._checks.values()
                if s.spec.service_id is not None and health.should_deregister(s, now)
            }
        )
        for instance_id in gone:
            changed |= self.deregister(instance_id, now)
        return changed, gone

    def next_deadline(self) -> float | None:
        """The earliest time `tick` could change something (a TTL or a deregistration)."""
        times = [s.expires_at for s in self._checks.values() if s.expires_at is not None]
        # Only a service's check deregisters anything (`tick`): a node check's timer would be
        # a deadline in the past for ever.
        times += [
            s.critical_since + s.spec.deregister_critical_after_s
            for s in self._checks.values()
            if s.critical_since is not None
            and s.spec.deregister_critical_after_s is not None
            and s.spec.service_id is not None
        ]
        return min(times) if times else None

    # --- KV ---------------------------------------------------------------------------

    def kv_get(self, key: str) -> KVEntry | None:
        return self._kv.get(key)

    def kv_list(self, prefix: str) -> list[KVEntry]:
        return [self._kv[k] for k in sorted(self._kv) if k.startswith(prefix)]

    def kv_keys(self, prefix: str, separator: str | None = None) -> list[str]:
        """Keys under `prefix`; with a separator, rolled up to the next separator as Consul's
        `?keys&separator=/` does."""
        out: list[str] = []
        for k in sorted(self._kv):
            if not k.startswith(prefix):
                continue
            if separator:
                cut = k.find(separator, len(prefix))
                if cut >= 0:
                    k = k[: cut + len(separator)]
            if not out or out[-1] != k:
                out.append(k)
        return out

    def kv_index(self, key: str, recurse: bool = False) -> int:
        """X-Consul-Index of a KV read: the newest modify index of what it returns, or the
        KV table's index when nothing matches."""
        entries = self.kv_list(key) if recurse else [e for e in [self._kv.get(key)] if e]
        if entries:
            return max(e.modify_index for e in entries)
        return self.topic_index(TOPIC_KV)

    def kv_put(self, key: str, value: bytes, flags: int = 0, cas: int | None = None) -> bool:
        """Consul's semantics: with `cas`, 0 writes only a new key, N only over ModifyIndex N.
        Returns whether the write happened."""
        old = self._kv.get(key)
        if cas is not None and (old.modify_index if old else 0) != cas:
            return False
        self._touch(TOPIC_KV)
        create = old.create_index if old else self.index
        self._kv[key] = KVEntry(key, value, flags, create, self.index, old.lock_index if old else 0)
        return True

    def kv_delete(self, key: str, recurse: bool = False, cas: int | None = None) -> bool:
        if recurse:
            doomed = [k for k in self._kv if k.startswith(key)]
        else:
            old = self._kv.get(key)
            if cas is not None and (old.modify_index if old else 0) != cas:
                return False
            doomed = [key] if old else []
        if not doomed:
            return True  # deleting nothing succeeds, as in Consul
        for k in doomed:
            del self._kv[k]
        self._touch(TOPIC_KV)
        return True

    def kv_restore(self, entries: Iterable[KVEntry]) -> None:
        """Loads persisted entries (at start): indexes continue above the highest seen."""
        for e in entries:
            self._kv[e.key] = e
            self.index = max(self.index, e.modify_index + 1)
        self._topics[TOPIC_KV] = self.index

    # --- what a store keeps -------------------------------------------------------------

    def api_registrations(self) -> list[tuple[Instance, list[CheckSpec]]]:
        return [
            (i, [self._checks[c].spec for c in self._checks_by_instance.get(i.id, ())])
            for i in self.instances()
            if i.source == "api"
        ]


def _topics_of(inst: Instance) -> list[str]:
    """The topics a change of `inst` touches beside `services`/`checks`: its service's and,
    for a project's instance, its scoped name's."""
    topics = [service_topic(inst.service)]
    if inst.project is not None:
        topics.append(service_topic(scoped_name(inst.service, inst.project)))
    return topics


def ensure_index_above(catalog: Catalog, floor: int) -> None:
    """After a restart, indexes must not go back below what clients saw before."""
    if catalog.index < floor:
        catalog.index = floor
