"""The data plane's I/O: asyncio Protocols (uvloop when installed) carrying requests from
clients to upstreams and responses back. What to do is decided elsewhere and called from
here: an exchange's phases, attempts and retries in `exchange` (a `ClientConn` is an
`Exchange` with sockets), where a request goes in `routing`, which upstream and what a result
does to it in `cluster`, how HTTP/1.1 is read and heads are edited in `http1`.

Theory of operation
-------------------
A client connection (`ClientConn`) runs one exchange at a time (`exchange` draws the phases:
HEAD, BODY, WAIT, TUNNEL, CLOSED). Bytes are forwarded as they arrive, never collected whole:
a received chunk becomes at most one write to the other side (uvloop makes a system call per
write), and a head is edited in its raw bytes (`http1`), not rebuilt. Back-pressure is the
transports': when the side being written to has more than the high-water mark buffered, the
side being read is paused until it drains, so a fast sender and a slow receiver cost a bounded
amount of memory. A client's pipelined requests wait in its buffer (bounded too: reading pauses
past the limit).

A request body is read before any upstream is asked for: all of it, or `request_buffer_bytes`
of it, after which it streams (`ClientConn._body_data`). A slow upload thus holds a client
connection, never an upstream one; and each buffer's worth must come within `client_body`
(`guard.body_progress`), else 408. What the proxy holds for clients is checked against a budget
(`guard.shed`, at each sweep, and at once when a client that stops reading takes it past the
budget): near it idle keep-alives are closed, past it the connections holding the most. A
client that takes nothing of its response for `client_send` is closed, and connections from
one address are capped (`guard.ClientCounts`).

An attempt's connection comes from its upstream's idle pool (LIFO, so few connections stay
warm) or is opened (with the connect timeout). Its result — a status, or a gateway failure
(connect refused or timed out, reset, no response head in time) — goes to
`Exchange.end_attempt`, and what follows a failure to `Exchange.failed`: the request is tried
again, or the client gets 502/503/504 with a one-line body saying why — unless the response had
begun, in which case the client connection is closed, which is the only honest thing left to do.

Two lanes, one set of decisions. The common request (a body-less HTTP/1.1 head of the usual
shape, `http1.quick_request_head`, to a lone catch-all route) skips the full reader: its
verdict is memoized by its bytes and its edited head kept per connection. The common response
(one read holding a whole head of the usual shape and its body) skips it too. Both then take
the steps every exchange takes: `Exchange.begin_attempt` and `ClientConn._send` for the
request, `Exchange.response_begins` (whose answer says whether the response may go as it came)
and `ClientConn.response_done` for the response. Writes of heads alone wait for the end of the
loop's pass (`Proxy.out`), so a peer is woken once per batch, not once per request.

Timeouts are checked by one sweep every `SWEEP_S` over the open connections, not by a timer
per request (a timer armed and cancelled per request would cost more than the forwarding):
header (a client that is slow to send its head: 408), idle (keep-alive and body), response
header (upstream slow to answer: 504), pool idle (pooled connections kept warm at most so long).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import itertools
import logging
import os
import re
import socket
import ssl
import time
from collections.abc import Callable
from typing import Protocol, cast

from dockmesh.proxy import guard, http1
from dockmesh.proxy.accesslog import AccessLog, Entry
from dockmesh.proxy.cluster import Cluster, Upstream
from dockmesh.proxy.exchange import (
    BODY,
    CLIENT_SIDE,
    CLOSED,
    HEAD,
    NO_VERDICT,
    TUNNEL,
    UPSTREAM_SIDE,
    WAIT,
    Exchange,
)
from dockmesh.proxy.http1 import ProtocolError
from dockmesh.proxy.middleware import Chain, ChunkedEncoder
from dockmesh.proxy.routing import Router
from dockmesh.proxy.settings import ProxySettings, Timeouts
from dockmesh.proxy.tally import Tally
from dockmesh.resilience.ratelimit import client_key, retry_after
from dockmesh.resilience.retry import RESEND, RETRY, RETRYABLE_STATUSES

log = logging.getLogger(__name__)
_REQUEST_MEMO = http1.REQUEST_MEMO
_RESPONSE_MEMO = http1.RESPONSE_MEMO

SWEEP_S = 0.25
HIGH_WATER = 256 * 1024
LOW_WATER = 64 * 1024
# A client's: what waits for a client that reads slowly (or not at all) is kept small, since
# there can be thousands of them; the kernel's socket buffer holds more besides.
CLIENT_HIGH_WATER = 64 * 1024
CLIENT_LOW_WATER = 16 * 1024
# The largest piece an upstream's bytes are written to a client in (`Proxy.write_down`).
SLICE = 64 * 1024
# A drop in the bytes held for clients past which freed memory is handed back to the system
# (`Proxy.trim`): the allocator keeps freed blocks otherwise.
TRIM_AFTER_BYTES = 8 * 1024 * 1024
# How long a request waits on an instance that left the catalog before it is tried elsewhere.
REMOVED_GRACE_S = 1.0
# After the proxy ends a client connection, how long the client's further bytes are read and
# dropped once all was sent (its close is awaited: see `ClientConn.close`).
LINGER_S = 2.0
# During a drain, how long a keep-alive connection idle when it began is left open: the
# client may have sent its next request already (on the wire as the drain begins, or sent in
# the instant before it saw a close), and a close then is a request lost (RemoteDisconnected).
# A request arriving within this is answered, with `Connection: close`; past it, the
# connection is closed.
DRAIN_IDLE_GRACE_S = 1.0
# `Expect: 100-continue` in a request head.
_EXPECT_CONTINUE = re.compile(rb"\r\nexpect:[ \t]*100-continue[ \t]*\r\n", re.IGNORECASE)
# How an upstream response's body ends.
NO_BODY, LENGTH, CHUNKED, UNTIL_CLOSE = 0, 1, 2, 3


# HTTP/2's connection preface: a client with prior knowledge (h2c) starts with it.
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


class Side(Protocol):
    """A client connection of another protocol (HTTP/2: `h2conn`), drained and closed with
    the HTTP/1.1 ones."""

    def drain(self) -> None: ...
    def busy(self) -> bool: ...
    def abort(self) -> None: ...


class Proxy:
    """One worker's data plane: the routes, the open connections, the sweep."""

    def __init__(self, settings: ProxySettings, loop: asyncio.AbstractEventLoop) -> None:
        self.settings = settings
        self.loop = loop
        self.router = Router(settings.routes, settings.hash_keys)
        self.fast: Cluster[UpstreamConn] | None = self.router.fast
        self.clusters: list[Cluster[UpstreamConn]] = self.router.clusters
        self.timeouts = settings.timeouts
        self.limits = settings.limits
        # The longest head the fast lane takes: the reader's limit (`http1.parse_request_head`
        # finds a head's end within `max_head_bytes + 4`), which the lane has no reader to keep.
        self.quick_max = settings.limits.max_head_bytes + 4
        self.tally = Tally()
        self.clients: set[ClientConn] = set()
        # Open connections per client address (`guard.client_key`).
        self.per_client = guard.ClientCounts()
        # Bytes held for clients at the last sweep (`guard.shed`), and at the last trim.
        self.held = 0
        self.held_at_trim = 0
        self.trim_due = False
        self.freed = 0  # by shedding, since the last trim
        # Hands freed memory back to the system (set by `run`: malloc_trim); None: nothing.
        self.trim: Callable[[], None] | None = None
        # A search for an idle keep-alive to close found none: none is searched again before.
        self.no_idle_until = 0.0
        # Request ids: this process's random prefix and a counter.
        self.id_prefix = os.urandom(6).hex().encode() + b"-"
        self.ids = itertools.count(1)
        self._sweeper: asyncio.TimerHandle | None = None
        self.now = loop.time()
        self.servers: list[asyncio.AbstractServer] = []
        # Stopping: no listener, and every response says `Connection: close`. Nothing on the
        # fast lanes asks: a drain takes the fast request lane away (`fast`), so every new
        # request is read by `_read_head`, which ends its `keep`, and ends the `keep` of the
        # exchanges in flight whose response has not begun, so the fast response lane sees
        # `response_begins` say close.
        self.draining = False
        self.drain_started = 0.0
        # Clusters a reload replaced: requests in flight on them finish there; they are
        # closed once none is left.
        self.retired: list[Cluster[UpstreamConn]] = []
        # Writes made at the end of the loop's pass over ready sockets (appended here; the
        # first schedules `flush`), not one by one as each request is read: a peer woken by
        # the first then finds the rest waiting, instead of being woken once per request. What
        # is written or closed any other way first sends what waits here (`write`, `flush`),
        # so bytes on a connection stay in order. Entries: (transport, bytes, the upstream
        # connection when it is a request). Appended inline where it is done (two places: a
        # call per request costs).
        self.out: list[tuple[asyncio.Transport, bytes, UpstreamConn | None]] = []
        # ALPN protocol name → what takes a TLS connection that negotiated it (HTTP/1.1 is
        # ClientConn's own; HTTP/2 registers "h2" here). Offered in this order, before
        # http/1.1: a name goes to the TLS context only once its handler is here.
        self.alpn: dict[str, Callable[[Proxy, asyncio.Transport], None]] = {}
        # HTTP/2: what takes over a connection that opened with the preface (the client
        # connection and the bytes read), set by the composition root (`h2conn.take_over`);
        # None: refused as HTTP/1.1 would. Those connections are kept in `sides`.
        self.h2_prior: Callable[[ClientConn, bytes], None] | None = None
        self.sides: set[Side] = set()
        # A line per request when set (`run` opens it): connections made meanwhile log
        # (`LoggedConn`).
        self.access_log: AccessLog | None = None

    def flush(self) -> None:
        out = self.out
        if out:
            self.out = []
            for t, data, conn in out:
                if not t.is_closing():
                    t.write(data)
                elif conn is not None:
                    # The upstream closed the connection in the same pass: the request never
                    # went out, so it may go elsewhere whatever its method.
                    conn.unsent = True

    def write(self, t: asyncio.Transport, data: bytes) -> None:
        """A write in order with the deferred ones."""
        if self.out:
            self.flush()
        t.write(data)

    def write_down(self, t: asyncio.Transport, data: bytes) -> None:
        """An upstream's bytes to a client, written in pieces of at most `SLICE` bytes, each
        its own copy: uvloop keeps the whole of what one write sent only in part until the
        rest is taken (the sent part too, uncounted by its write buffer size), so a client
        that stops reading holds at most one piece besides what is counted, not a whole read
        of up to 256 KiB (1,000 of them kept 272 MiB). (`writelines` would not do: the pieces
        of one call are kept together.)"""
        if len(data) <= SLICE:
            self.write(t, data)
            return
        if self.out:
            self.flush()
        for i in range(0, len(data), SLICE):
            t.write(data[i : i + SLICE])

    def next_request_id(self) -> bytes:
        return self.id_prefix + b"%x" % next(self.ids)

    # --- lifecycle --------------------------------------------------------------------------

    async def listen(
        self,
        sock: socket.socket,
        tls: ssl.SSLContext | None = None,
        handshake_timeout: float | None = None,
    ) -> None:
        """Serves `sock`: plain HTTP, or TLS with `tls` (whose SNI callback picks the
        certificate); a client that has not finished its handshake within
        `handshake_timeout` is closed, so it holds no slot for long. A connection made while
        the access log is on logs its exchanges (`LoggedConn`): without one, its responses
        pay no check for it."""
        if tls is None:
            server = await self.loop.create_server(
                lambda: (LoggedConn if self.access_log is not None else ClientConn)(self),
                sock=sock,
                backlog=4096,
                reuse_address=None,
            )
        else:
            server = await self.loop.create_server(
                lambda: (LoggedTlsConn if self.access_log is not None else TlsClientConn)(self),
                sock=sock,
                backlog=4096,
                reuse_address=None,
                ssl=tls,
                ssl_handshake_timeout=handshake_timeout,
            )
        self.servers.append(server)
        if self._sweeper is None:
            self._sweeper = self.loop.call_later(SWEEP_S, self._sweep)

    def connections_full(self) -> bool:
        """Whether the clients' connections are at `max_client_connections`: HTTP/1.1's and
        the others' (HTTP/2: `sides`) alike, so a client cannot get past the limit by
        speaking HTTP/2."""
        return len(self.clients) + len(self.sides) >= self.limits.max_client_connections

    def busy(self) -> bool:
        """Whether a client connection is in the middle of an exchange."""
        return any(c.state not in (HEAD, CLOSED) for c in self.clients) or any(
            s.busy() for s in self.sides
        )

    def settled(self) -> bool:
        """Whether a drain is over: no exchange in flight, no idle connection left in its
        grace, and every response sent out of the process (a closed connection's unsent bytes
        would be lost at exit)."""
        if any(s.busy() for s in self.sides):
            return False
        for c in self.clients:
            if c.state != CLOSED:
                return False
            t = c.transport
            if t is not None and not t.is_closing() and t.get_write_buffer_size():
                return False
        return True

    def apply(self, settings: ProxySettings) -> None:
        """A reload: new requests go by `settings`; those in flight finish where they are.
        The clusters list is changed in place (the admin endpoint reads it)."""
        router = Router(settings.routes, settings.hash_keys)
        kept = {id(c) for c in router.clusters}
        self.retired += [c for c in self.clusters if id(c) not in kept]
        self.settings = settings
        self.router = router
        self.fast = router.fast if not self.draining else None
        self.clusters[:] = router.clusters
        self.timeouts = settings.timeouts
        self.limits = settings.limits
        self.quick_max = settings.limits.max_head_bytes + 4

    def drain(self) -> None:
        """Stop accepting; idle keep-alive connections close after `DRAIN_IDLE_GRACE_S` (a
        request that comes within it is answered), the others after their response (which
        says `Connection: close`)."""
        self.draining = True
        self.drain_started = self.loop.time()
        self.fast = None
        for c in self.clients:
            # Not one whose response head went out saying keep-alive: closing after it would
            # lose the request its client sends next (it becomes idle, in the grace, instead).
            if c.state in (BODY, WAIT) and not c.resp_started:
                c.keep = False
        for s in self.servers:
            s.close()
        for side in list(self.sides):
            side.drain()

    def close_idle_clients(self) -> None:
        """During a drain: the connections idle since the grace began (the drain's start or
        their last bytes in) close."""
        now = self.loop.time()
        since = self.drain_started
        for c in list(self.clients):
            if (
                c.state == HEAD
                and not c.buf
                and c.up is None
                and now - max(since, c.last_active) >= DRAIN_IDLE_GRACE_S
            ):
                c.close()

    def make_room(self) -> bool:
        """At the connection limit: closes the longest idle keep-alive, if any, so that a new
        client is served rather than refused; False when none is idle."""
        if self.now < self.no_idle_until:
            return False
        oldest = None
        for c in self.clients:
            if c.idle() and (oldest is None or c.last_active < oldest.last_active):
                oldest = c
        if oldest is None:
            self.no_idle_until = self.now + SWEEP_S  # a flood at the limit: not every time
            return False
        self.tally.closed_for("connections_idle")
        oldest.close()
        oldest.forget()
        return True

    def hold(self, client: ClientConn, n: int) -> None:
        """`client` began to hold `n` bytes it does not take (its transport paused writing):
        past the budget, the budget is checked now, not at the next sweep: in one pass of
        the loop, hundreds of upstream reads may land for clients that do not read."""
        self.held += n + SLICE  # as `ClientConn.holding` counts it
        if self.held > self.limits.max_buffered_bytes:
            self._enforce_budget(spare=client)

    def _enforce_budget(self, spare: ClientConn | None = None) -> None:
        """The bytes held for clients against `max_buffered_bytes` (`guard.shed`), and the
        connections against `max_connections`: idle keep-alives first. `spare`, when it is
        to go, goes at the end of this pass (it is in the middle of a write)."""
        if self.trim_due:
            self.trim_due = False
            if self.trim is not None:
                self.trim()
        clients = [c for c in self.clients if c.state != CLOSED or c.lingering]
        conns = [c.holding() for c in clients]
        held = sum(c[1] for c in conns)
        idle_out, busy_out = guard.shed(conns, self.limits.max_buffered_bytes)
        freed = 0
        for i in idle_out:
            self.tally.closed_for("memory_idle")
            freed += conns[i][1]
            clients[i].close()
            clients[i].forget()
        for i in busy_out:
            self.tally.closed_for("memory")
            freed += conns[i][1]
            c = clients[i]
            c.forget()
            if c is spare:
                c.mark_closed()
                self.loop.call_soon(c.let_go)
            else:
                c.let_go()
        self.held = self.tally.buffered_bytes = held = held - freed
        self.freed += freed
        room = int(self.limits.max_client_connections * guard.NEAR)
        if len(self.clients) > room:
            idle = sorted((c for c in self.clients if c.idle()), key=lambda c: c.last_active)
            for c in idle[: len(self.clients) - room]:
                self.tally.closed_for("connections_idle")
                c.close()
                c.forget()
        if self.freed + self.held_at_trim - held > TRIM_AFTER_BYTES:
            # Handed back at the next check: what was closed just now is freed only once
            # its transport is gone, at the end of this pass.
            self.trim_due = True
            self.held_at_trim = held
            self.freed = 0
        elif held > self.held_at_trim:
            self.held_at_trim = held

    def close(self) -> None:
        for s in self.servers:
            s.close()
        if self._sweeper is not None:
            self._sweeper.cancel()
        for c in list(self.clients):
            c.abort()
        for side in list(self.sides):
            side.abort()
        for cl in self.clusters:
            cl.close()

    def _sweep(self) -> None:
        now = self.now = self.loop.time()
        t = self.timeouts
        try:
            alog = self.access_log
            if alog is not None:
                self.tally.access_log = {
                    "written": alog.written,
                    "dropped": alog.dropped + alog.failed,
                    "sampled_out": alog.sampled_out,
                }
            for c in list(self.clients):
                c.check_timeouts(now, t)
            self._enforce_budget()
            for cl in self.clusters:
                cl.tick(now, t.pool_idle_s)
            if self.retired:
                for cl in self.retired:
                    if not any(u.in_flight for u in cl.upstreams.values()):
                        cl.close()
                self.retired = [
                    cl for cl in self.retired if any(u.in_flight for u in cl.upstreams.values())
                ]
        finally:
            self._sweeper = self.loop.call_later(SWEEP_S, self._sweep)


