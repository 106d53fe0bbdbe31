"""The data plane: asyncio Protocols (uvloop when installed) carrying requests from clients to
upstreams and responses back, with the decisions of `dockmesh.resilience` applied per attempt.

Theory of operation
-------------------
A client connection (`ClientConn`) runs one exchange at a time:

    HEAD ──head read──▶ BODY (request body streaming) ──body done──▶ WAIT ──response done──▶ HEAD
       │                      ╰─ the response may start (and end) before the body is done
       ╰──▶ TUNNEL (after 101 Switching Protocols: raw bytes both ways until either side closes)

Bytes are forwarded as they arrive, never collected whole: a received chunk becomes at most one
write to the other side (uvloop makes a system call per write), and a head is edited in its
raw bytes (`http1`), not rebuilt. Back-pressure is the transports': when the side being
written to has more than the high-water mark buffered, the side being read is paused until it
drains, so a fast sender and a slow receiver cost a bounded amount of memory. A client's
pipelined requests wait in its buffer (bounded too: reading pauses past the limit).

An attempt is one try on one upstream. Its connection comes from the upstream's idle pool (LIFO,
so few connections stay warm) or is opened (with the connect timeout). Its result — a status,
or a gateway failure (connect refused or timed out, reset, no response head in time) — feeds
the upstream's breaker, the cluster's outlier detector and the balancer. A failed attempt is
tried again on another upstream when `resilience.retry.may_retry` says it is safe (nothing was
sent; or an idempotent request without a body that got 502/503/504) and the cluster's retry
budget allows; a pooled connection that the upstream had closed just before we wrote to it is
tried again on a fresh one on the same terms. Otherwise the client gets 502/503/504 with a
one-line body saying why — unless the response had begun, in which case the client
connection is closed, which is the only honest thing left to do.

Timeouts are checked by one sweep every `SWEEP_S` over the open connections, not by a timer
per request (a timer armed and cancelled per request would cost more than the forwarding):
header (a client that is slow to send its head: 408), idle (keep-alive and body), response
header (upstream slow to answer: 504), pool idle (pooled connections kept warm at most so long).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from dockmesh.proxy import http1
from dockmesh.proxy.cluster import Cluster, Upstream
from dockmesh.proxy.http1 import ProtocolError
from dockmesh.proxy.stats import Stats
from dockmesh.resilience.retry import IDEMPOTENT, may_retry

log = logging.getLogger(__name__)
_REQUEST_MEMO = http1.REQUEST_MEMO
_RESPONSE_MEMO = http1.RESPONSE_MEMO

SWEEP_S = 0.25
HIGH_WATER = 256 * 1024
LOW_WATER = 64 * 1024
MAX_ATTEMPTS = 3
# How long a request waits on an instance that left the catalog before it is tried elsewhere.
REMOVED_GRACE_S = 1.0

HEAD, BODY, WAIT, TUNNEL, CLOSED = 0, 1, 2, 3, 4
# After the proxy ends a client connection, how long the client's further bytes are read and
# dropped once all was sent (its close is awaited: see `ClientConn.close`).
LINGER_S = 2.0
# How an upstream response's body ends.
NO_BODY, LENGTH, CHUNKED, UNTIL_CLOSE = 0, 1, 2, 3


@dataclass
class Timeouts:
    connect_s: float = 3.0
    response_header_s: float = 30.0
    client_header_s: float = 10.0
    idle_s: float = 60.0
    tunnel_idle_s: float = 3600.0
    pool_idle_s: float = 15.0


@dataclass
class Limits:
    max_head_bytes: int = http1.MAX_HEAD_BYTES
    max_client_connections: int = 10_000
    max_connections_per_upstream: int = 1024
    # Bytes of requests a client sent ahead while one of its requests is in flight. Past
    # this (or one head of `max_head_bytes`, if larger), the client is not read until its
    # exchange ends: the backlog costs a copy per request served from it, so it stays small.
    max_pipelined_bytes: int = 64 * 1024


@dataclass
class Route:
    cluster: Cluster
    host: bytes | None = None  # lower-case, no port; None: any
    prefix: bytes = b"/"


@dataclass
class ProxySettings:
    routes: list[Route]
    timeouts: Timeouts = field(default_factory=Timeouts)
    limits: Limits = field(default_factory=Limits)
    # hash:<header> / hash:cookie:<name> / hash:ip, per cluster name.
    hash_keys: dict[str, str] = field(default_factory=dict)


class _KeyReader:
    """Reads the consistent-hash key of a request: a header, a cookie or the client's IP."""

    def __init__(self, spec: str) -> None:
        self.kind = "header"
        name = spec
        if spec.lower() in ("ip", "client_ip", "source_ip"):
            self.kind = "ip"
        elif spec.lower().startswith("cookie:"):
            self.kind = "cookie"
            name = spec[7:]
        if self.kind == "cookie":
            self.pattern = re.compile(
                rb"^cookie:[^\r]*?(?:^|[ ;:])" + re.escape(name.encode()) + rb"=([^;\r]*)",
                re.IGNORECASE | re.MULTILINE,
            )
        else:
            self.pattern = re.compile(
                rb"^" + re.escape(name.encode()) + rb":[ \t]*([^\r]*?)[ \t]*\r\n",
                re.IGNORECASE | re.MULTILINE,
            )

    def key(self, head: bytes, client_ip: bytes) -> bytes | None:
        if self.kind == "ip":
            return client_ip
        m = self.pattern.search(head)
        return m.group(1) if m else None


