"""The DNS server: asyncio UDP and TCP listeners around the pure `Answerer`.

What the agent uses (`dockmesh.agent`), on its event loop (uvloop when installed):

    server = DnsServer(live_catalog, topology_provider, domains=("dockmesh", "consul"), ttl=0)
    await server.start(host, port)            # the first listener: UDP and TCP on one port
    await server.add_listener(host, port)     # more at run time (a bridge network's gateway)
    await server.remove_listener(host, port)  # that network is gone
    await server.close()                      # every listener and TCP connection
    server.stats                              # counters for /metrics (`DnsStats`)

`start` and `add_listener` return the (host, port) bound (port 0 picks a free port, the same
for UDP and TCP) and raise OSError when the address cannot be bound; adding one that is
already served is a no-op. `topology_provider()` returns the current `Topology` (or None);
it is called only when a container name is asked and its prebuilt answer may be stale.
Catalog changes reach the server through `LiveCatalog.subscribe`; `invalidate()` forgets the
prebuilt answers by hand.

Optional keywords: `max_udp_payload` (largest UDP response, for clients announcing more with
EDNS; 4096), `max_tcp_connections` (more are closed at once; 256), `tcp_idle_timeout_s` (a
connection without a complete query for this long is closed; 10 s, RFC 7766 §6.2.3),
`max_tcp_query` (a larger length prefix closes the connection; 16384), `cache_entries`.

Why this shape: the per-query work on UDP is the answerer's exact-cache lookup inlined in
`datagram_received` (slice, dict get, concatenation, sendto) — no logging, no per-query
objects beyond the response. Everything else (misses, TCP) goes through `Answerer.answer`.
Over TCP, several queries per connection are answered in order; when the client does not read
its answers, the connection stops reading until the kernel takes them, so a slow client
costs its own buffer, not the others' time.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from dockmesh.catalog.live import LiveCatalog
from dockmesh.catalog.state import Catalog
from dockmesh.dns.answer import Answerer, TopologyProvider

log = logging.getLogger(__name__)

_BIND_ATTEMPTS = 8  # port 0: a free UDP port may be taken for TCP; pick another this often


class DnsStats:
    """Counters since start: `queries` (responses by rcode name: NOERROR, NXDOMAIN, …),
    `truncated` (responses with TC), `dropped` (packets left unanswered: too short for a header,
    or responses), `errors` (internal failures; answered SERVFAIL), `tcp_connections` (open
    now), `tcp_accepted`, `tcp_refused` (over the connection limit)."""

    def __init__(self, answerer: Answerer) -> None:
        self._answerer = answerer
        self.tcp_connections = 0
        self.tcp_accepted = 0
        self.tcp_refused = 0

    @property
    def queries(self) -> dict[str, int]:
        return self._answerer.queries_by_rcode()

    @property
    def truncated(self) -> int:
        return self._answerer.truncated

    @property
    def dropped(self) -> int:
        return self._answerer.dropped

    @property
    def errors(self) -> int:
        return self._answerer.errors


class _ErrorLog:
    """Logs the first unexpected error with its traceback, then one in a thousand: a packet
    that trips a bug must not turn into a log flood."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, where: str) -> None:
        self.count += 1
        if self.count == 1 or self.count % 1000 == 0:
            log.exception("DNS %s failed (%d so far)", where, self.count)


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, answerer: Answerer, errors: _ErrorLog) -> None:
        self._exact = answerer.udp_exact.get
        self._counts = answerer.counts
        self._answer = answerer.answer
        self._errors = errors
        self._sendto: Callable[[bytes, Any], None] = lambda data, addr: None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not subclasses of asyncio's: cast, do not check.
        self._sendto = cast(asyncio.DatagramTransport, transport).sendto

    def datagram_received(self, data: bytes, addr: tuple[str | object, int]) -> None:
        try:
            hit = self._exact(data[2:])
            if hit is not None:
                tail, slot = hit()
                self._counts[slot] += 1
                self._sendto(data[:2] + tail, addr)
                return
            out = self._answer(data, False)
            if out is not None:
                self._sendto(out, addr)
        except Exception:
            self._errors("UDP answer")

    def error_received(self, exc: Exception) -> None:
        # An ICMP error for an earlier reply (the client went away): nothing to do.
        pass


