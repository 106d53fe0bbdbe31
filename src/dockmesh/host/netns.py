"""Running code inside another process's network namespace, from the host.

A container that ships no tools still has a network namespace, reachable as
`/proc/<pid>/ns/net`. A socket belongs to the namespace of the thread that created it, for its
whole life, whatever thread uses it later. So entering a namespace is only needed for a moment:
a worker thread `setns`es into it, creates the socket (or binds, or reads an interface), and
`setns`es back. The socket is then handed to the caller; a non-blocking one is driven by the
caller's event loop like any other (`loop.sock_connect`, `asyncio.open_connection(sock=...)`).

Theory of operation
-------------------
- Python 3.11 has no `os.setns`: libc's is called through ctypes (3.12's `os.setns` when it
  exists). `setns` changes the namespace of the calling *thread* only, so it is called only on
  the pool's own threads, which never run anything but the pool's jobs.
- A job is: enter the target namespace, run a short function, return to the home namespace
  (the one the pool was created in), and only then publish the function's result. When a
  caller gets its result, the thread that ran the job is home again. Each entry and each
  return is verified against `/proc/thread-self/ns/net`; a thread that cannot get home (which
  the kernel gives no reason for once the first `setns` worked) takes no further job and exits,
  and a new thread replaces it, so a foreign namespace never leaks into later work.
- Switching back after every job, rather than parking a thread per namespace, means the pool
  never keeps a dead container's namespace alive and needs no per-namespace bookkeeping; a
  `setns` pair costs about 15 µs, far below the cost of what callers do with the sockets.
- The namespace file is opened on the caller's thread when the job is submitted: the pid is
  resolved at once (a pid that exits later does not matter: the open file pins the
  namespace until the job ran), a pid that is gone is reported synchronously, and a target
  that is the home namespace (a container on the host network) runs inline. Every namespace
  file descriptor is closed exactly once, whatever happens to the job.
- Threads start on demand, up to `threads`, and exit after `idle_s` without work.

Jobs must be short and must not block: they run one at a time per thread, and a job that
waits on the network stalls every namespace behind it. Do the I/O on the caller's side with
the sockets a job made.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import ctypes
import errno
import logging
import os
import queue
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")
# The pool has a method named `socket`: these keep the module's names reachable in its body.
Socket = socket.socket
AF_INET = socket.AF_INET
SOCK_STREAM = socket.SOCK_STREAM

CLONE_NEWNET = 0x40000000
_SELF_NS = "/proc/thread-self/ns/net"


class NetnsError(Exception):
    """A network namespace could not be entered; `errno` says why when the kernel did."""

    def __init__(self, message: str, err: int | None = None) -> None:
        super().__init__(message)
        self.errno = err


class NamespaceGone(NetnsError):
    """The process whose namespace was asked for has exited (its container is gone)."""

    def __init__(self, pid: int) -> None:
        super().__init__(f"container is gone (pid {pid} has exited)", errno.ESRCH)
        self.pid = pid


class NetnsPermissionError(NetnsError):
    """Entering the namespace needs CAP_SYS_ADMIN over it (run as root, or with the agent's
    privileges) and ptrace access to the pid."""


NsId = tuple[int, int]  # (st_dev, st_ino) of a namespace file: the namespace's identity


def _ns_id(st: os.stat_result) -> NsId:
    return (st.st_dev, st.st_ino)


def thread_netns() -> NsId:
    """The network namespace of the calling thread."""
    return _ns_id(os.stat(_SELF_NS))


def netns_of(pid: int) -> NsId:
    """The network namespace of `pid` (NamespaceGone when it has exited)."""
    try:
        return _ns_id(os.stat(f"/proc/{pid}/ns/net"))
    except OSError as e:
        raise _open_error(pid, e) from e


def _open_error(pid: int, e: OSError) -> NetnsError:
    if e.errno in (errno.ENOENT, errno.ESRCH):
        return NamespaceGone(pid)
    if e.errno in (errno.EACCES, errno.EPERM):
        return NetnsPermissionError(
            f"no access to the network namespace of pid {pid}: {e.strerror}", e.errno
        )
    return NetnsError(f"network namespace of pid {pid}: {e.strerror}", e.errno)


def _libc_setns() -> Callable[[int, int], None]:
    native: Callable[[int, int], None] | None = getattr(os, "setns", None)
    if native is not None:
        return native
    # CDLL(None): the symbols the interpreter already links, libc's among them (glibc or musl).
    fn = ctypes.CDLL(None, use_errno=True).setns
    fn.argtypes = (ctypes.c_int, ctypes.c_int)
    fn.restype = ctypes.c_int

    def setns(fd: int, nstype: int) -> None:
        if fn(fd, nstype) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))

    return setns


_setns = _libc_setns()


def _enter(fd: int, pid: int) -> None:
    try:
        _setns(fd, CLONE_NEWNET)
    except OSError as e:
        if e.errno == errno.EPERM:
            raise NetnsPermissionError(
                f"cannot enter the network namespace of pid {pid}: {e.strerror}", e.errno
            ) from e
        raise NetnsError(f"setns into pid {pid}'s network namespace: {e.strerror}", e.errno) from e


@dataclass(frozen=True, slots=True)
class NetnsStats:
    threads: int  # alive now
    jobs: int  # run in another namespace
    inline: int  # run at once, the target being the home namespace (or no pid)
    stray: int  # threads that could not get home and exited


class _Job:
    """A function to run in one namespace; owns the namespace's file descriptor."""

    __slots__ = ("args", "fd", "fn", "future", "ns", "pid")

    def __init__(
        self,
        pid: int,
        fd: int,
        ns: NsId,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
    ) -> None:
        self.pid, self.fd, self.ns, self.fn, self.args = pid, fd, ns, fn, args
        self.future: concurrent.futures.Future[Any] = concurrent.futures.Future()

    def close_fd(self) -> None:
        fd, self.fd = self.fd, -1
        if fd >= 0:
            os.close(fd)


