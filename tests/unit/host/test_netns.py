"""Entering network namespaces (dockmesh.host.netns) with namespaces made by `unshare -n`: no
engine needed, but root (CAP_SYS_ADMIN) is. Sockets and listeners live in the namespace they
were made in, threads always come home, a pid that died is "gone", permission errors say so,
and no thread or file descriptor outlives the pool."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from dockmesh.host import netns
from dockmesh.host.netns import (
    NamespaceGone,
    NetnsError,
    NetnsPool,
    netns_of,
    thread_netns,
)

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("unshare") is None, reason="needs root and unshare"
)
WAIT = 10.0  # seconds; a guard against hanging, never a measure


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def threads_netns() -> set[tuple[int, int]]:
    """The network namespace of every thread of this process."""
    found = set()
    for tid in os.listdir("/proc/self/task"):
        with contextlib.suppress(FileNotFoundError):  # a thread that just ended
            st = os.stat(f"/proc/self/task/{tid}/ns/net")
            found.add((st.st_dev, st.st_ino))
    return found


def wait_until(predicate: Callable[[], bool]) -> None:
    deadline = time.monotonic() + WAIT
    while not predicate():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.01)


@pytest.fixture
def pool() -> Iterator[NetnsPool]:
    with NetnsPool() as p:
        yield p


def listen(port: int = 0) -> socket.socket:
    s = socket.socket()
    s.bind(("127.0.0.1", port))
    s.listen()
    return s


def test_a_job_runs_in_the_namespace_and_its_thread_comes_home(
    pool: NetnsPool, ns_pid: int
) -> None:
    home = thread_netns()
    assert pool.home == home
    assert netns_of(ns_pid) != home
    assert pool.run(ns_pid, thread_netns) == netns_of(ns_pid)
    # The result is published only once the thread is back.
    assert threads_netns() == {home}
    assert pool.stats().jobs == 1


def test_sockets_and_listeners_keep_the_namespace_they_were_made_in(
    pool: NetnsPool, ns_pid: int
) -> None:
    inside = pool.run(ns_pid, listen)  # 127.0.0.1 of the namespace, not the host's
    port = inside.getsockname()[1]
    try:
        from_ns = pool.socket(ns_pid)
        from_ns.setblocking(True)
        from_ns.settimeout(WAIT)
        from_ns.connect(("127.0.0.1", port))
        from_ns.close()
        with socket.socket() as from_host, pytest.raises(ConnectionRefusedError):
            from_host.connect(("127.0.0.1", port))
    finally:
        inside.close()


def test_async_sockets_are_driven_by_the_loop(pool: NetnsPool, ns_pid: int) -> None:
    async def main() -> bytes:
        server = pool.run(ns_pid, listen)
        server.setblocking(False)
        loop = asyncio.get_running_loop()
        sock = await pool.asocket(ns_pid)
        try:
            connect = loop.sock_connect(sock, server.getsockname())
            (peer, _), _ = await asyncio.gather(loop.sock_accept(server), connect)
            await loop.sock_sendall(peer, b"hi")
            return await loop.sock_recv(sock, 2)
        finally:
            sock.close()
            server.close()
            with contextlib.suppress(NameError):
                peer.close()

    assert asyncio.run(asyncio.wait_for(main(), WAIT)) == b"hi"


def test_no_pid_or_the_home_namespace_runs_inline(pool: NetnsPool) -> None:
    assert pool.run(None, threading.get_ident) == threading.get_ident()
    assert pool.run(os.getpid(), threading.get_ident) == threading.get_ident()
    assert pool.stats() == netns.NetnsStats(threads=0, jobs=0, inline=2, stray=0)


def test_a_pid_that_exited_is_gone(pool: NetnsPool) -> None:
    proc = subprocess.Popen(["unshare", "-n", "true"])
    proc.wait()
    with pytest.raises(NamespaceGone, match=rf"container is gone \(pid {proc.pid} has exited\)"):
        pool.socket(proc.pid)
    with pytest.raises(NamespaceGone):
        asyncio.run(pool.asocket(proc.pid))
    with pytest.raises(NamespaceGone):
        netns_of(proc.pid)


def test_a_namespace_pinned_by_its_job_survives_its_process() -> None:
    """The fd opened at submit pins the namespace: a job whose pid exits before it runs
    still runs there (and the fd is closed afterwards)."""
    proc = subprocess.Popen(["unshare", "-n", "sleep", "600"])
    with NetnsPool(threads=1) as pool:
        wait_until(lambda: netns_of(proc.pid) != pool.home)  # unshare has exec'd sleep
        target = netns_of(proc.pid)
        gate = threading.Event()
        busy = pool.submit(proc.pid, gate.wait, WAIT)  # holds the only thread
        queued = pool.submit(proc.pid, thread_netns)
        proc.kill()
        proc.wait()
        gate.set()
        assert busy.result(WAIT)
        assert queued.result(WAIT) == target


def test_permission_errors_say_what_is_missing(ns_pid: int) -> None:
    code = (
        "import sys\n"
        "from dockmesh.host.netns import NetnsPool, NetnsPermissionError\n"
        "with NetnsPool() as pool:\n"
        "    try:\n"
        f"        pool.socket({ns_pid})\n"
        "    except NetnsPermissionError as e:\n"
        "        print(e)\n"
        "        sys.exit(3)\n"
    )
    # Root without CAP_SYS_ADMIN opens the namespace file but setns refuses.
    drop = ["setpriv", "--inh-caps=-sys_admin", "--bounding-set=-sys_admin"]
    no_admin = subprocess.run(
        [*drop, sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=WAIT * 3,
    )
    assert no_admin.returncode == 3, no_admin.stderr
    assert f"cannot enter the network namespace of pid {ns_pid}" in no_admin.stdout
    # A process in a user namespace of its own may not even open it.
    other_user = subprocess.run(
        ["unshare", "-U", sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=WAIT * 3,
    )
    assert other_user.returncode == 3, other_user.stderr
    assert f"no access to the network namespace of pid {ns_pid}" in other_user.stdout


def test_errors_of_the_job_reach_the_caller_and_the_thread_still_comes_home(
    pool: NetnsPool, ns_pid: int
) -> None:
    def boom() -> None:
        raise ValueError("inside")

    with pytest.raises(ValueError, match="inside"):
        pool.run(ns_pid, boom)
    assert threads_netns() == {pool.home}
    assert pool.run(ns_pid, thread_netns) == netns_of(ns_pid)


def test_a_thread_that_cannot_get_home_takes_no_more_jobs(
    monkeypatch: pytest.MonkeyPatch, pool: NetnsPool, ns_pid: int
) -> None:
    real = netns._setns
    home_calls = 0

    def flaky(fd: int, nstype: int) -> None:
        nonlocal home_calls
        if os.fstat(fd).st_ino == pool.home[1]:
            home_calls += 1
            if home_calls == 1:  # the first return from a job
                raise OSError(1, "refused for the test")
        real(fd, nstype)

    monkeypatch.setattr(netns, "_setns", flaky)
    first = pool.submit(ns_pid, threading.get_native_id)
    stray_tid = first.result(WAIT)  # the job itself succeeded
    wait_until(lambda: pool.stats().stray == 1 and pool.stats().threads == 0)
    # It ends where it is, taking its namespace with it.
    wait_until(lambda: not os.path.exists(f"/proc/self/task/{stray_tid}"))
    assert pool.run(ns_pid, threading.get_native_id) != stray_tid
    assert threads_netns() == {pool.home}


def test_a_waiter_cancelled_while_its_job_runs_does_not_leak_the_socket(
    pool: NetnsPool, ns_pid: int
) -> None:
    made: list[socket.socket] = []
    started, gate = threading.Event(), threading.Event()

    def slow_socket() -> socket.socket:
        started.set()
        gate.wait(WAIT)
        s = socket.socket()
        made.append(s)
        return s

    async def main() -> None:
        task = asyncio.ensure_future(pool.arun(ns_pid, slow_socket, discard=socket.socket.close))
        await asyncio.to_thread(started.wait, WAIT)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        gate.set()

    asyncio.run(main())
    wait_until(lambda: bool(made) and made[0].fileno() == -1)


def test_a_job_cancelled_before_it_runs_never_runs_and_frees_its_fd(ns_pid: int) -> None:
    fds = open_fds()
    ran: list[int] = []
    with NetnsPool(threads=1) as pool:
        gate = threading.Event()
        busy = pool.submit(ns_pid, gate.wait, WAIT)
        queued = pool.submit(ns_pid, ran.append, 1)
        assert queued.cancel()
        gate.set()
        assert busy.result(WAIT)
        assert pool.run(ns_pid, thread_netns) == netns_of(ns_pid)  # after the cancelled one
    assert ran == []
    assert open_fds() == fds


def test_nothing_outlives_the_pool(ns_pid: int) -> None:
    fds, threads = open_fds(), threading.active_count()
    pool = NetnsPool(threads=4)
    for _ in range(200):
        pool.socket(ns_pid).close()
    with contextlib.suppress(NamespaceGone):
        pool.socket(2**22 + 1)  # above pid_max's default: never a live pid

    async def many() -> None:
        socks = await asyncio.gather(*(pool.asocket(ns_pid) for _ in range(100)))
        for s in socks:
            s.close()

    asyncio.run(many())
    assert threads_netns() == {pool.home}
    pool.close()
    assert threading.active_count() == threads
    assert open_fds() == fds
    with pytest.raises(NetnsError, match="closed"):
        pool.socket(ns_pid)


def test_idle_threads_leave(ns_pid: int) -> None:
    with NetnsPool(threads=2, idle_s=0.05) as pool:
        pool.run(ns_pid, thread_netns)
        wait_until(lambda: pool.stats().threads == 0)
        assert pool.run(ns_pid, thread_netns) == netns_of(ns_pid)  # a new one starts


def test_queued_jobs_fail_cleanly_when_the_pool_closes_without_threads(ns_pid: int) -> None:
    fds = open_fds()
    pool = NetnsPool(threads=1)
    gate = threading.Event()
    busy = pool.submit(ns_pid, gate.wait, WAIT)
    queued = [pool.submit(ns_pid, thread_netns) for _ in range(3)]
    gate.set()
    pool.close()
    assert busy.result(WAIT)
    # They ran before the threads stopped: close lets queued jobs finish.
    assert {f.result(WAIT) for f in queued} == {netns_of(ns_pid)}
    assert open_fds() == fds
