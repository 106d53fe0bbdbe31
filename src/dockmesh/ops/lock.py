"""One `up` or `down` of a project at a time on an engine.

A second run waits for the first (it then plans against what the first left, so two
concurrent `up` converge), and says so while it waits. The lock is an flock on a file named
after the engine and the project: it is released by the kernel when the holder dies, so a
killed run never leaves a stale lock behind. It serialises runs on this machine only.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import time
from collections.abc import Callable, Iterator
from urllib.parse import urlsplit

LOCK_DIRS = ("/run/dockmesh", "/tmp/dockmesh-locks")


def _lock_dir() -> str:
    for d in LOCK_DIRS:
        try:
            os.makedirs(d, mode=0o755, exist_ok=True)
            if os.access(d, os.W_OK):
                return d
        except OSError:
            continue
    raise OSError(f"no writable lock directory ({', '.join(LOCK_DIRS)})")


def engine_key(url: str) -> str:
    """One engine, however its URL is spelled: a unix socket by the file it resolves to
    (`/var/run` is a link to `/run`; `unix:////x` is `/x`), a TCP engine by host and port."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return "unix:" + os.path.realpath(parts.path or "/")
    try:
        return f"{parts.scheme}:{(parts.hostname or '').lower()}:{parts.port or ''}"
    except ValueError:
        return url


@contextlib.contextmanager
def project_lock(
    engine_url: str,
    project: str,
    on_wait: Callable[[str], None] = lambda _msg: None,
    timeout_s: float = 600.0,
) -> Iterator[None]:
    key = hashlib.sha256(f"{engine_key(engine_url)}\0{project}".encode()).hexdigest()[:16]
    path = os.path.join(_lock_dir(), f"{key}.lock")
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
            on_wait(f"waiting for another dockmesh run on project {project} (pid {holder})")
            deadline = time.monotonic() + timeout_s
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise TimeoutError(
                            f"project {project} is still locked by pid {holder} after "
                            f"{timeout_s:.0f} s"
                        ) from None
                    time.sleep(0.1)
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock
