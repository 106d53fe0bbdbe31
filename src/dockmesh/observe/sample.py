"""Reading every container's interface counters from the host (the shell around `counters`).

`/proc/<pid>/net/dev` shows the network namespace of `<pid>` without entering it, so one
sample of 200 containers is 200 small reads (plus a route file for the few containers on
several networks): milliseconds, where Docker's stats API takes over a second per
container because it samples CPU over an interval first.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from dockmesh.codecs.procnet import parse_net_dev, parse_net_route
from dockmesh.host.pidwatch import shown_here
from dockmesh.host.procfs import read_proc_net
from dockmesh.model.topology import Container, Topology
from dockmesh.observe.counters import (
    ContainerStats,
    local_engines,
    map_interfaces,
    needs_routes,
    readable,
)


@dataclass(frozen=True, slots=True)
class Sample:
    containers: tuple[ContainerStats, ...]
    taken_at: float  # time.monotonic() when the reads ended
    elapsed_s: float  # how long reading and mapping took


IsItsProcess = Callable[[int, str], bool]


def read_container(c: Container, is_its_process: IsItsProcess = shown_here) -> ContainerStats:
    """One container's counters; a container that went away meanwhile carries the error, and
    so does one whose pid this machine does not show to be its process (`is_its_process(pid,
    container id)`: `pidwatch.shown_here`)."""
    assert c.pid is not None
    if not is_its_process(c.pid, c.id):
        # An engine on another host reports that host's pids: /proc/<pid> here is another
        # process or none, and its counters would be some other namespace's.
        away = f"not on this machine (pid {c.pid} is not its process)"
        return ContainerStats(c.name, c.id, c.engine, (), error=away)
    try:
        counters = parse_net_dev(read_proc_net(c.pid, "dev"))
        routes = (
            parse_net_route(read_proc_net(c.pid, "route")) if needs_routes(c, counters) else None
        )
    except OSError as e:
        return ContainerStats(c.name, c.id, c.engine, (), error=f"unreadable: {e.strerror}")
    return ContainerStats(c.name, c.id, c.engine, map_interfaces(c, counters, routes))


def targets(topo: Topology, names: Iterable[str] = ()) -> list[Container]:
    """The containers to read: `names` (any name or id the topology knows), else all that
    are readable here."""
    local = local_engines(topo)
    wanted = list(names)
    if wanted:
        found = (topo.container(n) for n in wanted)
        return [c for c in found if c is not None and readable(c, local)]
    return [c for c in topo.containers if readable(c, local)]


def sample(containers: Iterable[Container], is_its_process: IsItsProcess = shown_here) -> Sample:
    start = time.perf_counter()
    out = tuple(read_container(c, is_its_process) for c in containers)
    end = time.perf_counter()
    return Sample(out, time.monotonic(), end - start)
