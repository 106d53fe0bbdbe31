"""The host machine itself: its routes, interfaces and kernel support."""

from __future__ import annotations

import os
import platform
import socket
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class HostRoute:
    destination: str  # CIDR
    device: str


def host_routes() -> tuple[tuple[HostRoute, ...], frozenset[str]]:
    """The main table's routes (not the default) and the names of every interface."""
    from pyroute2 import IPRoute  # slow to import; only the commands that plan need it

    # Names by index from if_nameindex(3): a dump of every link decodes all their attributes
    # (a tenth of a second with 200 containers' veths) for the one attribute needed here.
    names = dict(socket.if_nameindex())
    with IPRoute() as ipr:
        routes: list[HostRoute] = []
        for family in (2, 10):  # AF_INET, AF_INET6
            for r in ipr.get_routes(family=family, table=254):
                dst = r.get_attr("RTA_DST")
                if dst is None:
                    continue  # default route
                dev = names.get(r.get_attr("RTA_OIF"), "?")
                routes.append(HostRoute(f"{dst}/{r['dst_len']}", dev))
    return tuple(routes), frozenset(n for n in names.values() if n)


def ipvlan_available() -> bool:
    if os.path.isdir("/sys/module/ipvlan"):
        return True
    release = platform.release()
    for f in ("modules.dep", "modules.builtin"):
        try:
            with open(f"/lib/modules/{release}/{f}") as fh:
                if "/ipvlan.ko" in fh.read():
                    return True
        except OSError:
            continue
    return False


def ipv6_available() -> bool:
    return os.path.exists("/proc/net/if_inet6")
