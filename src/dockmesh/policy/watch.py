"""The agent's watch on the kernel's ruleset: `nft -j monitor` as a child process, and a check
of the policy's table after every change to it.

Theory of operation
-------------------
- The kernel tells every listener of its nftables events (a netlink group) about each table,
  chain, rule, set and element added or deleted, by anyone. `nft -j monitor` prints them as
  JSON lines; the watch reads them and keeps those about the policy's table (`touches`: by
  its name, in any family, and every line it cannot read, to be safe).
- Events come in bursts (one transaction is many events), so one check runs after a burst
  has settled (`SETTLE_S`), not one per event; a burst during a check makes one more check.
  The check itself (`Enforcer.check`) compares the live table with what the enforcer made
  true and restores it; the agent's own transactions leave nothing to restore, so they cost
  one comparison each and never a loop.
- The child dies with the agent: it is started with the kernel's parent-death signal
  (SIGKILL when the agent's process is gone, even by SIGKILL), and killed when the watch
  stops. When it dies on its own it is started again (with back-off), followed by a check:
  what changed while nobody watched is not missed.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import logging
import os
import signal
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

log = logging.getLogger(__name__)

SETTLE_S = 0.02  # a transaction's events arrive within this of each other
PATIENCE_S = 0.3  # how long a table another `policy apply` wrote waits for its record
RESTART_FIRST_S, RESTART_MAX_S = 0.1, 5.0
RUN_FOR_RESET_S = 10.0  # a child that ran this long restarts from the first back-off again
PR_SET_PDEATHSIG = 1


def touches(line: str, table: str) -> bool:
    """Whether one line of `nft -j monitor` may be about a table named `table` (in any
    family). A line that is not an event it can read counts as one: a check too many costs
    a comparison, a check too few leaves a hole."""
    try:
        doc = json.loads(line)
    except ValueError:
        return bool(line.strip())
    if not isinstance(doc, Mapping) or len(doc) != 1:
        return True
    ((_verb, body),) = doc.items()
    if not isinstance(body, Mapping) or len(body) != 1:
        return True
    ((kind, obj),) = body.items()
    if not isinstance(obj, Mapping):
        return True
    name = obj.get("name") if kind == "table" else obj.get("table")
    return not isinstance(name, str) or name == table


Check = Callable[[bool], list[str] | None]


class RulesetWatch:
    """Runs `command` (`nft -j monitor`) and calls `check(patient)` in a worker thread after
    each settled burst of events about `table`. `run(stop)` until `stop` is set."""

    def __init__(self, table: str, check: Check, command: Sequence[str]) -> None:
        self.table = table
        self.check = check
        self.command = tuple(command)
        self.up = False  # the child runs and is read
        self.restarts = 0  # children started after the first
        self.checks = 0
        self._pending = asyncio.Event()
        self._quiet = False  # a failure was told and nothing has worked since

    async def run(self, stop: asyncio.Event) -> None:
        checker = asyncio.create_task(self._checks(), name="policy-check")
        try:
            await self._follow(stop)
        finally:
            checker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await checker

    async def _follow(self, stop: asyncio.Event) -> None:
        backoff = RESTART_FIRST_S
        started = 0
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            began = loop.time()
            try:
                proc = await asyncio.create_subprocess_exec(
                    *self.command,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.PIPE,
                    preexec_fn=_die_with_parent(os.getpid()),
                )
            except OSError as e:
                self._say("policy: cannot watch the ruleset (%s): retrying", e)
            else:
                self.restarts += int(started > 0)
                started += 1
                await self._read(proc, stop, began)
            if stop.is_set():
                return
            if loop.time() - began > RUN_FOR_RESET_S:
                backoff = RESTART_FIRST_S
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), backoff)
            backoff = min(backoff * 2, RESTART_MAX_S)

    async def _read(
        self, proc: asyncio.subprocess.Process, stop: asyncio.Event, began: float
    ) -> None:
        assert proc.stdout is not None and proc.stderr is not None
        stopping = asyncio.ensure_future(stop.wait())
        try:
            self.up = True
            self._pending.set()  # what changed while nobody watched
            while True:
                reading = asyncio.ensure_future(proc.stdout.readline())
                await asyncio.wait({reading, stopping}, return_when=asyncio.FIRST_COMPLETED)
                if not reading.done():
                    reading.cancel()
                    return
                line = reading.result()
                if not line:
                    break
                self._quiet = False  # it works: the next failure is news again
                if touches(line.decode(errors="replace"), self.table):
                    self._pending.set()
            err = (await proc.stderr.read()).decode(errors="replace").strip()
            code = await proc.wait()
            if asyncio.get_running_loop().time() - began > RUN_FOR_RESET_S:
                self._quiet = False  # it had worked for a while: this end is news
            self._say(
                "policy: the ruleset watch (%s) ended with %s%s; starting it again",
                " ".join(self.command),
                code,
                f": {err.splitlines()[0]}" if err else "",
            )
        finally:
            self.up = False
            stopping.cancel()
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()

    def _say(self, msg: str, *args: object) -> None:
        """A failure of the watch: a warning the first time, then quietly (debug) until it
        has worked again (a host without nft would log a line every few seconds)."""
        log.log(logging.DEBUG if self._quiet else logging.WARNING, msg, *args)
        self._quiet = True

    async def _checks(self) -> None:
        while True:
            await self._pending.wait()
            await asyncio.sleep(SETTLE_S)
            self._pending.clear()
            await self._check(True)

    async def _check(self, patient: bool) -> None:
        self.checks += 1
        try:
            found = await asyncio.to_thread(self.check, patient)
        except Exception:  # the agent serves on whatever the kernel does
            log.exception("policy: checking the table failed")
            return
        if found is None:  # another `policy apply` wrote it: give it time to record
            await asyncio.sleep(PATIENCE_S)
            await self._check(False)


_libc: Any = None


def _die_with_parent(parent: int) -> Callable[[], None]:
    """What the child runs before `exec`: SIGKILL when the agent's process is gone (and at
    once, should it be gone already)."""
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    libc = _libc

    def in_child() -> None:
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:
            os._exit(1)

    return in_child


class Repairs(Protocol):
    """What `RepairCollector` reads (an `Enforcer` has it)."""

    @property
    def repairs(self) -> int: ...


class RepairCollector:
    """`dockmesh_policy_repairs_total`: changes to the policy's table made behind dockmesh's
    back and undone; `dockmesh_policy_watch_up`, `dockmesh_policy_watch_restarts_total`."""

    def __init__(self, enforcer: Repairs, watch: RulesetWatch | None) -> None:
        self._enforcer = enforcer
        self._watch = watch

    def collect(self) -> Iterator[Metric]:
        yield CounterMetricFamily(
            "dockmesh_policy_repairs",
            "Changes to the policy's nftables table made behind dockmesh's back and undone.",
            value=int(self._enforcer.repairs),
        )
        w = self._watch
        yield GaugeMetricFamily(
            "dockmesh_policy_watch_up",
            "Whether the agent watches the kernel's ruleset (nft monitor runs).",
            value=int(w is not None and w.up),
        )
        yield CounterMetricFamily(
            "dockmesh_policy_watch_restarts",
            "Times the ruleset watch (nft monitor) was started again after it ended.",
            value=w.restarts if w is not None else 0,
        )