def peer_ip(transport: asyncio.BaseTransport) -> bytes:
    """A client's address as bytes, as X-Forwarded-For carries it."""
    peer = transport.get_extra_info("peername")
    if isinstance(peer, tuple) and peer:
        ip = str(peer[0])
        # An IPv4 client of a dual-stack listener (`[::]`) is itself, not `::ffff:a.b.c.d`:
        # for X-Forwarded-For and for trusted_proxies' IPv4 networks.
        return (ip[7:] if ip.startswith("::ffff:") and "." in ip else ip).encode()
    return b"unknown"


class ClientConn(Exchange["UpstreamConn"], asyncio.Protocol):
    """A client's connection: its bytes in and out, and the exchange it runs (`Exchange`)."""

    __slots__ = (
        "body_got",
        "body_left",
        "body_mark",
        "buf",
        "chain",
        "chunked",
        "ckey",
        "client_ip",
        "encoded",
        "encoding",
        "eof",
        "forwarded",
        "head_out",
        "head_started",
        "in_heads",
        "last_active",
        "last_head",
        "last_out",
        "last_req",
        "limit_key",
        "lingering",
        "paused",
        "pending_body",
        "pending_len",
        "proxy",
        "send_stalled",
        "transport",
        "trusted",
        "up",
        "write_paused",
    )

    # X-Forwarded-Proto: what the client spoke to the proxy.
    scheme = b"http"

    def __init__(self, proxy: Proxy) -> None:
        super().__init__()
        self.proxy = proxy
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.up: UpstreamConn | None = None
        self.head_out = b""
        # The request's body as read so far, kept until the request is sent (None: nothing
        # kept, or no body).
        self.pending_body: list[bytes] | None = None
        self.pending_len = 0  # bytes in `pending_body`
        self.body_left = 0
        # The body's bytes read so far, and the rate check's mark (`guard.body_progress`).
        self.body_got = 0
        self.body_mark: tuple[float, int] = (0.0, 0)
        self.ckey: bytes | None = None  # counted against this address (`guard.client_key`)
        # Since when the client has taken nothing of what is written to it (0: it reads).
        self.send_stalled = 0.0
        self.chunked: http1.ChunkedReader | None = None
        self.last_active = proxy.now
        self.head_started = 0.0
        self.paused = False  # reading from the client stopped (`gate`)
        self.write_paused = False  # the client does not read its responses fast enough
        self.eof = False  # the client half-closed: no more requests
        self.in_heads = False  # `_read_heads` is running
        self.lingering = 0.0  # when `close` began a lingering close
        self.client_ip = b""
        self.forwarded = b""
        self.trusted = False  # the peer is a trusted proxy (its forwarded fields are kept)
        self.last_head = b""
        self.last_out = b""
        self.last_req: http1.RequestHead | None = None
        # The current request's route's middlewares until its response begins (None: none),
        # the encoding that response may be compressed with.
        self.chain: Chain | None = None
        self.encoding: str | None = None
        self.encoded: ChunkedEncoder | None = None  # the response's compressor, for the log
        self.limit_key = b""  # the client's key for rate limits (`client_key`), once needed

    # --- asyncio callbacks ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = transport = cast(asyncio.Transport, transport)
        p = self.proxy
        p.tally.connections += 1
        p.tally.connections_total += 1
        if p.connections_full() and not p.make_room():
            p.tally.reject("overload")
            p.tally.responded(503)
            transport.write(
                http1.simple_response(
                    503, "Service Unavailable", "proxy overloaded: too many connections"
                )
            )
            transport.close()
            self.mark_closed()
            return
        self.client_ip = ip = peer_ip(transport)
        key = guard.client_key(ip)
        if not p.per_client.add(key, p.limits.max_connections_per_client):
            p.tally.reject("client_connections")
            p.tally.responded(503)
            transport.write(
                http1.simple_response(
                    503, "Service Unavailable", "too many connections from your address"
                )
            )
            transport.close()
            self.mark_closed()
            return
        self.ckey = key
        p.clients.add(self)
        transport.set_write_buffer_limits(CLIENT_HIGH_WATER, CLIENT_LOW_WATER)
        self.forwarded = b"".join(
            (b"X-Forwarded-For: ", self.client_ip, b"\r\nX-Forwarded-Proto: ", self.scheme, b"\r\n")
        )
        self.trusted = p.settings.trusts(self.client_ip)

    def connection_lost(self, exc: Exception | None) -> None:
        p = self.proxy
        p.tally.connections -= 1
        p.clients.discard(self)
        self._drop_upstream(self.mark_closed())
        self.forget()
        # What was kept for it goes now, not when the object is collected.
        self.buf = b""
        self.pending_body = None

    def forget(self) -> None:
        """No longer counted against its address: closed (or closing, its lingering close
        counts no more)."""
        if self.ckey is not None:
            self.proxy.per_client.remove(self.ckey)
            self.ckey = None

    def idle(self) -> bool:
        """An idle keep-alive: between exchanges (after one at least: a connection whose
        first request is on its way is not idle), with nothing of the client's kept."""
        return self.state == HEAD and self.t0 > 0 and not self.buf and self.up is None

    def holding(self) -> tuple[bool, int, float]:
        """For `guard.shed`: whether idle, the bytes held for it (and its connection's own
        cost), and when it was last active."""
        t = self.transport
        n = guard.CONN_COST + len(self.buf) + self.pending_len
        if t is not None:
            waiting = t.get_write_buffer_size()
            # And the piece sent in part, kept whole (`Proxy.write_down`).
            n += waiting + SLICE if waiting else 0
        up = self.up
        if up is not None and up.transport is not None:
            n += up.transport.get_write_buffer_size() + len(up.buf)
        return self.idle(), n, self.last_active

    def _drop_upstream(self, prev: int) -> None:
        up = self.up
        if up is not None:
            # The client went away mid-exchange: the upstream connection is in an unknown
            # place in its response, so it cannot go back to the pool. A tunnel had its
            # answer (101); anything else ends with no verdict on the upstream.
            self.up = None
            up.client = None
            self.end_attempt(101 if prev == TUNNEL else NO_VERDICT, self.proxy.loop.time())
            up.close()

    def pause_writing(self) -> None:
        self.write_paused = True
        self.send_stalled = self.proxy.now
        if self.transport is not None:
            self.proxy.hold(self, self.transport.get_write_buffer_size())
        if self.up is not None:
            self.up.pause_reads()
        # A client that does not read its responses sends no more requests for now.
        self.gate()

    def resume_writing(self) -> None:
        self.write_paused = False
        self.send_stalled = 0.0
        if self.up is not None:
            self.up.resume_reads()
        self.gate()

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
            self.gate()

    def gate(self) -> None:
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
            # A body kept while its upstream connection opens: no more than the buffer.
            or self.pending_len > limits.request_buffer_bytes
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
            fast = p.fast
            if fast is not None and not self.buf:
                # The fast lane: no reader, and the edited head, but for the request id's
                # counter, kept from the last time the client sent the same head (no memo
                # lookup then either). `req` is shared (memoized): never changed.
                if data == self.last_head:
                    req: http1.RequestHead | None = self.last_req
                    template = self.last_out
                elif len(data) > p.quick_max:
                    req = None  # the general reader refuses it (431)
                else:
                    req = _REQUEST_MEMO.get(data) or http1.quick_request_head(data)
                    if req is not None:
                        # The edited head as a format for the request id's counter (its own
                        # `%` doubled): one formatting makes the head to send.
                        edited = b"".join(
                            (
                                data[:-2],
                                self.forwarded,
                                b"X-Forwarded-Host: ",
                                req.host or b"",
                                b"\r\nX-Request-Id: ",
                                p.id_prefix,
                            )
                        )
                        template = edited.replace(b"%", b"%%") + b"%x\r\n\r\n"
                        self.last_head = data
                        self.last_req = req
                        self.last_out = template
                if req is not None:
                    # (`pending_body` is None: no body is kept between exchanges.)
                    self.head_out = template % next(p.ids)
                    self._send(self.begin_attempt(fast, req, None, p.loop.time()))
                    return
            self.buf = self.buf + data if self.buf else data
            self._read_heads()
            if len(self.buf) > p.limits.max_pipelined_bytes:
                self.gate()
        elif state == BODY:
            self._body_data(data, 0)
        elif state == TUNNEL:
            up = self.up
            if up is not None and up.transport is not None:
                p.write(up.transport, data)
        elif state == WAIT:
            # Pipelined: kept until the current response is done.
            self.buf += data
            if len(self.buf) > p.limits.max_pipelined_bytes:
                self.gate()

    def eof_received(self) -> bool | None:
        if self.state == TUNNEL:
            # Half-closed: the EOF goes on to the upstream, whose own ends the tunnel (and a
            # tunnel that cannot pass an EOF on ends now).
            up = self.up
            p = self.proxy
            if (
                up is not None
                and up.transport is not None
                and up.transport.can_write_eof()
                and not self.tunnel_eof(CLIENT_SIDE, p.loop.time())
            ):
                p.flush()
                up.transport.write_eof()
                return True
            self.end_tunnel()
            return None
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
        p = self.proxy
        if buf[:3] == b"PRI" and p.h2_prior is not None and not self.t0:
            # HTTP/2 with prior knowledge, as the connection's first bytes.
            if len(buf) < len(H2_PREFACE) and H2_PREFACE.startswith(buf):
                if not self.head_started:
                    self.head_started = p.now  # (a preface, too, is due within client_header_s)
                return False
            if buf.startswith(H2_PREFACE):
                self.buf = b""
                p.tally.connections -= 1
                p.clients.discard(self)
                self.forget()  # (HTTP/2 keeps its own count from here)
                self.mark_closed()
                p.h2_prior(self, buf)
                return True
        try:
            req = http1.parse_request_head(buf, p.limits.max_head_bytes)
        except ProtocolError as e:
            self._refuse(e.status, str(e))
            return True
        if req is None:
            if not self.head_started:
                self.head_started = p.now
            return False
        self.head_started = 0.0
        now = p.loop.time()
        route = p.router.match(req)
        n = req.head_len
        head = buf[:n] if len(buf) > n else buf
        rest = buf[n:] if len(buf) > n else b""
        key = None
        cluster = chain = None
        if route is not None:
            cluster = route.cluster
            key = p.router.key(cluster, head, self.client_ip)
            fields = http1.request_forwarded_fields(
                req, self.client_ip, p.next_request_id(), self.trusted, self.scheme
            )
            self.head_out = http1.edit_request_head(head, req, fields)
            chain = route.chain
            if chain is not None and self._middlewares(chain, req, head, now, rest):
                return True
        if not req.has_body or cluster is None:
            up = self.begin_attempt(cluster, req, key, now)
            if p.draining:
                self.keep = False
            if not self.body:
                self.pending_body = None
                # What follows is requests sent ahead: kept while this one is in flight.
                self.buf = rest
            else:
                self._start_body(req, now, chain)
            self._send(up)
            return True
        # A body: read into `pending_body` before any upstream is asked for, all of it or
        # `request_buffer_bytes` of it (`_body_data`), so a slow upload holds no upstream
        # connection; it is kept until the request is sent (it can go elsewhere until then).
        self.begin_request(cluster, req, key, now)
        if p.draining:
            self.keep = False
        self._start_body(req, now, chain)
        if rest:
            self._body_data(rest, 0)
        if (
            self.state == BODY
            and self.up is None
            and req.minor == 1
            and self.transport is not None
            and _EXPECT_CONTINUE.search(head)
        ):
            # The client waits for this before it sends the body: the proxy, not the
            # upstream, is reading it now.
            p.write(self.transport, b"HTTP/1.1 100 Continue\r\n\r\n")
        return True

    def _start_body(self, req: http1.RequestHead, now: float, chain: Chain | None) -> None:
        if req.chunked:
            # (A route's max_body bounds the sum of the chunks' sizes: 413.)
            limit = chain.max_body if chain is not None else None
            self.chunked = http1.ChunkedReader(limit or 0)
        else:
            self.chunked = None
            self.body_left = req.content_length or 0
        self.pending_body = []
        self.pending_len = 0
        self.body_got = 0
        self.body_mark = (now, 0)
        self.buf = b""

    def _middlewares(
        self, chain: Chain, req: http1.RequestHead, head: bytes, now: float, rest: bytes
    ) -> bool:
        """The request through its route's middlewares: True when one answered it (429, 413:
        nothing was forwarded), else its head to forward is edited and what its response and
        body need is noted."""
        p = self.proxy
        self.chain = chain  # until the response begins (`response_head`)
        answer = None
        if chain.limiters:
            key = self.limit_key or client_key(self.client_ip)
            self.limit_key = key
            wait = chain.admit(key, now)
            if wait:
                answer = (429, "rate limit exceeded", f"Retry-After: {retry_after(wait)}\r\n")
        limit = chain.max_body
        length = req.content_length
        if answer is None and limit is not None and length is not None and length > limit:
            answer = (413, f"the request body is larger than {limit} bytes", "")
        if answer is not None:
            status, message, extra = answer
            p.tally.reject("rate_limit" if status == 429 else "body_too_large")
            self.begin_attempt(None, req, None, now)
            self.buf = rest  # what the client sent ahead, when the connection is kept
            self._local_response(status, message, extra)
            return True
        self.head_out = chain.request_head(self.head_out)
        self.encoding = chain.encoding_for(head, req.minor, req.method)
        return False

    def _body_data(self, data: bytes, start: int) -> None:
        """Request body bytes: forward what belongs to the body, keep what follows it."""
        n = len(data) - start
        if self.chunked is not None:
            try:
                used = self.chunked.feed(data, start)
            except ProtocolError as e:
                # (413: a size line past the route's max_body, refused before its data.)
                kind = "body_too_large" if e.status == 413 else "bad_request"
                self._refuse(e.status, str(e), mid_exchange=True, kind=kind)
                return
            done = self.chunked.done
        else:
            used = min(n, self.body_left)
            self.body_left -= used
            done = self.body_left == 0
        piece = data if start == 0 and used == len(data) else data[start : start + used]
        self.body_got += used
        if piece:
            up = self.up
            if self.pending_body is not None:
                self.pending_body.append(piece)
                self.pending_len += len(piece)
                if self.pending_len > self.proxy.limits.request_buffer_bytes and self.up:
                    self.gate()
            elif up is not None and up.transport is not None:
                self.proxy.write(up.transport, piece)
        if done:
            self.body_done()
            up = self.up
            if up is not None:
                # The upstream's time to answer counts from the end of the request: a long
                # upload is not a slow upstream.
                up.started = self.proxy.now
        if (
            self.up is None
            and self.upstream is None
            and self.attempts == 0
            and self.state in (BODY, WAIT)
            and (done or self.pending_len >= self.proxy.limits.request_buffer_bytes)
        ):
            # Buffered: all of the body, or as much as is kept before it streams.
            self._send(self.begin_attempt())
        if done:
            rest = data[start + used :]
            if rest:
                self.buf += rest
            if self.state == HEAD and self.buf:
                self._read_heads()

    def _attempt(self) -> None:
        """A further attempt (a retry, a resend)."""
        self._send(self.begin_attempt())

    def _send(self, up: Upstream[UpstreamConn] | None, conn: UpstreamConn | None = None) -> None:
        """The request goes to the attempt's upstream `up` (None: none would take it): on
        `conn` when one was opened for it and is now connected; else on a pooled connection,
        or on a new one (`_open_for`)."""
        if conn is None:
            if up is None:
                self.fail(*self.failure)
                return
            idle = up.idle
            while idle:
                conn = idle.pop()
                t = conn.transport
                if t is not None and not t.is_closing():
                    conn.reused = True
                    break
            else:
                self._open_for(up)
                return
        else:
            t = conn.transport
            assert t is not None
        p = self.proxy
        req = self.req
        assert req is not None
        # A new exchange on the connection (`release` left it with no head, no response and
        # no bytes).
        conn.client = self
        conn.method = req.method
        conn.started = p.now
        self.up = conn
        pending = self.pending_body
        if pending is None:
            # A head alone: at the end of the loop's pass (`Proxy.out`).
            out = p.out
            if not out:
                p.loop.call_soon(p.flush)
            out.append((t, self.head_out, conn))
        else:
            # A body: not kept once sent (`Exchange.failed` knows).
            self.pending_body = None
            self.pending_len = 0
            p.write(t, self.head_out + b"".join(pending) if pending else self.head_out)
        if self.paused:
            self.gate()
        if self.write_paused:
            conn.pause_reads()

    def _open_for(self, up: Upstream[UpstreamConn]) -> None:
        """The attempt on `up` (admitted, counted) needs a new connection."""
        p = self.proxy
        if up.connections >= p.limits.max_connections_per_upstream:
            self.end_attempt(NO_VERDICT, p.loop.time())
            self.fail(503, f"upstream {up.addr} has too many connections", "overload")
            return
        up.connections += 1
        conn = UpstreamConn(p, up)
        conn.client = self
        self.up = conn
        p.loop.create_task(conn.connect(p.timeouts.connect_s))

    # --- what the upstream connection reports -------------------------------------------------

    def connected(self, conn: UpstreamConn) -> None:
        if self.up is not conn or self.state == CLOSED:
            conn.release(reusable=True)
            return
        self._send(conn.upstream, conn)

    def connect_failed(self, conn: UpstreamConn, reason: str) -> None:
        """The attempt's connection could not be opened: nothing was sent."""
        if self.up is not conn:
            return
        self.up = None
        self.end_attempt(None, self.proxy.loop.time())
        self._retry_or_fail(self.failed(None, reached=False), 502, reason, "connect")

    def upstream_lost(self, conn: UpstreamConn, before_response: bool) -> None:
        """The upstream connection closed or broke before the response ended."""
        if self.up is not conn:
            return
        self.up = None
        now = self.proxy.loop.time()
        if self.state == TUNNEL:
            self.end_attempt(101, now)
            self.close()
            return
        if not before_response or self.resp_started:
            self.end_attempt(None, now)
            self.abort()  # a response cut short: the client must see it was
            return
        reached = not conn.unsent
        verdict = self.failed(None, reached, stale=conn.reused, unsent=conn.unsent)
        if verdict == RESEND:
            self.end_attempt(NO_VERDICT, now)
            self.proxy.tally.retried("stale_connection")
            self._attempt()
            return
        self.end_attempt(None, now)
        self._retry_or_fail(verdict, 502, "the upstream closed the connection", "reset")

    def bad_response(self, conn: UpstreamConn, why: str) -> None:
        """The upstream broke HTTP/1.1 in its response: 502, or a close once it began."""
        if self.up is not conn:
            return
        self.up = None
        conn.close()
        self.end_attempt(None, self.proxy.loop.time())
        if self.resp_started:
            self.abort()
        else:
            self.fail(502, why, "bad_response")

    def _retry_or_fail(self, verdict: int, code: int, why: str, kind: str) -> None:
        if verdict == RETRY:
            self.proxy.tally.retried(kind)
            self._attempt()
        else:
            self.fail(code, f"{why} ({self.last_tried()})", kind)

    def response_head(self, conn: UpstreamConn, resp: http1.ResponseHead, head: bytes) -> bool:
        """The upstream's final response head; False when it was dropped for a retry."""
        status = resp.status
        if status in RETRYABLE_STATUSES and self.failed(status, reached=True) == RETRY:
            self.up = None
            conn.close()
            self.end_attempt(status, self.proxy.loop.time())
            self.proxy.tally.retried(f"status_{status}")
            self._attempt()
            return False
        added = self.response_begins(status, resp.keep_alive, conn.framing == UNTIL_CLOSE)
        if status == 101:
            conn.tunnel = True
        if resp.cut or resp.connection_tokens or added:
            head = http1.edit_response_head(head, resp, added)
        chain = self.chain
        if chain is not None and status != 101:
            # Used up: the connection's next request may take the fast lane, which never
            # sets it, and its response must not go through this chain.
            self.chain = None
            framing = conn.framing
            head, enc = chain.response_head(
                head,
                status,
                resp.content_length if framing == LENGTH else 0 if framing == NO_BODY else None,
                framing == CHUNKED,
                self.encoding if framing != NO_BODY else None,
            )
            conn.encoder = self.encoded = enc
        conn.out_head = head
        return True

    def tunnel_opened(self, conn: UpstreamConn, data: bytes) -> None:
        """The 101's head and what followed it go to the client; what the client sent after
        its Upgrade request, before the 101, goes into the tunnel."""
        p = self.proxy
        if self.transport is not None:
            p.write(self.transport, data)
        if self.buf and conn.transport is not None:
            p.write(conn.transport, self.buf)
            self.buf = b""
            self.gate()
        if self.eof:
            # The client half-closed before the 101: its EOF goes into the tunnel too.
            self.tunnel_eof(CLIENT_SIDE, p.loop.time())
            if conn.transport is not None and conn.transport.can_write_eof():
                p.flush()
                conn.transport.write_eof()
            else:
                self.end_tunnel()

    def response_done(self, conn: UpstreamConn, status: int, reusable: bool) -> None:
        self.up = None
        p = self.proxy
        now = p.loop.time()
        keep = self.end_attempt(status, now, True)
        p.tally.observe(status, now - self.t0)
        conn.release(reusable and self.req_done)
        if not keep:
            self.close()
        elif self.buf or self.eof or self.paused:
            self._next()

    # --- answers of our own -----------------------------------------------------------------

    def fail(self, status: int, message: str, kind: str) -> None:
        """No upstream answered: a short response saying why (or, once a response began,
        a closed connection)."""
        self.proxy.tally.reject(kind)
        if self.resp_started:
            self.abort()
            return
        self._local_response(status, message)

    def _local_response(self, status: int, message: str, extra: str = "") -> None:
        """The proxy's own answer to the request, and the exchange's end."""
        p = self.proxy
        if self.transport is None or self.state == CLOSED:
            return
        if p.access_log is not None and self.req is not None:
            self._log(status, len(message) + 1, p.loop.time(), "-")
        self.chain = None  # (as in `response_head`)
        keep = self.end_attempt(NO_VERDICT, 0.0, True)  # none is open: the exchange ends
        self.pending_body = None  # a body kept for a request that never went
        self.pending_len = 0
        p.write(
            self.transport,
            http1.simple_response(
                status, http1.REASONS.get(status, "Error"), message, close=not keep, extra=extra
            ),
        )
        p.tally.observe(status, p.loop.time() - self.t0 if self.t0 else 0.0)
        if not keep:
            self.close()
        elif self.buf or self.eof or self.paused:
            self._next()

    def _log(
        self, status: int, nbytes: int, now: float, upstream: str, wanted: bool = False
    ) -> None:
        """The exchange's line in the access log, if one is kept and wants it (`wanted`: it
        was asked already)."""
        req = self.req
        p = self.proxy
        log = p.access_log
        if req is None or log is None or not (wanted or log.wants(status)):
            return
        route = p.router.match(req) if self.cluster is not None else None
        log.log(
            Entry(
                time.time(),
                self.client_ip.decode("ascii", "replace"),
                req.method.decode("ascii", "replace"),
                req.target.decode("ascii", "replace"),
                req.minor,
                status,
                nbytes,
                now - self.t0 if self.t0 else 0.0,
                upstream,
                # Found again for the log alone (the request path does not keep it).
                route.name or route.cluster.name if route is not None else "-",
            )
        )

    def _refuse(
        self, status: int, message: str, mid_exchange: bool = False, kind: str = "bad_request"
    ) -> None:
        """A client that broke the protocol (or a bound: `kind`): answer and close, never
        forward further."""
        p = self.proxy
        p.tally.reject(kind)
        if mid_exchange:
            up = self.up
            self.up = None
            if up is not None:
                up.client = None
                self.end_attempt(NO_VERDICT, p.loop.time())
                up.close()
            if self.resp_started:
                self.abort()
                return
        if self.transport is not None and self.state != CLOSED:
            if p.access_log is not None and self.req is not None:
                self._log(status, len(message) + 1, p.loop.time(), "-")
            p.write(
                self.transport,
                http1.simple_response(status, http1.REASONS.get(status, "Bad Request"), message),
            )
            p.tally.responded(status)
        self.close()

    def close(self) -> None:
        """Ends the connection once what was written is sent. A lingering close, as nginx's:
        closing a socket with bytes of the client's still unread (requests it sent ahead)
        makes the kernel reset the connection and drop what it has not sent yet, the end of
        the last response. So: FIN after what is written, then the client's bytes are read
        and dropped until it closes too, for `LINGER_S` once all is sent (and `idle_s` in
        all, for a client that does not read)."""
        self._drop_upstream(self.mark_closed())
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

    def end_tunnel(self) -> None:
        """Both connections of a tunnel close, once what was written is sent (no lingering:
        the tunnel has no request to be cut short) and its upstream's slot is returned."""
        self._drop_upstream(self.mark_closed())
        t = self.transport
        if t is not None:
            self.proxy.flush()
            t.close()

    def let_go(self) -> None:
        """Closed at once, its upstream connection with it: what waits for it is dropped
        (the proxy's memory budget)."""
        self._drop_upstream(self.mark_closed())
        if self.transport is not None:
            self.transport.abort()

    def abort(self) -> None:
        self.mark_closed()
        if self.transport is not None:
            self.proxy.flush()
            self.transport.abort()

    def check_timeouts(self, now: float, t: Timeouts) -> None:
        state = self.state
        if self.send_stalled and state != CLOSED and now - self.send_stalled > t.client_send_s:
            # It takes nothing of what is written to it: what waits for it, and the upstream
            # connection held for the rest of its response, are let go.
            self.proxy.tally.closed_for("client_send_timeout")
            self.abort()
            return
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
                self.proxy.tally.reject("client_timeout")
                self._refuse(408, "the request head took too long")
            elif now - self.last_active > t.idle_s:
                self.close()
        elif state == TUNNEL:
            up = self.up
            last = max(self.last_active, up.last_active if up else 0.0)
            if self.tunnel_expired(now, last, t.tunnel_idle_s, t.tunnel_half_closed_s):
                self.end_tunnel()
        elif state in (BODY, WAIT):
            up = self.up
            if (
                up is not None
                and not up.got_head
                and up.started
                and self.req_done
                and (now - up.started > t.response_header_s)
            ):
                self.up = None
                up.close()
                self.end_attempt(None, now)
                self.fail(
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
                up.close()
                self.end_attempt(None, now)
                verdict = self.failed(None, reached=True)
                self._retry_or_fail(verdict, 502, "the upstream left the catalog", "removed")
            elif state == BODY and now - self.last_active > t.idle_s:
                self._refuse(408, "the request body stalled", mid_exchange=True)
            elif state == BODY and not self._body_keeps_up(now, t):
                self.proxy.tally.reject("client_body_timeout")
                self._refuse(408, "the request body came too slowly", mid_exchange=True)

    def _body_keeps_up(self, now: float, t: Timeouts) -> bool:
        """Whether the body keeps its minimum rate (`guard.body_progress`)."""
        if self.paused:
            # Not read because the upstream does not take it: not the client's slowness.
            self.body_mark = (now, self.body_got)
            return True
        mark = guard.body_progress(
            now,
            *self.body_mark,
            self.body_got,
            self.proxy.limits.request_buffer_bytes,
            t.client_body_s,
        )
        if mark is None:
            return False
        self.body_mark = mark
        return True


class TlsClientConn(ClientConn):
    """A client's connection on a TLS listener, made once its handshake is done: HTTP/1.1
    as ClientConn's, `X-Forwarded-Proto: https`, unless ALPN chose a protocol another handler
    takes (`Proxy.alpn`), which then gets the transport instead."""

    __slots__ = ()
    scheme = b"https"

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        handlers = self.proxy.alpn
        if handlers:
            name = negotiated_protocol(transport)
            take = handlers.get(name) if name is not None else None
            if take is not None:
                take(self.proxy, cast(asyncio.Transport, transport))
                return
        super().connection_made(transport)


def negotiated_protocol(transport: asyncio.BaseTransport) -> str | None:
    """The protocol ALPN settled on a TLS transport (`h2`, `http/1.1`), or None: not TLS, or
    no ALPN."""
    ssl_object = transport.get_extra_info("ssl_object")
    if ssl_object is None:
        return None
    name = ssl_object.selected_alpn_protocol()
    return str(name) if name is not None else None


class LoggedConn(ClientConn):
    """A client connection whose exchanges go to the access log (`Proxy.access_log`)."""

    __slots__ = ()

    def response_done(self, conn: UpstreamConn, status: int, reusable: bool) -> None:
        log = self.proxy.access_log
        if log is not None and log.wants(status):  # (a line sampled out costs no more)
            if not conn.got_head:
                # The fast lane's response was one read: its body is the last head's
                # response's.
                q = conn.last_q
                sent = q[2] if q is not None else 0
            elif self.encoded is not None:
                sent = self.encoded.sent
            elif conn.framing == LENGTH:
                resp = conn.resp
                sent = resp.content_length or 0 if resp is not None else 0
            elif conn.framing == NO_BODY:
                sent = 0
            else:
                sent = conn.body_sent
            self._log(status, sent, self.proxy.loop.time(), conn.upstream.addr, True)
        self.encoded = None
        super().response_done(conn, status, reusable)


class LoggedTlsConn(LoggedConn, TlsClientConn):
    """A TLS listener's client connection whose exchanges go to the access log."""

    __slots__ = ()


class UpstreamConn(asyncio.Protocol):
    """A connection to one upstream, serving one exchange at a time, pooled between them. It
    reads the response (its head, then its body's framing) and reports to its client
    connection; `Upstream.idle` holds it while idle (`cluster.Pooled`)."""

    __slots__ = (
        "body_left",
        "body_sent",
        "buf",
        "chunked",
        "client",
        "encoder",
        "framing",
        "got_head",
        "idle_since",
        "last_active",
        "last_head",
        "last_len",
        "last_q",
        "method",
        "out_head",
        "proxy",
        "reads_paused",
        "resp",
        "reused",
        "started",
        "transport",
        "tunnel",
        "unsent",
        "upstream",
        "write_paused",
    )

    def __init__(self, proxy: Proxy, upstream: Upstream[UpstreamConn]) -> None:
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
        self.tunnel = False
        self.write_paused = False
        self.reads_paused = False  # `pause_reads`
        self.unsent = False  # its request was dropped unsent: it closed first (`Proxy.flush`)
        self.method = b"GET"
        self.out_head = b""
        self.started = 0.0
        self.idle_since = 0.0
        self.last_active = 0.0
        self.last_head = b""
        self.last_q: tuple[int, int, int, bytes] | None = None
        self.last_len = -1  # of the last head's whole response
        # The response's body goes through this compressor (a route's compress middleware).
        self.encoder: ChunkedEncoder | None = None
        # Bytes of a chunked or close-delimited response's body forwarded, for the log.
        self.body_sent = 0

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
                enc = self.encoder
                if enc is not None:
                    # The compressed body's end, the last chunk: the response is whole.
                    self.encoder = None
                    tail = enc.end()
                    if client.transport is not None:
                        self.proxy.write(client.transport, tail)
                client.response_done(self, self.resp.status if self.resp else 200, False)
                return
            client.upstream_lost(self, before_response=not self.got_head)

    def pause_writing(self) -> None:
        # The upstream does not take the request body as fast as the client sends it.
        self.write_paused = True
        c = self.client
        if c is not None:
            c.gate()

    def resume_writing(self) -> None:
        self.write_paused = False
        c = self.client
        if c is not None:
            c.gate()

    def eof_received(self) -> bool | None:
        c = self.client
        if self.tunnel and c is not None and c.transport is not None:
            # Half-closed: the EOF goes on to the client, whose own ends the tunnel (and a
            # tunnel that cannot pass an EOF on ends now).
            p = self.proxy
            if c.transport.can_write_eof() and not c.tunnel_eof(UPSTREAM_SIDE, p.loop.time()):
                p.flush()
                c.transport.write_eof()
                return True
            c.end_tunnel()
        return None

    def data_received(self, data: bytes) -> None:
        client = self.client
        if client is None or client.transport is None:
            # Bytes nobody asked for (on an idle connection): it cannot be trusted again.
            self.close()
            return
        self.last_active = self.proxy.now
        if self.tunnel:
            self.proxy.write_down(client.transport, data)
            return
        if not self.got_head:
            if not self.buf and self.method != b"HEAD":
                # An upstream repeats its response head (but for Date, once a second): the
                # verdict on this connection's last head, when `data` starts with it, is the
                # verdict on `data`'s (a head ends at its first CRLF CRLF). As long as that
                # head's whole response, `removeprefix` answers it and cuts the body out in
                # one call (`data` itself: no); shorter or longer, it is the last head not
                # whole in this read, or another head, whose verdict is looked up.
                q = self.last_q
                body: bytes | None = None
                if len(data) == self.last_len:
                    body = data.removeprefix(self.last_head)
                    if body is data:
                        body = None
                if body is None and not (q is not None and data.startswith(self.last_head)):
                    q = _RESPONSE_MEMO.get(data[: data.find(b"\r\n\r\n") + 4]) or (
                        http1.quick_response_memo(data)
                    )
                    if q is not None:
                        self.last_head = data[: q[1]]
                        self.last_q = q
                        self.last_len = q[1] + q[2]
                        if len(data) == self.last_len:
                            body = data[q[1] :]
                if (
                    body is not None
                    and q is not None
                    and len(body) <= SLICE  # a bigger one goes in pieces (`write_down`)
                    and q[0] not in RETRYABLE_STATUSES
                    and client.chain is None
                    and not client.response_begins(q[0], True, False)
                ):
                    # The fast lane: a whole response in one read, whose head goes as it
                    # came (its Connection: keep-alive cut): one write, at the end of the
                    # loop's pass (`Proxy.out`), and the exchange is over.
                    p = self.proxy
                    pending = p.out
                    if not pending:
                        p.loop.call_soon(p.flush)
                    pending.append((client.transport, q[3] + body, None))
                    client.response_done(self, q[0], True)
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
                client.bad_response(self, f"{e} ({self.upstream.addr})")
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
            self.body_sent = 0
        elif resp.content_length is not None:
            self.framing = LENGTH if resp.content_length else NO_BODY
            self.body_left = resp.content_length
        else:
            self.framing = UNTIL_CLOSE
            self.body_sent = 0
        if not client.response_head(self, resp, head):
            return
        rest = buf[n:] if len(buf) > n else b""
        if resp.status == 101:
            out = self.out_head + rest
            self.out_head = b""
            client.tunnel_opened(self, out)
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
            except ProtocolError as e:
                client.bad_response(self, f"{e} ({self.upstream.addr})")
                return
            done = self.chunked.done
            self.body_sent += used
        elif framing == UNTIL_CLOSE:
            used = n
            self.body_sent += used
        else:
            used = 0
            done = True
        piece = data if start == 0 and used == len(data) else data[start : start + used]
        enc = self.encoder
        if enc is not None:
            piece = enc.feed(piece)
            if done:
                self.encoder = None
                piece += enc.end()
        out = prefix + piece if prefix else piece
        if out and client.transport is not None:
            self.proxy.write_down(client.transport, out)
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
        # (A closing one, if any, leaves the pool on `connection_lost`; `_send` skips it.)
        if reusable and not up.removed and t is not None and not self.tunnel:
            if self.reads_paused:
                self.resume_reads()  # paused for a slow client: pooled, it must read again
            self.idle_since = self.proxy.now
            if self.got_head:
                self.got_head = False
                self.buf = b""
                self.resp = None
            up.idle.append(self)
        else:
            self.close()

    def pause_reads(self) -> None:
        """The client does not take the response as fast as it comes: stop reading it."""
        if self.transport is not None and not self.reads_paused:
            self.reads_paused = True
            self.transport.pause_reading()

    def resume_reads(self) -> None:
        if self.transport is not None and self.reads_paused:
            self.reads_paused = False
            self.transport.resume_reading()

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


def check_port_free(host: str, port: int) -> None:
    """Raises PortServed when another process listens on (host, port): the workers' sockets
    (SO_REUSEPORT) would otherwise share the port with it silently. A probe bound without
    SO_REUSEPORT fails then; SO_REUSEADDR lets it pass a port only left in TIME_WAIT."""
    if port == 0:
        return
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, kind, proto, _, addr = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(addr)
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
                raise PortServed(f"{where} is already served by another process") from None
            raise


class PortServed(Exception):
    """The listen address is taken by another process."""
