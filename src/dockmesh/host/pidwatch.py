"""Following containers' processes from the host, without the engine.

`PidWatch.follow({container id: pid})` keeps one pidfd per process (`os.pidfd_open`), read by
the asyncio loop (`loop.add_reader`): the kernel makes it readable the moment the process
ends, so a death is heard at once and costs nothing until then. Where pidfds are not
available (an old kernel, a seccomp profile that refuses the call) the processes are polled
in /proc instead: gone, a zombie, or another start time under the same pid is an end.

A pid is followed only once it is known to be the container's: its /proc/<pid>/cgroup names
the container's id. That is what keeps a reused pid from standing in for a dead container,
and what makes an agent that does not share the host's pids (a container without `--pid
host`) follow nothing rather than declare everything dead. A process that cannot be shown
to be the container's is not followed and never reported: the engine's events stay the
word on it.

Runs on the loop's thread: `start`, `follow` and `close` are called there, and `on_exit`
is called there.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import resource
import select
from collections.abc import Callable, Mapping
from dataclasses import dataclass

log = logging.getLogger(__name__)

OnExit = Callable[[str, int], None]
POLL_S = 0.2  # the /proc fallback's period: well inside the second a death must take
# Descriptors left to the rest of the agent (its HTTP and DNS clients' sockets, the state
# file, the engines' connections): past the limit less these, processes are polled in /proc.
RESERVE_FDS = 256


def stat_start(text: str) -> tuple[str, int] | None:
    """(state, start time in clock ticks) from the text of /proc/<pid>/stat, or None when it
    is not one. The command name (field 2) may hold spaces and parentheses: the fields after
    it are found after its last ')'."""
    _, paren, rest = text.rpartition(")")
    fields = rest.split()
    if not paren or len(fields) < 20 or not fields[19].isdigit():
        return None
    return fields[0], int(fields[19])


def names_container(cgroup_text: str, container_id: str) -> bool:
    """Whether /proc/<pid>/cgroup's text puts the process in the container's cgroup (Docker
    names it after the full id: `/docker/<id>`, `docker-<id>.scope`, seen from another cgroup
    namespace as `/../docker-<id>.scope`)."""
    return len(container_id) >= 12 and container_id in cgroup_text


def shown_here(pid: int, container_id: str, proc: str = "/proc") -> bool:
    """Whether the pid an engine reported for a container is shown to be that container's
    process on this machine (`names_container`), the rule `PidWatch` follows by. An engine
    on another host reports pids of that host's pid namespace: here they are some other
    process or none, and entering their namespaces would probe from the wrong place."""
    try:
        with open(f"{proc}/{pid}/cgroup", encoding="utf-8", errors="replace") as f:
            return names_container(f.read(), container_id)
    except OSError:
        return False


@dataclass(slots=True)
class _Followed:
    pid: int
    fd: int | None  # the pidfd; None: polled in /proc
    start: int | None = None  # polled: the start time first read


class PidWatch:
    """Follows processes for the agent: see the module. `proc` is where /proc is mounted;
    `pidfds=False` polls it even where pidfds work."""

    def __init__(self, proc: str = "/proc", poll_s: float = POLL_S, pidfds: bool = True) -> None:
        self._proc = proc
        self._poll_s = poll_s
        self._on_exit: OnExit | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._followed: dict[str, _Followed] = {}
        # Container id → a pid not shown to be its own: not tried again for that pid.
        self._unproven: dict[str, int] = {}
        self._pidfds = pidfds and hasattr(os, "pidfd_open")
        self._poller: asyncio.Task[None] | None = None
        # How many pidfds may be open at once (set by `start` from the descriptor limit).
        self._max_pidfds: int | None = None
        self._open_pidfds = 0

    # --- what the agent calls -----------------------------------------------------------

    def start(self, on_exit: OnExit) -> None:
        self._on_exit = on_exit
        self._loop = asyncio.get_running_loop()
        # A descriptor per followed process: a host with a thousand containers is over the
        # usual soft limit of 1024, and the hard limit is there to be taken.
        with contextlib.suppress(ValueError, OSError):
            soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
            want = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
            if soft != resource.RLIM_INFINITY and soft < want:
                resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        # A pidfd per process up to the limit left every descriptor to them where the hard
        # limit is low: the agent's API and DNS then failed to accept (EMFILE). Past its
        # budget a process is polled in /proc instead.
        with contextlib.suppress(ValueError, OSError):
            soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
            if soft != resource.RLIM_INFINITY:
                self._max_pidfds = max(0, soft - RESERVE_FDS)

    @property
    def count(self) -> int:
        return len(self._followed)

    @property
    def method(self) -> str:
        return "pidfd" if self._pidfds else "proc"

    def follow(self, wanted: Mapping[str, int]) -> None:
        """Follows exactly the processes in `wanted` (container id → pid) from now on."""
        for cid in [c for c, f in self._followed.items() if wanted.get(c) != f.pid]:
            self._forget(cid)
        self._unproven = {c: p for c, p in self._unproven.items() if wanted.get(c) == p}
        for cid, pid in wanted.items():
            if cid not in self._followed and self._unproven.get(cid) != pid:
                self._begin(cid, pid)

    def close(self) -> None:
        for cid in list(self._followed):
            self._forget(cid)
        if self._poller is not None:
            self._poller.cancel()
            self._poller = None

    # --- inside -------------------------------------------------------------------------

    def _read(self, pid: int, name: str) -> str | None:
        try:
            with open(f"{self._proc}/{pid}/{name}", encoding="ascii", errors="replace") as f:
                return f.read()
        except OSError:
            return None

    def _begin(self, cid: str, pid: int) -> None:
        fd: int | None = None
        budget = self._max_pidfds
        if self._pidfds and (budget is None or self._open_pidfds < budget):
            try:
                fd = os.pidfd_open(pid)
            except ProcessLookupError:  # gone already, or not among the pids we see
                self._unproven[cid] = pid
                return
            except OSError as e:
                if e.errno in (errno.EMFILE, errno.ENFILE):  # this one polled; others may fit
                    log.warning("pidfd_open: %s: following pid %d in %s", e, pid, self._proc)
                else:  # not in this kernel, or a seccomp profile refuses it
                    log.warning("pidfd_open refused (%s): following processes in %s", e, self._proc)
                    self._pidfds = False
        cgroup = self._read(pid, "cgroup")
        if cgroup is None or not names_container(cgroup, cid):
            # Not shown to be the container's process (not our pid namespace, a reused pid,
            # a cgroup layout without ids): the engine's events stay the only word on it.
            log.debug("not following pid %d: not shown to be container %s's", pid, cid[:12])
            if fd is not None:
                os.close(fd)
            self._unproven[cid] = pid
            return
        followed = _Followed(pid, fd)
        self._followed[cid] = followed
        if fd is not None:
            self._open_pidfds += 1
        loop = self._loop
        assert loop is not None, "start() first"
        if fd is not None:
            # Readable once the process has ended (at once, if it already has).
            loop.add_reader(fd, self._ended, cid, followed)
            return
        stat = self._read(pid, "stat")
        parsed = stat_start(stat) if stat is not None else None
        if parsed is None:
            self._ended(cid, followed)
            return
        followed.start = parsed[1]
        if self._poller is None or self._poller.done():
            self._poller = loop.create_task(self._poll(), name="pidwatch-poll")

    def _ended(self, cid: str, followed: _Followed) -> None:
        if self._followed.get(cid) is not followed:
            return
        self._forget(cid)
        log.info("container %s: its process %d ended", cid[:12], followed.pid)
        if self._on_exit is not None:
            self._on_exit(cid, followed.pid)

    def _forget(self, cid: str) -> None:
        followed = self._followed.pop(cid, None)
        if followed is None or followed.fd is None:
            return
        if self._loop is not None:
            self._loop.remove_reader(followed.fd)
        with contextlib.suppress(OSError):
            os.close(followed.fd)
        self._open_pidfds -= 1

    def alive(self, followed: _Followed) -> bool:
        """A polled process's state now (a pidfd's: whether it is not yet readable)."""
        if followed.fd is not None:
            return not select.select([followed.fd], [], [], 0)[0]
        stat = self._read(followed.pid, "stat")
        parsed = stat_start(stat) if stat is not None else None
        return parsed is not None and parsed[0] not in "ZX" and parsed[1] == followed.start

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self._poll_s)
            for cid, followed in list(self._followed.items()):
                if followed.fd is None and not self.alive(followed):
                    self._ended(cid, followed)
