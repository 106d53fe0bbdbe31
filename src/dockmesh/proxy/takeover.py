"""`dockmesh proxy --takeover`: a new proxy receives the listening sockets of the one serving
its port, then that one drains — a restart (a new version, new flags) with no refused and no
reset connection, as HAProxy's `-x` with `expose-fd listeners` does it.

Theory of operation
-------------------
Every proxy serves a control socket, a unix socket under the run directory named after its
`--listen` address (`control_path`), readable by its own user only (and root). The exchange,
one line each way:

    new → old   takeover
    old → new   fds N        (with the N listening sockets, SCM_RIGHTS)
    new → old   go           (the new one is serving them)
    old → new   draining     (the old one stops accepting, finishes what is in flight, exits)

Both processes hold the very same sockets (not new ones bound beside them), so a connection
the kernel queued is accepted by whichever process asks first and none is reset: the old one
accepts until it hears `go`, the new one from the moment it listens. A new proxy that fails
before `go` leaves the old one serving as before. The new proxy binds the control socket's
name anew before its `go` (the old one, exiting, removes the name only while it is still its
own), so it can be taken over in turn.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import stat
import struct
from collections.abc import Callable

CONTROL_DIRS = ("/run/dockmesh", "/tmp/dockmesh-run")
MAX_FDS = 256  # the most workers there can be: one socket each
HANDOFF_TIMEOUT_S = 10.0


class TakeoverError(Exception):
    """No proxy to take over, or it did not hand its sockets over."""


def run_dir() -> str:
    """Where control sockets live: $DOCKMESH_RUN_DIR, else the first writable of
    CONTROL_DIRS (a user's own under /tmp when /run/dockmesh is root's). Only a directory
    this user (or root) owns that no one else may write to: in one another user made first
    (`/tmp/dockmesh-run-<uid>` is a name anyone can take) or one open to all, a stranger
    could put its own socket at the name a `--takeover` connects to, or remove ours."""
    given = os.environ.get("DOCKMESH_RUN_DIR")
    candidates = [given] if given else [*CONTROL_DIRS[:1], f"{CONTROL_DIRS[1]}-{os.getuid()}"]
    unsafe = []
    for d in candidates:
        with contextlib.suppress(OSError):
            os.makedirs(d, mode=0o700, exist_ok=True)
            if not os.access(d, os.W_OK):
                continue
            why = unsafe_dir(os.stat(d), os.getuid())
            if why is None:
                return d
            unsafe.append(f"{d} {why}")
    if unsafe:
        raise TakeoverError(f"no safe run directory: {'; '.join(unsafe)}")
    raise TakeoverError(f"no writable run directory ({', '.join(candidates)})")


def unsafe_dir(st: os.stat_result, uid: int) -> str | None:
    """Why a directory with status `st` cannot hold the control sockets of user `uid`, or
    None when it can."""
    if not stat.S_ISDIR(st.st_mode):
        return "is not a directory"
    if st.st_uid not in (0, uid):
        return f"belongs to another user (uid {st.st_uid})"
    if st.st_mode & 0o022:
        return f"may be written by others (mode {stat.S_IMODE(st.st_mode):o})"
    return None


def control_path(host: str, port: int, directory: str | None = None) -> str:
    """The control socket of the proxy listening on (host, port)."""
    name = host.replace(":", "_").replace("/", "_") or "any"
    return os.path.join(directory or run_dir(), f"proxy-{name}-{port}.sock")


def _peer_allowed(conn: socket.socket) -> bool:
    """Only the proxy's own user (or root) may take its sockets."""
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return uid in (0, os.getuid())