class Proxy:
    """One worker's data plane: the routes, the open connections, the sweep."""

    def __init__(self, settings: ProxySettings, loop: asyncio.AbstractEventLoop) -> None:
        self.settings = settings
        self.loop = loop
        self.routes = settings.routes
        self.single = settings.routes[0].cluster if len(settings.routes) == 1 else None
        if self.single is not None and (
            settings.routes[0].host is not None or settings.routes[0].prefix != b"/"
        ):
            self.single = None
        self.timeouts = settings.timeouts
        self.limits = settings.limits
        self.stats = Stats()
        self.clients: set[ClientConn] = set()
        self.key_readers = {n: _KeyReader(s) for n, s in settings.hash_keys.items()}
        # The cluster of the single catch-all route, when requests need no routing or hash
        # key: then the common request shape takes the fast lane.
        self.fast = self.single if self.single and not self.key_readers else None
        self._id_prefix = os.urandom(6).hex().encode() + b"-"
        self._id_counter = 0
        self._sweeper: asyncio.TimerHandle | None = None
        self.now = loop.time()
        self.servers: list[asyncio.AbstractServer] = []
        # Writes of the fast lane, made at the end of the loop's pass over ready sockets
        # (appended here; the first schedules `flush`), not one by one as each request is
        # read: a peer woken by the first then finds the rest waiting, instead of being
        # woken once per request. What is written or closed any other way first sends what
        # waits here (`write`, `flush`), so bytes on a connection stay in order. Entries:
        # (transport, bytes, the upstream connection when it is a request).
        self.out: list[tuple[asyncio.Transport, bytes, UpstreamConn | None]] = []

    def flush(self) -> None:
        out = self.out
        if out:
            self.out = []
            for t, data, conn in out:
                if not t.is_closing():
                    t.write(data)
                elif conn is not None:
                    # The upstream closed the pooled connection in the same pass: the
                    # request never went out, so it may go elsewhere whatever its method.
                    conn.unsent = True

    def write(self, t: asyncio.Transport, data: bytes) -> None:
        """A write in order with the deferred ones."""
        if self.out:
            self.flush()
        t.write(data)

    @property
    def clusters(self) -> list[Cluster]:
        seen: dict[str, Cluster] = {}
        for r in self.routes:
            seen.setdefault(r.cluster.name, r.cluster)
        return list(seen.values())

    def next_request_id(self) -> bytes:
        self._id_counter += 1
        return self._id_prefix + b"%x" % self._id_counter

    def route(self, req: http1.RequestHead) -> Cluster | None:
        if self.single is not None:
            return self.single
        host = (req.host or b"").lower()
        host = host[: host.find(b"]") + 1] if host.startswith(b"[") else host.partition(b":")[0]
        path = req.target
        if not path.startswith(b"/"):
            # absolute-form: http://host/path
            i = path.find(b"/", path.find(b"//") + 2) if b"//" in path else -1
            path = path[i:] if i >= 0 else b"/"
        for r in self.routes:
            if (r.host is None or r.host == host) and path.startswith(r.prefix):
                return r.cluster
        return None

    # --- lifecycle --------------------------------------------------------------------------

    async def listen(self, sock: socket.socket) -> None:
        server = await self.loop.create_server(
            lambda: ClientConn(self), sock=sock, backlog=4096, reuse_address=None
        )
        self.servers.append(server)
        if self._sweeper is None:
            self._sweeper = self.loop.call_later(SWEEP_S, self._sweep)

    def close(self) -> None:
        for s in self.servers:
            s.close()
        if self._sweeper is not None:
            self._sweeper.cancel()
        for c in list(self.clients):
            c.abort()
        for cl in self.clusters:
            for u in cl.upstreams.values():
                for conn in list(u.idle):
                    conn.close()

    def retire(self, removed: Sequence[Upstream]) -> None:
        """Upstreams that left their cluster: close their idle connections; busy ones finish
        their requests and close then (see `UpstreamConn.release`)."""
        for u in removed:
            for conn in list(u.idle):
                conn.close()
            u.idle.clear()

    def _sweep(self) -> None:
        now = self.now = self.loop.time()
        t = self.timeouts
        try:
            for c in list(self.clients):
                c.check_timeouts(now, t)
            for cl in self.clusters:
                cl.tick(now)
                for u in cl.upstreams.values():
                    if u.idle and now - u.idle[0].idle_since > t.pool_idle_s:
                        for conn in [x for x in u.idle if now - x.idle_since > t.pool_idle_s]:
                            conn.close()
        finally:
            self._sweeper = self.loop.call_later(SWEEP_S, self._sweep)


def _peer_ip(transport: asyncio.BaseTransport) -> bytes:
    peer = transport.get_extra_info("peername")
    if isinstance(peer, tuple) and peer:
        return str(peer[0]).encode()
    return b"unknown"


