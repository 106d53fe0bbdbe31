"""The doctor's gatherer: everything about one container, read from the host.

Nothing runs inside the container, so it works on images built FROM scratch:
- links, addresses and routes: a netlink socket opened in its namespace (a `NetnsPool` job);
- listening sockets: `/proc/<pid>/net/{tcp,tcp6,udp,udp6}` (its namespace, no setns;
  `dockmesh.host.sockets`);
- resolv.conf as it sees it: `/proc/<pid>/root/etc/resolv.conf` (its mount namespace);
- DNS: queries to Docker's embedded DNS (127.0.0.11) from a UDP socket made in its namespace
  (`dockmesh.host.dockerdns`);
- connectivity: ICMP echo to its gateways and peers from a raw socket made there.
The MTU each network should give comes from the host side (the bridge's MTU in sysfs).
Every step that fails is recorded and the others go on: a partial diagnosis beats none.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from typing import Any

from dockmesh.codecs.procnet import Route
from dockmesh.codecs.resolvconf import parse_resolv_conf
from dockmesh.diagnose.findings import (
    DnsAnswer,
    Evidence,
    Link,
    Ping,
    findings,
    plan_checks,
    sections,
)
from dockmesh.diagnose.latency import ping_many
from dockmesh.host.dockerdns import resolve_in
from dockmesh.host.netns import NetnsError, NetnsPool
from dockmesh.host.pidwatch import shown_here
from dockmesh.host.sockets import listening
from dockmesh.model.policy import Policy
from dockmesh.model.topology import Container, Network, Topology


def bridge_name(n: Network) -> str | None:
    """The host-side bridge of a local bridge network, as Docker names it."""
    if n.driver != "bridge":
        return None
    return n.options.get("com.docker.network.bridge.name") or (
        "docker0" if n.name == "bridge" else f"br-{n.id[:12]}"
    )


def host_mtus(topo: Topology, c: Container) -> dict[str, int]:
    """Network id → the MTU of its bridge on the host, for `c`'s bridge networks."""
    out: dict[str, int] = {}
    for n, _ in topo.attached_networks(c):
        name = bridge_name(n)
        if name is None:
            continue
        try:
            with open(f"/sys/class/net/{name}/mtu") as f:
                out[n.id] = int(f.read().strip())
        except (OSError, ValueError):
            continue
    return out


def _netlink_read() -> tuple[list[Link], list[Route]]:
    """Runs inside the container's namespace (a pool job): links, addresses, main routes."""
    from pyroute2 import IPRoute

    # A loop of asyncio's own: pyroute2 makes one from the process's policy otherwise, and in
    # the agent that is uvloop's, whose datagram endpoints refuse netlink sockets.
    loop = asyncio.SelectorEventLoop()
    try:
        return _netlink_read_with(IPRoute(use_event_loop=loop))
    finally:
        loop.close()


def _netlink_read_with(ipr: Any) -> tuple[list[Link], list[Route]]:
    with ipr:
        names: dict[int, str] = {}
        links: dict[int, tuple[str, str | None, int, str]] = {}
        for m in ipr.get_links():
            name = str(m.get_attr("IFLA_IFNAME"))
            names[m["index"]] = name
            state = str(m.get_attr("IFLA_OPERSTATE") or "unknown").lower()
            links[m["index"]] = (
                name,
                m.get_attr("IFLA_ADDRESS"),
                int(m.get_attr("IFLA_MTU")),
                state,
            )
        addrs: dict[int, list[str]] = {}
        for a in ipr.get_addr():
            address = a.get_attr("IFA_ADDRESS")
            if address:
                addrs.setdefault(a["index"], []).append(f"{address}/{a['prefixlen']}")
        routes: list[Route] = []
        for family in (socket.AF_INET, socket.AF_INET6):
            for r in ipr.get_routes(family=family, table=254):
                dst = r.get_attr("RTA_DST")
                zero = "0.0.0.0" if family == socket.AF_INET else "::"
                destination = f"{dst or zero}/{r['dst_len']}"
                routes.append(
                    Route(
                        destination,
                        r.get_attr("RTA_GATEWAY"),
                        names.get(r.get_attr("RTA_OIF"), "?"),
                        int(r.get_attr("RTA_PRIORITY") or 0),
                    )
                )
    out = [Link(n, mac, mtu, st, tuple(addrs.get(i, ()))) for i, (n, mac, mtu, st) in links.items()]
    return out, routes


def _read(path: str) -> str:
    with open(path, "rb") as f:
        return f.read().decode("utf-8", "replace")


def gather(
    topo: Topology,
    c: Container,
    pool: NetnsPool,
    timeout_s: float = 1.0,
    policy: Policy | None = None,
    is_its_process: Callable[[int, str], bool] = shown_here,
) -> Evidence:
    """What can be read of `c` from this machine. `is_its_process(pid, container id)`: whether
    the pid its engine reported is that container's process here (`pidwatch.shown_here`);
    when not, nothing is read or entered and the evidence says why."""
    plan = plan_checks(topo, c, host_mtus(topo, c), policy=policy)
    evidence = Evidence(c, plan)
    if not c.running or not c.pid:
        return evidence
    if c.network_mode == "host":
        # The host's namespace: nothing of the container's own to gather (a finding says so).
        return evidence
    pid = c.pid
    if not is_its_process(pid, c.id):
        # Its engine is on another host (its pid is that host's) or the pid was reused:
        # whatever this machine holds under that pid is not the container.
        evidence.errors.append(
            f"its process (pid {pid}) is not on this machine: its host's agent can diagnose it"
        )
        return evidence
    try:
        links, routes = pool.run(pid, _netlink_read)
        evidence.links, evidence.routes = tuple(links), tuple(routes)
    except (NetnsError, OSError) as e:
        evidence.errors.append(f"interfaces and routes unreadable: {e}")
    listeners = listening(pid)
    if listeners is None:
        evidence.errors.append("listening sockets unreadable (/proc/<pid>/net)")
    evidence.listeners = listeners or ()
    try:
        evidence.resolv = parse_resolv_conf(_read(f"/proc/{pid}/root/etc/resolv.conf"))
    except OSError as e:
        evidence.errors.append(f"resolv.conf unreadable: {e.strerror}")
    try:
        resolved = resolve_in(pool, pid, [q.name for q in plan.questions], timeout_s)
        evidence.dns = tuple(
            DnsAnswer(q, r.addresses, r.rcode)
            for q, r in zip(plan.questions, resolved, strict=True)
        )
    except (NetnsError, OSError) as e:
        evidence.errors.append(f"DNS queries could not be sent: {e}")
    try:
        rtts = ping_many(pool, pid, [a for _, _, a in plan.pings], timeout_s)
        evidence.pings = tuple(Ping(k, t, a, rtts.get(a)) for k, t, a in plan.pings)
    except (NetnsError, OSError) as e:
        evidence.errors.append(f"ICMP probes could not be sent: {e}")
    return evidence


def doctor_document(
    topo: Topology,
    c: Container,
    pool: NetnsPool,
    timeout_s: float = 1.0,
    policy: Policy | None = None,
) -> tuple[dict[str, object], bool]:
    """`dockmesh doctor --json`'s document for `c`, and whether a finding is an error (the
    command then exits 1): the one composition the command line and an agent answering for
    its host both use, so both print the same."""
    evidence = gather(topo, c, pool, timeout_s, policy)
    found = findings(evidence)
    doc: dict[str, object] = {
        "container": c.name,
        "sections": sections(evidence),
        "findings": [f.to_json() for f in found],
    }
    return doc, any(f.severity == "error" for f in found)
