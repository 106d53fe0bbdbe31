"""`dockmesh proxy`'s composition root: routes and clusters from the flags and the routes
file, the data plane on uvloop, the discovery watch or active checks beside it, the admin
endpoint, and `--workers N` processes sharing the listening port (SO_REUSEPORT). Wiring only:
what each part does is its own module's.

With one worker, that process serves the admin endpoint itself. With several, each worker
serves its own on a loopback port of its choosing, and the parent process — which handles no
requests — serves `--admin` by asking every worker (`admin.serve_summed_admin`), and starts a
worker again when one dies.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import dataclasses
import gc
import logging
import os
import random
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from dockmesh.errors import SpecError
from dockmesh.proxy.admin import serve_admin, serve_summed_admin
from dockmesh.proxy.cluster import Cluster
from dockmesh.proxy.config import FileSettings, RouteSpec, TlsSpec, load_config, make_policy
from dockmesh.proxy.discovery import check_health, watch_service
from dockmesh.proxy.server import Proxy, check_port_free, reuseport_socket
from dockmesh.proxy.settings import Limits, ProxySettings, Route, Timeouts
from dockmesh.proxy.tls import HTTP1, Edge, TlsError
from dockmesh.resilience.passive import DEFAULT_FAILURE_STATUSES, PassivePolicy

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1
M_MMAP_THRESHOLD = -3
# Blocks this large or larger are mapped on their own, and so unmapped when freed: what a
# client's unsent response or a read from an upstream held goes back to the system. (glibc's
# default threshold moves up to the size of the last such block freed, after which they come
# from the heap, whose freed middle is never returned: 1,000 clients that stopped reading
# left 272 MiB behind.)
MMAP_THRESHOLD = 128 * 1024


@dataclass
class ProxyOptions:
    # Plain HTTP here, TLS on `tls_listen`: at least one of them.
    listen: tuple[str, int] | None
    service: str | None = None
    # The agent's URL, resolved by the command line (`--agent`, `$DOCKMESH_AGENT`, the
    # default): needed when a route follows a service.
    agent: str | None = None
    backends: list[str] = field(default_factory=list)  # host:port
    balance: str = "round_robin"
    workers: int = 1
    admin: tuple[str, int] | None = None
    file: FileSettings | None = None
    health_path: str = "/"
    # The routes file's path: read again on SIGHUP.
    config_path: str | None = None
    # How long in-flight requests get to finish after SIGTERM.
    drain_timeout: float = 30.0
    # Passive health's settings from the flags; the file's `passive:` wins over them, as a
    # route's balance wins over --balance.
    passive: dict[str, Any] = field(default_factory=dict)
    tls_listen: tuple[str, int] | None = None
    # TlsSpec's fields from the flags; the file's `tls:` wins over them.
    tls: dict[str, Any] = field(default_factory=dict)


def tls_spec(opts: ProxyOptions) -> TlsSpec | None:
    """What the TLS listener serves, or None without one; TlsError when the flags and the
    file do not make a usable whole."""
    given = {**opts.tls, **(opts.file.tls if opts.file else {})}
    if opts.tls_listen is None:
        if given:
            raise TlsError("TLS settings but no TLS listener: add --tls-listen HOST:PORT")
        return None
    spec = TlsSpec(**given)
    if not spec.certificates and not spec.internal:
        raise TlsError(
            "--tls-listen needs certificates: --tls internal, --tls-cert/--tls-key, "
            "or tls: in --config"
        )
    return spec


def route_hosts(settings: ProxySettings) -> list[str]:
    """The host names the routes serve: those `tls internal` may issue leaves for."""
    return [r.host.decode() for r in settings.routes if r.host is not None]


def read_config(path: str) -> FileSettings:
    """The routes file; OSError or SpecError when it cannot be used."""
    with open(path, "rb") as f:
        raw = f.read(2 * 1024 * 1024)
    return load_config(raw, path)


def build_settings(
    opts: ProxyOptions, known: dict[str, Cluster[Any]] | None = None
) -> tuple[ProxySettings, list[tuple[Cluster[Any], RouteSpec]]]:
    """The data plane's settings from the flags and the routes file, and each cluster made
    with the route spec that made it (for its discovery). A cluster in `known` (by
    `cluster_key`: a reload) is used again, with its members and health, not made anew;
    `known` is then what this configuration has."""
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
    if "request_buffer_bytes" in file.limits:
        limits.request_buffer_bytes = file.limits["request_buffer_bytes"]
    if "max_connections_per_client" in file.limits:
        limits.max_connections_per_client = file.limits["max_connections_per_client"]
    if "max_buffered_bytes" in file.limits:
        limits.max_buffered_bytes = file.limits["max_buffered_bytes"]
    timeouts = Timeouts(**{f"{k}_s": v for k, v in file.timeouts.items()})
    given = {**opts.passive, **file.passive}
    passive = PassivePolicy(
        failure_statuses=given.get("failure_statuses", DEFAULT_FAILURE_STATUSES),
        max_ejection_percent=given.get("max_ejection_percent", 50.0),
        panic_threshold_percent=given.get("panic_threshold", 50.0),
    )
    clusters: dict[str, Cluster[Any]] = {}
    routes: list[Route] = []
    made: list[tuple[Cluster[Any], RouteSpec]] = []
    hash_keys: dict[str, str] = {}
    before = dict(known or {})
    for spec in specs:
        balance = spec.balance or opts.balance
        key = spec.service or ",".join(spec.backends)
        cluster = clusters.get(key)
        if cluster is None:
            name = spec.service or spec.name
            breaker = make_policy("breaker", spec.breaker)
            outlier = make_policy(
                "outlier",
                spec.outlier,
                max_ejection_percent=passive.max_ejection_percent,
                failure_statuses=passive.failure_statuses,
            )
            retry = make_policy("retry", spec.retry)
            # Kept across a reload only when nothing that makes it differs (passive health
            # and the route's breaker, outlier and retry settings included: a changed policy
            # makes a new cluster, whose upstreams start with closed breakers).
            full = "|".join(
                (
                    name,
                    key,
                    balance,
                    spec.health_path,
                    *map(identity, (passive, breaker, outlier, retry)),
                )
            )
            cluster = before.get(full)
            if cluster is None:
                cluster = Cluster(
                    name,
                    balance,
                    clock=time.monotonic,
                    rng=random.Random(),
                    passive=passive,
                    breaker_policy=breaker,
                    outlier_policy=outlier,
                    retry=retry,
                )
                if spec.backends:
                    cluster.set_members(dict.fromkeys(spec.backends, 1))
            if known is not None:
                known[full] = cluster
            clusters[key] = cluster
            made.append((cluster, spec))
            if balance.startswith("hash:"):
                hash_keys[cluster.name] = balance[5:]
        host = spec.host.encode() if spec.host else None
        routes.append(Route(cluster, host, spec.prefix.encode()))
    settings = ProxySettings(routes, timeouts, limits, hash_keys, list(file.trusted_proxies))
    if known is not None:
        kept = {id(c) for c in clusters.values()}
        for k in [k for k, c in known.items() if id(c) not in kept]:
            del known[k]
    return settings, made


def identity(policy: Any) -> str:
    """A policy (a frozen dataclass) as text that is the same for equal policies: its sets
    sorted (a set's repr follows its insertion order when members collide)."""
    parts = []
    for f in dataclasses.fields(policy):
        v = getattr(policy, f.name)
        if isinstance(v, frozenset):
            v = sorted(map(str, v))
        parts.append(f"{f.name}={v!r}")
    return f"{type(policy).__name__}({', '.join(parts)})"


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency; asyncio still works
        return asyncio.new_event_loop
    return uvloop.new_event_loop


def run_proxy(opts: ProxyOptions) -> None:
    """Runs until SIGTERM or SIGINT. Raises OSError when the port cannot be bound."""
    routes = opts.file.routes if opts.file else []
    if (opts.service or any(r.service for r in routes)) and not opts.agent:
        raise ValueError("a route follows a service: the agent's URL is needed")
    spec = tls_spec(opts)
    if spec is not None:
        # Files and the CA read once here, so that a bad one is a usage error (exit 2), not
        # a worker that dies.
        Edge(spec, route_hosts(build_settings(opts)[0]))
    addresses = [a for a in (opts.listen, opts.tls_listen) if a is not None]
    if not addresses:
        raise ValueError("nothing to listen on: --listen or --tls-listen")
    for address in addresses:
        check_port_free(*address)
    socks = [_socket(opts.listen) for _ in range(opts.workers)]
    tls_socks = [_socket(opts.tls_listen) for _ in range(opts.workers)]
    if opts.workers == 1:
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            runner.run(_worker(opts, socks[0], opts.admin, None, tls_socks[0]))
        return
    _supervise(opts, socks, tls_socks)


def _socket(address: tuple[str, int] | None) -> socket.socket | None:
    return None if address is None else reuseport_socket(*address)


async def _worker(
    opts: ProxyOptions,
    sock: socket.socket | None,
    admin: tuple[str, int] | None,
    report_fd: int | None,
    tls_sock: socket.socket | None = None,
) -> None:
    loop = asyncio.get_running_loop()
    known: dict[str, Cluster[Any]] = {}
    settings, made = build_settings(opts, known)
    proxy = Proxy(settings, loop)
    proxy.trim = _memory_returned()
    if sock is not None:
        await proxy.listen(sock)
    edge = None
    spec = tls_spec(opts)
    if tls_sock is not None and spec is not None:
        # ALPN offers the protocols registered in `proxy.alpn` (HTTP/2's "h2", registered
        # before this line) ahead of http/1.1: never one nothing here speaks.
        edge = Edge(spec, route_hosts(settings), alpn=[*proxy.alpn, HTTP1])
        await proxy.listen(tls_sock, edge.context, spec.handshake_timeout)
    tasks: dict[int, asyncio.Task[None]] = {}  # id(cluster) → its discovery or checks

    def follow(made: list[tuple[Cluster[Any], RouteSpec]]) -> None:
        for cluster, spec in made:
            if id(cluster) in tasks:
                continue
            if spec.service:
                assert opts.agent is not None  # run_proxy checked
                task = watch_service(cluster, spec.service, opts.agent)
            else:
                task = check_health(cluster, spec.health_path)
            tasks[id(cluster)] = loop.create_task(task)

    follow(made)
    runner = None
    if admin is not None:
        runner, port = await serve_admin(admin, proxy.tally, proxy.clusters)
        if report_fd is not None:
            os.write(report_fd, f"{port}\n".encode())
            os.close(report_fd)

    def reload() -> None:
        file = reload_file(opts)
        if file is None:
            return
        opts.file = file
        settings, made = build_settings(opts, known)
        proxy.apply(settings)
        follow(made)
        if edge is not None:
            try:
                new = tls_spec(opts)
                assert new is not None  # a TLS listener had one; the flags still give it
                edge.update(new, route_hosts(settings))
            except TlsError as e:
                log.error("SIGHUP: tls: %s: keeping the running certificates", e)
        live = {id(c) for c, _ in made}
        for k in [k for k in tasks if k not in live]:
            tasks.pop(k).cancel()
        log.warning("reloaded %s: %d routes", opts.config_path, len(settings.routes))

    # What start-up made lives as long as the process: out of the collector's sight, so a
    # full collection during traffic does not walk it (a pause every request would wait on).
    gc.collect()
    gc.freeze()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, reload)
    await stop.wait()
    # A graceful drain: no new connection, idle keep-alives closed, in-flight requests
    # finish (their responses say `Connection: close`) until the deadline.
    proxy.drain()
    deadline = loop.time() + opts.drain_timeout
    while loop.time() < deadline and proxy.busy():
        await asyncio.sleep(0.05)
        proxy.close_idle_clients()
    proxy.close()
    for t in tasks.values():
        t.cancel()
    for t in tasks.values():
        with contextlib.suppress(asyncio.CancelledError):
            await t
    if runner is not None:
        await runner.cleanup()


