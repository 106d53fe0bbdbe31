"""Runs the catalog's HTTP and TCP checks at their intervals and expires its TTLs on time.

Theory of operation
-------------------
- Each probed check (kind http or tcp) has one task on the agent's loop. Its first probe comes
  after a random delay of at most half its interval (and at most `first_run_spread_s`), so a
  start with hundreds of checks spreads its probes instead of firing them at once; later
  probes keep that phase, one interval after the previous probe started. A probe never
  overlaps the previous one of the same check: a slow probe delays the next.
- At most `concurrency` probes run at once (a semaphore), and each is cut at its check's
  timeout: the probe is cancelled and the check observes critical "timed out after Xs".
- The runner follows the catalog: it listens to the LiveCatalog and, once per burst of
  changes, starts tasks for new checks, cancels tasks of removed ones and restarts those whose
  spec changed. A result is only observed while the check still has the spec it was probed
  with, so a result of an old spec never lands on a new one.
- TTL checks are not probed: the catalog expires them when `tick` is called at or after
  `next_deadline()`, and the runner owns that timer (re-armed on every change, since a change
  can move the deadline earlier). Docker checks are not probed either: the agent feeds them
  from the engine's health events.
- Time: scheduling uses the event loop's clock (so tests run the runner on a virtual-time
  loop, without waiting), catalog deadlines are in the LiveCatalog's clock and converted by
  the distance from its now. Randomness comes from an injected `random.Random`.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable

from dockmesh.catalog.live import LiveCatalog
from dockmesh.catalog.state import Catalog
from dockmesh.health.probe import Probe, Prober, Result, describe
from dockmesh.host.netns import NetnsPool
from dockmesh.model.catalog import CheckSpec

log = logging.getLogger(__name__)

PROBED = frozenset({"http", "tcp"})
# A tick that left its own deadline in the past (a rule the catalog cannot act on) is retried
# this much later instead of at once, so such a deadline cannot make the timer spin.
STALE_DEADLINE_RETRY_S = 1.0

ResultHook = Callable[[CheckSpec, Result, float], None]


def first_delay(
    spec: CheckSpec, spread_s: float, rng: random.Random, min_interval_s: float
) -> float:
    """When a new check's first probe goes out: uniform in [0, min(interval/2, spread)]."""
    bound = min(max(spec.interval_s, min_interval_s) / 2, spread_s)
    return rng.uniform(0, bound) if bound > 0 else 0.0


