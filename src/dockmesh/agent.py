"""`dockmesh agent`: the control plane's composition root — the one place that wires parts.

`build_deps(config)` makes what the agent runs on from its configuration: the state store, a
live topology over the engines, the policy enforcer over the kernel's nft, the catalog's clock,
the randomness that spreads health probes. `Agent(config, deps)` only wires those parts to the
servers and runs them, so a test hands it others: a watcher over `MemoryEngine`, an in-memory
nft, fake probes and a virtual clock. Environment variables are read by the command line,
never here.

One asyncio process per Docker host:

    engines ──events──▶ TopologyWatcher (threads) ──updates()──▶ Agent._apply_topology
                                                                   │
        TopologyFeed (GET /v1/dockmesh/topology, blocking) ◀───────┤
        Enforcer: the applied policy's sets, in nft (first) ◀──────┤  ◀── policy file, polled
          ▲ check after each change to the kernel's ruleset: RulesetWatch (`nft -j monitor`)
        containers' labels → catalog instances ◀───────────────────┤
        bridge gateways → DNS listeners ◀──────────────────────────┘
    LiveCatalog ◀── HTTP API (Consul-compatible, blocking queries, /metrics)
         │     ◀── health runner (probes from inside network namespaces; TTL expiry)
         └────────▶ DNS server (prebuilt answers, invalidated on change)

What cannot be rebuilt from the engines (manual registrations, KV) lives in the state file;
the applied policy lives in the policy directory, written by `dockmesh policy apply`. The
engine may be absent at start or go away later: the agent keeps serving what it knows and
reconnects with back-off. SIGTERM and SIGINT stop it cleanly; the policy's table stays in
force (fail closed). SIGHUP reads the applied policy again and mends its table now; a change
to the table the agent did not make is undone as soon as the ruleset watch reports it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import random
import signal
import threading
import time
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, cast

from dockmesh.api.topology import TopologyFeed
from dockmesh.catalog.containers import derive_all
from dockmesh.catalog.live import LiveCatalog
from dockmesh.catalog.state import TOPIC_SERVICES, Catalog
from dockmesh.catalog.store import MemoryStore, SqliteStore, Store
from dockmesh.dns.limits import DnsLimits
from dockmesh.engine.backend import EngineRef
from dockmesh.errors import EngineError
from dockmesh.model.liveness import EngineLink, still_dead, to_follow, with_pings, without_dead
from dockmesh.model.policy import Policy
from dockmesh.model.topology import Container, Topology
from dockmesh.policy.compile import DEFAULT_TABLE
from dockmesh.policy.store import DEFAULT_DIR

if TYPE_CHECKING:  # the servers load only when the agent runs, not with the command line
    from aiohttp import web

    from dockmesh.api.observe_query import ProbeQuestion
    from dockmesh.catalog.etcdstore import SharedCatalog
    from dockmesh.dns.server import DnsServer
    from dockmesh.health.probe import Probe
    from dockmesh.health.runner import HealthRunner
    from dockmesh.policy.dropmetrics import DropCounter
    from dockmesh.policy.enforce import Enforcer
    from dockmesh.policy.overlay import OverlayKeeper
    from dockmesh.policy.watch import RulesetWatch

log = logging.getLogger(__name__)
T = TypeVar("T")

# A policy applied or removed by `dockmesh policy` while no container changes is noticed
# this often (the file's identity is compared: a stat, no read).
POLICY_POLL_S = 1.0
# How often the overlay tables are compared with their namespaces' (each a `nft list`).
OVERLAY_CHECK_S = 3.0
# The key of `Agent.warnings` for the catalog's own (not one engine's).
CATALOG_WARNINGS = "catalog"
# Back-off while the engines do not answer at start (doubling up to the cap).
RECONNECT_FIRST_S, RECONNECT_MAX_S = 0.2, 5.0
# How long each executor job waits for a call on a daemon thread (`_in_daemon_thread`).
WAIT_SLICE_S = 0.05
# Each engine is pinged this often, and not answering within PING_TIMEOUT_S counts as lost:
# an engine whose event stream stays open but silent is otherwise not told from a quiet one.
PING_S, PING_TIMEOUT_S = 1.0, 2.0


@dataclass(frozen=True, slots=True)
class AgentConfig:
    engines: Sequence[EngineRef]
    api: tuple[str, int] = ("127.0.0.1", 8500)
    dns: tuple[str, int] | None = ("127.0.0.1", 8600)
    state: str | None = "/var/lib/dockmesh/state.db"
    register_compose: bool = False
    # Serve DNS on each Docker bridge network's gateway too (containers started with
    # `--dns <gateway>` then resolve service names through Docker's embedded DNS).
    dns_on_gateways: bool = True
    # Docker's embedded DNS forwards what it does not know to port 53 of the `--dns` server.
    gateway_dns_port: int = 53
    node: str = "dockmesh"
    datacenter: str = "dc1"  # what Consul clients see, and DNS's <svc>.service.<dc>.<domain>
    dns_domains: tuple[str, ...] = ("dockmesh", "consul")
    dns_ttl: int = 0
    # What one DNS client may take (per-source TCP connections and UDP rate, timeouts).
    dns_limits: DnsLimits = field(default_factory=DnsLimits)
    # Where `dockmesh policy apply` leaves the applied policy, and the nft table it names
    # (the command line fills both from $DOCKMESH_POLICY_DIR and $DOCKMESH_POLICY_TABLE).
    policy_dir: Path = Path(DEFAULT_DIR)
    policy_table: str = DEFAULT_TABLE
    # Engine name → the directory of its overlay namespaces, for the engines whose namespaces
    # this agent can enter: the overlay tables `policy apply` recorded there are kept true.
    overlay_netns: Mapping[str, str] = field(default_factory=dict)
    # `--store etcd://HOST:PORT[,…]`: the catalog shared with the other hosts' agents through
    # etcd, this agent's instances under `node` (empty: this host's catalog alone).
    etcd: tuple[tuple[str, int], ...] = ()


class TopologySource(Protocol):
    """A live topology over the engines (`TopologyWatcher` is the one `build_deps` makes).

    `start()` blocks until it has read every engine once and returns that topology; it raises
    EngineError while an engine does not answer, and may then be called again. `updates()`
    yields the current topology, then each newer one, until `stop()` (which blocks until its
    threads are gone)."""

    def start(self) -> Topology: ...
    def updates(self) -> AsyncGenerator[Topology, None]: ...
    def stop(self) -> None: ...
    def links(self) -> Sequence[EngineLink]: ...


class ProcessWatch(Protocol):
    """Follows containers' processes without the engine (`PidWatch` is the one `build_deps`
    makes): after `start(on_exit)` on the loop, `follow({container id: pid})` says which to
    follow, and `on_exit(container id, pid)` is called on the loop when one ends."""

    def start(self, on_exit: Callable[[str, int], None]) -> None: ...
    def follow(self, wanted: dict[str, int]) -> None: ...
    def close(self) -> None: ...
    @property
    def count(self) -> int: ...


@dataclass(frozen=True, slots=True)
class AgentDeps:
    """What the agent runs on, made by `build_deps` (or by a test). The agent owns them from
    then on: it starts and stops the topology source and closes the store."""

    store: Store  # manual registrations and KV
    topology: TopologySource
    enforcer: Enforcer | None  # keeps the applied policy's table true; None: no policy keeping
    clock: Callable[[], float] = time.monotonic  # the catalog's: TTLs, blocking-query deadlines
    # One probe of an HTTP or TCP check; None: the health runner's own, from inside the
    # containers' network namespaces.
    probe: Probe | None = None
    rng: random.Random | None = None  # spreads first probes; None: seeded from the system
    # What prints the kernel's ruleset events (`nft -j monitor`): the agent restores the
    # policy's table after any change it did not make. None: no watch.
    ruleset_events: tuple[str, ...] | None = None
    # Follows the instances' processes, so that one that dies leaves the catalog while the
    # engine does not answer. None: the engine's events alone.
    processes: ProcessWatch | None = None
    # Keeps the overlay namespaces' tables true (`config.overlay_netns`). None: not kept.
    overlays: OverlayKeeper | None = None
    # `ping(engine name)` returns once that engine answers, within PING_TIMEOUT_S, and raises
    # (EngineError, OSError) otherwise. None: the event streams alone say whether it does.
    ping: Callable[[str], None] | None = None


def build_deps(config: AgentConfig) -> AgentDeps:
    """The agent's parts for `config`: engine connections (made without reaching the engines:
    they may come later), the state file, the policy store and the kernel's nft."""
    from dockmesh.engine.docker import DockerBackend
    from dockmesh.engine.watch import TopologyWatcher
    from dockmesh.host.pidwatch import PidWatch
    from dockmesh.policy.enforce import Enforcer
    from dockmesh.policy.store import PolicyStore

    policy = PolicyStore(config.policy_table, config.policy_dir)
    engines = [DockerBackend(ref) for ref in config.engines]
    by_name = {e.ref.name: e for e in engines}
    store: Store = SqliteStore(config.state) if config.state else MemoryStore()
    enforcer = Enforcer(policy)
    overlays = None
    if config.overlay_netns:
        from dockmesh.policy.overlay import OverlayKeeper

        overlays = OverlayKeeper(config.policy_table, config.policy_dir, config.overlay_netns)
    return AgentDeps(
        store=store,
        topology=TopologyWatcher(engines),
        enforcer=enforcer,
        overlays=overlays,
        ruleset_events=(enforcer.nft.binary, "-j", "monitor"),
        processes=PidWatch(),
        ping=lambda name: by_name[name].ping(PING_TIMEOUT_S),
    )


