"""The sockets a process's network namespace listens on, read from the host.

`/proc/<pid>/net/{tcp,tcp6,udp,udp6}` shows the namespace of `<pid>`: nothing is entered and
nothing runs in the container, so it works on images built FROM scratch. The text is read
here and decoded by `dockmesh.codecs.procnet`."""

from __future__ import annotations

from collections.abc import Sequence

from dockmesh.codecs.procnet import Listener, parse_net_sockets
from dockmesh.host.procfs import read_proc_net

# The files, and the protocol each holds.
_PROTOCOL = {"tcp": "tcp", "tcp6": "tcp", "udp": "udp", "udp6": "udp"}
ALL_FILES = ("tcp", "tcp6", "udp", "udp6")


def listening(pid: int, files: Sequence[str] = ALL_FILES) -> tuple[Listener, ...] | None:
    """TCP sockets in LISTEN and UDP sockets bound but not connected, in `pid`'s namespace,
    from the files named (all four by default). None when none of them could be read (the
    process is gone, or no permission); a file missing alone (no IPv6) is skipped."""
    out: list[Listener] = []
    read_any = False
    for name in files:
        try:
            text = read_proc_net(pid, name)
        except OSError:
            continue
        read_any = True
        out.extend(parse_net_sockets(text, _PROTOCOL[name]))
    return tuple(out) if read_any else None