class NetnsPool:
    """Threads that run short functions inside other processes' network namespaces.

    `socket(pid, ...)` / `await asocket(pid, ...)` return a socket made in `pid`'s namespace;
    `submit(pid, fn, *args)` runs anything else there (bind a listener, read interfaces). A
    `pid` of None means the caller's own namespace. Errors: `NamespaceGone`,
    `NetnsPermissionError`, `NetnsError`. Thread-safe; `close()` when done.
    """

    def __init__(self, threads: int = 2, idle_s: float = 30.0) -> None:
        if threads < 1:
            raise ValueError("a pool needs at least one thread")
        self._size = threads
        self._idle_s = idle_s
        self._lock = threading.Lock()
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._threads: set[threading.Thread] = set()
        self._waiting = 0  # threads blocked on the queue
        self._closed = False
        self._jobs = 0
        self._inline = 0
        self._stray = 0
        self._home_fd = os.open(_SELF_NS, os.O_RDONLY | os.O_CLOEXEC)
        self.home: NsId = _ns_id(os.fstat(self._home_fd))

    # --- the caller's side -------------------------------------------------------------------

    def submit(
        self, pid: int | None, fn: Callable[..., T], *args: Any
    ) -> concurrent.futures.Future[T]:
        """Runs `fn(*args)` in `pid`'s network namespace on a pool thread. Raises at once
        when `pid` is gone or not accessible; the future carries what `fn` raises or a
        failure to enter."""
        if pid is None:
            return self._inline_run(fn, args)
        try:
            fd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:
            raise _open_error(pid, e) from e
        try:
            ns = _ns_id(os.fstat(fd))
            if ns == self.home:
                return self._inline_run(fn, args)
            job = _Job(pid, fd, ns, fn, args)
            with self._lock:
                if self._closed:
                    raise NetnsError("the namespace pool is closed", errno.EBADF)
                self._queue.put(job)
                fd = -1  # the job owns it now
                if self._waiting == 0 and len(self._threads) < self._size:
                    self._start_thread()
            return job.future
        finally:
            if fd >= 0:
                os.close(fd)

    def run(self, pid: int | None, fn: Callable[..., T], *args: Any) -> T:
        """`submit`, waiting for the result."""
        return self.submit(pid, fn, *args).result()

    async def arun(
        self,
        pid: int | None,
        fn: Callable[..., T],
        *args: Any,
        discard: Callable[[T], object] | None = None,
    ) -> T:
        """`submit`, awaited without blocking the loop. When the awaiting task is cancelled
        after the job ran, `discard(result)` releases what it made (a socket, a file)."""
        future = self.submit(pid, fn, *args)
        try:
            return await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            if discard is not None:
                future.add_done_callback(lambda f: _discard_result(f, discard))
            raise

    def socket(
        self,
        pid: int | None,
        family: int = AF_INET,
        type: int = SOCK_STREAM,
        proto: int = 0,
    ) -> Socket:
        """A non-blocking socket created in `pid`'s network namespace."""
        return self.run(pid, _new_socket, family, type, proto)

    async def asocket(
        self,
        pid: int | None,
        family: int = AF_INET,
        type: int = SOCK_STREAM,
        proto: int = 0,
    ) -> Socket:
        """`socket`, awaited; the socket is closed if the caller is cancelled meanwhile."""
        return await self.arun(pid, _new_socket, family, type, proto, discard=_close)

    def stats(self) -> NetnsStats:
        with self._lock:
            return NetnsStats(len(self._threads), self._jobs, self._inline, self._stray)

    def thread_ids(self) -> list[int]:
        """The kernel ids of the pool's threads (`/proc/self/task/<id>`)."""
        with self._lock:
            return [t.native_id for t in self._threads if t.native_id is not None]

    def close(self, timeout_s: float = 5.0) -> None:
        """Stops the threads once the queued jobs ran; later submits raise NetnsError."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            threads = list(self._threads)
            for _ in threads:
                self._queue.put(None)
        deadline = time.monotonic() + timeout_s
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()))
        with self._lock:
            left = [t for t in self._threads if t.is_alive()]
            # Jobs no thread will run (there were none to take them): fail them, free fds.
            self._fail_queued("the namespace pool is closed", errno.EBADF)
        if left:
            # A job is still running: its thread needs the home fd to get back.
            log.warning("netns pool closed with %d thread(s) still busy", len(left))
            return
        os.close(self._home_fd)

    def __enter__(self) -> NetnsPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- the pool's threads ------------------------------------------------------------------

    def _inline_run(
        self, fn: Callable[..., T], args: tuple[Any, ...]
    ) -> concurrent.futures.Future[T]:
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        with self._lock:
            self._inline += 1
        try:
            future.set_result(fn(*args))
        except Exception as e:
            future.set_exception(e)
        return future

    def _start_thread(self) -> None:
        """With the lock held."""
        t = threading.Thread(target=self._work, name="dockmesh-netns", daemon=True)
        self._threads.add(t)
        t.start()

    def _work(self) -> None:
        me = threading.current_thread()
        healthy = False
        try:
            # A thread starts in its creator's namespace. That is home, except for the
            # replacement of a thread that could not get back: it goes home before any job.
            healthy = thread_netns() == self.home or self._go_home()
            while healthy and self._take_and_run():
                pass
        finally:
            with self._lock:
                self._threads.discard(me)
                orphans = not self._threads and not self._closed and not self._queue.empty()
                if orphans and healthy:
                    # The last thread went stray, or a job came in as it went idle: hand on.
                    self._start_thread()
                elif orphans:
                    # A replacement could not get home either: no thread can serve, so the
                    # queued jobs fail instead of waiting forever.
                    self._fail_queued("no thread of the namespace pool can return home")

    def _fail_queued(self, reason: str, err: int | None = None) -> None:
        """With the lock held."""
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                return
            if job is not None:
                _fail(job, NetnsError(reason, err))

    def _take_and_run(self) -> bool:
        """Runs one job; False when this thread must stop."""
        with self._lock:
            self._waiting += 1
        try:
            job = self._queue.get(timeout=self._idle_s)
        except queue.Empty:
            with self._lock:
                self._waiting -= 1
                # Idle: leave unless a job arrived just now (put under this same lock).
                return not self._queue.empty()
        with self._lock:
            self._waiting -= 1
        if job is None:
            return False
        return self._run(job)

    def _run(self, job: _Job) -> bool:
        if not job.future.set_running_or_notify_cancel():
            job.close_fd()
            return True
        value: Any = None
        error: BaseException | None = None
        entered = False
        try:
            _enter(job.fd, job.pid)
            entered = True
            if thread_netns() != job.ns:
                raise NetnsError(f"setns into pid {job.pid} did not take", errno.EINVAL)
            value = job.fn(*job.args)
        except BaseException as e:
            error = e
        finally:
            job.close_fd()
        home = not entered or self._go_home()
        with self._lock:
            self._jobs += 1
        # Published only now: when a caller sees the result, this thread is home (or, if it
        # could not get back, it is about to exit without taking another job).
        if error is not None:
            job.future.set_exception(error)
        else:
            job.future.set_result(value)
        return home

    def _go_home(self) -> bool:
        try:
            _setns(self._home_fd, CLONE_NEWNET)
            if thread_netns() == self.home:
                return True
            log.error("netns pool thread is not home after setns; it stops")
        except OSError:
            log.exception("netns pool thread could not return home; it stops")
        with self._lock:
            self._stray += 1
        return False


def _new_socket(family: int, type: int, proto: int) -> Socket:
    sock = socket.socket(family, type, proto)
    sock.setblocking(False)
    return sock


def _close(sock: Socket) -> None:
    sock.close()


def _discard_result(future: concurrent.futures.Future[T], discard: Callable[[T], object]) -> None:
    if future.cancelled() or future.exception() is not None:
        return
    with contextlib.suppress(Exception):
        discard(future.result())


def _fail(job: _Job, error: BaseException) -> None:
    job.close_fd()
    if job.future.set_running_or_notify_cancel():
        job.future.set_exception(error)
