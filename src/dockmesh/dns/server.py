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

Optional keywords (`DnsLimits` documents them; the agent's command line sets them):
`max_udp_payload` (largest UDP response, for clients announcing more with EDNS; 4096),
`limits` (what one client may take), `cache_entries`.

What one client may take (`DnsLimits`, enforced by the pure machines of `dns.limits`): a
source address has at most `tcp_per_source` TCP connections and all sources together
`max_tcp_connections`; a connection that would go over either first makes room by closing
the connection idle the longest (of its source, or of anyone); when all sources together are
full of busy connections, the oldest of the source holding the most goes (if it holds more
than the newcomer's source would), and only then is the new one refused. A connection is
closed after `tcp_idle_timeout_s` without a query (RFC 7766 §6.2.3), and aborted when a
message's bytes take longer than `tcp_slow_timeout_s` from its first byte, or its answers
wait that long for the client to read them. At most
`tcp_pipeline` queries of one connection are answered per turn of the event loop; more wait
(reading paused) so that one client's pipeline does not hold the others. Over UDP a source
has a token bucket of `udp_burst` queries refilled at `udp_rate` a second; queries beyond it
are dropped unanswered (answering would make the server a reflector for spoofed sources).
Loopback sources are exempt from the per-source limits unless `limit_loopback`: every
process of the host shares that address, so a per-source limit there would be one limit for
the whole host, and the clients these limits guard against are containers. Every client
refused or closed by a limit is counted by transport and reason (`DnsStats.refused`).

Why this shape: the per-query work on UDP is the answerer's exact-cache lookup inlined in
`datagram_received` (slice, dict get, concatenation, sendto), after one dict lookup that tells
an exempt source from a rate-limited one — no logging, no per-query objects beyond the
response. Everything else (misses, TCP) goes through `Answerer.answer`. Over TCP, several
queries per connection are answered in order; when the client does not read its answers,
the connection stops reading until the kernel takes them, so a slow client costs its own
buffer, not the others' time.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import logging
import math
import resource
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from dockmesh.catalog.live import LiveCatalog
from dockmesh.catalog.state import Catalog
from dockmesh.dns.answer import Answerer, TopologyProvider
from dockmesh.dns.limits import (
    REASON_PER_SOURCE,
    REASON_TOTAL,
    DnsLimits,
    SourceRate,
    TcpSlots,
)

__all__ = ["DnsLimits", "DnsServer", "DnsStats"]

log = logging.getLogger(__name__)

_BIND_ATTEMPTS = 8  # port 0: a free UDP port may be taken for TCP; pick another this often
# The kernel's queue of connections not yet accepted (capped by net.core.somaxconn). A client
# that reconnects as fast as it is closed fills a short queue while the loop is busy, and the
# kernel then drops everyone's SYN: a legitimate query waited for its 1 s retransmission.
TCP_BACKLOG = 4096
_EXEMPT_CACHE = 4096  # source addresses whose exemption is remembered (cleared when full)

# Why a client was refused or closed (`DnsStats.refused` keys, the metric's `reason`).
REASON_IDLE = "idle"
REASON_SLOW = "slow"
REASON_UDP_RATE = "udp_rate"
REASONS: tuple[tuple[str, str], ...] = (
    ("tcp", REASON_PER_SOURCE),
    ("tcp", REASON_TOTAL),
    ("tcp", REASON_IDLE),
    ("tcp", REASON_SLOW),
    ("udp", REASON_UDP_RATE),
)


class DnsStats:
    """Counters since start: `queries` (responses by rcode name: NOERROR, NXDOMAIN, …),
    `truncated` (responses with TC), `dropped` (packets left unanswered: too short for a header,
    or responses), `errors` (internal failures; answered SERVFAIL), `tcp_connections` (open
    now), `tcp_accepted`, `tcp_refused` (new connections refused: every one in the way was
    busy), `refused` (clients refused or closed by a limit, by (transport, reason); every
    pair of `REASONS` is there)."""

    def __init__(self, answerer: Answerer, udp_rate: SourceRate | None = None) -> None:
        self._answerer = answerer
        self._udp_rate = udp_rate
        self.tcp_connections = 0
        self.tcp_accepted = 0
        self.tcp_refused = 0
        self._tcp: dict[str, int] = {
            reason: 0 for transport, reason in REASONS if transport == "tcp"
        }

    def count_tcp(self, reason: str) -> None:
        self._tcp[reason] += 1

    @property
    def refused(self) -> dict[tuple[str, str], int]:
        out = {("tcp", reason): n for reason, n in self._tcp.items()}
        out[("udp", REASON_UDP_RATE)] = self._udp_rate.refused if self._udp_rate else 0
        return out

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


class _Exempt:
    """Whether a source address is exempt from the per-source limits, remembered per address
    string so that the UDP path pays one dict lookup for it."""

    def __init__(self, limit_loopback: bool) -> None:
        self._limit_loopback = limit_loopback
        self.known: dict[object, bool] = {}

    def __call__(self, source: str) -> bool:
        known = self.known.get(source)
        if known is None:
            known = self.known[source] = self._classify(source)
            if len(self.known) > _EXEMPT_CACHE:
                self.known.clear()
        return known

    def _classify(self, source: str) -> bool:
        if self._limit_loopback:
            return False
        try:
            ip = ipaddress.ip_address(source.partition("%")[0])
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            return ip.ipv4_mapped.is_loopback
        return ip.is_loopback


class _Udp(asyncio.DatagramProtocol):
    def __init__(
        self,
        answerer: Answerer,
        errors: _ErrorLog,
        rate: SourceRate | None = None,
        exempt: _Exempt | None = None,
    ) -> None:
        self._exact = answerer.udp_exact.get
        self._counts = answerer.counts
        self._answer = answerer.answer
        self._errors = errors
        self._allow = rate.allow if rate is not None else None
        self._exempt = exempt if exempt is not None else _Exempt(limit_loopback=True)
        self._known = self._exempt.known.get
        self._sendto: Callable[[bytes, Any], None] = lambda data, addr: None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not subclasses of asyncio's: cast, do not check.
        self._sendto = cast(asyncio.DatagramTransport, transport).sendto

    def datagram_received(self, data: bytes, addr: tuple[str | object, int]) -> None:
        try:
            allow = self._allow
            if allow is not None:
                host = addr[0]
                free = self._known(host)
                if free is None:
                    free = self._exempt(str(host))
                if not free and not allow(host):
                    return
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
    """One TCP connection: length-prefixed queries in, answers out in order (RFC 7766).

    Its state for the limits: idle (since `_idle_since`: nothing under way), a message
    arriving (since `_started`, its first byte), answers not draining (since `_blocked`),
    complete queries waiting for their turn (`_backlog`). One timer, armed for the earliest
    deadline that state has, closes it when the deadline passes."""

    def __init__(self, server: DnsServer, listener: _Listener) -> None:
        self._server = server
        self._listener = listener
        self._transport: asyncio.Transport | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._buffer = bytearray()
        self._idle_since: float | None = 0.0
        self._started: float | None = None
        self._blocked: float | None = None
        self._backlog = False
        self._timer: asyncio.TimerHandle | None = None
        self._due = math.inf

    def idle_since(self) -> float | None:
        """When this connection became idle, None while busy (`TcpSlots` makes room with the
        one idle the longest)."""
        return self._idle_since

    def connection_made(self, base: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, base)
        server = self._server
        stats = server.stats
        loop = asyncio.get_running_loop()
        self._idle_since = loop.time()
        peer = transport.get_extra_info("peername")
        source = str(peer[0]) if isinstance(peer, tuple) and peer else ""
        admitted, victim, reason = server.slots.open(self, source)
        if victim is not None and reason is not None:
            victim.end(reason)
        if not admitted:
            stats.tcp_refused += 1
            if reason is not None:
                stats.count_tcp(reason)
            transport.close()
            return
        stats.tcp_connections += 1
        stats.tcp_accepted += 1
        self._transport = transport
        self._loop = loop
        self._listener.connections.add(self)
        self._schedule()

    def data_received(self, data: bytes) -> None:
        if self._transport is None:
            return
        self._buffer += data
        if self._backlog or self._blocked is not None:
            return  # the queries before these are waiting for their turn, or for the client
        self._answer_some()

    def _answer_some(self) -> None:
        transport = self._transport
        loop = self._loop
        if transport is None or loop is None:
            return
        server = self._server
        buf = self._buffer
        answer = server.answerer.answer
        limit = server.limits.max_tcp_query
        turn = server.limits.tcp_pipeline
        waiting = False
        try:
            while len(buf) >= 2:
                size = (buf[0] << 8) | buf[1]
                if size > limit:
                    server.slots.close(self)  # no longer a connection to keep or make room of
                    transport.close()
                    return
                if len(buf) < 2 + size:
                    break
                if turn == 0 or self._blocked is not None:
                    waiting = True
                    break
                packet = bytes(buf[2 : 2 + size])
                del buf[: 2 + size]
                turn -= 1
                self._started = None
                out = answer(packet, True)
                if out is not None:
                    transport.write(len(out).to_bytes(2, "big") + out)
        except Exception:
            server.errors("TCP answer")
            server.slots.close(self)
            transport.close()
            return
        now = loop.time()
        if waiting:
            # More complete queries than one turn answers, or answers the client does not
            # read: stop reading until they are answered (below, or at `resume_writing`).
            if not self._backlog:
                self._backlog = True
                transport.pause_reading()
            if self._blocked is None:
                loop.call_soon(self._next_turn)
        elif self._backlog:
            self._backlog = False
            if self._blocked is None and not transport.is_closing():
                transport.resume_reading()
        if buf and not waiting and self._started is None:
            self._started = now
        # Every call that leaves nothing buffered answered a query: idle from now.
        self._idle_since = None if buf or self._blocked is not None else now
        self._schedule()

    def _next_turn(self) -> None:
        if self._transport is not None and self._blocked is None:
            self._answer_some()

    def pause_writing(self) -> None:
        if self._transport is not None and self._loop is not None:
            self._blocked = self._loop.time()
            self._idle_since = None
            self._transport.pause_reading()
            self._schedule()

    def resume_writing(self) -> None:
        transport = self._transport
        if transport is None or self._loop is None:
            return
        self._blocked = None
        if not self._backlog and not transport.is_closing():
            transport.resume_reading()
        if self._buffer:
            # Queries (or a message's start) that came before reading stopped: their turn.
            self._loop.call_soon(self._next_turn)
        else:
            self._idle_since = self._loop.time()
        self._schedule()

    # --- deadlines ------------------------------------------------------------------------

    def _deadline(self) -> tuple[float, str]:
        limits = self._server.limits
        if self._blocked is not None:
            return self._blocked + limits.tcp_slow_timeout_s, REASON_SLOW
        if self._started is not None:
            return self._started + limits.tcp_slow_timeout_s, REASON_SLOW
        if self._idle_since is not None:
            return self._idle_since + limits.tcp_idle_timeout_s, REASON_IDLE
        return math.inf, REASON_IDLE  # queries waiting for their turn: ours to answer

    def _schedule(self) -> None:
        """Arms the timer when the deadline came nearer; a later deadline is found when the
        armed timer fires (most queries push the idle deadline back: no re-arming for them)."""
        due, _ = self._deadline()
        if due < self._due and self._loop is not None:
            if self._timer is not None:
                self._timer.cancel()
            self._due = due
            self._timer = self._loop.call_at(due, self._check)

    def _check(self) -> None:
        self._timer = None
        self._due = math.inf
        if self._transport is None or self._loop is None:
            return
        due, reason = self._deadline()
        if self._loop.time() >= due:
            self.end(reason)
        else:
            self._schedule()

    def end(self, reason: str) -> None:
        """Closes the connection for a limit, counted under `reason`: gently when it is idle
        (nothing is lost), at once when it is slow (its unsent answers go too)."""
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        self._server.stats.count_tcp(reason)
        self._server.slots.close(self)
        if reason == REASON_SLOW:
            transport.abort()
        else:
            transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._transport is None:
            return
        self._transport = None
        self._server.stats.tcp_connections -= 1
        self._server.slots.close(self)
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
        limits: DnsLimits | None = None,
        cache_entries: int = 10_000,
        clock: Callable[[], float] | None = None,
    ) -> None:
        """`clock` is the UDP rate limiter's (monotonic seconds)."""
        limits = limits if limits is not None else DnsLimits()
        problems = limits.problems()
        if problems:
            raise ValueError("DNS limits: " + "; ".join(problems))
        self.answerer = Answerer(
            live.catalog,
            topology_provider,
            domains,
            ttl,
            max_udp_payload=max_udp_payload,
            cache_entries=cache_entries,
        )
        self.limits = limits
        self._exempt = _Exempt(limits.limit_loopback)
        self.udp_rate = (
            SourceRate(
                limits.udp_rate,
                limits.udp_burst,
                clock if clock is not None else time.monotonic,
                max_sources=limits.udp_sources,
            )
            if limits.udp_rate > 0
            else None
        )
        self.slots: TcpSlots[_Tcp] = TcpSlots(
            limits.tcp_per_source,
            _within_open_files(limits.max_tcp_connections),
            _Tcp.idle_since,
            self._exempt,
        )
        self.stats = DnsStats(self.answerer, self.udp_rate)
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
                    lambda: _Udp(self.answerer, self.errors, self.udp_rate, self._exempt),
                    local_addr=(host, port),
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
                    backlog=TCP_BACKLOG,
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


# Open files kept for everything else (the API's connections, the engines', checks, logs).
_FD_RESERVE = 256


def _within_open_files(total: int) -> int:
    """`total` TCP connections, or fewer when the process may not open that many files: an
    accept that fails for want of a descriptor makes asyncio stop accepting on that listener
    for a second (everyone's connections, not only the flood's), so the cap must bite first."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft - _FD_RESERVE >= total:
        return total
    room = max(16, soft - _FD_RESERVE)
    log.warning(
        "DNS: at most %d TCP connections instead of %d: the open-file limit is %d (ulimit -n)",
        room,
        total,
        soft,
    )
    return room
