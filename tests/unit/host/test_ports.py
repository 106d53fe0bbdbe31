"""Which bridge port is a container's: read from a /proc laid out as the kernel's (a tree of
files under a temporary root), the host's interface names asked of the real host (`lo`)."""

from __future__ import annotations

import socket
from pathlib import Path

from dockmesh.host.ports import PortFinder, interfaces
from tests.unit.topos import container, network, topology


def netdev(root: Path, pid: int, name: str, mac: str, ifindex: int, iflink: int) -> None:
    d = root / str(pid) / "root" / "sys" / "class" / "net" / name
    d.mkdir(parents=True)
    (d / "address").write_text(mac + "\n")
    (d / "ifindex").write_text(f"{ifindex}\n")
    (d / "iflink").write_text(f"{iflink}\n")


LO = socket.if_nametoindex("lo")


def test_each_veth_maps_its_mac_to_the_hosts_end(tmp_path: Path) -> None:
    netdev(tmp_path, 7, "eth0", "02:42:0A:00:00:02", 40, LO)  # the peer: the host's lo here
    netdev(tmp_path, 7, "lo", "00:00:00:00:00:00", 1, 1)  # not a veth: no peer
    netdev(tmp_path, 7, "eth1", "02:42:0a:00:01:02", 41, 999_999)  # a peer the host has not
    (tmp_path / "7" / "root" / "sys" / "class" / "net" / "bad").mkdir()
    assert interfaces(7, str(tmp_path)) == {"02:42:0a:00:00:02": "lo"}
    assert interfaces(8, str(tmp_path)) == {}  # no such process


def test_the_finder_reads_a_container_once_per_process_and_again_for_a_new_network(
    tmp_path: Path,
) -> None:
    import dataclasses

    c = container("a", {"n": "10.0.0.2"}, pid=7)
    att = dataclasses.replace(c.attachments[0], mac="02:42:0a:00:00:02")
    c = dataclasses.replace(c, attachments=(att,))
    topo = topology([network("n", "10.0.0.0/24")], [c])
    finder = PortFinder(str(tmp_path))
    assert finder(topo) == {}  # nothing readable yet: unconfirmed, not an error
    netdev(tmp_path, 7, "eth0", "02:42:0a:00:00:02", 40, LO)
    assert finder(topo) == {(c.id, "n"): "lo"}  # the MAC was missing: read again
    gone = topology([network("n", "10.0.0.0/24")], [])
    assert finder(gone) == {} and finder._seen == {}
