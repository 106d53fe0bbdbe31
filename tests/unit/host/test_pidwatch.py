"""`PidWatch` on real processes of this machine (children of the test), with the cgroup
files it checks a pid against written in a stand-in /proc; `stat_start` and
`names_container` on the kernel's text."""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dockmesh.host.pidwatch import PidWatch, names_container, stat_start

CID = "ab" * 32
OTHER = "cd" * 32
STAT = "4242 (sleep) S 1 4242 4242 0 -1 4194560 100 0 0 0 0 0 0 0 20 0 1 0 {start} 2000 100"


@pytest.fixture
def sleepers() -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait()


def sleeper(procs: list[subprocess.Popen[bytes]]) -> int:
    p = subprocess.Popen(["sleep", "60"])
    procs.append(p)
    return p.pid


def proc_dir(tmp: Path, pid: int, cgroup: str, start: int | None = 7) -> None:
    d = tmp / str(pid)
    d.mkdir(parents=True, exist_ok=True)
    (d / "cgroup").write_text(cgroup)
    if start is not None:
        (d / "stat").write_text(STAT.format(start=start))


def docker_cgroup(cid: str) -> str:
    return f"12:pids:/docker/{cid}\n0::/system.slice/docker-{cid}.scope\n"


async def ended_within(ends: list[tuple[str, int]], n: int, limit: float) -> float:
    t0 = time.monotonic()
    while len(ends) < n:
        assert time.monotonic() - t0 < limit, f"ends heard: {ends}"
        await asyncio.sleep(0.005)
    return time.monotonic() - t0


@pytest.mark.parametrize("pidfds", [True, False])
def test_a_followed_process_that_ends_is_heard_within_a_fraction_of_a_second(
    tmp_path: Path, sleepers: list[subprocess.Popen[bytes]], pidfds: bool
) -> None:
    async def main() -> None:
        watch = PidWatch(proc=str(tmp_path), poll_s=0.05, pidfds=pidfds)
        ends: list[tuple[str, int]] = []
        watch.start(lambda cid, pid: ends.append((cid, pid)))
        a, b = sleeper(sleepers), sleeper(sleepers)
        proc_dir(tmp_path, a, docker_cgroup(CID))
        proc_dir(tmp_path, b, docker_cgroup(OTHER))
        watch.follow({CID: a, OTHER: b})
        assert watch.count == 2 and watch.method == ("pidfd" if pidfds else "proc")
        await asyncio.sleep(0.15)
        assert ends == []  # alive: nothing heard
        sleepers[0].kill()
        sleepers[0].wait()  # reaped, as the container's shim does
        if not pidfds:
            (tmp_path / str(a) / "stat").unlink()  # the stand-in /proc follows the kernel's
        took = await ended_within(ends, 1, 1.0)
        assert ends == [(CID, a)] and took < 0.5
        assert watch.count == 1
        watch.close()
        assert watch.count == 0

    asyncio.run(main())


def test_a_process_not_shown_to_be_the_containers_is_never_followed_nor_reported(
    tmp_path: Path, sleepers: list[subprocess.Popen[bytes]]
) -> None:
    async def main() -> None:
        watch = PidWatch(proc=str(tmp_path), poll_s=0.05)
        ends: list[tuple[str, int]] = []
        watch.start(lambda cid, pid: ends.append((cid, pid)))
        reused, foreign = sleeper(sleepers), sleeper(sleepers)
        proc_dir(tmp_path, reused, docker_cgroup(OTHER))  # the pid now another container's
        proc_dir(tmp_path, foreign, "0::/user.slice\n")  # not a container's at all
        gone = 2**22 + 17  # above any pid_max: no such process
        watch.follow({CID: reused, OTHER: foreign, "ef" * 32: gone})
        assert watch.count == 0
        for p in sleepers:
            p.kill()
            p.wait()
        await asyncio.sleep(0.2)
        assert ends == []

    asyncio.run(main())


