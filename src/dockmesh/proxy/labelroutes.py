"""The routes the containers declare (`model.httproute`), as a route table: catalog instances
in, routes, their clusters' members and the problems found out. Pure and deterministic: the
same instances in any order give the same table.

- Only the projects asked for (`--project`, or every one with `--all-projects`) are read.
- An instance whose route labels are wrong, or that names a middleware the routes file does
  not declare, has no route: one line says why; every other instance is routed as before.
- A service's cluster (`<service>.<project>`) holds the passing instances of that service that
  declare a route, each at its `http-port` or else its registered port. A route exists while
  an instance of its service declares it, passing or not (none passing: 503, not someone
  else's route), so a service relabelled by starting new containers beside the old ones
  serves both routes until the old ones go: no request falls between.
- A host belongs to one project: claimed by several, it is served by none, and a line names
  them. A route is a host (or any) and a path prefix. Two services claiming the same one is
  a conflict: the service first by name keeps it, and a line names both. The instances of one
  service disagreeing on its options (strip_prefix, middlewares) while they are replaced: the
  options most of them declare win (ties: the first in order), quietly.
- Order: routes with a host before those without, longer prefixes first, then by name; the
  routes file's routes come before all of them (`run`).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from typing import Any

from dockmesh.model.catalog import META_PROJECT
from dockmesh.model.httproute import HttpRoute, decode_meta


@dataclass(frozen=True, slots=True)
class CatalogInstance:
    """One instance as the agent's health endpoint shows it."""

    id: str
    service: str
    address: str
    port: int
    meta: tuple[tuple[str, str], ...] = ()
    passing: bool = True
    weight: int = 1

    @property
    def project(self) -> str | None:
        return dict(self.meta).get(META_PROJECT) or None

    @property
    def cluster(self) -> str:
        """The cluster's name: the service's scoped name where it has a project."""
        p = self.project
        return f"{self.service}.{p}" if p else self.service


@dataclass(frozen=True, slots=True, order=True)
class LabelRoute:
    host: str | None
    prefix: str
    cluster: str
    strip: str | None = None
    middlewares: tuple[str, ...] = ()


