"""The doctor's gatherer (dockmesh.diagnose.doctor) from the host: a container's bridge and its
MTU, and everything read about it, here from a namespace made by `unshare -n` standing in for
the container's (root is needed to enter it): its links and routes, its listeners, its
resolv.conf, the plan's DNS questions and pings, and what could not be read said, never
raised. (Real containers: tests/integration/test_doctor.py.)"""

from __future__ import annotations

import os
import shutil
import socket
from dataclasses import replace

import pytest

from dockmesh.diagnose.doctor import bridge_name, gather, host_mtus
from dockmesh.diagnose.findings import findings
from dockmesh.host.netns import NetnsPool
from dockmesh.model.topology import Container, Network
from tests.unit.topos import container, network, topology

needs_namespaces = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("unshare") is None, reason="needs root and unshare"
)


def test_the_bridge_of_a_bridge_network_as_docker_names_it() -> None:
    n = network("front", "10.0.0.0/24")
    assert bridge_name(n) == f"br-{n.id[:12]}"
    assert bridge_name(replace(n, name="bridge")) == "docker0"
    named = replace(n, options={"com.docker.network.bridge.name": "dm0"})
    assert bridge_name(named) == "dm0"
    assert bridge_name(replace(n, driver="macvlan")) is None


def test_the_mtu_of_each_bridge_network_read_from_the_host() -> None:
    # The host's loopback stands in for a bridge: a network that names it as its bridge.
    lo = replace(network("front", "10.0.0.0/24"), options={"com.docker.network.bridge.name": "lo"})
    absent = network("gone", "10.1.0.0/24")  # br-… does not exist on this host
    c = container("web", {"front": "10.0.0.2", "gone": "10.1.0.2"})
    with open("/sys/class/net/lo/mtu") as f:
        mtu = int(f.read())
    assert host_mtus(topology([lo, absent], [c]), c) == {lo.id: mtu}


def shop(pid: int) -> tuple[list[Network], Container]:
    nets = [network("front", "10.0.0.0/24")]
    me = replace(container("web", {"front": "10.0.0.2"}), pid=pid)
    return nets, me


@needs_namespaces
def test_everything_is_read_from_the_container_s_namespace(ns_pid: int) -> None:
    nets, me = shop(ns_pid)
    peer = container("api", {"front": "10.0.0.3"}, {"dockmesh.service": "api"})
    topo = topology(nets, [me, peer])
    with NetnsPool() as pool:
        inside = pool.run(ns_pid, socket.socket)
        try:
            inside.bind(("127.0.0.1", 0))
            inside.listen()
            port = inside.getsockname()[1]
            # An `unshare -n` process stands in for the container: no cgroup names it.
            evidence = gather(
                topo,
                topo.container("web"),  # type: ignore[arg-type]
                pool,
                timeout_s=0.2,
                is_its_process=lambda pid, cid: pid == ns_pid,
            )
        finally:
            inside.close()
    assert [link.name for link in evidence.links] == ["lo"]
    assert evidence.routes == ()  # a fresh namespace has only its loopback
    assert [(x.address, x.port) for x in evidence.listeners] == [("127.0.0.1", port)]
    assert evidence.resolv is not None
    # Nothing answers there, and no route leads anywhere: asked and unanswered.
    assert evidence.dns and all(d.answers is None for d in evidence.dns)
    assert evidence.pings and all(p.rtt_ms is None for p in evidence.pings)
    assert evidence.errors == []


def test_a_stopped_container_is_planned_not_read_and_host_mode_is_said() -> None:
    nets, me = shop(os.getpid())
    with NetnsPool() as pool:
        stopped = gather(
            topology(nets, [replace(me, state="exited", pid=None)]),
            replace(me, state="exited", pid=None),
            pool,
        )
        hostly = gather(topology(nets, [me]), replace(me, network_mode="host"), pool)
    assert stopped.links == () and stopped.errors == []
    # Not an error of gathering (that read as a warning to "run as root"): one finding says
    # what it is.
    assert hostly.errors == []
    said = [(x.severity, x.code) for x in findings(hostly)]
    assert said == [("info", "host-network")]


def test_what_cannot_be_read_is_said_and_the_rest_still_gathered() -> None:
    with open("/proc/sys/kernel/pid_max") as f:
        gone = int(f.read()) + 1
    nets, me = shop(gone)
    peer = container("api", {"front": "10.0.0.3"}, {"dockmesh.service": "api"})
    with NetnsPool() as pool:
        evidence = gather(
            topology(nets, [me, peer]), me, pool, timeout_s=0.2, is_its_process=lambda p, c: True
        )
    assert [e.split(":")[0] for e in evidence.errors] == [
        "interfaces and routes unreadable",
        "listening sockets unreadable (/proc/<pid>/net)",
        "resolv.conf unreadable",
        "DNS queries could not be sent",
        "ICMP probes could not be sent",
    ]


def test_a_pid_this_machine_does_not_show_to_be_the_containers_is_never_entered() -> None:
    # Its engine is on another host: the pid is that host's, here some other process (this
    # one). Nothing is read from it; the evidence says where the diagnosis can come from.
    nets, me = shop(os.getpid())
    entered: list[int] = []

    class Refusing(NetnsPool):
        def run(self, pid, fn, *args):  # type: ignore[no-untyped-def]
            entered.append(pid)
            return super().run(pid, fn, *args)

    with Refusing() as pool:
        evidence = gather(topology(nets, [me]), me, pool, timeout_s=0.2)
    assert entered == []
    assert evidence.links == () and evidence.listeners == () and evidence.resolv is None
    [said] = evidence.errors
    assert "not on this machine" in said and "agent" in said
