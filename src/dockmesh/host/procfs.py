"""Reading `/proc/<pid>/net/*` from the host: each file shows the network namespace of
`<pid>`, so a container's sockets, interfaces and routes are read without entering it."""

from __future__ import annotations

import os


def read_proc_net(pid: int, name: str) -> str:
    """The text of `/proc/<pid>/net/<name>`. OSError when it cannot be read (the process is
    gone, no permission, no IPv6 in the namespace)."""
    # os.read rather than open(): no file object, no buffer, usually one read(2) for these
    # small files (reading them is mostly the kernel formatting them). A seq file gives a
    # page or so per read: read to the end. The kernel writes ASCII.
    fd = os.open(f"/proc/{pid}/net/{name}", os.O_RDONLY | os.O_CLOEXEC)
    try:
        chunks = [os.read(fd, 65536)]
        while chunks[-1]:
            chunks.append(os.read(fd, 65536))
    finally:
        os.close(fd)
    return b"".join(chunks).decode("ascii", "replace")