def bridge_gateways(topo: Topology) -> set[str]:
    """IPv4 gateways of the local bridge networks: addresses the host holds, reachable from
    every container on them (internal networks included). The model says where each is
    (`IpamPool.effective_gateway`: reported, else where the engine put it)."""
    out: set[str] = set()
    for n in topo.networks:
        if n.driver != "bridge":
            continue
        for pool in n.ipam:
            gw = pool.effective_gateway()
            if gw is not None and ipaddress.ip_address(gw).version == 4:
                out.add(gw)
    return out


class Agent:
    """Wires the deps to the catalog, the servers and the policy, and runs them: `run()` until
    `stop()` (or SIGTERM/SIGINT; SIGHUP is `reload()`), or `start()` and `shutdown()` for a
    caller that drives it."""

    def __init__(self, config: AgentConfig, deps: AgentDeps) -> None:
        self.config = config
        self.deps = deps
        self.live = LiveCatalog(store=deps.store, clock=deps.clock)
        self.topology = TopologyFeed()
        self.policy = deps.enforcer
        # Per engine: its containers' label problems; CATALOG_WARNINGS: names several
        # projects share and containers refused for an ID a registration holds.
        self.warnings: dict[str, list[str]] = {}
        self._names_seen = 0  # the services topic's index the catalog warnings were read at
        self.live.subscribe(self._catalog_changed)
        self.ready = asyncio.Event()  # set once every server listens and the tasks run
        self.api_address: tuple[str, int] | None = None  # as bound (port 0: the one chosen)
        self.dns_address: tuple[str, int] | None = None
        self.dns: DnsServer | None = None
        self.api_runner: web.AppRunner | None = None
        self.health: HealthRunner | None = None
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._dns_gateways: set[str] = set()
        self._signals: list[signal.Signals] = []
        self.watch: RulesetWatch | None = None
        if deps.enforcer is not None and deps.ruleset_events:
            from dockmesh.policy.watch import RulesetWatch

            self.watch = RulesetWatch(deps.enforcer.table, deps.enforcer.check, deps.ruleset_events)
        self.drops: DropCounter | None = None  # the policy's drop logs, for /metrics
        # Container id → the pid that ended while the topology still shows it running.
        self.dead: dict[str, int] = {}
        self._living: tuple[Topology, frozenset[tuple[str, int]], Topology] | None = None
        self._catalog_topology: Topology | None = None  # what `_sync_catalog` last followed
        # Deaths heard since the loop step's first, synced together at its end.
        self._deaths_due: asyncio.Handle | None = None
        self._deaths_pending = False
        # Engine name → when (on deps.clock) it last answered, while its pings fail.
        self._silent_since: dict[str, float] = {}
        self.shared: SharedCatalog | None = None  # the catalog shared through etcd

    # --- life cycle ---------------------------------------------------------------------

    def stop(self) -> None:
        self._stop.set()

    def reload(self) -> None:
        """SIGHUP: the applied policy is read again and the kernel's table mended now (a
        policy file edited by hand, a table changed behind the agent's back). The catalog
        and DNS need no reload: they follow the engines' events."""
        if self.policy is None or self._stop.is_set():
            return
        log.info("reloading: the applied policy is read again and its table compared")
        self._tasks = [t for t in self._tasks if not t.done()]  # many HUPs keep no list
        self._tasks.append(asyncio.create_task(self._reload_policy(), name="reload"))

    async def _reload_policy(self) -> None:
        enforcer = self.policy
        assert enforcer is not None
        try:
            await asyncio.to_thread(enforcer.reload)
            if self.deps.overlays is not None:
                await asyncio.to_thread(self.deps.overlays.check)
        except Exception:
            log.exception("policy: reloading failed")

    async def run(self) -> None:
        """Serves until `stop()`, SIGTERM or SIGINT, then shuts down."""
        loop = asyncio.get_running_loop()
        handlers = {signal.SIGTERM: self.stop, signal.SIGINT: self.stop, signal.SIGHUP: self.reload}
        for sig, handler in handlers.items():
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(sig, handler)
                self._signals.append(sig)
        try:
            await self.start()
            await self._stop.wait()
        finally:
            await self.shutdown()

    async def start(self) -> None:
        """Loads the state file, starts the servers and follows the engines (in the
        background: they need not answer yet)."""
        self.live.load()
        if self.deps.processes is not None:
            self.deps.processes.start(self._process_ended)
        await self._start_services()
        if self.policy is not None:
            self._tasks.append(asyncio.create_task(self._poll_policy(), name="policy"))
            self._tasks.append(asyncio.create_task(self._poll_drops(), name="drops"))
            if self.deps.overlays is not None:
                self._tasks.append(asyncio.create_task(self._keep_overlays(), name="overlays"))
        if self.watch is not None:
            self._tasks.append(asyncio.create_task(self.watch.run(self._stop), name="watch"))
        self._tasks.append(asyncio.create_task(self._connect_and_follow(), name="topology"))
        if self.config.etcd:
            from dockmesh.catalog.etcdstore import Etcd, SharedCatalog

            self.shared = SharedCatalog(self.live, self.config.node, Etcd(self.config.etcd))
            self.shared.start()
        if self.deps.ping is not None:
            for ref in self.config.engines:
                self._tasks.append(asyncio.create_task(self._ping(ref.name), name="ping"))
        self.ready.set()
        log.info("agent ready")

    async def _start_services(self) -> None:
        from aiohttp import web
        from prometheus_client import CollectorRegistry

        from dockmesh.api.app import make_app
        from dockmesh.dns.metrics import DnsCollector
        from dockmesh.dns.server import DnsServer
        from dockmesh.health.metrics import ProbeDurations
        from dockmesh.health.runner import HealthRunner
        from dockmesh.observe.metrics import ContainerNetworkCollector

        cfg = self.config
        registry = CollectorRegistry()
        if cfg.dns is not None:
            # The living topology: `<container>.container.` names leave with the process too.
            dns = DnsServer(
                self.live,
                self.living,
                domains=cfg.dns_domains,
                ttl=cfg.dns_ttl,
                limits=cfg.dns_limits,
            )
            dns.answerer.set_node(cfg.node, cfg.datacenter)
            self.dns = dns
            self.dns_address = await dns.start(*cfg.dns)
            registry.register(DnsCollector(dns.stats))
        if self.policy is not None:
            from dockmesh.policy.watch import RepairCollector

            registry.register(RepairCollector(self.policy, self.watch))
        from dockmesh.api.metrics import EngineCollector

        processes = self.deps.processes
        registry.register(
            EngineCollector(
                self.links,
                (lambda: processes.count) if processes is not None else None,
            )
        )
        # Each container's interface counters, read from its namespace at scrape time.
        registry.register(ContainerNetworkCollector(self.topology.current))
        if self.policy is not None:
            from dockmesh.policy.dropmetrics import DropCounter

            self.drops = DropCounter()
            registry.register(self.drops)
        health = HealthRunner(
            self.live,
            self.deps.probe,
            rng=self.deps.rng,
            on_result=ProbeDurations(registry).observe,
        )
        self.health = health
        await health.start()
        app = make_app(
            self.live,
            self.topology.current,
            self.topology.wait,
            metrics=registry,
            node=cfg.node,
            datacenter=cfg.datacenter,
            links=self.links,
            store_links=self.store_links if cfg.etcd else None,
            observer=HostObserver(self.living, self._applied_policy),
        )
        runner = web.AppRunner(
            app, access_log=None, handle_signals=False, handler_cancellation=True
        )
        await runner.setup()
        self.api_runner = runner  # cleaned up from now on, even if the address is taken
        host, port = cfg.api
        try:
            await web.TCPSite(runner, host, port, reuse_address=True).start()
        except OSError as e:  # a name that does not resolve said nothing of where
            reason = e.strerror or str(e)
            raise OSError(e.errno, f"the HTTP API cannot listen on {host}:{port}: {reason}") from e
        bound = runner.addresses[0]
        self.api_address = (str(bound[0]), int(bound[1]))

    async def shutdown(self) -> None:
        """Stops following the engines and the servers, and closes the store. The policy's
        table is left as it is: a stopped agent keeps the last ruleset in force. The shared
        catalog's lease is revoked first: the other hosts drop this one's instances at once."""
        shared, self.shared = self.shared, None
        if shared is not None:
            await shared.stop(revoke=True)
        if self._deaths_due is not None:
            self._deaths_due.cancel()
            self._deaths_due = None
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        self._tasks.clear()
        health = self.health
        if health is not None:
            await health.stop()
        dns = self.dns
        if dns is not None:
            await dns.close()
        runner = self.api_runner
        if runner is not None:
            await runner.cleanup()
        if self.deps.processes is not None:
            self.deps.processes.close()
        await asyncio.to_thread(self.deps.topology.stop)
        self.deps.store.close()
        loop = asyncio.get_running_loop()
        for sig in self._signals:
            loop.remove_signal_handler(sig)
        self._signals.clear()
        log.info("agent stopped")

    # --- the topology -------------------------------------------------------------------

    def living(self) -> Topology | None:
        """The current topology as the catalog sees it: the containers whose process was
        seen to end shown exited. The same object while neither changes (DNS keys its
        container answers on it)."""
        topo = self.topology.current()
        if topo is None or not self.dead:
            return topo
        dead = frozenset(self.dead.items())
        cached = self._living
        if cached is None or cached[0] is not topo or cached[1] != dead:
            cached = (topo, dead, without_dead(topo, self.dead))
            self._living = cached
        return cached[2]

    def _applied_policy(self) -> Policy | None:
        """The policy this agent keeps (what a doctor's findings weigh a deny by)."""
        applied = self.policy.applied if self.policy is not None else None
        return None if applied is None else applied.policy

    def links(self) -> tuple[EngineLink, ...]:
        """Each engine's connection: its event stream open, and the engine answering."""
        return with_pings(self.deps.topology.links(), self._silent_since, self.deps.clock())

    def store_links(self) -> tuple[EngineLink, ...]:
        """The shared catalog's watch (`etcd`), when there is one: the API says it has no
        leader while it does not follow."""
        shared = self.shared
        return shared.links() if shared is not None else ()

    async def _ping(self, engine: str) -> None:
        ping = self.deps.ping
        assert ping is not None
        answered = self.deps.clock()
        while not self._stop.is_set():
            try:
                # On a thread the loop waits for (a ping ends within its timeout), so that a
                # stop waits at most that long.
                await asyncio.to_thread(ping, engine)
                answered = self.deps.clock()
                if self._silent_since.pop(engine, None) is not None:
                    log.info("engine %s answers again", engine)
            except Exception as e:
                if engine not in self._silent_since:
                    log.warning("engine %s does not answer: %s", engine, e)
                self._silent_since.setdefault(engine, answered)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), PING_S)

    async def _connect_and_follow(self) -> None:
        source = self.deps.topology
        backoff = RECONNECT_FIRST_S
        while not self._stop.is_set():
            try:
                first = await _in_daemon_thread(source.start, "agent-connect")
                break
            except EngineError as e:
                log.warning("engine not reachable (retrying in %.1f s): %s", backoff, e)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), backoff)
                backoff = min(backoff * 2, RECONNECT_MAX_S)
        else:
            return
        await self._apply_topology(first)
        async with contextlib.aclosing(source.updates()) as updates:
            async for topo in updates:
                await self._apply_topology(topo)

    def _catalog_changed(self, catalog: Catalog) -> None:
        if catalog.topic_index(TOPIC_SERVICES) != self._names_seen:
            self.catalog_warnings()

    def catalog_warnings(self) -> list[str]:
        """The catalog's warnings now (each logged once, when it first appears)."""
        cat = self.live.catalog
        self._names_seen = cat.topic_index(TOPIC_SERVICES)
        warnings = [c.warning() for c in cat.collisions()] + cat.shadowed() + cat.refusals()
        before = self.warnings.get(CATALOG_WARNINGS, [])
        for w in warnings:
            if w not in before:
                log.warning("%s", w)
        self.warnings[CATALOG_WARNINGS] = warnings
        return warnings

    async def _apply_topology(self, topo: Topology) -> None:
        if not self.topology.publish(topo):
            return  # `updates()` starts with the one `start()` returned
        # The kernel first: a container that moved is covered by the policy before the
        # catalog and DNS announce its new address.
        await self._sync_policy(topo)
        self._sync_catalog(topo)
        if self.dns is not None and self.config.dns_on_gateways:
            await self._follow_gateways(bridge_gateways(topo))

    def _sync_catalog(self, topo: Topology) -> None:
        """The catalog from `topo`, less the containers whose process was seen to end since
        (the engine's newer word overrides that: `still_dead`); then the processes of what
        it holds are followed."""
        self._catalog_topology = topo
        self.dead = still_dead(topo, self.dead)
        seen = without_dead(topo, self.dead)
        local = self.config.engines[0].name if self.config.engines else "local"
        held: list[str] = []
        for engine in seen.engines:
            derived, warnings = derive_all(seen, engine.name, local, self.config.register_compose)
            for w in warnings:
                if w not in self.warnings.get(engine.name, []):
                    log.warning("%s", w)
            self.warnings[engine.name] = warnings
            self.live.sync_containers(engine.name, [(d.instance, d.checks) for d in derived])
            held += [d.instance.container_id for d in derived if d.instance.container_id]
        # A container refused for its ID changes no index: read the warnings after each sync.
        self.catalog_warnings()
        if self.deps.processes is not None:
            self.deps.processes.follow(to_follow(seen, held))

    def _process_ended(self, container_id: str, pid: int) -> None:
        """A followed process ended: its instance leaves the catalog (and so DNS) now, not
        when the engine reports it — which it cannot while it does not answer.

        A sync derives every container's instance again: one per death made a burst (a
        host's containers killed together, an OOM sweep) cost deaths times containers on the
        loop — 150 of 350 took 1.8 s, DNS unanswered meanwhile. So the first death of a
        loop step syncs at once, and the others of that step wait for one sync at its end."""
        if self._catalog_topology is None:
            return
        self.dead[container_id] = pid
        if self._deaths_due is not None:
            self._deaths_pending = True
            return
        self._deaths_due = asyncio.get_running_loop().call_soon(self._sync_deaths)
        self._sync_now()

    def _sync_deaths(self) -> None:
        self._deaths_due = None
        if self._deaths_pending:
            self._deaths_pending = False
            self._sync_now()

    def _sync_now(self) -> None:
        # The topology the catalog last followed, not a newer one published while the policy
        # is being synced for it: the kernel first, even when a death comes in between.
        topo = self._catalog_topology
        if topo is not None:
            self._sync_catalog(topo)

    # --- keeping the applied policy true --------------------------------------------------

    async def _sync_policy(self, topo: Topology) -> None:
        enforcer = self.policy
        if enforcer is None:
            return
        try:
            await asyncio.to_thread(enforcer.sync, topo)
        except Exception:  # the agent serves on whatever the kernel or the file does
            log.exception("policy: keeping the table in sync failed")
        overlays = self.deps.overlays
        if overlays is not None:
            try:
                await asyncio.to_thread(overlays.sync, topo)
            except Exception:
                log.exception("policy: keeping the overlay tables in sync failed")

    async def _keep_overlays(self) -> None:
        """Overlay tables `policy apply` recorded while nothing else changed, and each kept
        one compared with its namespace's (a flush behind the agent's back, a namespace
        Docker made anew): every OVERLAY_CHECK_S."""
        overlays = self.deps.overlays
        assert overlays is not None
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), OVERLAY_CHECK_S)
            topo = self.topology.current()
            if self._stop.is_set() or topo is None:
                continue
            try:
                await asyncio.to_thread(overlays.refresh, topo)
                await asyncio.to_thread(overlays.check)
            except Exception:
                log.exception("policy: checking the overlay tables failed")

    async def _poll_policy(self) -> None:
        """A policy applied or removed by `dockmesh policy` while nothing else changes."""
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), POLICY_POLL_S)
            enforcer = self.policy
            if enforcer is None or self._stop.is_set():
                continue
            try:
                await asyncio.to_thread(enforcer.poll)
            except Exception:
                log.exception("policy: reading the applied policy failed")

    async def _poll_drops(self) -> None:
        """The drop logs counted into /metrics (more often than a flow is forgotten)."""
        from dockmesh.policy.dropmetrics import POLL_S, read_drop_logs

        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), POLL_S)
            enforcer, drops = self.policy, self.drops
            if enforcer is None or drops is None or self._stop.is_set():
                continue
            try:
                read = await asyncio.to_thread(
                    read_drop_logs, enforcer.nft.list_table, enforcer.ruleset
                )
                if read is not None:
                    drops.observe(read[0], read[1], self.topology.current())
            except Exception:
                log.exception("policy: reading the drop logs failed")

    async def _follow_gateways(self, wanted: set[str]) -> None:
        dns = self.dns
        assert dns is not None
        port = self.config.gateway_dns_port
        for gw in sorted(wanted - self._dns_gateways):
            try:
                await dns.add_listener(gw, port)
                self._dns_gateways.add(gw)
            except OSError as e:
                log.warning("DNS cannot listen on gateway %s:%d: %s", gw, port, e)
        for gw in sorted(self._dns_gateways - wanted):
            with contextlib.suppress(OSError):
                await dns.remove_listener(gw, port)
            self._dns_gateways.discard(gw)


