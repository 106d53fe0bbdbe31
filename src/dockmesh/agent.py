"""`dockmesh agent`: the control plane's composition root — the one place that wires parts.

One asyncio process per Docker host:

    engines ──events──▶ TopologyWatcher (threads) ──updates()──▶ Agent._follow_topology
                                                                   │
                     containers' labels → catalog instances ◀──────┤
                     bridge gateways → DNS listeners        ◀──────┘
    LiveCatalog ◀── HTTP API (Consul-compatible, blocking queries, /metrics)
         │     ◀── health runner (probes from inside network namespaces)
         └────────▶ DNS server (prebuilt answers, invalidated on change)

What cannot be rebuilt from the engines (manual registrations, KV) lives in the state file.
The engine may be absent at start or go away later: the agent keeps serving what it knows and
reconnects with back-off. SIGTERM and SIGINT stop it cleanly.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import signal
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from dockmesh.catalog.containers import derive_all
from dockmesh.catalog.live import LiveCatalog
from dockmesh.catalog.store import MemoryStore, SqliteStore, Store
from dockmesh.engine.backend import EngineRef
from dockmesh.engine.watch import TopologyWatcher
from dockmesh.errors import EngineError
from dockmesh.model.topology import Topology

if TYPE_CHECKING:  # the servers load only when the agent runs, not with the command line
    from aiohttp import web
    from prometheus_client.metrics_core import Metric

    from dockmesh.dns.server import DnsServer
    from dockmesh.health.runner import HealthRunner
    from dockmesh.policy.enforce import Enforcer

log = logging.getLogger(__name__)


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
    dns_domains: tuple[str, ...] = ("dockmesh", "consul")
    dns_ttl: int = 0
    extra: dict[str, str] = field(default_factory=dict)


class TopologyHolder:
    """The newest topology, and a blocking wait on its version (for the API)."""

    def __init__(self) -> None:
        self.current: Topology | None = None
        self._changed = asyncio.Event()

    def set(self, topo: Topology) -> None:
        self.current = topo
        event, self._changed = self._changed, asyncio.Event()
        event.set()

    def get(self) -> Topology | None:
        return self.current

    async def wait(self, version: int, timeout_s: float) -> Topology | None:
        deadline = time.monotonic() + max(0.0, min(timeout_s, 600.0))
        while True:
            cur = self.current
            if cur is not None and (cur.version > version or version <= 0):
                return cur
            left = deadline - time.monotonic()
            if left <= 0:
                return cur
            event = self._changed
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), left)


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
    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        store: Store = SqliteStore(config.state) if config.state else MemoryStore()
        self.live = LiveCatalog(store=store)
        self.topology = TopologyHolder()
        self.watcher = TopologyWatcher(list(config.engines))
        self.warnings: dict[str, list[str]] = {}
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._dns_gateways: set[str] = set()
        self.dns: DnsServer | None = None
        self.api_runner: web.AppRunner | None = None
        self.health: HealthRunner | None = None
        self.policy: Enforcer | None = None  # issue 8: keeps the applied policy true

    # --- life cycle ---------------------------------------------------------------------

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self.stop)
        self.live.load()
        try:
            await self._start_services()
            # --- issue 8 (policy): the applied policy's table follows the topology ---
            import os

            from dockmesh.policy.enforce import Enforcer
            from dockmesh.policy.store import PolicyStore, policy_dir, table_name

            env = os.environ
            table = table_name(None, env.get("DOCKMESH_POLICY_TABLE"))
            store = PolicyStore(table, policy_dir(env.get("DOCKMESH_POLICY_DIR")))
            self.policy = Enforcer(store)
            self._tasks.append(asyncio.create_task(self._poll_policy(), name="policy"))
            # --- end issue 8 ---
            self._tasks.append(asyncio.create_task(self._connect_and_follow(), name="topology"))
            log.info("agent ready")
            await self._stop.wait()
        finally:
            await self._shutdown()

    async def _start_services(self) -> None:
        from aiohttp import web
        from prometheus_client import CollectorRegistry, Histogram

        from dockmesh.api.app import make_app
        from dockmesh.dns.server import DnsServer
        from dockmesh.health.runner import HealthRunner

        cfg = self.config
        logging.getLogger("aiohttp.server").addFilter(_quiet_bad_requests)
        registry = CollectorRegistry()
        if cfg.dns is not None:
            dns = DnsServer(self.live, self.topology.get, domains=cfg.dns_domains, ttl=cfg.dns_ttl)
            await dns.start(*cfg.dns)
            self.dns = dns
            registry.register(_DnsCollector(dns))
        # --- issue 9 (observability): container_network_* counters, read at scrape time ---
        from dockmesh.observe.metrics import ContainerNetworkCollector

        registry.register(ContainerNetworkCollector(self.topology.get))
        # --- end issue 9 ---
        probe_seconds = Histogram(
            "dockmesh_check_duration_seconds",
            "Health check probes by kind and result.",
            ["kind", "status"],
            registry=registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )

        def on_result(spec: Any, result: Any, seconds: float) -> None:
            status = getattr(result, "status", "unknown")
            probe_seconds.labels(spec.kind, status).observe(seconds)

        health = HealthRunner(self.live, on_result=on_result)
        await health.start()
        self.health = health
        app = make_app(
            self.live, self.topology.get, self.topology.wait, metrics=registry, node=cfg.node
        )
        runner = web.AppRunner(
            app, access_log=None, handle_signals=False, handler_cancellation=True
        )
        await runner.setup()
        host, port = cfg.api
        await web.TCPSite(runner, host, port, reuse_address=True).start()
        self.api_runner = runner

    async def _shutdown(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        health = self.health
        if health is not None:
            await health.stop()
        dns = self.dns
        if dns is not None:
            await dns.close()
        runner = self.api_runner
        if runner is not None:
            await runner.cleanup()
        await asyncio.to_thread(self.watcher.stop)
        if self.live.store is not None:
            self.live.store.close()
        log.info("agent stopped")

    # --- the topology -------------------------------------------------------------------

    async def _connect_and_follow(self) -> None:
        backoff = 0.2
        while not self._stop.is_set():
            try:
                first = await asyncio.to_thread(self.watcher.start)
                break
            except EngineError as e:
                log.warning("engine not reachable (retrying in %.1f s): %s", backoff, e)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), backoff)
                backoff = min(backoff * 2, 5.0)
        else:
            return
        await self._apply_topology(first)
        async for topo in self.watcher.updates():
            await self._apply_topology(topo)

    async def _apply_topology(self, topo: Topology) -> None:
        self.topology.set(topo)
        # issue 8: the kernel first, so a container that moved is covered at once.
        await self._sync_policy(topo)
        local = self.config.engines[0].name if self.config.engines else "local"
        for engine in topo.engines:
            derived, warnings = derive_all(topo, engine.name, local, self.config.register_compose)
            for w in warnings:
                if w not in self.warnings.get(engine.name, []):
                    log.warning("%s", w)
            self.warnings[engine.name] = warnings
            self.live.sync_containers(engine.name, [(d.instance, d.checks) for d in derived])
        if self.dns is not None and self.config.dns_on_gateways:
            await self._follow_gateways(bridge_gateways(topo))

    # --- issue 8 (policy) --------------------------------------------------------------------

    async def _sync_policy(self, topo: Topology) -> None:
        enforcer = self.policy
        if enforcer is None:
            return
        try:
            await asyncio.to_thread(enforcer.sync, topo)
        except Exception:  # the agent serves on whatever the kernel or the file does
            log.exception("policy: keeping the table in sync failed")

    async def _poll_policy(self, every_s: float = 1.0) -> None:
        """A policy applied or removed by `dockmesh policy` while nothing else changes."""
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), every_s)
            enforcer = self.policy
            if enforcer is None or self._stop.is_set():
                continue
            try:
                await asyncio.to_thread(enforcer.poll)
            except Exception:
                log.exception("policy: reading the applied policy failed")

    # --- end issue 8 ---------------------------------------------------------------------------

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


def _quiet_bad_requests(record: logging.LogRecord) -> bool:
    """A request aiohttp's own parser refuses (bad bytes in the request line, a malformed
    Content-Length) is the client's mistake, answered 400: one info line, not an error with a
    traceback that any client could flood the log with."""
    from aiohttp.http_exceptions import HttpProcessingError

    exc = record.exc_info[1] if record.exc_info else None
    if isinstance(exc, HttpProcessingError):
        record.levelno, record.levelname = logging.INFO, "INFO"
        record.msg, record.args, record.exc_info = "refused a malformed request: %s", (exc,), None
        return logging.getLogger("aiohttp.server").isEnabledFor(logging.INFO)
    return True


class _DnsCollector:
    """The DNS server's counters as Prometheus metrics, read at scrape time."""

    def __init__(self, dns: DnsServer) -> None:
        self._dns = dns

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        stats = self._dns.stats
        queries = CounterMetricFamily(
            "dockmesh_dns_queries", "DNS responses by response code.", labels=["rcode"]
        )
        for rcode, n in sorted(stats.queries.items()):
            queries.add_metric([rcode], n)
        yield queries
        yield CounterMetricFamily(
            "dockmesh_dns_truncated", "UDP responses sent truncated (TC).", value=stats.truncated
        )
        yield CounterMetricFamily(
            "dockmesh_dns_dropped", "Packets left unanswered (unreadable).", value=stats.dropped
        )
        yield GaugeMetricFamily(
            "dockmesh_dns_tcp_connections", "Open DNS TCP connections.", value=stats.tcp_connections
        )


def run_agent(config: AgentConfig) -> None:
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        log.info("uvloop is not installed: the standard event loop serves")
    asyncio.run(Agent(config).run())
