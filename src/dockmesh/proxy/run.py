"""`dockmesh proxy`'s composition root: routes and clusters from the flags and the routes
file, the data plane on uvloop, the discovery watch or active checks beside it, the admin
endpoint, and `--workers N` processes sharing the listening port (SO_REUSEPORT).

With one worker, that process serves the admin endpoint itself. With several, each worker
serves its own on a loopback port of its choosing, and the parent process — which handles no
requests — serves `--admin` by asking every worker and adding their answers up: counters are
summed; an upstream is healthy only if every worker finds it so, ejected if any has ejected
it, and its breaker shows the worst state any worker has.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import os
import random
import signal
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from dockmesh.proxy.cluster import Cluster
from dockmesh.proxy.config import FileSettings, RouteSpec
from dockmesh.proxy.discovery import check_health, watch_service
from dockmesh.proxy.server import Limits, Proxy, ProxySettings, Route, Timeouts, reuseport_socket
from dockmesh.proxy.stats import ProxyCollector, status_document

log = logging.getLogger(__name__)


@dataclass
class ProxyOptions:
    listen: tuple[str, int]
    service: str | None = None
    agent: str | None = None
    backends: list[str] = field(default_factory=list)  # host:port
    balance: str = "round_robin"
    workers: int = 1
    admin: tuple[str, int] | None = None
    file: FileSettings | None = None
    health_path: str = "/"


def build_settings(opts: ProxyOptions) -> tuple[ProxySettings, list[tuple[Cluster, RouteSpec]]]:
    specs = list(opts.file.routes) if opts.file else []
    if opts.service:
        specs.append(RouteSpec(name=opts.service, service=opts.service))
    elif opts.backends:
        specs.append(
            RouteSpec(name="backends", backends=list(opts.backends), health_path=opts.health_path)
        )
    file = opts.file or FileSettings()
    limits = Limits()
    if "max_connections" in file.limits:
        limits.max_client_connections = file.limits["max_connections"]
    if "max_header_bytes" in file.limits:
        limits.max_head_bytes = file.limits["max_header_bytes"]
    if "max_connections_per_upstream" in file.limits:
        limits.max_connections_per_upstream = file.limits["max_connections_per_upstream"]
    timeouts = Timeouts(**{f"{k}_s": v for k, v in file.timeouts.items()})
    clusters: dict[str, Cluster] = {}
    routes: list[Route] = []
    made: list[tuple[Cluster, RouteSpec]] = []
    hash_keys: dict[str, str] = {}
    for spec in specs:
        balance = spec.balance or opts.balance
        key = spec.service or ",".join(spec.backends)
        cluster = clusters.get(key)
        if cluster is None:
            name = spec.service or spec.name
            cluster = Cluster(
                name,
                balance,
                rng=random.Random(),
                max_connections_per_upstream=limits.max_connections_per_upstream,
            )
            if spec.backends:
                cluster.set_members(dict.fromkeys(spec.backends, 1))
            clusters[key] = cluster
            made.append((cluster, spec))
            if balance.startswith("hash:"):
                hash_keys[cluster.name] = balance[5:]
        host = spec.host.encode() if spec.host else None
        routes.append(Route(cluster, host, spec.prefix.encode()))
    settings = ProxySettings(routes, timeouts, limits, hash_keys)
    return settings, made


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency; asyncio still works
        return asyncio.new_event_loop
    return uvloop.new_event_loop


def run_proxy(opts: ProxyOptions) -> None:
    """Runs until SIGTERM or SIGINT. Raises OSError when the port cannot be bound."""
    socks = [reuseport_socket(*opts.listen) for _ in range(opts.workers)]
    if opts.workers == 1:
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            runner.run(_worker(opts, socks[0], opts.admin, None))
        return
    _supervise(opts, socks)


async def _worker(
    opts: ProxyOptions,
    sock: socket.socket,
    admin: tuple[str, int] | None,
    report_fd: int | None,
) -> None:
    loop = asyncio.get_running_loop()
    settings, made = build_settings(opts)
    proxy = Proxy(settings, loop)
    await proxy.listen(sock)
    tasks: list[asyncio.Task[None]] = []
    for cluster, spec in made:
        if spec.service:
            agent = opts.agent or "http://127.0.0.1:8500"
            tasks.append(
                loop.create_task(watch_service(cluster, spec.service, agent, proxy.retire))
            )
        else:
            tasks.append(loop.create_task(check_health(cluster, spec.health_path)))
    runner = None
    if admin is not None:
        runner, port = await _serve_admin(admin, proxy)
        if report_fd is not None:
            os.write(report_fd, f"{port}\n".encode())
            os.close(report_fd)
    # What start-up made lives as long as the process: out of the collector's sight, so a
    # full collection during traffic does not walk it (a pause every request would wait on).
    gc.collect()
    gc.freeze()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    for s in proxy.servers:
        s.close()
    # In-flight requests get a moment to finish; idle keep-alive connections do not wait.
    deadline = loop.time() + 5
    while loop.time() < deadline and any(c.state not in (0, 4) for c in proxy.clients):
        await asyncio.sleep(0.05)
    proxy.close()
    for t in tasks:
        t.cancel()
    for t in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await t
    if runner is not None:
        await runner.cleanup()


async def _serve_admin(bind: tuple[str, int], proxy: Proxy) -> tuple[Any, int]:
    from aiohttp import web
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

    registry = CollectorRegistry(auto_describe=False)
    registry.register(ProxyCollector(proxy.stats, proxy.clusters))

    async def status(request: web.Request) -> web.Response:
        return web.json_response(status_document(proxy.clusters))

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    return await _admin_app(bind, status, metrics)


async def _admin_app(
    bind: tuple[str, int],
    status: Callable[[Any], Awaitable[Any]],
    metrics: Callable[[Any], Awaitable[Any]],
) -> tuple[Any, int]:
    from aiohttp import web

    app = web.Application()
    app.router.add_get("/status", status)
    app.router.add_get("/metrics", metrics)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, bind[0], bind[1], reuse_address=True)
    await site.start()
    port = bind[1]
    for address in runner.addresses:  # the port the kernel chose when asked for 0
        port = int(address[1])
        break
    return runner, port


# --- several workers ----------------------------------------------------------------------


def _supervise(opts: ProxyOptions, socks: list[socket.socket]) -> None:
    """Forks a worker per socket, restarts one that dies, serves the summed admin endpoint,
    and passes SIGTERM/SIGINT on."""
    children: dict[int, int] = {}  # pid → worker number
    admin_ports: dict[int, int] = {}  # worker number → its admin port

    def spawn(i: int) -> None:
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the worker
            os.close(r)
            for j, s in enumerate(socks):
                if j != i:
                    s.close()
            code = 0
            try:
                with asyncio.Runner(loop_factory=_loop_factory()) as runner:
                    runner.run(_worker(opts, socks[i], ("127.0.0.1", 0), w))
            except BaseException:
                log.exception("worker %d failed", i)
                code = 1
            finally:
                os._exit(code)
        os.close(w)
        with os.fdopen(r) as f:
            line = f.readline().strip()
        if line.isdigit():
            admin_ports[i] = int(line)
        children[pid] = i

    for i in range(len(socks)):
        spawn(i)

    async def parent() -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        runner = None
        if opts.admin is not None:
            runner, _ = await _serve_summed_admin(opts.admin, admin_ports)
        last_restart = 0.0
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.5)
            while True:
                try:
                    pid, _status = os.waitpid(-1, os.WNOHANG)
                except ChildProcessError:
                    pid = 0
                if pid == 0:
                    break
                i = children.pop(pid, None)
                if i is not None and not stop.is_set():
                    # A crash loop must not spin the machine: at most one restart a second.
                    wait = max(0.0, 1.0 - (time.monotonic() - last_restart))
                    await asyncio.sleep(wait)
                    last_restart = time.monotonic()
                    log.warning("worker %d exited; starting it again", i)
                    spawn(i)
        for pid in list(children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 8
        while children and time.monotonic() < deadline:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid:
                children.pop(pid, None)
            else:
                await asyncio.sleep(0.05)
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if runner is not None:
            await runner.cleanup()

    for s in socks:
        s.close()
    with asyncio.Runner(loop_factory=_loop_factory()) as r:
        r.run(parent())


_BREAKER_RANK = {"closed": 0, "half_open": 1, "open": 2}


def merge_status(docs: list[dict[str, Any]]) -> dict[str, Any]:
    merged: dict[tuple[str, str], dict[str, Any]] = {}
    for doc in docs:
        for u in doc.get("upstreams", []):
            key = (u.get("cluster", ""), u["address"])
            m = merged.get(key)
            if m is None:
                merged[key] = dict(u)
                continue
            m["healthy"] = m["healthy"] and u["healthy"]
            m["ejected"] = m["ejected"] or u["ejected"]
            if _BREAKER_RANK[u["breaker"]] > _BREAKER_RANK[m["breaker"]]:
                m["breaker"] = u["breaker"]
            for k in ("in_flight", "requests", "failures"):
                m[k] += u[k]
    return {"upstreams": list(merged.values())}


def merge_metrics(texts: list[str]) -> str:
    """Sums the workers' samples of each metric with the same labels."""
    from prometheus_client.parser import text_string_to_metric_families

    order: list[str] = []
    families: dict[str, tuple[str, str]] = {}
    samples: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
    for text in texts:
        for fam in text_string_to_metric_families(text):
            if fam.name not in families:
                families[fam.name] = (fam.type, fam.documentation)
                order.append(fam.name)
                samples[fam.name] = {}
            acc = samples[fam.name]
            for s in fam.samples:
                k = (s.name, tuple(sorted(s.labels.items())))
                acc[k] = acc.get(k, 0.0) + s.value
    lines = []
    for name in order:
        kind, doc = families[name]
        lines.append(f"# HELP {name} {doc}")
        lines.append(f"# TYPE {name} {kind}")
        for (sname, labels), value in samples[name].items():
            lab = ",".join(f'{k}="{_escape(v)}"' for k, v in labels)
            lines.append(f"{sname}{{{lab}}} {value!r}" if lab else f"{sname} {value!r}")
    return "\n".join(lines) + "\n"


def _escape(v: str) -> str:
    return v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


async def _serve_summed_admin(bind: tuple[str, int], ports: dict[int, int]) -> tuple[Any, int]:
    import aiohttp
    from aiohttp import web

    async def gather(path: str) -> list[bytes]:
        timeout = aiohttp.ClientTimeout(total=2)
        async with aiohttp.ClientSession(timeout=timeout) as session:

            async def one(port: int) -> bytes | None:
                try:
                    async with session.get(f"http://127.0.0.1:{port}{path}") as r:
                        return await r.read()
                except (aiohttp.ClientError, TimeoutError):
                    return None

            got = await asyncio.gather(*(one(p) for p in list(ports.values())))
        return [g for g in got if g is not None]

    async def status(request: web.Request) -> web.Response:
        docs = [json.loads(b) for b in await gather("/status")]
        return web.json_response(merge_status(docs))

    async def metrics(request: web.Request) -> web.Response:
        texts = [b.decode() for b in await gather("/metrics")]
        return web.Response(text=merge_metrics(texts), content_type="text/plain", charset="utf-8")

    return await _admin_app(bind, status, metrics)