class Control:
    """The serving side: hands `socks` (copies of the listening sockets, held for this) to a
    successor and calls `on_takeover` once it serves them."""

    def __init__(
        self, path: str, socks: list[socket.socket], on_takeover: Callable[[], None]
    ) -> None:
        self.path = path
        self.socks = [s.dup() for s in socks]
        self.on_takeover = on_takeover
        self.listener: socket.socket | None = None
        self.inode = 0
        self.task: asyncio.Task[None] | None = None
        self.handed_over = False
        # A successor holds the sockets and has not said `go` (or given up) yet: another
        # asking meanwhile gets none, else both would serve the port, and the old one drain.
        self.pending = False

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        lsock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)  # a predecessor's (it keeps its open socket), or stale
            old_mask = os.umask(0o177)
            try:
                lsock.bind(self.path)
            finally:
                os.umask(old_mask)
            lsock.listen(4)
            lsock.setblocking(False)
            self.inode = os.stat(self.path).st_ino
        except OSError:
            lsock.close()
            raise
        self.listener = lsock
        self.task = loop.create_task(self._serve(loop, lsock))

    async def _serve(self, loop: asyncio.AbstractEventLoop, lsock: socket.socket) -> None:
        while True:
            conn, _ = await loop.sock_accept(lsock)
            loop.create_task(self._handle(loop, conn))

    async def _handle(self, loop: asyncio.AbstractEventLoop, conn: socket.socket) -> None:
        with conn:
            conn.setblocking(False)
            try:
                if not _peer_allowed(conn):
                    return
                async with asyncio.timeout(HANDOFF_TIMEOUT_S * 3):
                    if await _readline(loop, conn) != b"takeover":
                        return
                    if not self.socks or self.pending or self.handed_over:
                        await loop.sock_sendall(conn, b"busy\n")
                        return
                    self.pending = True
                    try:
                        fds = [s.fileno() for s in self.socks]
                        socket.send_fds(conn, [b"fds %d\n" % len(fds)], fds)
                        if await _readline(loop, conn) != b"go":
                            return  # the new proxy failed: this one serves on
                        await loop.sock_sendall(conn, b"draining\n")
                    finally:
                        self.pending = False
            except (OSError, TimeoutError):
                return
        self.handed_over = True
        self.on_takeover()

    def release(self) -> None:
        """The held copies close (a drain: the port is no longer served by this process)."""
        for s in self.socks:
            s.close()
        self.socks = []

    def forget(self) -> None:
        """In a forked child: its copies of the control's sockets close, the name stays."""
        self.release()
        if self.listener is not None:
            self.listener.close()
            self.listener = None

    def close(self) -> None:
        self.release()
        if self.task is not None:
            self.task.cancel()
        if self.listener is not None:
            self.listener.close()
            self.listener = None
            # The name is a successor's once it bound it anew: left alone then.
            with contextlib.suppress(OSError):
                if os.stat(self.path).st_ino == self.inode:
                    os.unlink(self.path)


async def _readline(loop: asyncio.AbstractEventLoop, conn: socket.socket) -> bytes:
    buf = b""
    while not buf.endswith(b"\n"):
        chunk = await loop.sock_recv(conn, 64)
        if not chunk or len(buf) > 64:
            raise OSError("the control connection closed")
        buf += chunk
    return buf.strip()


class Handoff:
    """The taking side: the sockets received, and the connection to say `go` on."""

    def __init__(self, conn: socket.socket, socks: list[socket.socket]) -> None:
        self.conn = conn
        self.socks = socks

    def confirm(self) -> None:
        """This process serves the sockets now: the old one drains."""
        try:
            self.conn.sendall(b"go\n")
            reply = self.conn.recv(64)
        except OSError as e:
            raise TakeoverError(f"the old proxy did not answer: {e.strerror or e}") from None
        finally:
            self.conn.close()
        if reply.strip() != b"draining":
            raise TakeoverError("the old proxy did not confirm its drain")

    def abandon(self) -> None:
        self.conn.close()


def take_over(path: str, host: str, port: int) -> Handoff:
    """Connects to the proxy serving (host, port) and receives its listening sockets."""
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.settimeout(HANDOFF_TIMEOUT_S)
    try:
        try:
            conn.connect(path)
        except OSError as e:
            raise TakeoverError(
                f"no dockmesh proxy serves {host}:{port} to take over ({path}: {e.strerror or e})"
            ) from None
        if not _peer_allowed(conn):
            # Not our proxy: a stranger's socket at the name. Nothing is asked of it.
            raise TakeoverError(f"{path} is served by another user's process")
        try:
            conn.sendall(b"takeover\n")
            msg, fds, _flags, _addr = socket.recv_fds(conn, 64, MAX_FDS)
        except OSError as e:
            raise TakeoverError(f"the proxy at {path} did not answer: {e.strerror or e}") from None
        socks = [socket.socket(fileno=fd) for fd in fds]
        if msg.startswith(b"busy"):
            raise TakeoverError(
                f"the proxy at {path} handed no socket over: another takeover of it is under "
                "way or done"
            )
        if not msg.startswith(b"fds ") or not socks:
            for s in socks:
                s.close()
            raise TakeoverError(f"the proxy at {path} handed no socket over")
        for s in socks:
            s.setblocking(False)
        if not any(serves(s, host, port) for s in socks):
            for s in socks:
                s.close()
            raise TakeoverError(f"the proxy at {path} does not listen on {host}:{port}")
    except BaseException:
        conn.close()
        raise
    return Handoff(conn, socks)


def serves(sock: socket.socket, host: str, port: int) -> bool:
    """Whether the listening `sock` is the one for (host, port)."""
    name = sock.getsockname()
    if not isinstance(name, tuple) or name[1] != port:
        return False
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError:
        return False
    return any(info[4][0] == name[0] for info in infos)
