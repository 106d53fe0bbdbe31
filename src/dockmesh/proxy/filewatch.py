"""The routes file watched for changes (`--config`): its identity (device, inode, size,
modification time) looked at once a second, as the agent's policy store watches its file.
An editor that writes a new file and renames it over the old one changes the inode; one
that writes in place changes the size or the time. A change calls `changed` — the same
reload as SIGHUP, which keeps the running configuration when the new file is bad.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable

Identity = tuple[int, int, int, int]


def identity(path: str) -> Identity | None:
    """What tells one version of the file from another; None while it is missing."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


async def watch_file(path: str, changed: Callable[[], None], interval_s: float = 1.0) -> None:
    """Calls `changed` after each change of the file at `path` (not while it is missing: a
    file being replaced is read once it is back), until cancelled."""
    last = identity(path)
    while True:
        await asyncio.sleep(interval_s)
        now = identity(path)
        if now != last:
            last = now
            if now is not None:
                changed()