@dataclass
class LabelTable:
    routes: list[LabelRoute] = field(default_factory=list)
    # cluster name → {host:port → weight}: its passing routed instances.
    members: dict[str, dict[str, int]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    conflicts: list[str] = field(default_factory=list)

    def shape(self) -> tuple[LabelRoute, ...]:
        """What a rebuild of the route table depends on (members change without one)."""
        return tuple(self.routes)


def _addr(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def _order(r: LabelRoute) -> tuple[bool, int, str, str, str]:
    return (r.host is None, -len(r.prefix), r.host or "", r.prefix, r.cluster)


def build_table(
    instances: Iterable[CatalogInstance],
    projects: Collection[str] | None,
    middlewares: Collection[str],
) -> LabelTable:
    """The table for `instances` of `projects` (None: every instance), with `middlewares`
    the names the routes file declares."""
    table = LabelTable()
    seen: dict[str, CatalogInstance] = {}
    for inst in instances:
        if projects is not None and inst.project not in projects:
            continue
        # The same instance reached under two names (short and scoped): once.
        seen.setdefault(inst.id, inst)
    # rule (host, prefix) → cluster → (options → number of instances declaring them)
    claims: dict[tuple[str | None, str], dict[str, dict[tuple[str | None, tuple[str, ...]], int]]]
    claims = {}
    project_of: dict[str, str] = {}  # cluster → its project ("" for none)
    for iid in sorted(seen):
        inst = seen[iid]
        route, problems = decode_meta(dict(inst.meta))
        if route is not None:
            unknown = [m for m in route.middlewares if m not in middlewares]
            if unknown:
                declared = ", ".join(sorted(middlewares)) or "none"
                problems = [
                    f"middleware {', '.join(map(repr, unknown))} is not declared in the routes "
                    f"file (declared: {declared})"
                ]
                route = None
        if route is None:
            table.problems += [f"{inst.cluster} ({inst.id}): {p}: not routed" for p in problems]
            continue
        members = table.members.setdefault(inst.cluster, {})
        if inst.passing:
            members[_addr(inst.address, route.port or inst.port)] = max(1, inst.weight)
        _claim(claims, inst.cluster, route)
        project_of[inst.cluster] = inst.project or ""
    # A host belongs to one project. Claimed by several, it is served by none: which one
    # came first is not known here, and "first by name" or "longest path" would let one
    # project take another's traffic (its logins among it) by naming a service or a path.
    owners: dict[str, set[str]] = {}
    for (host, _), by_cluster in claims.items():
        if host is not None:
            owners.setdefault(host, set()).update(project_of[c] for c in by_cluster)
    disputed = {h for h, ps in owners.items() if len(ps) > 1}
    for host in sorted(disputed):
        named = ", ".join(sorted(p or "(no project)" for p in owners[host]))
        table.conflicts.append(
            f"{host} is claimed by the projects {named}: served by none (a host belongs to "
            "one project: follow only its project with --project, or change the labels)"
        )
    for rule in sorted(claims, key=lambda r: (r[0] or "", r[1])):
        if rule[0] in disputed:
            continue
        by_cluster = claims[rule]
        names = sorted(by_cluster)
        winner = names[0]
        if len(names) > 1:
            host, prefix = rule
            table.conflicts.append(
                f"{host or '*'}{prefix} is claimed by {', '.join(names)}: {winner} serves it "
                "(first by name)"
            )
        options = by_cluster[winner]
        strip, mws = min(options, key=lambda o: (-options[o], o[0] or "", o[1]))
        table.routes.append(LabelRoute(rule[0], rule[1], winner, strip, mws))
    table.routes.sort(key=_order)
    return table


def _claim(
    claims: dict[tuple[str | None, str], dict[str, dict[tuple[str | None, tuple[str, ...]], int]]],
    cluster: str,
    route: HttpRoute,
) -> None:
    for host in route.hosts or (None,):
        options = claims.setdefault((host, route.path), {}).setdefault(cluster, {})
        key = (route.strip, route.middlewares)
        options[key] = options.get(key, 0) + 1


def instances_from_health(doc: Any) -> list[CatalogInstance]:
    """`/v1/health/service/<name>` JSON → its instances (passing: every check passes)."""
    out: list[CatalogInstance] = []
    if not isinstance(doc, list):
        return out
    for entry in doc:
        if not isinstance(entry, dict):
            continue
        svc = entry.get("Service") or {}
        node = entry.get("Node") or {}
        if not isinstance(svc, dict) or not isinstance(node, dict):
            continue
        address = svc.get("Address") or node.get("Address")
        port, iid, name = svc.get("Port"), svc.get("ID"), svc.get("Service")
        if not isinstance(address, str) or not address or not isinstance(port, int):
            continue
        if not 0 < port < 65536:
            continue
        # (Consul always says both; a registry that does not still gives members.)
        iid = iid if isinstance(iid, str) else f"{address}:{port}"
        name = name if isinstance(name, str) else ""
        meta = svc.get("Meta") or {}
        pairs = tuple(
            sorted((k, v) for k, v in meta.items() if isinstance(k, str) and isinstance(v, str))
            if isinstance(meta, dict)
            else ()
        )
        checks = entry.get("Checks") or []
        passing = all(isinstance(c, dict) and c.get("Status") == "passing" for c in checks)
        weights = svc.get("Weights") or {}
        weight = weights.get("Passing", 1) if isinstance(weights, dict) else 1
        if not isinstance(weight, int) or weight < 1:
            weight = 1
        out.append(CatalogInstance(iid, name, address, port, pairs, passing, weight))
    return out
