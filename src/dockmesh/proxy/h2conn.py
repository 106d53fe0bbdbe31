"""HTTP/2 from clients: h2c with prior knowledge (a connection whose first bytes are the
preface, handed over by `server.ClientConn`: `take_over`) and h2 over TLS when ALPN chose it
(`protocol_for`, `AlpnSwitch`). The framing is the `h2` package's; what to do with a stream
is what HTTP/1.1 requests get: its header list is read as an HTTP/1.1 head (`h2rules`), then
routed, edited (forwarded fields, hop-by-hop cuts), attempted and retried by `exchange`'s
decisions on the cluster's upstreams, with the same breakers and passive health.

Theory of operation
-------------------
A client connection (`H2Client`) runs a task per stream. The task forwards the request to an
upstream as HTTP/1.1 (a pooled connection per attempt), or as HTTP/2 with prior knowledge when
the route says `upstream_protocol: h2` (one multiplexed connection per upstream, `H2Upstream`:
gRPC needs its trailers, which go back to the client as they came). The response's body goes
to the client within the stream's flow-control window and only while the client's transport
takes it; the request's body is acknowledged (its window reopened) only once written to the
upstream. So each side holds at most a window's worth per stream, and one connection window.

What an adversary gets: at most `MAX_STREAMS` streams at a time (SETTINGS_MAX_CONCURRENT_STREAMS),
a header list of at most the HTTP/1.1 head limit (SETTINGS_MAX_HEADER_LIST_SIZE; `h2` keeps a
header block's CONTINUATION frames to a bounded backlog), the default 64 KiB windows, a budget
of streams it may reset (`h2rules.ResetBudget`: rapid reset ends the connection with GOAWAY
ENHANCE_YOUR_CALM; a reset stream's task is cancelled and its upstream attempt closed), and the
idle timeout. A drain sends GOAWAY: streams in flight finish, new ones are refused.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
import weakref
from collections.abc import AsyncIterator
from typing import Any, cast

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import hyperframe.frame

from dockmesh.proxy import h2rules, http1
from dockmesh.proxy.accesslog import Entry
from dockmesh.proxy.cluster import Upstream
from dockmesh.proxy.exchange import NO_VERDICT, Exchange
from dockmesh.proxy.server import LINGER_S, ClientConn, Proxy, peer_ip
from dockmesh.resilience.ratelimit import client_key, retry_after
from dockmesh.resilience.retry import FAIL, RESEND, RETRY, RETRYABLE_STATUSES

log = logging.getLogger(__name__)

MAX_STREAMS = 100
# What the proxy reads of an HTTP/1.1 upstream at a time, and sends in a DATA frame at most.
READ_SIZE = 64 * 1024
IDLE_CHECK_S = 1.0
# Pooled HTTP/1.1 upstream connections kept per upstream for HTTP/2 streams.
POOL_MAX = 1024
# What a client may leave unread on its connection. Responses wait for the transport to take
# them (`writable`), so only the answers `h2` makes by itself (PING and SETTINGS acks) can
# pile up past the high-water mark: a client that floods those and never reads is cut off.
MAX_UNREAD = 1024 * 1024
_CODES = h2.errors.ErrorCodes
_SETTINGS = h2.settings.SettingCodes


class Failed(Exception):
    """An attempt that failed before the response began: `status` (None: a gateway
    failure), whether the request `reached` the upstream, whether on a `stale` pooled
    connection, and the client's answer if no retry is made."""

    def __init__(
        self,
        status: int | None,
        reached: bool,
        code: int,
        why: str,
        kind: str,
        stale: bool = False,
        verdict: int | None = None,
    ) -> None:
        super().__init__(why)
        self.status = status
        self.reached = reached
        self.code = code
        self.why = why
        self.kind = kind
        self.stale = stale
        # Decided already: FAIL (a response-header timeout is not retried), or RETRY (a
        # 502/503/504 `Exchange.failed` granted a retry for).
        self.verdict = verdict


def _no_response(after_s: float) -> Failed:
    """The upstream gave no response head within `after_s`: 504, never retried."""
    return Failed(
        None,
        True,
        504,
        f"no response from the upstream within {after_s:g}s",
        "timeout",
        verdict=FAIL,
    )


class Cut(Exception):
    """The response began and then broke: the client's stream is reset."""


# --- client side ------------------------------------------------------------------------------


class Stream:
    """A client's stream: its request as it arrives, and the task forwarding it."""

    __slots__ = (
        "body",
        "ended",
        "got",
        "headers",
        "id",
        "length",
        "max_body",
        "more",
        "route",
        "sent",
        "status",
        "t0",
        "task",
        "unacked",
        "upstream",
        "window",
    )

    def __init__(self, stream_id: int, headers: list[tuple[bytes, bytes]]) -> None:
        self.id = stream_id
        self.headers = headers
        self.length = h2rules.content_length(headers)  # what the client said it sends
        self.got = 0  # the body's bytes received
        self.body: collections.deque[bytes] = collections.deque()
        self.ended = False  # the client ended its side (all of the body is in `body`)
        self.more = asyncio.Event()  # body or its end arrived
        self.window = asyncio.Event()  # the client opened the window
        self.unacked = 0
        self.task: asyncio.Task[None] | None = None
        # The route's max_body (its middlewares), once routed.
        self.max_body: int | None = None
        # For the access log: when forwarding began, the route's name, the upstream tried
        # last, the status answered (0: none) and the DATA bytes sent to the client.
        self.t0 = 0.0
        self.route = "-"
        self.upstream = "-"
        self.status = 0
        self.sent = 0


