"""Reading containers' counters from the host (dockmesh.observe.sample), on this test's own
process (its namespace is the host's): which containers are read, what one read gives, and a
container that went away meanwhile carrying the error instead of failing the sample."""

from __future__ import annotations

import os
from dataclasses import replace

from dockmesh.codecs.procnet import parse_net_dev
from dockmesh.model.topology import Container
from dockmesh.observe.sample import read_container, sample, targets
from tests.unit.topos import container, network, topology

ME = os.getpid()


def ANY_PID(pid: int, container_id: str) -> bool:
    """This test's process stands in for the containers: no cgroup names them."""
    return True


def gone_pid() -> int:
    with open("/proc/sys/kernel/pid_max") as f:
        return int(f.read()) + 1  # no process can have it


def me(name: str, **kw: object) -> Container:
    return replace(container(name, {"n": "10.0.0.2"}), pid=ME, **kw)  # type: ignore[arg-type]


def own_interfaces() -> list[str]:
    with open(f"/proc/{ME}/net/dev") as f:
        return [c.name for c in parse_net_dev(f.read()) if c.name != "lo"]


def test_one_read_gives_every_interface_but_loopback() -> None:
    before = own_interfaces()
    stats = read_container(me("web"), ANY_PID)
    after = own_interfaces()
    read = {i.counters.name for i in stats.interfaces}
    # Other tests' containers add and remove interfaces on this host meanwhile.
    assert set(before) & set(after) <= read <= set(before) | set(after)
    assert read and "lo" not in read
    assert (stats.name, stats.engine, stats.error) == ("web", "local", None)


def test_a_container_that_went_away_carries_the_error() -> None:
    stats = read_container(replace(me("gone"), pid=gone_pid()), ANY_PID)
    assert stats.interfaces == () and stats.error == "unreadable: No such file or directory"


def test_the_targets_are_the_readable_containers_or_the_ones_named() -> None:
    topo = topology(
        [network("n", "10.0.0.0/24")],
        [me("a"), me("b"), container("off", {"n": "10.0.0.3"}, state="exited")],
    )
    assert [c.name for c in targets(topo)] == ["a", "b"]
    assert [c.name for c in targets(topo, ["b", "off", "nobody"])] == ["b"]
    assert [c.name for c in targets(topo, [me("a").id])] == ["a"]


def test_a_sample_reads_each_container_once_in_order() -> None:
    s = sample([me("a"), replace(me("gone"), pid=gone_pid()), me("b")], ANY_PID)
    assert [c.name for c in s.containers] == ["a", "gone", "b"]
    assert s.containers[1].error is not None and s.containers[0].error is None
    assert s.elapsed_s >= 0 and s.taken_at > 0


def test_a_pid_this_machine_does_not_show_to_be_the_containers_is_not_read() -> None:
    # An engine on another host reported it: /proc/<pid> here is another process (this one).
    stats = read_container(me("away"))
    assert stats.interfaces == ()
    assert stats.error == f"not on this machine (pid {ME} is not its process)"
