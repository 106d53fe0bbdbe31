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
import errno
import gc
import logging
import os
import random
import signal
import socket
import stat
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from dockmesh.errors import SpecError
from dockmesh.proxy import h2conn
from dockmesh.proxy.accesslog import AccessLog
from dockmesh.proxy.admin import serve_admin, serve_summed_admin
from dockmesh.proxy.cluster import Cluster
from dockmesh.proxy.config import (
    AccessLogSpec,
    FileSettings,
    RouteSpec,
    TlsSpec,
    load_config,
    make_policy,
)
from dockmesh.proxy.discovery import check_health, watch_service
from dockmesh.proxy.filewatch import watch_file
from dockmesh.proxy.labelroutes import CatalogInstance, LabelTable, build_table
from dockmesh.proxy.labelwatch import LabelWatch
from dockmesh.proxy.middleware import resolve_chain
from dockmesh.proxy.server import Proxy, check_port_free, reuseport_socket
from dockmesh.proxy.settings import Limits, ProxySettings, Route, Timeouts
from dockmesh.proxy.takeover import (
    Control,
    Handoff,
    TakeoverError,
    control_path,
    serves,
    take_over,
)
from dockmesh.proxy.tls import HTTP1, Edge, TlsError
from dockmesh.resilience.passive import DEFAULT_FAILURE_STATUSES, PassivePolicy

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1
# How long a proxy that took over waits for its predecessor to let --admin go.
ADMIN_WAIT_S = 10.0
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
    # Routes declared on containers (`--project`, `--all-projects`): follow the catalog's
    # instances of these projects (None with follow_labels: every project's).
    follow_labels: bool = False
    projects: frozenset[str] | None = None
    # Look at --config once a second and reload it when it changes, as on SIGHUP.
    watch_config: bool = True
    tls_listen: tuple[str, int] | None = None
    # TlsSpec's fields from the flags; the file's `tls:` wins over them.
    tls: dict[str, Any] = field(default_factory=dict)
    # Take the listening sockets over from the proxy serving `listen` (else `tls_listen`),
    # which then drains.
    takeover: bool = False
    # The access log from the flags (--access-log*): wins over the file's `access_log:`.
    access_log: AccessLogSpec | None = None


def declared_middlewares(file: FileSettings | None) -> frozenset[str]:
    """The middlewares' names the routes file declares (a `middlewares:` mapping of name →
    its settings, when the file has one)."""
    found = getattr(file, "middlewares", None)
    return (
        frozenset(k for k in found if isinstance(k, str))
        if isinstance(found, dict)
        else frozenset()
    )


def label_specs(table: LabelTable) -> list[RouteSpec]:
    """The routes the containers declare, as route specs after the file's."""
    return [
        RouteSpec(
            name=r.cluster,
            service=r.cluster,
            host=r.host,
            prefix=r.prefix,
            strip_prefix=r.strip,
            middlewares=list(r.middlewares),
            labelled=True,
        )
        for r in table.routes
    ]


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


def access_log_spec(opts: ProxyOptions) -> AccessLogSpec | None:
    """The access log to keep: the flags', else the routes file's, else none."""
    if opts.access_log is not None:
        return opts.access_log
    return opts.file.access_log if opts.file is not None else None