class H2Client(asyncio.Protocol):
    """A client's HTTP/2 connection."""

    def __init__(self, proxy: Proxy, tls: bool) -> None:
        self.proxy = proxy
        self.tls = tls
        self.hub = hub_of(proxy)
        # What arrives is checked (and read again as an HTTP/1.1 head: `h2rules`); what is
        # sent was made from checked fields, so `h2` does not check it again (a third of its
        # cost per request).
        cfg = h2.config.H2Configuration(
            client_side=False,
            header_encoding=None,
            validate_inbound_headers=True,
            validate_outbound_headers=False,
            normalize_outbound_headers=False,
        )
        self.conn = h2.connection.H2Connection(cfg)
        limit = proxy.limits.max_head_bytes
        self.conn.local_settings = h2.settings.Settings(
            client=False,
            initial_values={
                _SETTINGS.MAX_CONCURRENT_STREAMS: MAX_STREAMS,
                _SETTINGS.MAX_HEADER_LIST_SIZE: limit,
                _SETTINGS.ENABLE_PUSH: 0,
            },
        )
        self.conn.max_inbound_frame_size = 16384
        self.transport: asyncio.Transport | None = None
        self.streams: dict[int, Stream] = {}
        self.writable = asyncio.Event()
        self.writable.set()
        self.last_active = proxy.loop.time()
        self.resets = h2rules.ResetBudget(now=self.last_active)
        self.draining = False
        self.closed = False
        self.client_ip = b""
        self.trusted = False
        self._timer: asyncio.TimerHandle | None = None
        self._flush_soon = False
        self.lingering = False  # `close` sent its FIN
        # Upstream HTTP/1.1 connections this connection's streams hold at once. A stream whose
        # client keeps its window shut holds one until `idle`: without a bound, one TCP
        # connection could hold MAX_STREAMS of an upstream's connections, where an HTTP/1.1
        # client holds one. Streams past it wait for a slot (they hold nothing meanwhile).
        self.up_slots = asyncio.Semaphore(proxy.limits.max_upstream_per_h2_connection)

    # --- asyncio callbacks --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = t = cast(asyncio.Transport, transport)
        p = self.proxy
        p.tally.connections += 1
        if p.connections_full() and not p.make_room():
            # As HTTP/1.1's (`ClientConn.connection_made`): past the limit, refused. (One
            # that began as HTTP/1.1, h2c, was let in there and no longer counts as such.)
            p.tally.reject("overload")
            self.conn.initiate_connection()
            self.conn.close_connection(_CODES.REFUSED_STREAM, b"too many connections")
            self.close()
            return
        p.sides.add(self)
        self.client_ip = peer_ip(t)
        self.trusted = p.settings.trusts(self.client_ip)
        self.conn.initiate_connection()
        self.flush()
        self._timer = p.loop.call_later(IDLE_CHECK_S, self._check_idle)
        if p.draining:
            self.drain()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.closed:
            return
        self.closed = True
        p = self.proxy
        p.tally.connections -= 1
        p.sides.discard(self)
        if self._timer is not None:
            self._timer.cancel()
        self._cancel_all()
        self.writable.set()
        self.transport = None

    def _cancel_all(self) -> None:
        for s in list(self.streams.values()):
            if s.task is not None:
                s.task.cancel()
        self.streams.clear()

    def pause_writing(self) -> None:
        self.writable.clear()

    def resume_writing(self) -> None:
        self.writable.set()

    def data_received(self, data: bytes) -> None:
        if self.lingering:
            return  # closing: read and dropped
        self.last_active = self.proxy.loop.time()
        try:
            events = self.conn.receive_data(data)
        except h2.exceptions.ProtocolError as e:
            # `h2` queued the GOAWAY saying why.
            log.debug("h2 client %s: %s", self.client_ip, e)
            self.proxy.tally.reject("bad_request")
            self.flush()
            self.close()
            return
        for ev in events:
            if isinstance(ev, h2.events.RequestReceived):
                self._request(ev)
            elif isinstance(ev, h2.events.DataReceived):
                s = self.streams.get(ev.stream_id)
                if s is None or s.task is None or s.task.done():
                    # Nobody reads it: the window opens again at once.
                    self._ack(ev.flow_controlled_length, ev.stream_id)
                else:
                    if ev.data:
                        s.body.append(ev.data)
                        s.got += len(ev.data)
                        if s.max_body is not None and s.got > s.max_body:
                            # Past the route's max_body: the stream ends here (its upstream
                            # request cut), as HTTP/1.1's chunked body past it is.
                            self.proxy.tally.reject("body_too_large")
                            self._reset_client(s, _CODES.CANCEL)
                            self._reset(s.id)
                            self._ack(ev.flow_controlled_length, ev.stream_id)
                            continue
                    s.unacked += ev.flow_controlled_length
                    if ev.flow_controlled_length and not ev.data:
                        self._ack(ev.flow_controlled_length, ev.stream_id)  # padding only
                    s.more.set()
            elif isinstance(ev, h2.events.StreamEnded):
                s = self.streams.get(ev.stream_id)
                if s is not None:
                    if s.length is not None and s.got != s.length:
                        # Ended by trailers short of its content-length (`h2` checks only
                        # DATA): malformed (RFC 9113 8.1.1), and the upstream would wait
                        # for the rest. The stream and its upstream attempt end here.
                        self._malformed(s.id)
                        continue
                    s.ended = True
                    s.more.set()
            elif isinstance(ev, h2.events.StreamReset):
                self._reset(ev.stream_id)
                if ev.remote_reset and not self.resets.spend(self.last_active):
                    self.proxy.tally.reject("rapid_reset")
                    self.conn.close_connection(_CODES.ENHANCE_YOUR_CALM, b"too many streams reset")
                    self.flush()
                    self.close()
                    return
            elif isinstance(ev, h2.events.WindowUpdated | h2.events.RemoteSettingsChanged):
                for s in self.streams.values():
                    s.window.set()
            elif isinstance(ev, h2.events.ConnectionTerminated):
                # The client's GOAWAY: `h2` takes no more frames to send on the connection,
                # so the streams in flight cannot be answered.
                self._cancel_all()
                self.flush()
                self.close()
                return
        self.flush()

    def eof_received(self) -> bool | None:
        return None

    # --- streams ------------------------------------------------------------------------------

    def _request(self, ev: h2.events.RequestReceived) -> None:
        sid = ev.stream_id
        if self.draining:
            self.conn.reset_stream(sid, _CODES.REFUSED_STREAM)
            return
        s = Stream(sid, list(ev.headers))
        s.ended = ev.stream_ended is not None
        if s.ended and s.length:
            # A content-length and no body: malformed, as above.
            self.conn.reset_stream(sid, _CODES.PROTOCOL_ERROR)
            self.proxy.tally.reject("bad_request")
            return
        self.streams[sid] = s
        s.task = self.proxy.loop.create_task(self._run(s))

    def _malformed(self, sid: int) -> None:
        self.proxy.tally.reject("bad_request")
        self._reset(sid)
        with contextlib.suppress(h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            self.conn.reset_stream(sid, _CODES.PROTOCOL_ERROR)

    def _reset(self, sid: int) -> None:
        s = self.streams.pop(sid, None)
        if s is not None:
            if s.task is not None:
                s.task.cancel()  # (one not begun never runs its `finally`: acked here)
            if s.unacked:
                self._ack(s.unacked, sid)  # the connection's window, the stream being gone
                s.unacked = 0
        self._maybe_done()

    def _ack(self, n: int, sid: int) -> None:
        if n and not self.closed:
            with contextlib.suppress(h2.exceptions.StreamClosedError, KeyError):
                self.conn.acknowledge_received_data(n, sid)

    def _stream_over(self, s: Stream) -> None:
        if self.streams.get(s.id) is s:
            del self.streams[s.id]
        self._maybe_done()

    async def _run(self, s: Stream) -> None:
        try:
            await self._forward(s)
        except asyncio.CancelledError:
            pass
        except h2.exceptions.StreamClosedError:
            pass  # the client reset it meanwhile
        except Cut:
            self._reset_client(s, _CODES.INTERNAL_ERROR)
        except Exception:  # a bug must end the stream, never the connection
            log.exception("h2 stream %d", s.id)
            self._reset_client(s, _CODES.INTERNAL_ERROR)
        finally:
            if s.unacked:
                self._ack(s.unacked, s.id)
                s.unacked = 0
            if s.status and self.proxy.access_log is not None:
                self._log(s)
            self._stream_over(s)
            self.flush()

    def _log(self, s: Stream) -> None:
        """The stream's line in the access log (as an HTTP/1.1 exchange's, `HTTP/2.0`)."""
        log = self.proxy.access_log
        if log is None or not log.wants(s.status):
            return
        head = dict(s.headers)
        log.log(
            Entry(
                time.time(),
                self.client_ip.decode("ascii", "replace"),
                head.get(b":method", b"-").decode("ascii", "replace"),
                head.get(b":path", b"-").decode("ascii", "replace"),
                0,
                s.status,
                s.sent,
                self.proxy.loop.time() - s.t0 if s.t0 else 0.0,
                s.upstream,
                s.route,
                "HTTP/2.0",
            )
        )

    def _reset_client(self, s: Stream, code: int) -> None:
        if not self.closed:
            with contextlib.suppress(h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
                self.conn.reset_stream(s.id, code)

    async def _forward(self, s: Stream) -> None:
        p = self.proxy
        loop = p.loop
        t0 = s.t0 = loop.time()
        try:
            head, trailers = h2rules.request_head(s.headers, s.ended)
            req = http1.parse_request_head(head, p.limits.max_head_bytes)
            if req is None:
                raise h2rules.StreamRefused("incomplete request head")
        except (h2rules.StreamRefused, http1.ProtocolError) as e:
            p.tally.reject("bad_request")
            await self._local(s, e.status, str(e), t0)
            return
        route = p.router.match(req)
        cluster = route.cluster if route is not None else None
        chain = route.chain if route is not None else None
        if route is not None:
            s.route = route.name or route.cluster.name
        if chain is not None:
            # The route's middlewares, as for HTTP/1.1 (`ClientConn._middlewares`): its rate
            # limits and body bound hold for every protocol. Response edits and compression
            # are HTTP/1.1's only.
            if chain.limiters:
                wait = chain.admit(client_key(self.client_ip), t0)
                if wait:
                    p.tally.reject("rate_limit")
                    extra = [(b"retry-after", str(retry_after(wait)).encode())]
                    await self._local(s, 429, "rate limit exceeded", t0, extra)
                    return
            s.max_body = chain.max_body
            length = req.content_length
            if s.max_body is not None and (
                (length is not None and length > s.max_body) or s.got > s.max_body
            ):
                p.tally.reject("body_too_large")
                await self._local(s, 413, f"the request body is larger than {s.max_body} bytes", t0)
                return
        ex: Exchange[Any] = Exchange()
        key = p.router.key(cluster, head, self.client_ip) if cluster is not None else None
        up = ex.begin_attempt(cluster, req, key, t0)
        if s.ended:
            ex.body_done()
        out = b""
        if cluster is not None:
            fields = http1.request_forwarded_fields(
                req,
                self.client_ip,
                p.next_request_id(),
                self.trusted,
                b"https" if self.tls else b"http",
            )
            out = http1.edit_request_head(head, req, fields)
            if chain is not None:
                out = chain.request_head(out)
        try:
            while True:
                if up is None:
                    p.tally.reject(ex.failure[2])
                    await self._local(s, ex.failure[0], ex.failure[1], t0)
                    return
                s.upstream = up.addr
                try:
                    if cluster is not None and cluster.upstream_h2:
                        headers = h2rules.upstream_h2_headers(
                            out, trailers, b"https" if self.tls else b"http"
                        )
                        status = await self._via_h2(s, ex, up, headers)
                    else:
                        status = await self._via_h1(s, ex, up, out, req)
                except Cut:
                    # The response began and broke: the upstream's failure.
                    ex.end_attempt(None, loop.time())
                    raise
                except Failed as f:
                    now = loop.time()
                    verdict = f.verdict
                    if verdict is None:
                        verdict = ex.failed(f.status, f.reached, stale=f.stale)
                    if verdict == RESEND:
                        ex.end_attempt(NO_VERDICT, now)
                        p.tally.retried("stale_connection")
                    else:
                        ex.end_attempt(f.status, now)
                        if verdict != RETRY:
                            p.tally.reject(f.kind)
                            await self._local(s, f.code, f"{f.why} ({ex.last_tried()})", t0)
                            return
                        p.tally.retried(f.kind)
                    up = ex.begin_attempt()
                    continue
                ex.end_attempt(status, loop.time(), True)
                p.tally.observe(status, loop.time() - t0)
                s.status = status
                return
        finally:
            if ex.upstream is not None:
                ex.end_attempt(NO_VERDICT, loop.time())

    async def _local(
        self,
        s: Stream,
        status: int,
        message: str,
        t0: float,
        extra: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        """The proxy's own answer to the stream."""
        body = (message + "\n").encode()
        headers = [
            (b":status", str(status).encode()),
            (b"content-type", b"text/plain; charset=utf-8"),
            (b"content-length", str(len(body)).encode()),
            *(extra or []),
        ]
        self.proxy.tally.observe(status, self.proxy.loop.time() - t0)
        s.status = status
        await self.send_headers(s, headers, end=False)
        await self.send_data(s, body, end=True)

    # --- writing to the client ----------------------------------------------------------------

    async def send_headers(self, s: Stream, headers: list[tuple[bytes, bytes]], end: bool) -> None:
        if self.closed:
            raise asyncio.CancelledError
        self.conn.send_headers(s.id, headers, end_stream=end)
        self.flush()

    async def send_data(self, s: Stream, data: bytes, end: bool) -> None:
        """`data` within the stream's window and while the transport takes it. A client that
        keeps the window shut (or does not read) for `idle_s` has the stream reset: it would
        hold the upstream's connection as long as it liked."""
        conn = self.conn
        view = memoryview(data)
        while view:
            if self.closed:
                raise asyncio.CancelledError
            if not self.writable.is_set():
                await self._stalled(self.writable)
                continue
            n = min(len(view), conn.local_flow_control_window(s.id), conn.max_outbound_frame_size)
            if n <= 0:
                s.window.clear()
                await self._stalled(s.window)
                continue
            conn.send_data(s.id, bytes(view[:n]))
            s.sent += n
            view = view[n:]
            self.flush()
        if end:
            conn.end_stream(s.id)
            self.flush()

    async def _stalled(self, event: asyncio.Event) -> None:
        try:
            async with asyncio.timeout(self.proxy.timeouts.idle_s):
                await event.wait()
        except TimeoutError:
            self.proxy.tally.reject("client_timeout")
            raise Cut from None

    async def body_pieces(self, s: Stream) -> AsyncIterator[bytes]:
        """The request body as it arrives; each piece's window is reopened by `acked`."""
        while True:
            while s.body:
                yield s.body.popleft()
            if s.ended:
                return
            s.more.clear()
            await s.more.wait()

    def acked(self, s: Stream, n: int) -> None:
        """`n` bytes of the body were written upstream: the client may send as many more."""
        n = min(n, s.unacked)
        s.unacked -= n
        self._ack(n, s.id)
        self.flush()

    def flush(self) -> None:
        """What `h2` has to send goes out at the end of the loop's pass: the frames of many
        streams in one write (a write is a system call)."""
        if not self._flush_soon:
            self._flush_soon = True
            self.proxy.loop.call_soon(self.write_out)

    def write_out(self) -> None:
        self._flush_soon = False
        t = self.transport
        data = self.conn.data_to_send()
        if data and t is not None and not t.is_closing():
            t.write(data)
            if t.get_write_buffer_size() > MAX_UNREAD:
                self.proxy.tally.reject("unread")
                t.abort()

    # --- upstreams ----------------------------------------------------------------------------

    async def _via_h1(
        self, s: Stream, ex: Exchange[Any], up: Upstream[Any], head: bytes, req: http1.RequestHead
    ) -> int:
        """One attempt over HTTP/1.1 once this connection has an upstream slot free (within
        `response_header`, else 503): the response's status once it went to the client."""
        slots = self.up_slots
        if slots.locked():
            try:
                async with asyncio.timeout(self.proxy.timeouts.response_header_s):
                    await slots.acquire()
            except TimeoutError:
                raise Failed(
                    NO_VERDICT,
                    False,
                    503,
                    "this connection's other streams hold all its upstream connections",
                    "overload",
                    verdict=FAIL,
                ) from None
        else:
            await slots.acquire()
        try:
            return await self._via_h1_slot(s, ex, up, head, req)
        finally:
            slots.release()

    async def _via_h1_slot(
        self, s: Stream, ex: Exchange[Any], up: Upstream[Any], head: bytes, req: http1.RequestHead
    ) -> int:
        p = self.proxy
        t = p.timeouts
        pair, reused = await self.hub.h1_connection(up, t.connect_s)
        reader, writer = pair
        pump: asyncio.Task[None] | None = None
        keep = False
        try:
            writer.write(head)
            if req.has_body:
                pump = p.loop.create_task(self._pump_h1(s, writer, req.chunked))
            buf = b""
            resp: http1.ResponseHead | None = None
            try:
                async with asyncio.timeout(t.response_header_s):
                    while True:
                        data = await reader.read(READ_SIZE)
                        if not data:
                            raise Failed(
                                None,
                                True,
                                502,
                                "the upstream closed the connection",
                                "reset",
                                stale=reused and not buf,
                            )
                        buf += data
                        resp = http1.parse_response_head(buf, p.limits.max_head_bytes)
                        if resp is None:
                            continue
                        if 100 <= resp.status < 200:
                            buf = buf[resp.head_len :]
                            resp = None
                            if not buf:
                                continue
                            resp = http1.parse_response_head(buf, p.limits.max_head_bytes)
                            if resp is None:
                                continue
                        break
            except TimeoutError:
                raise _no_response(t.response_header_s) from None
            except http1.ProtocolError as e:
                raise Failed(None, True, 502, f"{e} ({up.addr})", "bad_response") from None
            except OSError as e:
                raise Failed(None, True, 502, f"upstream error: {e}", "reset") from None
            status = resp.status
            if status in RETRYABLE_STATUSES and ex.failed(status, reached=True) == RETRY:
                # As HTTP/1.1's: a 502/503/504 tried elsewhere when the budget grants it.
                raise Failed(
                    status, True, status, f"status {status}", f"status_{status}", verdict=RETRY
                )
            ex.response_begins(status, True, False)
            head_len = resp.head_len
            has_body = http1.response_has_body(status, req.method)
            headers = h2rules.response_headers(buf[:head_len])
            rest = buf[head_len:]
            if not has_body or (resp.content_length == 0 and not resp.chunked):
                await self.send_headers(s, headers, end=True)
                keep = resp.keep_alive and not rest
                return status
            await self.send_headers(s, headers, end=False)
            try:
                if resp.chunked:
                    dec = h2rules.ChunkDecoder()
                    data = rest
                    while True:
                        piece = dec.feed(data)
                        if piece:
                            await self.send_data(s, piece, end=False)
                        if dec.done:
                            keep = resp.keep_alive and not dec.rest
                            break
                        data = await reader.read(READ_SIZE)
                        if not data:
                            raise Cut
                elif resp.content_length is not None:
                    left = resp.content_length
                    data = rest
                    while True:
                        piece = data[:left]
                        left -= len(piece)
                        if piece:
                            await self.send_data(s, piece, end=False)
                        if left == 0:
                            keep = resp.keep_alive and len(data) == len(piece)
                            break
                        data = await reader.read(min(READ_SIZE, left))
                        if not data:
                            raise Cut
                else:
                    data = rest
                    while data:
                        await self.send_data(s, data, end=False)
                        data = await reader.read(READ_SIZE)
            except (http1.ProtocolError, OSError):
                raise Cut from None
            await self.send_data(s, b"", end=True)
            keep = keep and (pump is None or pump.done())
            return status
        finally:
            if pump is not None and not pump.done():
                pump.cancel()
            if keep:
                self.hub.h1_release(up, pair)
            else:
                self.hub.close_h1(up, pair)

    async def _pump_h1(self, s: Stream, writer: asyncio.StreamWriter, chunked: bool) -> None:
        # (Its failures are the response's to see: the upstream closed, or answered early.)
        with contextlib.suppress(OSError):
            async for piece in self.body_pieces(s):
                writer.write(h2rules.chunked(piece) if chunked else piece)
                await writer.drain()
                self.acked(s, len(piece))
            if chunked:
                writer.write(h2rules.LAST_CHUNK)
                await writer.drain()

    async def _via_h2(
        self, s: Stream, ex: Exchange[Any], up: Upstream[Any], headers: list[tuple[bytes, bytes]]
    ) -> int:
        """One attempt over HTTP/2 to the upstream: the response's status once it began."""
        p = self.proxy
        t = p.timeouts
        uc = await self.hub.h2_connection(up, t.connect_s)
        body = not s.ended or bool(s.body)
        try:
            us = uc.open(headers, end=not body)
        except (h2.exceptions.ProtocolError, h2.exceptions.FrameTooLargeError) as e:
            raise Failed(None, False, 502, f"upstream HTTP/2: {e}", "reset") from None
        pump = p.loop.create_task(self._pump_h2(s, uc, us)) if body else None
        done = False
        try:
            try:
                async with asyncio.timeout(t.response_header_s):
                    ev = await us.events.get()
            except TimeoutError:
                raise _no_response(t.response_header_s) from None
            if not isinstance(ev, h2.events.ResponseReceived):
                refused = (
                    isinstance(ev, h2.events.StreamReset) and ev.error_code == _CODES.REFUSED_STREAM
                )
                raise Failed(None, not refused, 502, "the upstream reset the stream", "reset")
            rh = ev.headers
            status = int(dict(rh).get(b":status", b"502"))
            if status in RETRYABLE_STATUSES and ex.failed(status, reached=True) == RETRY:
                raise Failed(
                    status, True, status, f"status {status}", f"status_{status}", verdict=RETRY
                )
            ex.response_begins(status, True, False)
            ended = ev.stream_ended is not None
            await self.send_headers(s, rh, end=ended)
            while not ended:
                ev = await us.events.get()
                if isinstance(ev, h2.events.DataReceived):
                    if ev.data:
                        await self.send_data(s, ev.data, end=False)
                    uc.ack(us, ev.flow_controlled_length)
                    ended = ev.stream_ended is not None
                    if ended:
                        await self.send_data(s, b"", end=True)
                elif isinstance(ev, h2.events.TrailersReceived):
                    await self.send_headers(s, ev.headers, True)
                    ended = True
                elif isinstance(ev, h2.events.StreamEnded):
                    await self.send_data(s, b"", end=True)
                    ended = True
                else:
                    raise Cut
            done = True
            return status
        finally:
            if pump is not None and not pump.done():
                pump.cancel()
            if not done:
                uc.cancel(us)
            uc.forget(us)

    async def _pump_h2(self, s: Stream, uc: H2Upstream, us: UpStream) -> None:
        # (Its failures are the response's to see: the stream or the connection ended.)
        with contextlib.suppress(Cut, h2.exceptions.ProtocolError):
            async for piece in self.body_pieces(s):
                await uc.send(us, piece)
                self.acked(s, len(piece))
            uc.end(us)

    # --- the connection's end -----------------------------------------------------------------

    def _check_idle(self) -> None:
        self._timer = None
        if self.closed:
            return
        now = self.proxy.loop.time()
        if not self.streams and now - self.last_active > self.proxy.timeouts.idle_s:
            self.conn.close_connection(_CODES.NO_ERROR, b"idle")
            self.flush()
            self.close()
            return
        self._timer = self.proxy.loop.call_later(IDLE_CHECK_S, self._check_idle)

    def _maybe_done(self) -> None:
        if self.draining and not self.streams:
            self.close()

    def drain(self) -> None:
        """GOAWAY: the streams begun finish, no new one starts; closed once none is left."""
        if self.draining or self.closed:
            return
        self.draining = True
        # The frame by hand: `h2` closes its connection once it sent a GOAWAY, and the
        # streams begun must still be answered on it.
        goaway = hyperframe.frame.GoAwayFrame(0)
        goaway.last_stream_id = self.conn.highest_inbound_stream_id
        goaway.error_code = _CODES.NO_ERROR
        self.write_out()
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(goaway.serialize())
        self._maybe_done()

    def busy(self) -> bool:
        return bool(self.streams)

    def close(self) -> None:
        """Ends the connection once what was written is sent. A lingering close, as
        HTTP/1.1's (`server.ClientConn.close`): a socket closed with the client's bytes unread
        is reset, and the reset drops what the client had not read yet, the GOAWAY saying why
        among it. So: FIN, then the client's bytes are read and dropped for `LINGER_S`."""
        self.write_out()
        t = self.transport
        if t is None or t.is_closing():
            return
        if not self.lingering and t.can_write_eof():
            self.lingering = True
            self._cancel_all()
            t.write_eof()
            self.proxy.loop.call_later(LINGER_S, self._linger_over)
        else:
            t.close()

    def _linger_over(self) -> None:
        t = self.transport
        if t is not None and not t.is_closing():
            t.close()

    def abort(self) -> None:
        t = self.transport
        if t is not None:
            t.abort()


# --- upstream side ----------------------------------------------------------------------------


class UpStream:
    """A stream opened on an HTTP/2 upstream: its events, and its send window's wake-up."""

    __slots__ = ("events", "id", "window")

    def __init__(self, stream_id: int) -> None:
        self.id = stream_id
        self.events: asyncio.Queue[h2.events.Event] = asyncio.Queue()
        self.window = asyncio.Event()


class H2Upstream(asyncio.Protocol):
    """One HTTP/2 (prior knowledge) connection to an upstream, shared by the streams sent
    there while it has room for them (the upstream's SETTINGS_MAX_CONCURRENT_STREAMS)."""

    def __init__(self, upstream: Upstream[Any], loop: asyncio.AbstractEventLoop) -> None:
        self.upstream = upstream
        self.loop = loop
        self.idle_since = loop.time()
        cfg = h2.config.H2Configuration(
            client_side=True,
            header_encoding=None,
            validate_outbound_headers=False,
            normalize_outbound_headers=False,
        )
        self.conn = h2.connection.H2Connection(cfg)
        self.transport: asyncio.Transport | None = None
        self.streams: dict[int, UpStream] = {}
        self.writable = asyncio.Event()
        self.writable.set()
        self.dead = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.upstream.connections += 1
        self.conn.initiate_connection()
        self.flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self._end()
        if self.transport is not None:
            self.upstream.connections -= 1
        self.transport = None

    def pause_writing(self) -> None:
        self.writable.clear()

    def resume_writing(self) -> None:
        self.writable.set()

    def _end(self) -> None:
        self.dead = True
        self.writable.set()
        for us in self.streams.values():
            us.events.put_nowait(h2.events.ConnectionTerminated())
            us.window.set()

    def room(self) -> bool:
        c = self.conn
        return not self.dead and c.open_outbound_streams < min(
            c.remote_settings.max_concurrent_streams, MAX_STREAMS
        )

    def data_received(self, data: bytes) -> None:
        try:
            events = self.conn.receive_data(data)
        except h2.exceptions.ProtocolError:
            self.flush()
            self._end()
            self.close()
            return
        for ev in events:
            sid = getattr(ev, "stream_id", None)
            if isinstance(ev, h2.events.WindowUpdated | h2.events.RemoteSettingsChanged):
                for us in self.streams.values():
                    us.window.set()
            elif isinstance(ev, h2.events.ConnectionTerminated):
                self._end()
            elif sid is not None and sid in self.streams:
                self.streams[sid].events.put_nowait(ev)
            elif isinstance(ev, h2.events.DataReceived):
                with contextlib.suppress(h2.exceptions.StreamClosedError, KeyError):
                    self.conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
        self.flush()

    def open(self, headers: list[tuple[bytes, bytes]], end: bool) -> UpStream:
        sid = self.conn.get_next_available_stream_id()
        us = UpStream(sid)
        self.streams[sid] = us
        self.conn.send_headers(sid, headers, end_stream=end)
        self.flush()
        return us

    async def send(self, us: UpStream, data: bytes) -> None:
        conn = self.conn
        view = memoryview(data)
        while view:
            if self.dead:
                raise Cut
            if not self.writable.is_set():
                await self.writable.wait()
                continue
            n = min(len(view), conn.local_flow_control_window(us.id), conn.max_outbound_frame_size)
            if n <= 0:
                us.window.clear()
                await us.window.wait()
                continue
            conn.send_data(us.id, bytes(view[:n]))
            view = view[n:]
            self.flush()

    def end(self, us: UpStream) -> None:
        with contextlib.suppress(h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            self.conn.end_stream(us.id)
        self.flush()

    def ack(self, us: UpStream, n: int) -> None:
        if n:
            with contextlib.suppress(h2.exceptions.StreamClosedError, KeyError):
                self.conn.acknowledge_received_data(n, us.id)
            self.flush()

    def cancel(self, us: UpStream) -> None:
        if not self.dead:
            with contextlib.suppress(h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
                self.conn.reset_stream(us.id, _CODES.CANCEL)
            self.flush()

    def forget(self, us: UpStream) -> None:
        self.streams.pop(us.id, None)
        if not self.streams:
            self.idle_since = self.loop.time()

    def flush(self) -> None:
        t = self.transport
        data = self.conn.data_to_send()
        if data and t is not None and not t.is_closing():
            t.write(data)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


Pair = tuple[asyncio.StreamReader, asyncio.StreamWriter]


class Hub:
    """A worker's upstream connections for HTTP/2 streams: pooled HTTP/1.1 ones and shared
    HTTP/2 ones, per upstream address. They count in their upstream's `connections` (its
    `max_connections_per_upstream` holds for them too), and idle ones are closed after
    `pool_idle_s`, as the HTTP/1.1 pool's."""

    def __init__(self, proxy: Proxy) -> None:
        self.proxy = proxy
        self.h1: dict[str, list[tuple[float, Pair, Upstream[Any]]]] = {}
        self.h2: dict[str, list[H2Upstream]] = {}
        # The HTTP/1.1 connections counted in their upstream's `connections` (by id of the
        # writer): one the upstream closed is counted out once, when the proxy closes it.
        self.counted: set[int] = set()
        self._timer = proxy.loop.call_later(IDLE_CHECK_S, self._sweep)

    def _sweep(self) -> None:
        now = self.proxy.loop.time()
        oldest = now - self.proxy.timeouts.pool_idle_s
        for idle in self.h1.values():
            if idle:
                kept = []
                for since, pair, up in idle:
                    if since < oldest or pair[0].at_eof() or pair[1].is_closing():
                        self.close_h1(up, pair)
                    else:
                        kept.append((since, pair, up))
                idle[:] = kept
        for conns in self.h2.values():
            for c in conns:
                if not c.streams and c.idle_since < oldest:
                    c.close()
            conns[:] = [c for c in conns if not c.dead and c.transport is not None]
        self._timer = self.proxy.loop.call_later(IDLE_CHECK_S, self._sweep)

    def close_h1(self, up: Upstream[Any], pair: Pair) -> None:
        pair[1].close()
        if id(pair[1]) in self.counted:
            self.counted.discard(id(pair[1]))
            up.connections -= 1

    def _room(self, up: Upstream[Any]) -> None:
        if up.connections >= self.proxy.limits.max_connections_per_upstream:
            raise Failed(
                NO_VERDICT,
                False,
                503,
                f"upstream {up.addr} has too many connections",
                "overload",
                verdict=FAIL,
            )

    async def h1_connection(self, up: Upstream[Any], connect_s: float) -> tuple[Pair, bool]:
        """A pooled connection (and True) or a new one; `Failed` when none could be opened."""
        idle = self.h1.get(up.addr)
        oldest = self.proxy.loop.time() - self.proxy.timeouts.pool_idle_s
        while idle:
            since, pair, _ = idle.pop()
            if since >= oldest and not pair[0].at_eof() and not pair[1].is_closing():
                return pair, True
            self.close_h1(up, pair)
        self._room(up)
        up.connections += 1
        opened = False
        try:
            async with asyncio.timeout(connect_s):
                pair = await asyncio.open_connection(up.host, up.port, limit=READ_SIZE)
            opened = True
            self.counted.add(id(pair[1]))
        except TimeoutError:
            raise Failed(None, False, 502, "connect timed out", "connect") from None
        except OSError as e:
            raise Failed(
                None, False, 502, f"connect failed: {e.strerror or e}", "connect"
            ) from None
        finally:
            if not opened:
                up.connections -= 1  # (cancelled too: the client reset the stream)
        return pair, False

    def h1_release(self, up: Upstream[Any], pair: Pair) -> None:
        idle = self.h1.setdefault(up.addr, [])
        if up.removed or len(idle) >= POOL_MAX:
            self.close_h1(up, pair)
            return
        idle.append((self.proxy.loop.time(), pair, up))

    async def h2_connection(self, up: Upstream[Any], connect_s: float) -> H2Upstream:
        conns = self.h2.setdefault(up.addr, [])
        conns[:] = [c for c in conns if not c.dead]
        for c in conns:
            if c.room():
                return c
        self._room(up)
        loop = self.proxy.loop
        try:
            async with asyncio.timeout(connect_s):
                _, uc = await loop.create_connection(lambda: H2Upstream(up, loop), up.host, up.port)
        except TimeoutError:
            raise Failed(None, False, 502, "connect timed out", "connect") from None
        except OSError as e:
            raise Failed(
                None, False, 502, f"connect failed: {e.strerror or e}", "connect"
            ) from None
        conns.append(uc)
        return uc


_hubs: weakref.WeakKeyDictionary[Proxy, Hub] = weakref.WeakKeyDictionary()


def hub_of(proxy: Proxy) -> Hub:
    hub = _hubs.get(proxy)
    if hub is None:
        hub = _hubs[proxy] = Hub(proxy)
    return hub


# --- hand-overs -------------------------------------------------------------------------------


def take_over(client: ClientConn, data: bytes) -> None:
    """`server.Proxy.h2_prior`: the HTTP/1.1 connection `client` opened with HTTP/2's preface
    (`data`, what was read): it is HTTP/2's from now on."""
    t = client.transport
    client.transport = None
    if t is None:
        return
    # (On a TLS listener too: a client whose ALPN chose no h2 may still send the preface.)
    h = H2Client(client.proxy, tls=client.scheme == b"https")
    t.set_protocol(h)
    h.connection_made(t)
    h.data_received(data)


def take_alpn(proxy: Proxy, transport: asyncio.Transport) -> None:
    """`server.Proxy.alpn["h2"]`: a TLS connection whose ALPN chose h2 is HTTP/2's."""
    h = H2Client(proxy, tls=True)
    transport.set_protocol(h)
    h.connection_made(transport)


def enable(proxy: Proxy) -> None:
    """HTTP/2 with prior knowledge on `proxy`'s plain listeners, and by ALPN on its TLS ones
    (registered before the TLS contexts are made: ALPN offers only what has a handler)."""
    proxy.h2_prior = take_over
    proxy.alpn["h2"] = take_alpn


async def probe(host: str, port: int, path: str, timeout_s: float) -> bool:
    """The active check of an HTTP/2 upstream (`discovery.check_health`'s `probe_with`):
    passes when it answers a GET of `path` with a status below 500 within `timeout_s` (a gRPC
    server answers any path, unknown methods with grpc-status in a 200)."""
    writer = None
    try:
        async with asyncio.timeout(timeout_s):
            reader, writer = await asyncio.open_connection(host, port)
            cfg = h2.config.H2Configuration(client_side=True, header_encoding=None)
            conn = h2.connection.H2Connection(cfg)
            conn.initiate_connection()
            authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
            sid = conn.get_next_available_stream_id()
            conn.send_headers(
                sid,
                [
                    (b":method", b"GET"),
                    (b":scheme", b"http"),
                    (b":authority", authority.encode()),
                    (b":path", path.encode()),
                    (b"user-agent", b"dockmesh-proxy-check"),
                ],
                end_stream=True,
            )
            writer.write(conn.data_to_send())
            while data := await reader.read(READ_SIZE):
                for ev in conn.receive_data(data):
                    if isinstance(ev, h2.events.ResponseReceived) and ev.stream_id == sid:
                        status = dict(ev.headers).get(b":status", b"599")
                        return int(status) < 500
                    if isinstance(ev, h2.events.StreamReset | h2.events.ConnectionTerminated):
                        return False
                writer.write(conn.data_to_send())
            return False
    except (OSError, TimeoutError, ValueError, h2.exceptions.ProtocolError):
        return False
    finally:
        if writer is not None:
            writer.close()