def test_following_less_forgets_and_another_pid_is_followed_afresh(
    tmp_path: Path, sleepers: list[subprocess.Popen[bytes]]
) -> None:
    async def main() -> None:
        watch = PidWatch(proc=str(tmp_path))
        ends: list[tuple[str, int]] = []
        watch.start(lambda cid, pid: ends.append((cid, pid)))
        first, second = sleeper(sleepers), sleeper(sleepers)
        proc_dir(tmp_path, first, docker_cgroup(CID))
        proc_dir(tmp_path, second, docker_cgroup(CID))
        fds_before = len(os.listdir("/proc/self/fd"))
        watch.follow({CID: first})
        watch.follow({CID: second})  # restarted: its new process
        sleepers[0].kill()
        sleepers[0].wait()
        await asyncio.sleep(0.1)
        assert ends == []  # the former process is no longer followed
        watch.follow({})
        sleepers[1].kill()
        sleepers[1].wait()
        await asyncio.sleep(0.1)
        assert ends == [] and watch.count == 0
        assert len(os.listdir("/proc/self/fd")) == fds_before  # every pidfd closed

    asyncio.run(main())


def test_stat_start_reads_state_and_start_time_past_any_command_name() -> None:
    assert stat_start(STAT.format(start=123)) == ("S", 123)
    odd = STAT.replace("(sleep)", "(a) b) Z (c)").format(start=9)
    assert stat_start(odd) == ("S", 9)
    assert stat_start("") is None
    assert stat_start("1 (x) S 1 2") is None


@given(st.text(max_size=200), st.sampled_from([CID, OTHER]))
def test_a_cgroup_names_the_container_only_when_it_holds_its_full_id(text: str, cid: str) -> None:
    assert names_container(text + docker_cgroup(cid), cid)
    assert names_container(text, cid) == (cid in text)
    assert not names_container(text + docker_cgroup(cid), "")


LOW_LIMIT = """
import asyncio, resource, socket, subprocess, sys
from pathlib import Path
from dockmesh.host import pidwatch

proc = Path(sys.argv[1])
pidwatch.RESERVE_FDS = 32
resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))  # a low hard limit: nothing to raise
sleepers = [subprocess.Popen(["sleep", "60"]) for _ in range(80)]
ends = []

async def main():
    watch = pidwatch.PidWatch(proc=str(proc), poll_s=0.05)
    watch.start(lambda cid, pid: ends.append(cid))
    wanted = {}
    for n, p in enumerate(sleepers):
        cid = f"{n:064x}"
        d = proc / str(p.pid)
        d.mkdir()
        (d / "cgroup").write_text(f"0::/system.slice/docker-{cid}.scope\\n")
        (d / "stat").write_text(f"{p.pid} (sleep) S " + "0 " * 18 + "7 0")
        wanted[cid] = p.pid
    watch.follow(wanted)
    assert watch.count == 80, watch.count
    socks = [socket.socket() for _ in range(8)]  # the agent's own sockets still open
    for s in socks:
        s.close()
    for k in (0, 79):  # one followed by its pidfd, one polled
        sleepers[k].kill()
        sleepers[k].wait()
        (proc / str(sleepers[k].pid) / "stat").unlink()
    for _ in range(100):
        if len(ends) == 2:
            break
        await asyncio.sleep(0.02)
    assert sorted(ends) == [f"{0:064x}", f"{79:064x}"], ends
    watch.close()

try:
    asyncio.run(main())
finally:
    for p in sleepers:
        p.kill()
        p.wait()
print("ok")
"""


def test_past_its_descriptor_budget_a_process_is_polled_and_the_agent_keeps_descriptors(
    tmp_path: Path,
) -> None:
    """Under a low hard limit, a pidfd per container took every descriptor: the agent's API
    and DNS could not accept a connection any more (EMFILE)."""
    import sys

    done = subprocess.run(
        [sys.executable, "-c", LOW_LIMIT, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


@given(st.sampled_from([CID, OTHER]), st.sampled_from(["docker", "root", "missing"]))
def test_a_pid_is_shown_here_only_when_its_cgroup_names_the_container(
    named: str, layout: str
) -> None:
    import tempfile

    from dockmesh.host.pidwatch import shown_here

    with tempfile.TemporaryDirectory() as tmp:
        if layout == "docker":
            proc_dir(Path(tmp), 4242, docker_cgroup(named))
        elif layout == "root":  # a process of the host, in no container
            proc_dir(Path(tmp), 4242, "0::/system.slice/cron.service\n")
        # An engine on another host reports its own pids: here the pid is another
        # container's, a host process or none, and its namespace is not the container's.
        assert shown_here(4242, CID, proc=tmp) == (layout == "docker" and named == CID)