class HostObserver:
    """What this agent answers of its own host's containers (the API's `Observer`): their
    interface counters, a doctor's diagnosis and the host's conntrack flows, each the same
    document `dockmesh stats|doctor|flows --json` prints. Read from this process's /proc and
    network namespace, which are the host's: so a container whose pid this machine does not
    show to be its process (an engine followed from another host) is refused, never read."""

    def __init__(
        self,
        topology: Callable[[], Topology | None],
        policy: Callable[[], Policy | None] = lambda: None,
    ) -> None:
        self._topology = topology
        self._policy = policy

    def _topo(self) -> Topology:
        topo = self._topology()
        if topo is None:
            raise LookupError("the agent has not read its engines yet")
        return topo

    def _own(self, topo: Topology, name: str) -> Container:
        from dockmesh.host.pidwatch import shown_here

        c = topo.container(name)
        if c is None:
            raise LookupError(f"no container {name!r} on this host's engines")
        if c.running and c.pid and not shown_here(c.pid, c.id):
            raise PermissionError(
                f"{c.name}'s process (pid {c.pid} on engine {c.engine}) is not on this host: "
                "ask the agent of its own host"
            )
        return c

    def stats(self, containers: Sequence[str]) -> dict[str, Any]:
        from dockmesh.observe.counters import local_engines, readable, stats_json
        from dockmesh.observe.sample import sample, targets

        topo = self._topo()
        if containers:
            local = local_engines(topo)
            chosen = [self._own(topo, n) for n in containers]
            wanted = list({c.id: c for c in chosen if readable(c, local)}.values())
        else:
            wanted = targets(topo)
        s = sample(wanted)
        return stats_json(s.containers, s.elapsed_s)

    def doctor(self, container: str, timeout_s: float) -> dict[str, Any]:
        from dockmesh.diagnose.doctor import doctor_document
        from dockmesh.host.netns import NetnsPool

        topo = self._topo()
        c = self._own(topo, container)
        with NetnsPool(threads=1) as pool:
            doc, _ = doctor_document(topo, c, pool, timeout_s, self._policy())
        return doc

    def probe(self, q: ProbeQuestion) -> dict[str, Any]:
        """One probe from one of this host's containers' namespace (what `why --probe` and
        `matrix` make there for a source on this host), confirmed as they confirm when the
        asker says what it expects."""
        from dockmesh.diagnose.sweep import Probe as SweepProbe
        from dockmesh.diagnose.sweep import (
            dns_probe_payload,
            observed_json,
            sweep,
            sweep_confirmed,
        )
        from dockmesh.host.netns import NetnsPool

        topo = self._topo()
        c = self._own(topo, q.container)
        if not c.running or not c.pid:
            raise PermissionError(f"{c.name} is not running: it has no namespace to probe from")
        p = SweepProbe(
            "probe",
            c.pid,
            q.address,
            q.port,
            "udp" if q.protocol == "udp" else "tcp",
            expect_reply=q.expect_reply,
        )
        if q.payload == "dns":
            p = replace(p, payload=dns_probe_payload())
        start = time.perf_counter()
        with NetnsPool(threads=1) as pool:
            if q.expected is None:
                seen = sweep(pool, [p], timeout_s=q.timeout_s)
            else:
                seen = sweep_confirmed(pool, [p], {"probe": q.expected}, timeout_s=q.timeout_s)
        return {
            "container": c.name,
            "id": c.id,
            "address": q.address,
            "proto": q.protocol,
            "port": q.port,
            **observed_json(seen["probe"]),
            "elapsed_s": round(time.perf_counter() - start, 6),
        }

    def flows(self, by: str) -> dict[str, Any]:
        from dockmesh.observe.conntrack import dump, ensure_accounting
        from dockmesh.observe.flows import aggregate, flows_json

        topo = self._topo()
        accounting = ensure_accounting()
        start = time.perf_counter()
        edges = aggregate(dump(), topo, by=by)
        return flows_json(edges, accounting, time.perf_counter() - start)