def read_config(path: str) -> FileSettings:
    """The routes file; OSError or SpecError when it cannot be used. Opened without
    blocking and read only when it is a regular file: a FIFO (or a device) put at the
    watched path would otherwise hold the event loop in open() or read() for good."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    with open(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, f"{path}: not a regular file")
        raw = f.read(2 * 1024 * 1024)
    return load_config(raw, path)


def build_settings(
    opts: ProxyOptions,
    known: dict[str, Cluster[Any]] | None = None,
    labels: LabelTable | None = None,
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
    if labels is not None:
        specs += label_specs(labels)
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
    if "max_upstream_per_h2_connection" in file.limits:
        limits.max_upstream_per_h2_connection = file.limits["max_upstream_per_h2_connection"]
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
        # A labelled route's cluster is its own (members from the route table, not a watch).
        key = f"labels:{spec.service}" if spec.labelled else spec.service or ",".join(spec.backends)
        if spec.upstream_protocol != "http/1.1":
            key += "|" + spec.upstream_protocol
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
                cluster.upstream_h2 = spec.upstream_protocol == "h2"
            if known is not None:
                known[full] = cluster
            clusters[key] = cluster
            made.append((cluster, spec))
            if balance.startswith("hash:"):
                hash_keys[cluster.name] = balance[5:]
        host = spec.host.encode() if spec.host else None
        strip = spec.strip_prefix.encode() if spec.strip_prefix else None
        chain, unknown = resolve_chain(spec.middlewares, file.middlewares)
        if unknown:
            log.warning("route %s: no middleware named %s", spec.name, ", ".join(unknown))
        routes.append(
            Route(
                cluster,
                host,
                spec.prefix.encode(),
                strip,
                tuple(spec.middlewares),
                chain,
                spec.name,
            )
        )
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
    if (opts.service or opts.follow_labels or any(r.service for r in routes)) and not opts.agent:
        raise ValueError("a route follows a service: the agent's URL is needed")
    spec = tls_spec(opts)
    if spec is not None:
        # Files and the CA read once here, so that a bad one is a usage error (exit 2), not
        # a worker that dies.
        Edge(spec, route_hosts(build_settings(opts)[0]))
    addresses = [a for a in (opts.listen, opts.tls_listen) if a is not None]
    if not addresses:
        raise ValueError("nothing to listen on: --listen or --tls-listen")
    handoff = None
    got: dict[tuple[str, int], list[socket.socket]] = {a: [] for a in addresses}
    if opts.takeover:
        if addresses[0][1] == 0:
            raise TakeoverError("--takeover needs the port of the proxy to take over")
        handoff = take_over(control_path(*addresses[0]), *addresses[0])
        for s in handoff.socks:
            # Each socket by the address it serves (plain or TLS); one served no more is
            # closed when the handoff is (the old proxy drains its connections).
            mine = [a for a in addresses if serves(s, *a)]
            if mine:
                got[mine[0]].append(s)
            else:
                s.close()
        for a in addresses[1:]:
            if not got[a]:  # the old proxy did not serve it: as on a start
                check_port_free(*a)
    else:
        for address in addresses:
            check_port_free(*address)
    try:
        plain = _groups(opts.listen, got, opts.workers)
        tls = _groups(opts.tls_listen, got, opts.workers)
        if opts.workers == 1:
            with asyncio.Runner(loop_factory=_loop_factory()) as runner:
                runner.run(_worker(opts, plain[0], opts.admin, None, handoff, tls[0]))
            return
        _supervise(opts, plain, tls, handoff)
    finally:
        if handoff is not None:
            handoff.abandon()


def _groups(
    address: tuple[str, int] | None,
    got: dict[tuple[str, int], list[socket.socket]],
    workers: int,
) -> list[list[socket.socket]]:
    """Each worker's listening sockets for `address`: those taken over spread, a new one in
    the SO_REUSEPORT group for a worker left without; none without an address."""
    if address is None:
        return [[] for _ in range(workers)]
    groups = listen_groups(got[address], workers)
    for g in groups:
        if not g:
            g.append(reuseport_socket(*address))
    return groups


def listen_groups(socks: list[socket.socket], workers: int) -> list[list[socket.socket]]:
    """Received listening sockets spread over the workers, every one served (a socket of an
    SO_REUSEPORT group that nobody accepts on would hold the connections the kernel gives
    it); a worker left without one gets a new socket in the group."""
    return [socks[i::workers] for i in range(workers)]


def _start_control(
    opts: ProxyOptions, socks: list[socket.socket], on_takeover: Callable[[], None]
) -> Control | None:
    """This proxy's control socket (named for --listen, else --tls-listen), so that a
    successor can take its sockets over."""
    address = opts.listen or opts.tls_listen
    if address is None or address[1] == 0:
        return None
    try:
        control = Control(control_path(*address), socks, on_takeover)
        control.start(asyncio.get_running_loop())
    except (OSError, TakeoverError) as e:
        log.warning("no control socket (--takeover of this proxy will not work): %s", e)
        return None
    return control


async def _admin_once_free(
    start: Callable[[], Awaitable[tuple[Any, int]]], bind: tuple[str, int]
) -> tuple[Any, int] | None:
    """After a takeover, --admin is served once the old proxy let it go (at the start of its
    drain); not served, and said so, if it does not within ADMIN_WAIT_S: the data plane
    must not fail for it, the old proxy drains already."""
    deadline = time.monotonic() + ADMIN_WAIT_S
    while True:
        try:
            return await start()
        except OSError as e:
            if e.errno != errno.EADDRINUSE or time.monotonic() > deadline:
                log.error("--admin %s:%d not served: %s", *bind, e.strerror or e)
                return None
        await asyncio.sleep(0.05)


def _confirm(handoff: Handoff | None) -> None:
    """The sockets taken over are served here now: the old proxy drains."""
    if handoff is None:
        return
    try:
        handoff.confirm()
        log.warning("took the listening sockets over; the old proxy drains")
    except TakeoverError as e:
        log.warning("--takeover: %s", e)


async def _worker(
    opts: ProxyOptions,
    socks: list[socket.socket],
    admin: tuple[str, int] | None,
    report_fd: int | None,
    handoff: Handoff | None = None,
    tls_socks: list[socket.socket] | None = None,
) -> None:
    """One process serving `socks`. With no `report_fd` it is the only one: it serves the
    control socket too, and confirms a takeover (`handoff`) once it listens."""
    loop = asyncio.get_running_loop()
    known: dict[str, Cluster[Any]] = {}
    labels = LabelState(opts)
    watch: LabelWatch | None = None
    watch_task: asyncio.Task[None] | None = None
    if opts.follow_labels:
        assert opts.agent is not None  # run_proxy checked
        watch = LabelWatch(opts.agent, opts.projects, lambda found: None)
        watch_task = loop.create_task(watch.run())
        # The containers' routes before the first client: a proxy (re)started under load
        # must not answer 404 for routes the catalog has.
        try:
            await asyncio.wait_for(watch.ready.wait(), LABELS_FIRST_WAIT_S)
        except TimeoutError:
            log.error("routes: the agent at %s did not answer: serving without them", opts.agent)
        labels.table = labels.build(watch.current())
    settings, made = build_settings(opts, known, labels.table)
    labels.place(made)
    proxy = Proxy(settings, loop)
    proxy.trim = _memory_returned()
    h2conn.enable(proxy)
    log_spec = access_log_spec(opts)
    if log_spec is not None:
        proxy.access_log = AccessLog(log_spec, loop)
    for sock in socks:
        await proxy.listen(sock)
    edge = None
    spec = tls_spec(opts)
    if tls_socks and spec is not None:
        # ALPN offers the protocols registered in `proxy.alpn` (HTTP/2's "h2", registered
        # before this line) ahead of http/1.1: never one nothing here speaks.
        edge = Edge(spec, route_hosts(settings), alpn=[*proxy.alpn, HTTP1])
        for sock in tls_socks:
            await proxy.listen(sock, edge.context, spec.handshake_timeout)
    tasks: dict[int, asyncio.Task[None]] = {}  # id(cluster) → its discovery or checks

    def follow(made: list[tuple[Cluster[Any], RouteSpec]]) -> None:
        for cluster, spec in made:
            if id(cluster) in tasks or spec.labelled:
                continue
            if spec.service:
                assert opts.agent is not None  # run_proxy checked
                task = watch_service(cluster, spec.service, opts.agent)
            else:
                h2 = spec.upstream_protocol == "h2"
                task = check_health(
                    cluster, spec.health_path, probe_with=h2conn.probe if h2 else None
                )
            tasks[id(cluster)] = loop.create_task(task)

    follow(made)
    runner = None
    status = labels.status if opts.follow_labels else None
    if admin is not None and handoff is None:
        runner, port = await serve_admin(admin, proxy.tally, proxy.clusters, status)
        if report_fd is not None:
            os.write(report_fd, f"{port}\n".encode())
            os.close(report_fd)

    def reopen_log() -> None:
        if proxy.access_log is not None:
            proxy.access_log.reopen()

    def swap_log() -> None:
        spec = access_log_spec(opts)
        old = proxy.access_log
        if spec != (old.spec if old is not None else None):
            try:
                proxy.access_log = AccessLog(spec, loop) if spec is not None else None
            except OSError as e:
                log.error("access log %s: %s: keeping the last one", spec and spec.path, e)
            else:
                if old is not None:
                    old.close()

    def rebuild() -> ProxySettings:
        """A new route table swapped in whole: requests in flight finish where they are,
        clusters kept by identity keep their members, connections and health."""
        settings, made = build_settings(opts, known, labels.table)
        labels.place(made)
        proxy.apply(settings)
        follow(made)
        if edge is not None:
            try:
                new = tls_spec(opts)
                assert new is not None  # a TLS listener had one; the flags still give it
                edge.update(new, route_hosts(settings))
            except TlsError as e:
                log.error("tls: %s: keeping the running certificates", e)
        live = {id(c) for c, _ in made}
        for k in [k for k in tasks if k not in live]:
            tasks.pop(k).cancel()
        return settings

    def changed(found: list[CatalogInstance]) -> None:
        table = labels.build(found)
        if table.shape() != labels.table.shape():
            labels.table = table
            settings = rebuild()
            log.warning(
                "routes: %d from containers, %d in all", len(table.routes), len(settings.routes)
            )
        else:
            labels.table = table
            labels.set_members()

    def reload(why: str = "SIGHUP") -> None:
        reopen_log()  # SIGHUP is what logrotate's postrotate sends, as for nginx's USR1
        file = reload_file(opts, why)
        if file is None:
            return
        opts.file = file
        swap_log()
        # The declared middlewares may have changed: labelled routes are checked again.
        labels.table = labels.build(labels.found)
        settings = rebuild()
        log.warning("reloaded %s: %d routes", opts.config_path, len(settings.routes))

    if watch is not None:
        watch.on_change = changed
        changed(watch.current())
    file_task = None
    if opts.config_path is not None and opts.watch_config and report_fd is None:
        # With several workers the parent watches the file and signals them.
        file_task = loop.create_task(watch_file(opts.config_path, lambda: reload("changed")))

    # What start-up made lives as long as the process: out of the collector's sight, so a
    # full collection during traffic does not walk it (a pause every request would wait on).
    gc.collect()
    gc.freeze()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, reload)
    loop.add_signal_handler(signal.SIGUSR1, reopen_log)
    control = None
    if report_fd is None:
        control = _start_control(opts, [*socks, *(tls_socks or [])], stop.set)
        _confirm(handoff)
        if admin is not None and handoff is not None:
            got = await _admin_once_free(
                lambda: serve_admin(admin, proxy.tally, proxy.clusters, status), admin
            )
            runner = got[0] if got else None
    await stop.wait()
    # A graceful drain: no new connection, idle keep-alives closed after a grace, in-flight
    # requests finish (their responses say `Connection: close`) until the deadline.
    if control is not None:
        control.release()
        if control.handed_over and runner is not None:
            await runner.cleanup()  # the successor serves --admin now
            runner = None
    proxy.drain()
    log.warning("draining %d connections (for up to %gs)", len(proxy.clients), opts.drain_timeout)
    deadline = loop.time() + opts.drain_timeout
    while loop.time() < deadline and not proxy.settled():
        await asyncio.sleep(0.05)
        proxy.close_idle_clients()
    proxy.close()
    if proxy.access_log is not None:
        proxy.access_log.close()
    extra = [t for t in (watch_task, file_task) if t is not None]
    for t in [*tasks.values(), *extra]:
        t.cancel()
    for t in [*tasks.values(), *extra]:
        with contextlib.suppress(asyncio.CancelledError):
            await t
    if runner is not None:
        await runner.cleanup()
    if control is not None:
        control.close()


def reload_file(opts: ProxyOptions, why: str = "SIGHUP") -> FileSettings | None:
    """The routes file read again, or None (logged) when there is none or it is unusable:
    the running configuration stays then. `why`: what asked (SIGHUP, or the file changed)."""
    if opts.config_path is None:
        log.warning("%s: no --config to reload", why)
        return None
    try:
        file = read_config(opts.config_path)
    except (OSError, SpecError) as e:
        log.error("%s: %s: keeping the running configuration", why, str(e).replace("\n", "; "))
        return None
    if any(r.service for r in file.routes) and not opts.agent:
        log.error("%s: a route follows a service but no agent was given: not reloaded", why)
        return None
    if not file.routes and not opts.service and not opts.backends and not opts.follow_labels:
        # What start-up refuses ("nothing to proxy to") would answer every request 404.
        log.error("%s: %s has no routes: keeping the running configuration", why, opts.config_path)
        return None
    return file


LABELS_FIRST_WAIT_S = 10.0


class LabelState:
    """The routes the containers declare, as last built, and their clusters (by name) to
    give members to; each problem and conflict logged once, when it first appears."""

    def __init__(self, opts: ProxyOptions) -> None:
        self.opts = opts
        self.found: list[CatalogInstance] = []
        self.table = LabelTable()
        self.clusters: dict[str, Cluster[Any]] = {}
        self.members: dict[str, dict[str, int]] = {}
        self.logged: set[str] = set()

    def build(self, found: list[CatalogInstance]) -> LabelTable:
        self.found = found
        table = build_table(found, self.opts.projects, declared_middlewares(self.opts.file))
        now = set(table.problems) | set(table.conflicts)
        for line in [*table.problems, *table.conflicts]:
            if line not in self.logged:
                log.warning("routes: %s", line)
        self.logged = now
        return table

    def place(self, made: list[tuple[Cluster[Any], RouteSpec]]) -> None:
        """The labelled clusters of a new configuration, given their members."""
        self.clusters = {s.service: c for c, s in made if s.labelled and s.service}
        self.members = {k: v for k, v in self.members.items() if k in self.clusters}
        self.set_members()

    def set_members(self) -> None:
        for name, cluster in self.clusters.items():
            members = self.table.members.get(name, {})
            if self.members.get(name) != members or len(cluster.upstreams) != len(members):
                cluster.set_members(members, healthy=True)
                cluster.known = True
                self.members[name] = dict(members)

    def status(self) -> dict[str, Any]:
        return {
            "routes": [
                {
                    "host": r.host,
                    "prefix": r.prefix,
                    "cluster": r.cluster,
                    "strip_prefix": r.strip,
                    "middlewares": list(r.middlewares),
                }
                for r in self.table.routes
            ],
            "problems": list(self.table.problems),
            "conflicts": list(self.table.conflicts),
        }


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
    groups: list[list[socket.socket]],
    tls_groups: list[list[socket.socket]],
    handoff: Handoff | None,
) -> None:
    """Forks a worker per group of sockets, restarts one that dies, serves the summed admin
    endpoint and the control socket, and passes SIGTERM/SIGINT on. It keeps the listening
    sockets while it runs: a worker started again serves the same ones (whose connections
    queued meanwhile wait for it), and a successor can take them over."""
    children: dict[int, int] = {}  # pid → worker number
    admin_ports: dict[int, int] = {}  # worker number → its admin port
    controls: list[Control] = []  # the control socket, once the parent serves it

    def spawn(i: int) -> None:
        r, w = os.pipe()
        parent_pid = os.getpid()
        pid = os.fork()
        if pid == 0:  # the worker
            _die_with_parent(parent_pid)
            os.close(r)
            for c in controls:
                c.forget()
            if handoff is not None:
                handoff.abandon()  # the parent's conversation with the old proxy
            for j, (g, tg) in enumerate(zip(groups, tls_groups, strict=True)):
                if j != i:
                    for s in [*g, *tg]:
                        s.close()
            code = 0
            try:
                with asyncio.Runner(loop_factory=_loop_factory()) as runner:
                    runner.run(_worker(opts, groups[i], ("127.0.0.1", 0), w, None, tls_groups[i]))
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

    for i in range(len(groups)):
        spawn(i)

    async def parent() -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)

        def reload(why: str = "SIGHUP") -> None:
            # The parent reads it too, so that a worker started again later has it.
            file = reload_file(opts, why)
            if file is None and why != "SIGHUP":
                return  # a bad file: logged once here, the workers keep theirs
            if file is not None:
                opts.file = file
            for pid in list(children):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGHUP)

        loop.add_signal_handler(signal.SIGHUP, reload)
        file_task = None
        if opts.config_path is not None and opts.watch_config:
            file_task = loop.create_task(watch_file(opts.config_path, lambda: reload("changed")))

        def reopen_logs() -> None:
            for pid in list(children):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGUSR1)

        loop.add_signal_handler(signal.SIGUSR1, reopen_logs)
        runner = None
        if opts.admin is not None and handoff is None:
            runner, _ = await serve_summed_admin(opts.admin, admin_ports)
        control = _start_control(opts, [s for g in [*groups, *tls_groups] for s in g], stop.set)
        if control is not None:
            controls.append(control)
        _confirm(handoff)
        if opts.admin is not None and handoff is not None:
            bind = opts.admin
            got = await _admin_once_free(lambda: serve_summed_admin(bind, admin_ports), bind)
            runner = got[0] if got else None
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
        # The port is no longer served by this proxy: its copies of the sockets close first
        # (a listening socket still open would take connections nobody accepts).
        if control is not None:
            control.release()
            if control.handed_over and runner is not None:
                await runner.cleanup()  # the successor serves --admin now
                runner = None
        for g in [*groups, *tls_groups]:
            for s in g:
                s.close()
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
        if file_task is not None:
            file_task.cancel()
        if runner is not None:
            await runner.cleanup()
        if control is not None:
            control.close()

    with asyncio.Runner(loop_factory=_loop_factory()) as r:
        r.run(parent())