def reload_file(opts: ProxyOptions) -> FileSettings | None:
    """The routes file read again, or None (logged) when there is none or it is unusable:
    the running configuration stays then."""
    if opts.config_path is None:
        log.warning("SIGHUP: no --config to reload")
        return None
    try:
        file = read_config(opts.config_path)
    except (OSError, SpecError) as e:
        log.error("SIGHUP: %s: keeping the running configuration", str(e).replace("\n", "; "))
        return None
    if any(r.service for r in file.routes) and not opts.agent:
        log.error("SIGHUP: a route follows a service but no agent was given: not reloaded")
        return None
    return file


def _memory_returned() -> Callable[[], None] | None:
    """Fixes the allocator's mmap threshold (`MMAP_THRESHOLD`) and gives what hands freed
    heap memory back to the system (malloc_trim), or None where there is no glibc."""
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
        trim = libc.malloc_trim
    except (OSError, AttributeError):  # pragma: no cover - not glibc
        return None

    def release() -> None:
        trim(0)

    return release


def _die_with_parent(parent: int) -> None:
    """The kernel sends this worker SIGTERM when its parent dies, however it dies (kill -9
    too): a worker left alone would keep serving the port with the old configuration."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):  # pragma: no cover - not Linux
        log.warning("cannot ask to die with the parent process")
    if os.getppid() != parent:  # it died before prctl took effect
        os._exit(0)


# --- several workers ----------------------------------------------------------------------


def _supervise(
    opts: ProxyOptions,
    socks: list[socket.socket | None],
    tls_socks: list[socket.socket | None],
) -> None:
    """Forks a worker per socket, restarts one that dies, serves the summed admin endpoint,
    and passes SIGTERM/SIGINT on."""
    children: dict[int, int] = {}  # pid → worker number
    admin_ports: dict[int, int] = {}  # worker number → its admin port

    def spawn(i: int) -> None:
        r, w = os.pipe()
        parent_pid = os.getpid()
        pid = os.fork()
        if pid == 0:  # the worker
            _die_with_parent(parent_pid)
            os.close(r)
            for j in range(len(socks)):
                for other in (socks[j], tls_socks[j]):
                    if j != i and other is not None:
                        other.close()
            code = 0
            try:
                with asyncio.Runner(loop_factory=_loop_factory()) as runner:
                    runner.run(_worker(opts, socks[i], ("127.0.0.1", 0), w, tls_socks[i]))
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

        def reload() -> None:
            # The parent reads it too, so that a worker started again later has it.
            file = reload_file(opts)
            if file is not None:
                opts.file = file
            for pid in list(children):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGHUP)

        loop.add_signal_handler(signal.SIGHUP, reload)
        runner = None
        if opts.admin is not None:
            runner, _ = await serve_summed_admin(opts.admin, admin_ports)
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
        deadline = time.monotonic() + opts.drain_timeout + 5
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

    for s in [*socks, *tls_socks]:
        if s is not None:
            s.close()
    with asyncio.Runner(loop_factory=_loop_factory()) as r:
        r.run(parent())