async def _in_daemon_thread(fn: Callable[[], T], name: str) -> T:
    """`fn()` on a daemon thread of its own, awaited. Not `asyncio.to_thread`: the loop's
    executor is joined when `asyncio.run` ends, so a call that blocks there (an engine that
    accepts the connection and never answers: docker-py waits its 30 s, again at each retry)
    kept a stopped agent's process alive after "agent stopped". Cancelled, the call is
    abandoned: its thread ends with the call, or with the process.

    The loop awaits the call through short executor jobs (`WAIT_SLICE_S` each), never one
    that blocks: so the executor is never held at the end, and a loop that stops its clock
    while a thread works for it (the tests' virtual-time loop) sees the call take no time
    (awaiting a bare future, a connection attempt slowed by a loaded machine let a 1 s timer
    fire in between, and the back-off read 1 s late)."""
    loop = asyncio.get_running_loop()
    done = threading.Event()
    box: list[Any] = []

    def call() -> None:
        try:
            box.append((fn(), None))
        except BaseException as e:  # handed to the awaiting task, which decides
            box.append((None, e))
        finally:
            done.set()

    threading.Thread(target=call, name=name, daemon=True).start()
    while not await loop.run_in_executor(None, done.wait, WAIT_SLICE_S):
        pass
    result, error = box[0]
    if error is not None:
        raise error
    return cast(T, result)


def run_agent(config: AgentConfig) -> None:
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        log.info("uvloop is not installed: the standard event loop serves")
    deps = build_deps(config)
    asyncio.run(Agent(config, deps).run())
