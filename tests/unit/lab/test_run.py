"""The lab's shell, where it decides something without starting a lab: swarm roles from an
engine's /info, which processes are the lab's, the state file's reading, exec's command line.
The whole of it runs in tests/integration/test_lab.py."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dockmesh.errors import UsageError
from dockmesh.lab import run
from dockmesh.lab.state import LabState, LabStateError


@pytest.mark.parametrize(
    ("info", "role"),
    [
        ({"Swarm": {"LocalNodeState": "active", "ControlAvailable": True}}, "manager"),
        ({"Swarm": {"LocalNodeState": "active", "ControlAvailable": False}}, "worker"),
        ({"Swarm": {"LocalNodeState": "inactive"}}, "none"),
        ({"Swarm": None}, "none"),
        ({}, "none"),
    ],
)
def test_swarm_roles(info: dict[str, object], role: str) -> None:
    assert run.swarm_role(info) == role


def test_no_lab_is_nothing_to_do_and_no_status() -> None:
    name = f"u{secrets.token_hex(4)}"
    assert run.load(name) is None
    assert run.down(name) is False
    with pytest.raises(UsageError, match="no lab"):
        run.status(name)


def test_a_damaged_state_file_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "lab.json"
    path.write_bytes(b'{"version": 1}')
    monkeypatch.setattr(run, "state_path", lambda name: str(path))
    with pytest.raises(LabStateError, match=f"{path}: no 'pids'"):
        run.load("lab")


def test_only_the_labs_own_processes_are_its_own() -> None:
    # This test's process names no lab directory: never signalled as the lab's.
    assert not run._ours(os.getpid(), "lab")
    assert not run._ours(2**22 + 1, "lab")  # no such pid


def test_exec_enters_the_namespace_with_the_hosts_engine() -> None:
    state = LabState("dev", "10.251.0.0/24", 2, 1, 1)
    argv, env = run.exec_argv(state, "host2", ["docker", "ps"])
    assert argv == ["ip", "netns", "exec", "dml-dev-host2", "docker", "ps"]
    assert env["DOCKER_HOST"] == "unix:///run/dockmesh-lab/lab-dev/host2.sock"
    with pytest.raises(UsageError, match="no host 'host3'"):
        run.exec_argv(state, "host3", ["true"])


def test_subtrees_split_a_directory_into_its_entries(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").write_text("x")
    got = run._subtrees([str(tmp_path), str(tmp_path / "missing")])
    assert sorted(got) == [str(tmp_path / "a"), str(tmp_path / "b")]


def test_a_users_process_that_names_a_lab_path_is_never_the_labs(tmp_path: Path) -> None:
    """`lab down` SIGKILLs every process whose command line names the lab's directories (the
    shims a killed dockerd leaves): a user's `tail -F` of a lab log, an editor on its state
    file, was killed with them. A process is the lab's only when it is one of the programs
    the lab runs."""
    name = f"u{secrets.token_hex(3)}"
    log = f"/var/lib/dockmesh-lab/lab-{name}/host1/agent.log"
    reader = subprocess.Popen(
        ["tail", "-F", log], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    # A program the lab runs (etcd here), naming its data directory.
    etcd = tmp_path / "etcd"
    etcd.symlink_to(sys.executable)
    member = subprocess.Popen(
        [str(etcd), "-c", "import time; time.sleep(60)", "--data-dir", log],
        stdout=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while not (run._cmdline(reader.pid) and "dockmesh-lab" in run._cmdline(member.pid)):
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert not run._ours(reader.pid, name)
        assert reader.pid not in run._stray_pids(name)
        assert run._ours(member.pid, name)
    finally:
        for p in (reader, member):
            p.kill()
            p.wait()


def test_a_state_file_of_another_lab_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # lab-a/lab.json saying it is lab b: its plan (namespaces, directories) is b's, which
    # `lab down --name a` would have removed.
    path = tmp_path / "lab.json"
    path.write_bytes(LabState("b", "10.251.0.0/24", 2, 1, 1).dumps())
    monkeypatch.setattr(run, "state_path", lambda name: str(path))
    with pytest.raises(LabStateError, match="the state of lab 'b', not of 'a'"):
        run.load("a")


def test_a_lab_program_between_nsenter_and_its_exec_is_alive() -> None:
    """The agent, the engine and etcd are started through nsenter; before nsenter execs them
    their command line is nsenter's, and `lab up` said "the agent of host1 … exited" when it
    looked then (on a loaded machine)."""
    from dockmesh.lab.run import _lab_program

    agent = ["python3", "-m", "dockmesh", "agent", "--engine", "unix:///x"]
    assert _lab_program(["nsenter", "--net=/run/netns/dml-a-host1", *agent])
    assert _lab_program(["nsenter", "--net=/run/netns/dml-a-etcd1", "etcd", "--name", "e"])
    assert not _lab_program(["nsenter", "--net=/run/netns/dml-a-host1", "tail", "-F", "x"])
    assert not _lab_program(["nsenter", "--net=/run/netns/dml-a-host1"])
