"""Which bridge port is a container's: the host-side end of each of its veth pairs.

A container's interface `ethN` is one end of a veth pair; the other end is a port of a Docker
bridge in the host's namespace. The container's own sysfs (`/proc/<pid>/root/sys/class/net`,
mounted by Docker in the container's network namespace) gives each interface's MAC address
and `iflink`, the host-side peer's interface index; `if_indextoname` in the host's namespace
names it. The engine reports each endpoint's MAC, so an endpoint maps to its port.

Read from the host's network namespace (the agent's, or `policy apply`'s, as root). What
cannot be read (no such process, no sysfs in the container, a MAC not found) is left out:
the policy then treats that endpoint's source as unconfirmed (fail closed).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping

from dockmesh.model.topology import Container, Topology

PortMap = dict[tuple[str, str], str]


def interfaces(
    pid: int, root: str = "/proc", peers: Mapping[int, str] | None = None
) -> dict[str, str]:
    """MAC address (lower case) → host-side port name, for each veth in `pid`'s namespace.
    `peers`: the peer's index → name where the peer is not in the caller's namespace (an
    overlay's bridge ports live in the overlay's own)."""
    base = os.path.join(root, str(pid), "root", "sys", "class", "net")
    out: dict[str, str] = {}
    try:
        names = os.listdir(base)
    except OSError:
        return out
    for name in names:
        try:
            with open(os.path.join(base, name, "address")) as f:
                mac = f.read().strip().lower()
            with open(os.path.join(base, name, "iflink")) as f:
                peer = int(f.read().strip())
            with open(os.path.join(base, name, "ifindex")) as f:
                own = int(f.read().strip())
        except (OSError, ValueError):
            continue
        if peer == own:  # not a veth (lo, a tunnel): no peer on the host
            continue
        if peers is not None:
            if peer in peers:
                out[mac] = peers[peer]
            continue
        try:
            out[mac] = socket.if_indextoname(peer)
        except OSError:
            continue
    return out


class PortFinder:
    """Container ports, read once per container process (a restarted container has a new
    pid and new veths, so it is read again)."""

    def __init__(self, root: str = "/proc") -> None:
        self.root = root
        self._seen: dict[tuple[str, int], dict[str, str]] = {}

    def __call__(self, topo: Topology) -> PortMap:
        out: PortMap = {}
        live: set[tuple[str, int]] = set()
        for c in topo.containers:
            if not c.running or not c.pid:
                continue
            key = (c.id, c.pid)
            live.add(key)
            by_mac = self._seen.get(key)
            if by_mac is None or _missing(c, by_mac):
                by_mac = interfaces(c.pid, self.root)
                self._seen[key] = by_mac
            for a in c.attachments:
                if a.mac and a.mac.lower() in by_mac:
                    out[(c.id, a.network)] = by_mac[a.mac.lower()]
        for key in set(self._seen) - live:
            del self._seen[key]
        return out


def _missing(c: Container, by_mac: dict[str, str]) -> bool:
    """A network connected since the last read: its MAC is not known yet."""
    return any(a.mac and a.mac.lower() not in by_mac for a in c.attachments)
