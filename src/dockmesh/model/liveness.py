"""Liveness the agent knows without the engine. Pure.

While an engine's event stream is lost, a container that dies is not reported; the agent
follows each running container's process itself (`dockmesh.host.pidwatch`) and records the
ones whose process ended: container id → the pid that ended. This module decides what the
catalog sees from those records:

- `without_dead(topology, dead)`: the topology with each such container shown exited — but
  only while the topology still shows it running *with that pid*: a topology read after the
  death (exited, restarted with a new pid, removed) is the engine's word and wins;
- `still_dead(topology, dead)`: the records that still say something (the others are
  forgotten, so a restarted container is never hidden by its former process);
- `to_follow(topology)`: which processes to follow.

And what is known of the engines' connections (`EngineLink`, `with_pings`), for `/metrics`,
the leader and `X-Consul-KnownLeader`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from dockmesh.model.topology import Container, Topology


@dataclass(frozen=True, slots=True)
class EngineLink:
    """One engine's connection as the watcher knows it: `connected` while its event stream is
    open (the topology follows the engine); `sync_age_s` is how long the topology has not been
    known to match the engine: 0 while connected, else the time since the stream was lost (or,
    before the first read, since the watcher began)."""

    engine: str
    connected: bool
    sync_age_s: float


def with_pings(
    links: Sequence[EngineLink], silent_since: Mapping[str, float], now: float
) -> tuple[EngineLink, ...]:
    """The links, less the engines whose stream is open but that do not answer a ping (a
    frozen engine, a socket that swallows what is sent: the stream stays open and silent):
    not followed either, since their last answer (`silent_since`, on `now`'s clock)."""
    out = []
    for link in links:
        since = silent_since.get(link.engine)
        if link.connected and since is not None:
            link = EngineLink(link.engine, False, max(0.0, now - since))
        out.append(link)
    return tuple(out)


def all_connected(links: Sequence[EngineLink]) -> bool:
    """Whether the topology follows every engine (none: nothing is followed, so no)."""
    return bool(links) and all(link.connected for link in links)


def _holds(c: Container, dead: Mapping[str, int]) -> bool:
    return c.running and c.pid is not None and dead.get(c.id) == c.pid


def still_dead(topo: Topology, dead: Mapping[str, int]) -> dict[str, int]:
    """The records the topology has not overtaken: the container still shown running with
    the pid that ended."""
    return {c.id: dead[c.id] for c in topo.containers if _holds(c, dead)}


def without_dead(topo: Topology, dead: Mapping[str, int]) -> Topology:
    """`topo` with every container whose recorded process ended shown as the engine shows a
    dead one (exited, no pid, no health); the same object when there is none."""
    if not dead or not any(_holds(c, dead) for c in topo.containers):
        return topo
    containers = tuple(
        replace(c, state="exited", pid=None, health=None) if _holds(c, dead) else c
        for c in topo.containers
    )
    return replace(topo, containers=containers)


def to_follow(topo: Topology, wanted: Sequence[str] | None = None) -> dict[str, int]:
    """Container id → pid of each running container with a pid (only those in `wanted`,
    when given: the ones the catalog holds an instance of)."""
    keep = None if wanted is None else set(wanted)
    return {
        c.id: c.pid
        for c in topo.containers
        if c.running and c.pid is not None and c.pid > 0 and (keep is None or c.id in keep)
    }
