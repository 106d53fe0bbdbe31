"""A client is held to its limits: a request body is read before an upstream is asked for (a
slow upload holds no upstream connection) and must keep a minimum rate, connections per
client address are capped, a client that takes nothing of its response is let go, and what
is held for clients stays within a budget (idle keep-alives closed first)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any, cast

import pytest

from dockmesh.proxy.exchange import BODY, CLOSED, HEAD
from dockmesh.proxy.guard import CONN_COST
from dockmesh.proxy.server import SLICE, ClientConn
from dockmesh.proxy.settings import Limits
from dockmesh.testing.transport import FakeTransport
from tests.unit.proxy import rig
from tests.unit.proxy.rig import REQUEST, RESPONSE, setup, transport
from tests.unit.proxy.rig import out as written


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    lp = asyncio.new_event_loop()
    yield lp
    lp.close()


def post(n: int, *fields: bytes) -> bytes:
    extra = b"".join(f + b"\r\n" for f in fields)
    return b"POST /up HTTP/1.1\r\nHost: h.test\r\nContent-Length: %d\r\n%s\r\n" % (n, extra)


def upstream_writes(c: Any) -> list[bytes]:
    return [
        w for u in c.upstreams.values() for conn in u.idle for w in transport(conn.transport).out
    ]


def test_a_body_is_read_whole_before_any_upstream_is_asked(
    loop: asyncio.AbstractEventLoop,
) -> None:
    _, c, client = setup(loop)
    client.data_received(post(10))
    for ch in b"hello":
        client.data_received(bytes([ch]))
    # Half a body in: no upstream was asked, none counts a request in flight.
    assert client.state == BODY and client.up is None
    assert all(u.in_flight == 0 and len(u.idle) == 1 for u in c.upstreams.values())
    client.data_received(b"world")
    conn = client.up
    assert conn is not None and conn.upstream.in_flight == 1
    sent = written(conn.transport)
    assert sent.startswith(b"POST /up HTTP/1.1\r\n") and sent.endswith(b"\r\n\r\nhelloworld")
    conn.data_received(RESPONSE)
    assert written(client.transport).startswith(b"HTTP/1.1 200 OK") and client.state == HEAD


def test_a_body_past_the_buffer_streams_once_the_buffer_is_full(
    loop: asyncio.AbstractEventLoop,
) -> None:
    _, _, client = setup(loop, limits=Limits(request_buffer_bytes=100))
    client.data_received(post(250) + b"a" * 60)
    assert client.up is None
    client.data_received(b"b" * 60)  # 120 buffered: over 100, an upstream is asked
    conn = client.up
    assert conn is not None
    assert written(conn.transport).endswith(b"a" * 60 + b"b" * 60)
    client.data_received(b"c" * 130)  # the rest goes as it comes
    assert written(conn.transport).endswith(b"c" * 130) and client.state != BODY


def test_a_waiting_client_is_told_to_continue_by_the_proxy(
    loop: asyncio.AbstractEventLoop,
) -> None:
    _, _, client = setup(loop)
    client.data_received(post(5, b"Expect: 100-continue"))
    assert written(client.transport) == b"HTTP/1.1 100 Continue\r\n\r\n" and client.up is None
    client.data_received(b"12345")
    assert client.up is not None


def test_a_body_that_does_not_keep_its_minimum_rate_is_408(
    loop: asyncio.AbstractEventLoop,
) -> None:
    proxy, c, client = setup(loop, limits=Limits(request_buffer_bytes=1000))
    t = proxy.timeouts
    client.data_received(post(5000))
    start = proxy.now
    for i in range(1, int(t.client_body_s) + 1):
        client.data_received(b"x")  # a byte a second: never idle, but far too slow
        client.last_active = start + i
        client.check_timeouts(start + i, t)
    assert client.state == BODY
    client.check_timeouts(start + t.client_body_s + 1, t)
    assert client.state == CLOSED
    assert written(client.transport).startswith(b"HTTP/1.1 408 ")
    assert proxy.tally.rejected["client_body_timeout"] == 1
    assert all(u.in_flight == 0 for u in c.upstreams.values())
    # A body that keeps up (a buffer's worth per window) is not cut.
    proxy, _, client = setup(loop, limits=Limits(request_buffer_bytes=1000))
    client.data_received(post(100_000))
    now = proxy.now
    for _ in range(10):
        now += t.client_body_s - 1
        client.data_received(b"y" * 1000)
        client.last_active = now
        client.check_timeouts(now, t)
    assert client.state == BODY


def test_a_body_the_upstream_does_not_take_is_not_the_clients_slowness(
    loop: asyncio.AbstractEventLoop,
) -> None:
    proxy, _, client = setup(loop, limits=Limits(request_buffer_bytes=10))
    t = proxy.timeouts
    client.data_received(post(5000) + b"z" * 20)
    conn = client.up
    assert conn is not None
    conn.pause_writing()  # the upstream is full: the client is not read
    assert transport(client.transport).reading is False
    client.last_active = proxy.now + t.client_body_s * 2
    client.check_timeouts(proxy.now + t.client_body_s * 2, t)
    assert client.state == BODY


def served(client: ClientConn) -> None:
    """One exchange on `client`: an idle keep-alive then."""
    client.data_received(REQUEST)
    conn = client.up
    assert conn is not None
    conn.data_received(RESPONSE)
    client.proxy.flush()
    assert client.state == HEAD and client.idle()


def peer(proxy: Any, ip: str) -> ClientConn:
    conn = ClientConn(proxy)
    conn.connection_made(cast(Any, FakeTransport(proxy.flush, peer=(ip, 1234))))
    return conn


def test_connections_per_client_address_are_capped_ipv6_by_its_64(
    loop: asyncio.AbstractEventLoop,
) -> None:
    proxy, _, first = setup(loop, limits=Limits(max_connections_per_client=2))  # 10.0.0.9
    second = rig.client(proxy)
    third = rig.client(proxy)
    assert second.state == HEAD and third.state == CLOSED
    assert written(third.transport).startswith(b"HTTP/1.1 503 ")
    assert proxy.tally.rejected["client_connections"] == 1
    assert peer(proxy, "10.0.0.10").state == HEAD  # another address
    assert peer(proxy, "2001:db8::1").state == HEAD
    assert peer(proxy, "2001:db8::2").state == HEAD
    assert peer(proxy, "2001:db8::3").state == CLOSED  # the same /64
    assert peer(proxy, "2001:db8:0:1::1").state == HEAD
    # A connection that goes makes room.
    first.connection_lost(None)
    assert rig.client(proxy).state == HEAD


def test_at_the_connection_limit_an_idle_keep_alive_makes_room(
    loop: asyncio.AbstractEventLoop,
) -> None:
    proxy, _, idle = setup(loop, limits=Limits(max_client_connections=2))
    served(idle)
    busy = rig.client(proxy)
    busy.data_received(REQUEST)
    newcomer = rig.client(proxy)
    assert newcomer.state == HEAD and transport(idle.transport).closed
    assert not transport(busy.transport).closed
    assert proxy.tally.closed["connections_idle"] == 1
    # Nothing idle left: refused.
    idle.connection_lost(None)
    newcomer.data_received(REQUEST)
    refused = rig.client(proxy)
    assert refused.state == CLOSED and written(refused.transport).startswith(b"HTTP/1.1 503 ")


def test_a_client_that_takes_nothing_of_its_response_is_let_go(
    loop: asyncio.AbstractEventLoop,
) -> None:
    proxy, _, client = setup(loop)
    t = proxy.timeouts
    client.data_received(REQUEST)
    conn = client.up
    assert conn is not None
    conn.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"x" * 1000)
    client.pause_writing()
    assert transport(conn.transport).reading is False  # the upstream is not read either
    client.check_timeouts(proxy.now + t.client_send_s / 2, t)
    assert client.state != CLOSED
    client.check_timeouts(proxy.now + t.client_send_s + 1, t)
    assert transport(client.transport).aborted
    assert proxy.tally.closed["client_send_timeout"] == 1
    # One that reads again is not.
    proxy, _, other = setup(loop)
    other.data_received(REQUEST)
    other.pause_writing()
    other.resume_writing()
    other.check_timeouts(proxy.now + t.client_send_s + 1, t)
    assert not transport(other.transport).aborted


def test_near_the_budget_idle_keep_alives_go_first_then_the_biggest_holders(
    loop: asyncio.AbstractEventLoop,
) -> None:
    # A client with bytes waiting costs them, its connection, and a piece sent in part.
    budget = 11 * CONN_COST + 2 * SLICE
    proxy, _, idle = setup(loop, n=5, limits=Limits(max_buffered_bytes=budget))
    served(idle)
    fresh = rig.client(proxy)  # connected, its first request not in yet: not idle
    busy = [rig.client(proxy) for _ in range(4)]
    for b in busy:
        b.data_received(REQUEST)
    proxy._enforce_budget()
    assert proxy.tally.buffered_bytes == 6 * CONN_COST and not proxy.tally.closed
    # Two clients stop reading: what waits for them grows.
    transport(busy[0].transport).buffered = 2 * CONN_COST
    transport(busy[1].transport).buffered = 3 * CONN_COST
    proxy._enforce_budget()  # at the budget: near it, the idle one goes; not past it then
    assert transport(idle.transport).closed and proxy.tally.closed == {"memory_idle": 1}
    assert not any(transport(b.transport).closed for b in (fresh, *busy))
    transport(busy[1].transport).buffered = 6 * CONN_COST
    proxy._enforce_budget()  # past the budget (idle gone): the biggest holder goes
    assert transport(busy[1].transport).aborted and proxy.tally.closed["memory"] == 1
    assert not any(transport(b.transport).closed for b in (busy[0], *busy[2:]))


def test_a_client_that_stops_reading_past_the_budget_has_it_checked_at_once(
    loop: asyncio.AbstractEventLoop,
) -> None:
    proxy, _, client = setup(loop, n=3, limits=Limits(max_buffered_bytes=200_000))
    client.data_received(REQUEST)
    transport(client.transport).buffered = 70_000
    client.pause_writing()
    assert not proxy.tally.closed  # within the budget: the sweep will see it
    other = rig.client(proxy)
    other.data_received(REQUEST)
    transport(other.transport).buffered = 40_000
    other.pause_writing()
    # Past it: now, not at the next sweep; the biggest holder goes, its upstream with it.
    assert transport(client.transport).aborted and client.up is None
    assert not transport(other.transport).closed
    assert proxy.tally.closed == {"memory": 1} and proxy.tally.buffered_bytes < 200_000
    # The one being written to, when it is the biggest, goes at the end of the pass.
    third = rig.client(proxy)
    third.data_received(REQUEST)
    transport(third.transport).buffered = 90_000
    third.pause_writing()
    assert third.state == CLOSED and not transport(third.transport).aborted
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert transport(third.transport).aborted and proxy.tally.closed == {"memory": 2}


def test_an_upstreams_big_read_goes_to_the_client_in_pieces(
    loop: asyncio.AbstractEventLoop,
) -> None:
    """What a client does not take is kept in pieces of at most SLICE bytes: uvloop keeps a
    write sent in part whole, the sent part uncounted."""
    _, _, client = setup(loop)
    client.data_received(REQUEST)
    conn = client.up
    assert conn is not None
    body = bytes(range(256)) * 1024  # 256 KiB
    conn.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
    writes = transport(client.transport).out
    assert all(len(w) <= SLICE for w in writes) and len(writes) > 4
    assert b"".join(writes).endswith(body) and client.state == HEAD
