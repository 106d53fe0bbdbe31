"""The agent's `HostObserver` (what `/v1/dockmesh/stats|doctor` answer), over a topology whose
container stands for this test's own process: a container its engines do not have is a
LookupError, one whose pid this machine does not show to be its process a PermissionError —
never read — and no topology yet is said as such."""

from __future__ import annotations

import os
from dataclasses import replace

import pytest

from dockmesh.agent import HostObserver
from dockmesh.model.topology import Topology
from tests.unit.topos import container, network, topology


def topo_of_me() -> Topology:
    me = replace(container("web", {"n": "10.0.0.2"}), pid=os.getpid())  # no cgroup names it
    return topology([network("n", "10.0.0.0/24")], [me])


def test_a_container_the_engines_do_not_have_is_not_found() -> None:
    observer = HostObserver(topo_of_me)
    with pytest.raises(LookupError, match="no container 'db' on this host's engines"):
        observer.stats(["db"])
    with pytest.raises(LookupError, match="no container 'db'"):
        observer.doctor("db", 0.1)


def test_a_pid_not_shown_to_be_the_containers_is_refused_not_read() -> None:
    observer = HostObserver(topo_of_me)
    with pytest.raises(PermissionError, match="not on this host"):
        observer.stats(["web"])
    with pytest.raises(PermissionError, match="not on this host"):
        observer.doctor("web", 0.1)
    # Asked for every container: its row says so, with no counters.
    [row] = observer.stats([])["containers"]
    assert row["interfaces"] == [] and "not on this machine" in row["error"]


def test_before_the_engines_were_read() -> None:
    with pytest.raises(LookupError, match="not read its engines yet"):
        HostObserver(lambda: None).stats([])
