"""The catalog's values: service instances, their checks, KV entries. Pure and immutable.

Names follow Consul's where a Consul client sees them (an *instance* is what Consul calls a
service registration: `ID`, `Service`, `Address`, `Port`, `Tags`, `Meta`, `Weights`).

An instance's project is its `Meta.project` (a container's `dockmesh.project` or Compose
project label puts it there; a registration through the API may set it too), and
`Meta.short-name = "true"` claims the short service name where projects share it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

Status = Literal["passing", "warning", "critical", "maintenance"]
CheckKind = Literal["http", "tcp", "ttl", "docker", "script"]
Source = Literal["container", "api"]

# Worst first: an instance is as healthy as its worst check.
_RANK: dict[str, int] = {"maintenance": 3, "critical": 2, "warning": 1, "passing": 0}


def worst(statuses: list[str]) -> Status:
    if not statuses:
        return "passing"
    w = max(statuses, key=lambda s: _RANK.get(s, 2))
    return w if w in _RANK else "critical"  # type: ignore[return-value]


# Instance meta keys (Consul's rules for them: letters, digits, '_' and '-').
META_PROJECT = "project"
META_SHORT_NAME = "short-name"


@dataclass(frozen=True, slots=True)
class Instance:
    """One registration of a service: where it answers and what it is."""

    id: str
    service: str
    address: str
    port: int
    tags: tuple[str, ...] = ()
    meta: Mapping[str, str] = field(default_factory=dict)
    weight: int = 1
    source: Source = "api"
    # For container-derived instances: where they come from (else empty).
    container: str = ""
    container_id: str = ""
    engine: str = ""
    network: str = ""
    pid: int | None = None  # the container's, so checks can enter its network namespace
    # Consul's DeregisterCriticalServiceAfter, in seconds (None: never).
    deregister_critical_after_s: float | None = None

    @property
    def project(self) -> str | None:
        """The project this instance belongs to (None: none)."""
        return self.meta.get(META_PROJECT) or None

    @property
    def claims_short_name(self) -> bool:
        return self.meta.get(META_SHORT_NAME, "").lower() == "true"


@dataclass(frozen=True, slots=True)
class CheckSpec:
    """What to check and how often; the configuration, not the state."""

    id: str
    name: str
    kind: CheckKind
    service_id: str | None = None  # None: a node-level check
    http: str | None = None  # a URL (manual) or a path (labels: on the instance's address)
    tcp: str | None = None  # host:port
    method: str = "GET"
    interval_s: float = 10.0
    timeout_s: float = 5.0
    ttl_s: float | None = None
    rise: int = 1  # consecutive successes that make a failing check passing
    fall: int = 1  # consecutive failures that make a passing check critical
    deregister_critical_after_s: float | None = None
    # A checked instance's network namespace is entered through this pid (a container's).
    netns_pid: int | None = None
    # The container whose pid that is ('' : not known): a pid this machine does not show to
    # be its process (an engine on another host reports that host's pids) is not entered.
    netns_container: str = ""
    initial_status: Status = "critical"
    notes: str = ""


@dataclass(frozen=True, slots=True)
class CheckState:
    spec: CheckSpec
    status: Status
    output: str = ""
    # When the check last turned critical (for DeregisterCriticalServiceAfter), in the
    # injected clock's seconds; None while it is not critical.
    critical_since: float | None = None
    successes: int = 0  # consecutive
    failures: int = 0  # consecutive
    # For TTL checks: when the TTL runs out.
    expires_at: float | None = None
    modify_index: int = 0


@dataclass(frozen=True, slots=True)
class KVEntry:
    key: str
    value: bytes
    flags: int = 0
    create_index: int = 0
    modify_index: int = 0
    lock_index: int = 0


def scoped_name(service: str, project: str) -> str:
    """The catalog's name for `service` of `project` only (DNS: `<it>.service.<domain>`)."""
    return f"{service}.{project}"


@dataclass(frozen=True, slots=True)
class Collision:
    """A short service name several projects have: `projects` (sorted), and `owner`, the one
    project that claims it (explicit `discovery.name`), if exactly one does."""

    service: str
    projects: tuple[str, ...]
    owner: str | None

    def warning(self) -> str:
        scoped = ", ".join(f"{self.service}.{p}" for p in self.projects)
        head = f"service name {self.service!r} is used by projects {', '.join(self.projects)}: "
        if self.owner is not None:
            return (
                f"{head}the short name answers project {self.owner}'s only (its explicit "
                f"discovery.name); the others by {scoped}"
            )
        return (
            f"{head}the short name answers none of them (ask for {scoped}, or give one "
            "project's service an explicit discovery.name)"
        )


def name_collisions(instances: Iterable[Instance]) -> list[Collision]:
    """Every service name that instances of two or more projects have, sorted by name."""
    by_name: dict[str, list[Instance]] = {}
    for i in instances:
        by_name.setdefault(i.service, []).append(i)
    out = []
    for name in sorted(by_name):
        members = by_name[name]
        projects = sorted({i.project for i in members if i.project is not None})
        if len(projects) < 2:
            continue
        claimers = {i.project for i in members if i.project and i.claims_short_name}
        owner = claimers.pop() if len(claimers) == 1 else None
        out.append(Collision(name, tuple(projects), owner))
    return out