class ClientConn(asyncio.Protocol):
    __slots__ = (
        "attempts",
        "body_left",
        "buf",
        "chunked",
        "client_ip",
        "cluster",
        "eof",
        "forwarded",
        "head_out",
        "head_started",
        "in_heads",
        "keep",
        "key",
        "last_active",
        "last_head",
        "last_out",
        "lingering",
        "paused",
        "pending_body",
        "proxy",
        "replayable",
        "req",
        "req_done",
        "resp_started",
        "state",
        "t0",
        "ticket",
        "transport",
        "tried",
        "up",
        "upstream",
        "write_paused",
    )

    def __init__(self, proxy: Proxy) -> None:
        self.proxy = proxy
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.state = HEAD
        self.req: http1.RequestHead | None = None
        # Whether the client connection stays open after this exchange (the request's
        # wish, then the response's say): the request head itself is never changed.
        self.keep = True
        self.up: UpstreamConn | None = None
        self.upstream: Upstream | None = None
        self.cluster: Cluster | None = None
        self.ticket: int | None = None
        self.head_out = b""
        self.pending_body: list[bytes] | None = None  # body kept while it can be replayed
        self.replayable = True
        self.body_left = 0
        self.chunked: http1.ChunkedReader | None = None
        self.req_done = True
        self.resp_started = False
        self.tried: list[Upstream] = []
        self.attempts = 0
        self.key: bytes | None = None
        self.t0 = 0.0
        self.last_active = proxy.now
        self.head_started = 0.0
        self.paused = False  # reading from the client stopped (`_gate`)
        self.write_paused = False  # the client does not read its responses fast enough
        self.eof = False  # the client half-closed: no more requests
        self.in_heads = False  # `_read_heads` is running
        self.lingering = 0.0  # when `close` began a lingering close
        self.client_ip = b""
        self.forwarded = b""
        self.last_head = b""
        self.last_out = b""

    # --- asyncio callbacks ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = transport = cast(asyncio.Transport, transport)
        p = self.proxy
        p.stats.connections += 1
        p.stats.connections_total += 1
        if len(p.clients) >= p.limits.max_client_connections:
            p.stats.reject("overload")
            p.stats.responded(503)
            transport.write(
                http1.simple_response(
                    503, "Service Unavailable", "proxy overloaded: too many connections"
                )
            )
            transport.close()
            self.state = CLOSED
            return
        p.clients.add(self)
        transport.set_write_buffer_limits(HIGH_WATER, LOW_WATER)
        self.client_ip = _peer_ip(transport)
        self.forwarded = b"X-Forwarded-For: " + self.client_ip + b"\r\nX-Forwarded-Proto: http\r\n"

    def connection_lost(self, exc: Exception | None) -> None:
        p = self.proxy
        p.stats.connections -= 1
        p.clients.discard(self)
        prev = self.state
        self.state = CLOSED
        self._drop_upstream(prev)

    def _drop_upstream(self, prev: int) -> None:
        up = self.up
        if up is not None:
            # The client went away mid-exchange: the upstream connection is in an unknown
            # place in its response, so it cannot go back to the pool.
            self.up = None
            up.client = None
            if self.upstream is not None and self.cluster is not None:
                self._end_attempt(None if prev == TUNNEL else -1)
            up.close()

    def pause_writing(self) -> None:
        self.write_paused = True
        if self.up is not None and self.up.transport is not None:
            self.up.transport.pause_reading()
        # A client that does not read its responses sends no more requests for now.
        self._gate()

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.up is not None and self.up.transport is not None:
            self.up.transport.resume_reading()
        self._gate()

    def _next(self) -> None:
        """An exchange ended with the connection kept: the next request sent ahead, if any;
        after a half-close, the end once nothing whole is left; else reading again."""
        if self.in_heads:
            return  # answered from inside `_read_heads`, whose loop goes on
        if self.buf:
            self._read_heads()
        if self.eof and self.state == HEAD:
            self.close()
            return
        if self.paused:
            self._gate()

    def _gate(self) -> None:
        """Reads from the client only while it reads its responses, the upstream takes its
        body, and what it sent ahead is within bounds: a client can make the proxy hold
        only a bounded number of its bytes."""
        t = self.transport
        if t is None or self.state == CLOSED:
            return
        limits = self.proxy.limits
        up = self.up
        stop = (
            self.write_paused
            or (up is not None and up.write_paused)
            or len(self.buf) > max(limits.max_pipelined_bytes, limits.max_head_bytes + 4)
        )
        if stop != self.paused:
            self.paused = stop
            if stop:
                t.pause_reading()
            else:
                t.resume_reading()

    def data_received(self, data: bytes) -> None:
        p = self.proxy
        self.last_active = p.now
        state = self.state
        if state == HEAD:
            if not self.buf and p.fast is not None:
                q = _REQUEST_MEMO.get(data) or http1.quick_request_head(data)
                if q is not None:
                    self._quick_request(p.fast, q, data)
                    return
            self.buf = self.buf + data if self.buf else data
            self._read_heads()
            if len(self.buf) > p.limits.max_pipelined_bytes:
                self._gate()
        elif state == BODY:
            self._body_data(data, 0)
        elif state == TUNNEL:
            up = self.up
            if up is not None and up.transport is not None:
                p.write(up.transport, data)
        elif state == WAIT:
            # Pipelined: kept until the current response is done.
            self.buf += data
            if len(self.buf) > self.proxy.limits.max_pipelined_bytes:
                self._gate()

    def eof_received(self) -> bool | None:
        up = self.up
        if self.state == TUNNEL and up and up.transport and up.transport.can_write_eof():
            self.proxy.flush()
            up.transport.write_eof()
            return True
        if self.state == WAIT:
            # Half-closed after a whole request: its response (and those of whole requests
            # sent ahead) is still owed; the connection closes once they are sent.
            self.eof = True
            return True
        # Closed by the transport, after what it holds is sent: a response that waits for
        # the end of this pass goes in first.
        self.proxy.flush()
        return None

    # --- requests ---------------------------------------------------------------------------

    def _quick_request(self, cluster: Cluster, req: http1.RequestHead, data: bytes) -> None:
        """`_read_heads` for the common request shape (`http1.quick_request`): the same
        outcome, with less Python on the way. `req` is shared (memoized): never changed."""
        p = self.proxy
        self.t0 = p.loop.time()
        self.req = req
        self.keep = True
        self.cluster = cluster
        # A client mostly sends the same head again: its edited form, but for the request
        # id's counter, is kept from the last time.
        if data == self.last_head:
            out = self.last_out
        else:
            out = b"".join(
                (
                    data[:-2],
                    self.forwarded,
                    b"X-Forwarded-Host: ",
                    req.host or b"",
                    b"\r\nX-Request-Id: ",
                    p._id_prefix,
                )
            )
            self.last_head = data
            self.last_out = out
        p._id_counter = counter = p._id_counter + 1
        self.head_out = out + b"%x\r\n\r\n" % counter
        self.resp_started = False
        cluster.budget.pending += 1
        self.req_done = True
        self.replayable = True
        self.state = WAIT
        # `_attempt` and `_send_on` inline for the common case: the pick admits, and has a
        # pooled connection. Anything else takes `_attempt`'s own way from the same point.
        up = cluster.pick_one()
        if up is None:
            self.tried = []
            self.attempts = 0
            self.pending_body = []
            self._fail(503, cluster.no_upstream_reason(), "no_upstream")
            return
        breaker = up.breaker
        ticket = breaker.epoch if breaker.closed else breaker.admit()
        if ticket is None:
            self.tried = []
            self.attempts = 0
            self.pending_body = []
            self._refused(cluster, up)
            return
        self.upstream = up
        self.ticket = ticket
        self.attempts = 1
        self.tried = [up]
        up.in_flight += 1
        up.requests += 1
        if cluster.balancer.tracks:
            cluster.balancer.started(up.addr)
        idle = up.idle
        while idle:
            conn = idle.pop()
            t = conn.transport
            if t is not None and not t.is_closing():
                # `conn.start`: `release` left it with no head, no response and no bytes.
                conn.client = self
                conn.reused = True
                conn.method = req.method
                conn.started = conn.last_active = p.now
                self.up = conn
                self.pending_body = None
                # Deferred (`Proxy.out`).
                pending = p.out
                if not pending:
                    p.loop.call_soon(p.flush)
                pending.append((t, self.head_out, conn))
                if self.paused:
                    self._gate()
                if self.write_paused:
                    t.pause_reading()
                return
        self.pending_body = []
        self._open_for(cluster, up)

    def _read_heads(self) -> None:
        """Starts the exchanges for the heads at the front of `buf`: one, and the next ones
        while each is answered at once (a response of the proxy's own). A loop, not a
        recursion: one called from inside it returns, and the loop goes on."""
        if self.in_heads:
            return
        self.in_heads = True
        try:
            while self.buf and self.state == HEAD and self._read_head():
                pass
        finally:
            self.in_heads = False

    def _read_head(self) -> bool:
        """Starts the exchange for the head at the front of `buf`; False while the head is
        incomplete."""
        buf = self.buf
        try:
            req = http1.parse_request_head(buf, self.proxy.limits.max_head_bytes)
        except ProtocolError as e:
            self._refuse(e.status, str(e))
            return True
        if req is None:
            if not self.head_started:
                self.head_started = self.proxy.now
            return False
        self.head_started = 0.0
        p = self.proxy
        self.t0 = p.loop.time()
        cluster = p.route(req)
        n = req.head_len
        head = buf[:n] if len(buf) > n else buf
        if cluster is None:
            self.buf = buf[n:] if len(buf) > n else b""
            self.req = req
            self.keep = req.keep_alive
            self._local_response(404, f"no route for {req.host!r} {req.target!r}"[:200], "no_route")
            return True
        self.req = req
        self.keep = req.keep_alive
        self.cluster = cluster
        reader = p.key_readers.get(cluster.name)
        self.key = reader.key(head, self.client_ip) if reader is not None else None
        self.head_out = http1.edit_request_head(
            head, req, http1.request_forwarded_fields(req, self.client_ip, p.next_request_id())
        )
        self.tried = []
        self.attempts = 0
        self.resp_started = False
        cluster.budget.request()
        if req.chunked:
            self.chunked = http1.ChunkedReader()
            self.req_done = False
        elif req.content_length:
            self.chunked = None
            self.body_left = req.content_length
            self.req_done = False
        else:
            self.req_done = True
        # A body can be sent again only while all of it is still here: bodies are kept until
        # the first attempt is connected, and only small requests without a body are retried
        # after an upstream answered.
        self.replayable = self.req_done
        self.pending_body = []
        rest = buf[n:] if len(buf) > n else b""
        if self.req_done:
            # What follows is requests sent ahead: kept while this one is in flight.
            self.buf = rest
            self.state = WAIT
            self._attempt()
        else:
            self.buf = b""
            self.state = BODY
            self._attempt()
            if rest and self.state == BODY:
                self._body_data(rest, 0)
        return True

    def _body_data(self, data: bytes, start: int) -> None:
        """Request body bytes: forward what belongs to the body, keep what follows it."""
        n = len(data) - start
        if self.chunked is not None:
            try:
                used = self.chunked.feed(data, start)
            except ProtocolError as e:
                self._refuse(400, str(e), mid_exchange=True)
                return
            done = self.chunked.done
        else:
            used = min(n, self.body_left)
            self.body_left -= used
            done = self.body_left == 0
        piece = data if start == 0 and used == len(data) else data[start : start + used]
        if piece:
            up = self.up
            if self.pending_body is not None:
                self.pending_body.append(piece)
            elif up is not None and up.transport is not None:
                self.proxy.write(up.transport, piece)
        if done:
            self.req_done = True
            if self.state == BODY:
                self.state = WAIT
            rest = data[start + used :]
            if rest:
                self.buf += rest
            if self.state == HEAD and self.buf:
                self._read_heads()

    def _attempt(self) -> None:
        """Sends the request to an upstream picked now."""
        cluster = self.cluster
        assert cluster is not None
        while True:
            up = cluster.pick(self.key, self.tried)
            if up is None:
                self._fail(503, cluster.no_upstream_reason(), "no_upstream")
                return
            ticket = up.breaker.admit()
            if ticket is not None:
                break
            if not self._refused(cluster, up, again=False):
                return
        self.upstream = up
        self.ticket = ticket
        self.attempts += 1
        self.tried.append(up)
        up.in_flight += 1
        up.requests += 1
        if cluster.balancer.tracks:
            cluster.balancer.started(up.addr)
        while up.idle:
            conn = up.idle.pop()
            if conn.transport is not None and not conn.transport.is_closing():
                self._send_on(conn, reused=True)
                return
        self._open_for(cluster, up)

    def _refused(self, cluster: Cluster, up: Upstream, again: bool = True) -> bool:
        """The pick's breaker refused (half-open, its probes taken): that never reached the
        upstream. False when no upstream is left to try (answered 503); else, with `again`,
        the next pick is tried."""
        cluster.changed()
        self.tried.append(up)
        if len(self.tried) > len(cluster.upstreams):
            self._fail(503, f"no upstream of {cluster.name} admits requests now", "breaker")
            return False
        if again:
            self._attempt()
        return True

    def _open_for(self, cluster: Cluster, up: Upstream) -> None:
        """The attempt on `up` (admitted, counted) needs a new connection."""
        if up.connections >= self.proxy.limits.max_connections_per_upstream:
            self._end_attempt(-1)
            self._fail(503, f"upstream {up.addr} has too many connections", "overload")
            return
        up.connections += 1
        conn = UpstreamConn(self.proxy, up)
        conn.client = self
        self.up = conn
        self.proxy.loop.create_task(conn.connect(self.proxy.timeouts.connect_s))

    def _send_on(self, conn: UpstreamConn, reused: bool) -> None:
        conn.client = self
        conn.reused = reused
        conn.start(self.req.method if self.req else b"GET")
        self.up = conn
        transport = conn.transport
        assert transport is not None
        pending = self.pending_body
        if pending:
            self.proxy.write(transport, self.head_out + b"".join(pending))
        else:
            self.proxy.write(transport, self.head_out)
        if not reused or not self.req_done:
            # Sent on a fresh connection, or a body streams: no replay after this point.
            self.pending_body = None
            if not self.req_done:
                self.replayable = False
        else:
            self.pending_body = None
        if self.paused:
            self._gate()
        if self.write_paused:
            transport.pause_reading()

    def connected(self, conn: UpstreamConn) -> None:
        if self.up is not conn or self.state == CLOSED:
            conn.release(reusable=True)
            return
        self._send_on(conn, reused=False)

    def connect_failed(self, conn: UpstreamConn, reason: str) -> None:
        """The attempt's connection could not be opened: nothing was sent, try elsewhere."""
        if self.up is not conn:
            return
        self.up = None
        self._end_attempt(None)
        self._retry_or_fail(reached=False, status=None, code=502, why=reason, kind="connect")

    def upstream_lost(self, conn: UpstreamConn, before_response: bool) -> None:
        """The upstream connection closed or broke before the response ended."""
        if self.up is not conn:
            return
        self.up = None
        if self.state == TUNNEL:
            self._end_attempt(101)
            self.close()
            return
        if not before_response or self.resp_started:
            self._end_attempt(None)
            self.abort()  # a response cut short: the client must see it was
            return
        if conn.reused and self.req is not None and (conn.unsent or self.req.method in IDEMPOTENT):
            # A pooled connection the upstream had just closed: not the upstream's failure.
            self._end_attempt(-1)
            self.proxy.stats.retried("stale_connection")
            self.tried.pop()
            self._attempt()
            return
        self._end_attempt(None)
        self._retry_or_fail(
            reached=True,
            status=None,
            code=502,
            why="the upstream closed the connection",
            kind="reset",
        )

    def _retry_or_fail(
        self, reached: bool, status: int | None, code: int, why: str, kind: str
    ) -> None:
        cluster = self.cluster
        assert cluster is not None
        req = self.req
        if reached:
            safe = req is not None and may_retry(req.method, True, status, self.replayable)
        else:
            # Nothing was sent: safe while the body (if any) is all still here.
            safe = self.pending_body is not None or self.req_done
        if (
            safe
            and self.attempts < MAX_ATTEMPTS
            and self.state != CLOSED
            and cluster.budget.try_retry()
        ):
            cluster.retries += 1
            self.proxy.stats.retried(kind)
            self._attempt()
            return
        upstream = self.tried[-1].addr if self.tried else "?"
        self._fail(code, f"{why} ({upstream})", kind)

    def _end_attempt(self, status: int | None, now: float = 0.0) -> None:
        """Closes the books on the current attempt. status -1: no verdict (client gone)."""
        up, cluster = self.upstream, self.cluster
        if up is None or cluster is None:
            return
        self.upstream = None
        up.in_flight -= 1
        balancer = cluster.balancer
        if balancer.tracks:
            latency = (now or self.proxy.loop.time()) - self.t0
            balancer.finished(up.addr, latency if status is not None and status >= 0 else None)
        ticket = self.ticket
        self.ticket = None
        if status == -1:
            if ticket is not None:
                up.breaker.release(ticket)
            return
        cluster.record(up, ticket, status)

    # --- responses --------------------------------------------------------------------------

    def response_head(self, conn: UpstreamConn, resp: http1.ResponseHead, head: bytes) -> bool:
        """The upstream's response head; False when it was dropped for a retry."""
        req = self.req
        assert req is not None
        status = resp.status
        if (
            status in (502, 503, 504)
            and self.replayable
            and req.method in IDEMPOTENT
            and self.attempts < MAX_ATTEMPTS
            and self.cluster is not None
            and len(self.cluster.upstreams) > 1
            and self.cluster.budget.try_retry()
        ):
            self.up = None
            conn.client = None
            conn.close()
            self._end_attempt(status)
            self.cluster.retries += 1
            self.proxy.stats.retried(f"status_{status}")
            self._attempt()
            return False
        if status == 101:
            self.state = TUNNEL
            conn.tunnel = True
        keep = self.keep and resp.keep_alive if status != 101 else True
        if conn.framing == UNTIL_CLOSE and status != 101:
            keep = False
        if not self.req_done and status >= 200 and status != 101:
            # Answered before the body was all sent: the rest of the body cannot be framed
            # for the next request on this client connection; close after the response.
            keep = False
        self.keep = keep
        added = b""
        if not keep and status != 101:
            added = b"Connection: close\r\n"
        elif req.minor == 0:
            added = b"Connection: keep-alive\r\n"
        if resp.cut or resp.connection_tokens or added:
            head = http1.edit_response_head(head, resp, added)
        self.resp_started = True
        conn.out_head = head
        return True

    def quick_done(self, conn: UpstreamConn, status: int) -> None:
        """`response_done(conn, status, True)` for a whole response to a request that was
        all sent and keeps its connection (`UpstreamConn.data_received`'s fast lane)."""
        self.up = None
        conn.client = None
        p = self.proxy
        now = p.loop.time()
        up, cluster = self.upstream, self.cluster
        if up is not None and cluster is not None:
            # `_end_attempt(status, now)`
            self.upstream = None
            up.in_flight -= 1
            balancer = cluster.balancer
            if balancer.tracks:
                balancer.finished(up.addr, now - self.t0)
            ticket = self.ticket
            self.ticket = None
            if status < 500 and ticket is not None and not (cluster.degraded or up.failures_in_row):
                up.breaker.success(ticket)  # `cluster.record`'s way for a plain success
            else:
                cluster.record(up, ticket, status)
        p.stats.observe(status, now - self.t0)
        conn.release(True)
        self.state = HEAD
        self.req = None
        if self.buf or self.eof or self.paused:
            self._next()

    def response_done(self, conn: UpstreamConn, status: int, reusable: bool) -> None:
        self.up = None
        conn.client = None
        p = self.proxy
        now = p.loop.time()
        self._end_attempt(status, now)
        p.stats.observe(status, now - self.t0)
        conn.release(reusable and self.req_done)
        req = self.req
        if req is None or not self.keep:
            self.close()
            return
        if not self.req_done:
            self.close()
            return
        self.state = HEAD
        self.req = None
        if self.buf or self.eof or self.paused:
            self._next()

    # --- answers of our own -----------------------------------------------------------------

    def _fail(self, status: int, message: str, kind: str) -> None:
        """No upstream answered: a short response saying why (or, once a response began,
        a closed connection)."""
        self.proxy.stats.reject(kind)
        if self.resp_started:
            self.abort()
            return
        self._local_response(status, message, None)

    def _local_response(self, status: int, message: str, kind: str | None) -> None:
        if kind is not None:
            self.proxy.stats.reject(kind)
        req = self.req
        keep = req is not None and self.keep and self.req_done
        if self.transport is None or self.state == CLOSED:
            return
        self.proxy.write(
            self.transport,
            http1.simple_response(
                status, http1.REASONS.get(status, "Error"), message, close=not keep
            ),
        )
        p = self.proxy
        p.stats.observe(status, p.loop.time() - self.t0 if self.t0 else 0.0)
        if not keep:
            self.close()
            return
        self.state = HEAD
        self.req = None
        if self.buf or self.eof or self.paused:
            self._next()

    def _refuse(self, status: int, message: str, mid_exchange: bool = False) -> None:
        """A client that broke the protocol: answer and close, never forward further."""
        self.proxy.stats.reject("bad_request")
        if mid_exchange:
            up = self.up
            self.up = None
            if up is not None:
                up.client = None
                self._end_attempt(-1)
                up.close()
            if self.resp_started:
                self.abort()
                return
        if self.transport is not None and self.state != CLOSED:
            self.proxy.write(
                self.transport,
                http1.simple_response(status, http1.REASONS.get(status, "Bad Request"), message),
            )
            self.proxy.stats.responded(status)
        self.close()

    def close(self) -> None:
        """Ends the connection once what was written is sent. A lingering close, as nginx's:
        closing a socket with bytes of the client's still unread (requests it sent ahead)
        makes the kernel reset the connection and drop what it has not sent yet, the end of
        the last response. So: FIN after what is written, then the client's bytes are read
        and dropped until it closes too, for `LINGER_S` once all is sent (and `idle_s` in
        all, for a client that does not read)."""
        prev = self.state
        self.state = CLOSED
        self._drop_upstream(prev)
        t = self.transport
        if t is None:
            return
        self.proxy.flush()
        if self.lingering or t.is_closing():
            return
        if t.can_write_eof():
            t.write_eof()
            self.lingering = self.proxy.loop.time()
            if self.paused:
                self.paused = False
                t.resume_reading()
        else:
            t.close()

    def abort(self) -> None:
        self.state = CLOSED
        if self.transport is not None:
            self.proxy.flush()
            self.transport.abort()

    def check_timeouts(self, now: float, t: Timeouts) -> None:
        state = self.state
        if state == CLOSED:
            tr = self.transport
            if not self.lingering or tr is None:
                return
            if now - self.lingering > t.idle_s:
                tr.abort()
            elif (
                tr.get_write_buffer_size() == 0
                and now - max(self.lingering, self.last_active) > LINGER_S
            ):
                tr.close()
        elif state == HEAD:
            if self.head_started and now - self.head_started > t.client_header_s:
                self.proxy.stats.reject("client_timeout")
                self._refuse(408, "the request head took too long")
            elif now - self.last_active > t.idle_s:
                self.close()
        elif state == TUNNEL:
            up = self.up
            last = max(self.last_active, up.last_active if up else 0.0)
            if now - last > t.tunnel_idle_s:
                self.close()
        elif state in (BODY, WAIT):
            up = self.up
            if (
                up is not None
                and not up.got_head
                and up.started
                and (now - up.started > t.response_header_s)
            ):
                self.up = None
                up.client = None
                up.close()
                self._end_attempt(None)
                self._fail(
                    504, f"no response from the upstream within {t.response_header_s:g}s", "timeout"
                )
            elif (
                up is not None
                and not up.got_head
                and up.upstream.removed
                and now - up.started > REMOVED_GRACE_S
            ):
                # The instance left the catalog while this request waited on it and has not
                # answered since: a killed container never will (its address just drops
                # packets). Given up on, and tried elsewhere when that is safe.
                self.up = None
                up.client = None
                up.close()
                self._end_attempt(None)
                self._retry_or_fail(True, 503, 502, "the upstream left the catalog", "removed")
            elif state == BODY and now - self.last_active > t.idle_s:
                self._refuse(408, "the request body stalled", mid_exchange=True)