class _Tcp(asyncio.Protocol):
    def __init__(self, server: DnsServer, listener: _Listener) -> None:
        self._server = server
        self._listener = listener
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._last = 0.0
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, base: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, base)
        stats = self._server.stats
        if stats.tcp_connections >= self._server.max_tcp_connections:
            stats.tcp_refused += 1
            transport.abort()
            return
        stats.tcp_connections += 1
        stats.tcp_accepted += 1
        self._transport = transport
        self._listener.connections.add(self)
        loop = asyncio.get_running_loop()
        self._last = loop.time()
        self._timer = loop.call_later(self._server.tcp_idle_timeout_s, self._check_idle)

    def data_received(self, data: bytes) -> None:
        transport = self._transport
        if transport is None:
            return
        buf = self._buffer
        buf += data
        answer = self._server.answerer.answer
        limit = self._server.max_tcp_query
        answered = False
        try:
            while len(buf) >= 2:
                size = (buf[0] << 8) | buf[1]
                if size > limit:
                    transport.close()
                    return
                if len(buf) < 2 + size:
                    break
                packet = bytes(buf[2 : 2 + size])
                del buf[: 2 + size]
                answered = True
                out = answer(packet, True)
                if out is not None:
                    transport.write(len(out).to_bytes(2, "big") + out)
        except Exception:
            self._server.errors("TCP answer")
            transport.close()
            return
        if answered:
            self._last = asyncio.get_running_loop().time()

    def pause_writing(self) -> None:
        if self._transport is not None:
            self._transport.pause_reading()

    def resume_writing(self) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.resume_reading()

    def _check_idle(self) -> None:
        transport = self._transport
        if transport is None:
            return
        loop = asyncio.get_running_loop()
        left = self._last + self._server.tcp_idle_timeout_s - loop.time()
        if left <= 0:
            transport.close()
            self._timer = None
        else:
            self._timer = loop.call_later(left, self._check_idle)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._transport is None:
            return
        self._transport = None
        self._server.stats.tcp_connections -= 1
        self._listener.connections.discard(self)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()


@dataclass(eq=False)
class _Listener:
    host: str
    port: int
    udp: asyncio.DatagramTransport | None = None
    tcp: asyncio.Server | None = None
    connections: set[_Tcp] = field(default_factory=set)

    async def close(self) -> None:
        if self.udp is not None:
            self.udp.close()
        if self.tcp is not None:
            self.tcp.close()
        for conn in list(self.connections):
            conn.abort()
        if self.tcp is not None:
            with contextlib.suppress(Exception):
                await self.tcp.wait_closed()


class DnsServer:
    """Serves `Answerer`'s answers for a `LiveCatalog` on any number of addresses."""

    def __init__(
        self,
        live: LiveCatalog,
        topology_provider: TopologyProvider,
        domains: Sequence[str] = ("dockmesh", "consul"),
        ttl: int = 0,
        *,
        max_udp_payload: int = 4096,
        max_tcp_connections: int = 256,
        tcp_idle_timeout_s: float = 10.0,
        max_tcp_query: int = 16384,
        cache_entries: int = 10_000,
    ) -> None:
        self.answerer = Answerer(
            live.catalog,
            topology_provider,
            domains,
            ttl,
            max_udp_payload=max_udp_payload,
            cache_entries=cache_entries,
        )
        self.max_tcp_connections = max_tcp_connections
        self.tcp_idle_timeout_s = tcp_idle_timeout_s
        self.max_tcp_query = max_tcp_query
        self.stats = DnsStats(self.answerer)
        self.errors = _ErrorLog()
        self._listeners: dict[tuple[str, int], _Listener] = {}
        self._live = live
        live.subscribe(self._catalog_changed)

    def _catalog_changed(self, catalog: Catalog) -> None:
        self.answerer.catalog_changed(catalog)

    def invalidate(self) -> None:
        self.answerer.invalidate()

    @property
    def listeners(self) -> list[tuple[str, int]]:
        return sorted(self._listeners)

    async def start(self, host: str, port: int) -> tuple[str, int]:
        return await self.add_listener(host, port)

    async def add_listener(self, host: str, port: int) -> tuple[str, int]:
        if port and (host, port) in self._listeners:
            return host, port
        loop = asyncio.get_running_loop()
        last: OSError | None = None
        for _ in range(_BIND_ATTEMPTS if port == 0 else 1):
            listener = _Listener(host, port)
            try:
                udp, _proto = await loop.create_datagram_endpoint(
                    lambda: _Udp(self.answerer, self.errors), local_addr=(host, port)
                )
            except OSError as e:
                raise _bind_error("UDP", host, port, e) from e
            listener.udp = udp
            listener.port = udp.get_extra_info("sockname")[1]
            try:
                listener.tcp = await loop.create_server(
                    functools.partial(_Tcp, self, listener),
                    host,
                    listener.port,
                    reuse_address=True,
                    backlog=128,
                )
            except OSError as e:
                udp.close()
                last = _bind_error("TCP", host, listener.port, e)
                continue
            self._listeners[(host, listener.port)] = listener
            log.info("DNS listening on %s:%d (UDP and TCP)", host, listener.port)
            return host, listener.port
        assert last is not None
        raise last

    async def remove_listener(self, host: str, port: int) -> None:
        listener = self._listeners.pop((host, port), None)
        if listener is not None:
            await listener.close()
            log.info("DNS no longer listening on %s:%d", host, port)

    async def close(self) -> None:
        self._live.unsubscribe(self._catalog_changed)
        for key in list(self._listeners):
            await self.remove_listener(*key)


def _bind_error(proto: str, host: str, port: int, e: OSError) -> OSError:
    """One wording and the errno whichever loop failed: uvloop raises its own OSError (errno
    None) from the system's."""
    cause = e.__cause__ if e.errno is None and isinstance(e.__cause__, OSError) else e
    reason = cause.strerror or str(cause)
    return OSError(cause.errno, f"DNS cannot listen on {host}:{port} ({proto}): {reason}")