class HealthRunner:
    """The checkers of one LiveCatalog: `await start()` on its loop, `await stop()` to end.

    `probe(spec) -> Result` sends one probe; by default a `Prober` over `netns` (a pool of
    the runner's own, closed by `stop`, when none is given). Tests pass a fake.
    `on_result(spec, result, seconds)` hears every result (metrics).
    """

    def __init__(
        self,
        live: LiveCatalog,
        probe: Probe | None = None,
        *,
        netns: NetnsPool | None = None,
        concurrency: int = 64,
        first_run_spread_s: float = 2.0,
        min_interval_s: float = 1.0,
        rng: random.Random | None = None,
        on_result: ResultHook | None = None,
    ) -> None:
        self.live = live
        self._given_probe = probe
        self._given_netns = netns
        self._probe: Probe | None = None
        self._own_netns: NetnsPool | None = None
        self._concurrency = concurrency
        self._spread_s = first_run_spread_s
        self._min_interval_s = min_interval_s
        self._rng = rng or random.Random()
        self._on_result = on_result
        self._tasks: dict[str, tuple[CheckSpec, asyncio.Task[None]]] = {}
        self._slots: asyncio.Semaphore | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._catalog_changed: asyncio.Event | None = None
        self._reconcile_scheduled = False
        self._running = False
        self._subscribed = False

    # --- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        """Starts checking what the catalog holds now and follows its changes."""
        if self._running:
            return
        self._running = True
        self._probe = self._given_probe
        if self._probe is None:
            netns = self._given_netns
            if netns is None:
                netns = self._own_netns = NetnsPool()
            self._probe = Prober(netns)
        self._slots = asyncio.Semaphore(self._concurrency)
        self._catalog_changed = asyncio.Event()
        if not self._subscribed:
            self.live.subscribe(self._on_catalog_change)
            self._subscribed = True
        self._reconcile()
        self._ticker = asyncio.get_running_loop().create_task(
            self._tick_loop(), name="health-ttl-ticker"
        )

    async def stop(self) -> None:
        """Cancels every probe and timer and waits until they are gone."""
        self._running = False
        if self._subscribed:
            self.live.unsubscribe(self._on_catalog_change)
            self._subscribed = False
        tasks = [task for _, task in self._tasks.values()]
        if self._ticker is not None:
            tasks.append(self._ticker)
        self._tasks.clear()
        self._ticker = None
        for task in tasks:
            task.cancel()
        # gather, not a suppressing await per task: a cancellation of stop() itself still
        # reaches its caller.
        for outcome in await asyncio.gather(*tasks, return_exceptions=True):
            if isinstance(outcome, Exception):
                log.error("a health task had failed", exc_info=outcome)
        if self._own_netns is not None:
            # Its jobs are short by contract and none is left once the probes are cancelled.
            self._own_netns.close()
            self._own_netns = None

    def scheduled(self) -> dict[str, CheckSpec]:
        """The checks that have a probing task now, by id."""
        return {cid: spec for cid, (spec, _) in self._tasks.items()}

    # --- following the catalog -----------------------------------------------------------

    def _on_catalog_change(self, catalog: Catalog) -> None:
        if not self._running:
            return
        assert self._catalog_changed is not None
        self._catalog_changed.set()
        if not self._reconcile_scheduled:
            # Once per burst: a sync of many containers is many changes in one loop turn.
            self._reconcile_scheduled = True
            asyncio.get_running_loop().call_soon(self._reconcile)

    def _reconcile(self) -> None:
        self._reconcile_scheduled = False
        if not self._running:
            return
        wanted = {s.spec.id: s.spec for s in self.live.catalog.checks() if s.spec.kind in PROBED}
        for cid, (spec, task) in list(self._tasks.items()):
            if wanted.get(cid) != spec:
                task.cancel()
                del self._tasks[cid]
        loop = asyncio.get_running_loop()
        for cid, spec in wanted.items():
            if cid not in self._tasks:
                delay = first_delay(spec, self._spread_s, self._rng, self._min_interval_s)
                task = loop.create_task(self._check_loop(spec, delay), name=f"check {cid}")
                self._tasks[cid] = (spec, task)

    # --- probing -------------------------------------------------------------------------

    async def _check_loop(self, spec: CheckSpec, delay: float) -> None:
        loop = asyncio.get_running_loop()
        interval = max(spec.interval_s, self._min_interval_s)
        await asyncio.sleep(delay)
        while True:
            assert self._slots is not None
            async with self._slots:
                started = loop.time()
                result = await self._probe_within_timeout(spec)
                took = loop.time() - started
            self._record(spec, result, took)
            await asyncio.sleep(max(0.0, started + interval - loop.time()))

    async def _probe_within_timeout(self, spec: CheckSpec) -> Result:
        timeout = spec.timeout_s if spec.timeout_s > 0 else min(10.0, spec.interval_s)
        try:
            async with asyncio.timeout(timeout):
                assert self._probe is not None
                return await self._probe(spec)
        except TimeoutError:
            return Result("critical", f"{describe(spec)}: timed out after {timeout:g}s")
        except Exception as e:
            # A probe reports failures as results; an exception is a bug, not the check's.
            log.exception("probe of %s failed", spec.id)
            return Result("critical", f"{describe(spec)}: probe failed: {e}")

    def _record(self, spec: CheckSpec, result: Result, took: float) -> None:
        current = self.live.catalog.check(spec.id)
        if current is None or current.spec != spec:
            return  # removed or respecified while the probe ran
        self.live.observe(spec.id, result.status, result.output)
        if self._on_result is not None:
            try:
                self._on_result(spec, result, took)
            except Exception:
                log.exception("a health result hook failed")

    # --- TTLs and DeregisterCriticalServiceAfter -------------------------------------------

    async def _tick_loop(self) -> None:
        assert self._catalog_changed is not None
        changed = self._catalog_changed
        last_tick: float | None = None
        while True:
            changed.clear()
            deadline = self.live.catalog.next_deadline()
            timeout: float | None = None
            if deadline is not None:
                timeout = max(0.0, deadline - self.live.clock())
                if last_tick is not None and deadline <= last_tick:
                    timeout = max(timeout, STALE_DEADLINE_RETRY_S)
            try:
                await asyncio.wait_for(changed.wait(), timeout)
                continue  # the deadline may have moved: look again
            except TimeoutError:
                pass
            last_tick = self.live.clock()
            self.live.tick()