class UpstreamConn(asyncio.Protocol):
    """A connection to one upstream, serving one exchange at a time, pooled between them."""

    __slots__ = (
        "body_left",
        "buf",
        "chunked",
        "client",
        "framing",
        "got_head",
        "idle_since",
        "last_active",
        "last_head",
        "last_q",
        "method",
        "out_head",
        "proxy",
        "resp",
        "reusable",
        "reused",
        "started",
        "transport",
        "tunnel",
        "unsent",
        "upstream",
        "write_paused",
    )

    def __init__(self, proxy: Proxy, upstream: Upstream) -> None:
        self.proxy = proxy
        self.upstream = upstream
        self.transport: asyncio.Transport | None = None
        self.client: ClientConn | None = None
        self.buf = b""
        self.resp: http1.ResponseHead | None = None
        self.framing = NO_BODY
        self.body_left = 0
        self.chunked: http1.ChunkedReader | None = None
        self.got_head = False
        self.reused = False
        self.reusable = True
        self.tunnel = False
        self.write_paused = False
        self.unsent = False  # its request was dropped unsent: it closed first (`flush`)
        self.method = b"GET"
        self.out_head = b""
        self.started = 0.0
        self.idle_since = 0.0
        self.last_active = 0.0
        self.last_head = b""
        self.last_q: tuple[int, int, int, bytes] | None = None

    async def connect(self, timeout_s: float) -> None:
        up = self.upstream
        try:
            # asyncio.timeout, not wait_for: no task of its own (~25 us less per connect).
            async with asyncio.timeout(timeout_s):
                await self.proxy.loop.create_connection(lambda: self, up.host, up.port)
        except (OSError, TimeoutError) as e:
            up.connections -= 1
            why = (
                "connect timed out"
                if isinstance(e, TimeoutError)
                else f"connect failed: {e.strerror or e}"
            )
            client = self.client
            self.client = None
            if client is not None:
                client.connect_failed(self, why)
            return
        client = self.client
        if client is None:
            self.release(reusable=True)
        else:
            client.connected(self)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = transport = cast(asyncio.Transport, transport)
        transport.set_write_buffer_limits(HIGH_WATER, LOW_WATER)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def start(self, method: bytes) -> None:
        """A new exchange on this connection."""
        self.method = method
        self.buf = b""
        self.resp = None
        self.got_head = False
        self.started = self.proxy.now
        self.last_active = self.proxy.now

    def connection_lost(self, exc: Exception | None) -> None:
        up = self.upstream
        if self.transport is not None:
            up.connections -= 1
        self.transport = None
        if self in up.idle:
            up.idle.remove(self)
        client = self.client
        self.client = None
        if client is not None:
            if self.framing == UNTIL_CLOSE and self.got_head and not self.tunnel:
                client.response_done(self, self.resp.status if self.resp else 200, False)
                return
            client.upstream_lost(self, before_response=not self.got_head)

    def pause_writing(self) -> None:
        # The upstream does not take the request body as fast as the client sends it.
        self.write_paused = True
        c = self.client
        if c is not None:
            c._gate()

    def resume_writing(self) -> None:
        self.write_paused = False
        c = self.client
        if c is not None:
            c._gate()

    def eof_received(self) -> bool | None:
        c = self.client
        if (
            self.tunnel
            and c is not None
            and c.transport is not None
            and c.transport.can_write_eof()
        ):
            self.proxy.flush()
            c.transport.write_eof()
            return True
        return None

    def data_received(self, data: bytes) -> None:
        client = self.client
        if client is None or client.transport is None:
            # Bytes nobody asked for (on an idle connection): it cannot be trusted again.
            self.close()
            return
        self.last_active = self.proxy.now
        if self.tunnel:
            self.proxy.write(client.transport, data)
            return
        if not self.got_head:
            if not self.buf and self.method != b"HEAD":
                # An upstream repeats its response head (but for Date, once a second): the
                # verdict on this connection's last head, when `data` starts with it, is the
                # verdict on `data`'s (a head ends at its first CRLF CRLF).
                last = self.last_head
                if last and data.startswith(last):
                    q = self.last_q
                else:
                    q = _RESPONSE_MEMO.get(data[: data.find(b"\r\n\r\n") + 4]) or (
                        http1.quick_response_memo(data)
                    )
                    if q is not None:
                        self.last_head = data[: q[1]]
                        self.last_q = q
                if (
                    q is not None
                    and len(data) - q[1] == q[2]
                    and q[0] not in (502, 503, 504)
                    and client.req_done
                    and client.keep
                    and client.req is not None
                    and client.req.minor
                ):
                    # A whole response in one read, the client keeps its connection: one
                    # write, and the exchange is over.
                    # Deferred (`Proxy.out`); `quick_done` ends the exchange.
                    p = self.proxy
                    pending = p.out
                    if not pending:
                        p.loop.call_soon(p.flush)
                    pending.append((client.transport, q[3] + data[q[1] :], None))
                    client.quick_done(self, q[0])
                    return
            self._head_data(client, data)
        else:
            self._body_data(client, data, 0, b"")

    def _head_data(self, client: ClientConn, data: bytes) -> None:
        buf = self.buf + data if self.buf else data
        while True:
            try:
                resp = http1.parse_response_head(buf)
            except ProtocolError as e:
                self.buf = b""
                client.up = None
                self.client = None
                self.close()
                client._end_attempt(None)
                client._fail(502, f"{e} ({self.upstream.addr})", "bad_response")
                return
            if resp is None:
                self.buf = buf
                return
            n = resp.head_len
            if 100 <= resp.status < 200 and resp.status != 101:
                # 100 Continue and friends: pass on, and wait for the final response.
                if client.transport is not None:
                    self.proxy.write(client.transport, buf[:n])
                buf = buf[n:]
                if not buf:
                    self.buf = b""
                    return
                continue
            break
        self.buf = b""
        self.got_head = True
        self.resp = resp
        head = buf[:n] if len(buf) > n else buf
        if resp.status == 101 or not http1.response_has_body(resp.status, self.method):
            self.framing = NO_BODY
        elif resp.chunked:
            self.framing = CHUNKED
            self.chunked = http1.ChunkedReader()
        elif resp.content_length is not None:
            self.framing = LENGTH if resp.content_length else NO_BODY
            self.body_left = resp.content_length
        else:
            self.framing = UNTIL_CLOSE
        if not client.response_head(self, resp, head):
            return
        rest = buf[n:] if len(buf) > n else b""
        if resp.status == 101:
            out = self.out_head + rest
            self.out_head = b""
            if client.transport is not None:
                self.proxy.write(client.transport, out)
            if client.buf and self.transport is not None:
                # Sent by the client after its Upgrade request, before the 101: the tunnel's.
                self.proxy.write(self.transport, client.buf)
                client.buf = b""
                client._gate()
            return
        self._body_data(client, rest, 0, self.out_head)

    def _body_data(self, client: ClientConn, data: bytes, start: int, prefix: bytes) -> None:
        framing = self.framing
        n = len(data) - start
        done = False
        if framing == LENGTH:
            used = min(n, self.body_left)
            self.body_left -= used
            done = self.body_left == 0
        elif framing == CHUNKED:
            assert self.chunked is not None
            try:
                used = self.chunked.feed(data, start)
            except ProtocolError:
                self.client = None
                client.up = None
                self.close()
                client._end_attempt(None)
                client.abort()
                return
            done = self.chunked.done
        elif framing == UNTIL_CLOSE:
            used = n
        else:
            used = 0
            done = True
        piece = data if start == 0 and used == len(data) else data[start : start + used]
        out = prefix + piece if prefix else piece
        if out and client.transport is not None:
            self.proxy.write(client.transport, out)
        self.out_head = b""
        if done:
            # Bytes after the response on a connection we did not pipeline on: broken.
            extra = n - used
            resp = self.resp
            client.response_done(
                self,
                resp.status if resp else 502,
                extra == 0 and resp is not None and resp.keep_alive,
            )

    def release(self, reusable: bool) -> None:
        """Back to the pool, or closed."""
        self.client = None
        up = self.upstream
        t = self.transport
        if reusable and not up.removed and t is not None and not t.is_closing() and not self.tunnel:
            if not t.is_reading():
                t.resume_reading()  # paused for a slow client: pooled, it must read again
            self.idle_since = self.proxy.now
            self.got_head = False
            self.buf = b""
            self.resp = None
            up.idle.append(self)
        else:
            self.close()

    def close(self) -> None:
        self.client = None
        if self.transport is not None:
            self.proxy.flush()
            self.transport.close()


def reuseport_socket(host: str, port: int) -> socket.socket:
    """A listening socket that other workers can bind too (SO_REUSEPORT): the kernel spreads
    new connections over them."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, kind, proto, _, addr = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(addr)
        sock.listen(4096)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


Factory = Callable[[], Any]
