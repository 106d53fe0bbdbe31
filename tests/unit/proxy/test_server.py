"""The data plane against recording transports: both lanes reach the same outcomes (the
breaker's refusals, a pool with nothing idle, retries), deferred writes stay in order, and a
client is held to its bounds."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any, cast

import pytest

from dockmesh.proxy.exchange import CLOSED, HEAD, TUNNEL, WAIT
from dockmesh.proxy.server import DRAIN_IDLE_GRACE_S, ClientConn
from dockmesh.proxy.settings import Limits, ProxySettings, Route
from dockmesh.resilience.breaker import BreakerState
from dockmesh.testing.transport import FakeTransport
from tests.unit.proxy import rig
from tests.unit.proxy.rig import REQUEST, RESPONSE, setup, transport
from tests.unit.proxy.rig import out as written


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    lp = asyncio.new_event_loop()
    yield lp
    lp.close()


def test_common_request_goes_out_edited_and_the_connection_back_to_the_pool(
    loop: asyncio.AbstractEventLoop,
) -> None:
    proxy, cluster, client = setup(loop)
    for _ in range(4):
        client.data_received(REQUEST)
        assert client.state == WAIT
        conn = client.up
        assert conn is not None and conn.upstream.in_flight == 1
        sent = transport(conn.transport).out.pop()
        assert sent.startswith(b"GET /a HTTP/1.1\r\nHost: h.test\r\nAccept: */*\r\n")
        assert b"X-Forwarded-For: 10.0.0.9\r\n" in sent and b"X-Forwarded-Host: h.test\r\n" in sent
        assert b"X-Request-Id: " in sent and sent.endswith(b"\r\n\r\n")
        conn.data_received(RESPONSE)
        assert client.state == HEAD and client.up is None and conn in conn.upstream.idle
        assert conn.upstream.in_flight == 0
    assert written(client.transport).count(b"HTTP/1.1 200 OK\r\n") == 4
    assert b"Connection: keep-alive" not in written(client.transport)
    assert proxy.tally.responses == {200: 4}
    assert sorted(u.requests for u in cluster.upstreams.values()) == [2, 2]


def test_a_refusing_breaker_sends_the_request_to_another_upstream(
    loop: asyncio.AbstractEventLoop,
) -> None:
    _, cluster, client = setup(loop)
    first, second = cluster.upstreams.values()
    # Half-open with its probe taken: `admit` refuses.
    first.breaker._to(BreakerState.HALF_OPEN)
    assert first.breaker.admit() is not None
    client.data_received(REQUEST)
    assert client.up is not None and client.up.upstream is second
    assert client.tried == (first,) and client.last is second and client.attempts == 1
    assert first.breaker.probes == 1 and first.in_flight == 0


def test_nothing_idle_opens_a_connection_and_nothing_eligible_is_503(
    loop: asyncio.AbstractEventLoop,
) -> None:
    _, cluster, client = setup(loop)
    for up in cluster.upstreams.values():
        for conn in up.idle:
            transport(conn.transport).closed = True
    client.data_received(REQUEST)
    assert client.up is not None and client.up.transport is None  # connecting
    assert client.pending_body is None and client.upstream is client.up.upstream  # no body
    tasks = asyncio.all_tasks(loop)
    for task in tasks:
        task.cancel()
    loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))

    _, cluster, client = setup(loop)
    for up in cluster.upstreams.values():
        cluster.set_healthy(up, False)
    client.data_received(REQUEST)
    assert written(client.transport).startswith(b"HTTP/1.1 503 ")
    assert client.state == HEAD


def test_a_repeated_head_is_edited_anew_each_time(loop: asyncio.AbstractEventLoop) -> None:
    _, _, client = setup(loop)
    other = REQUEST.replace(b"h.test", b"o.test")
    sent = []
    for head in (REQUEST, REQUEST, other, REQUEST):
        client.data_received(head)
        conn = client.up
        assert conn is not None
        sent.append(transport(conn.transport).out.pop())
        conn.data_received(RESPONSE)
    ids = [s.split(b"X-Request-Id: ")[1].split(b"\r\n")[0] for s in sent]
    assert len(set(ids)) == 4
    assert [s.count(b"X-Forwarded-Host: o.test\r\n") for s in sent] == [0, 0, 1, 0]
    assert all(s.count(b"\r\n\r\n") == 1 and s.endswith(b"\r\n\r\n") for s in sent)


def test_a_repeated_response_head_is_judged_by_its_own_bytes(
    loop: asyncio.AbstractEventLoop,
) -> None:
    _, _, client = setup(loop)
    longer = RESPONSE.replace(b"Content-Length: 3", b"Content-Length: 4") + b"!"
    closing = RESPONSE.replace(b"Connection: keep-alive", b"Connection: close")
    for resp, keeps in ((RESPONSE, True), (RESPONSE, True), (longer, True), (closing, False)):
        client.data_received(REQUEST)
        conn = client.up
        assert conn is not None
        conn.data_received(resp)
        assert client.up is None and (conn in conn.upstream.idle) == keeps
    out = written(client.transport)
    assert out.count(b"HTTP/1.1 200 OK\r\n") == 4 and out.endswith(b"ok\n")
    assert b"ok\n!" in out and out.count(b"Connection: close\r\n") == 1


def test_a_known_head_whose_body_comes_in_pieces_takes_the_general_way(
    loop: asyncio.AbstractEventLoop,
) -> None:
    _, _, client = setup(loop, n=1)
    t = transport(client.transport)
    for pieces in ([RESPONSE], [RESPONSE[:-2], RESPONSE[-2:]], [RESPONSE], [RESPONSE + b"?"]):
        client.data_received(REQUEST)
        conn = client.up
        assert conn is not None
        for piece in pieces:
            conn.data_received(piece)
    # The last: a byte past the response on a connection not pipelined on: not pooled.
    assert conn is not None and client.up is None and conn not in conn.upstream.idle
    out = b"".join(t.out)
    assert out.count(b"HTTP/1.1 200 OK\r\n") == 4 and out.count(b"ok\n") == 4
    assert b"?" not in out and b"keep-alive" not in out


def test_deferred_writes_stay_in_order_with_direct_ones(loop: asyncio.AbstractEventLoop) -> None:
    """A fast-lane response waits for the end of the loop's pass; a pipelined request the
    proxy refuses at once is answered after it, never before."""
    proxy, _, client = setup(loop)
    t = transport(client.transport)
    client.data_received(REQUEST)
    conn = client.up
    assert conn is not None
    # The next request arrives while the first waits: kept until its response is done.
    client.data_received(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")
    conn.data_received(RESPONSE)
    assert proxy.out == [] and t.closed  # the refusal sent what waited, then its own
    assert len(t.written) == 2
    assert t.written[0].startswith(b"HTTP/1.1 200 ") and t.written[1].startswith(b"HTTP/1.1 400 ")


def test_deferred_writes_go_out_at_the_end_of_the_pass(loop: asyncio.AbstractEventLoop) -> None:
    proxy, _, client = setup(loop)
    t = transport(client.transport)
    client.data_received(REQUEST)
    conn = client.up
    assert conn is not None
    up_t = transport(conn.transport)
    assert up_t.written == [] and len(proxy.out) == 1
    loop.run_until_complete(asyncio.sleep(0))
    assert len(up_t.written) == 1 and proxy.out == []
    conn.data_received(RESPONSE)
    assert t.written == []
    loop.run_until_complete(asyncio.sleep(0))
    assert t.written and t.written[0].startswith(b"HTTP/1.1 200 ")


def test_a_closing_response_does_not_change_the_shared_head(
    loop: asyncio.AbstractEventLoop,
) -> None:
    """The fast lane's request heads are memoized and shared between connections: what a
    response decides about keep-alive belongs to the connection, not to the head."""
    proxy, _, client = setup(loop)
    closing = RESPONSE.replace(b"Connection: keep-alive", b"Connection: close")
    client.data_received(REQUEST)
    shared = client.req
    conn = client.up
    assert conn is not None and shared is not None
    conn.data_received(closing)
    assert transport(client.transport).closed and shared.keep_alive
    other = ClientConn(proxy)
    other.connection_made(cast(Any, FakeTransport(proxy.flush)))
    other.data_received(REQUEST)
    assert other.req is shared and other.keep
    conn2 = other.up
    assert conn2 is not None
    conn2.data_received(RESPONSE)
    assert not transport(other.transport).closed and other.state == HEAD


def test_a_half_closed_client_gets_its_response_then_the_connection_closes(
    loop: asyncio.AbstractEventLoop,
) -> None:
    _, _, client = setup(loop)
    t = transport(client.transport)
    client.data_received(REQUEST)
    assert client.eof_received() is True  # kept open for writing
    conn = client.up
    assert conn is not None
    conn.data_received(RESPONSE)
    assert t.closed and t.written and t.written[0].startswith(b"HTTP/1.1 200 ")
    # Half-closed with nothing in flight: closed at once.
    _, _, idle = setup(loop)
    assert idle.eof_received() is None


def test_a_client_that_sends_ahead_without_reading_is_not_read_past_the_bound(
    loop: asyncio.AbstractEventLoop,
) -> None:
    proxy, _, client = setup(loop)
    t = transport(client.transport)
    client.data_received(REQUEST)
    conn = client.up
    assert conn is not None
    chunk = REQUEST * 1000
    while t.reading:
        client.data_received(chunk)
    bound = max(proxy.limits.max_pipelined_bytes, proxy.limits.max_head_bytes + 4)
    assert bound < len(client.buf) <= bound + len(chunk)
    # A client that stops reading its responses is not read either.
    conn.data_received(RESPONSE)
    assert t.reading is False or len(client.buf) <= bound
    client.pause_writing()
    assert t.reading is False
    client.resume_writing()


def test_bytes_sent_after_an_upgrade_request_go_through_the_tunnel(
    loop: asyncio.AbstractEventLoop,
) -> None:
    _, _, client = setup(loop)
    upgrade = b"GET /ws HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
    client.data_received(upgrade)
    conn = client.up
    assert conn is not None
    up_t = transport(conn.transport)
    client.data_received(b"early;")
    conn.data_received(
        b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
    )
    client.data_received(b"late;")
    sent = b"".join(up_t.out)
    assert sent.endswith(b"early;late;") and client.buf == b""


def test_refusals_count_as_responses(loop: asyncio.AbstractEventLoop) -> None:
    proxy, _, client = setup(loop)
    client.data_received(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")
    assert proxy.tally.responses == {400: 1}


def test_an_http10_keep_alive_response_says_so(loop: asyncio.AbstractEventLoop) -> None:
    _, _, client = setup(loop)
    t = transport(client.transport)
    client.data_received(b"GET / HTTP/1.0\r\nHost: h\r\nConnection: keep-alive\r\n\r\n")
    conn = client.up
    assert conn is not None
    conn.data_received(RESPONSE)
    out = b"".join(t.out)
    assert b"Connection: keep-alive\r\n" in out and not t.closed


def test_requests_sent_ahead_and_answered_at_once_are_served_in_a_loop(
    loop: asyncio.AbstractEventLoop,
) -> None:
    """Thousands of requests in one read, each answered by the proxy itself (no healthy
    upstream): all answered, in order, without a recursion per request."""
    proxy, cluster, client = setup(loop)
    for up in cluster.upstreams.values():
        cluster.set_healthy(up, False)
    head = b"GET /x HTTP/1.1\r\nHost: h\r\nX-Pad: 1\r\n\r\n"
    n = 1500
    client.data_received(head * n)
    out = b"".join(transport(client.transport).out)
    assert out.count(b"HTTP/1.1 503 ") == n and client.buf == b"" and client.state == HEAD
    assert proxy.tally.responses == {503: n}


def test_a_request_dropped_unsent_goes_elsewhere_whatever_its_method(
    loop: asyncio.AbstractEventLoop,
) -> None:
    """The upstream closed the pooled connection in the same pass as the request was read:
    the deferred write finds it closing and drops it, so even a POST is safe to send on
    another connection."""
    proxy, _, client = setup(loop)
    client.data_received(b"POST /p HTTP/1.1\r\nHost: h\r\n\r\n")
    first = client.up
    assert first is not None
    transport(first.transport).closed = True  # its FIN came in this pass
    proxy.flush()
    assert first.unsent
    first.connection_lost(None)
    second = client.up
    assert second is not None and second is not first
    sent = b"".join(transport(second.transport).out)
    assert sent.startswith(b"POST /p HTTP/1.1\r\n")
    second.data_received(RESPONSE)
    assert b"".join(transport(client.transport).out).startswith(b"HTTP/1.1 200 ")
    assert proxy.tally.retries == {"stale_connection": 1}


UPGRADE = b"GET /ws HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
SWITCHED = b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"


def test_a_tunnel_the_client_closes_counts_as_its_101_not_a_failure(
    loop: asyncio.AbstractEventLoop,
) -> None:
    """Five WebSockets closed by their clients once opened the upstream's breaker."""
    proxy, cluster, _ = setup(loop, n=1)
    (up,) = cluster.upstreams.values()
    for _ in range(6):
        client = ClientConn(proxy)
        client.connection_made(cast(Any, FakeTransport(proxy.flush)))
        client.data_received(UPGRADE)
        conn = client.up
        assert conn is not None
        conn.data_received(SWITCHED)
        client.data_received(b"hello")
        client.connection_lost(None)
        assert up.in_flight == 0
        pool_conn = type(conn)(proxy, up)  # the tunnel's connection is not pooled again
        pool_conn.connection_made(cast(Any, FakeTransport(proxy.flush)))
        up.idle.append(pool_conn)
    assert up.failures == 0 and up.breaker.state.value == "closed"


def test_a_body_sent_on_a_stale_pooled_connection_is_not_sent_again_without_it(
    loop: asyncio.AbstractEventLoop,
) -> None:
    """An idempotent PUT whose body went out on a pooled connection the upstream had closed:
    its body is not kept, so it cannot go again (it was: head only, and the upstream waited
    for a body that never came)."""
    proxy, cluster, client = setup(loop)
    client.data_received(b"PUT /p HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello")
    first = client.up
    assert first is not None and b"hello" in transport(first.transport).data()
    first.connection_lost(None)
    assert written(client.transport).startswith(b"HTTP/1.1 502 ")
    assert proxy.tally.retries == {} and sum(u.in_flight for u in cluster.upstreams.values()) == 0


def test_a_gateway_answer_is_asked_of_another_upstream(
    loop: asyncio.AbstractEventLoop,
) -> None:
    proxy, cluster, client = setup(loop)
    client.data_received(REQUEST)
    first = client.up
    assert first is not None
    first.data_received(b"HTTP/1.1 503 Busy\r\nContent-Length: 0\r\n\r\n")
    second = client.up
    assert second is not None and second.upstream is not first.upstream
    second.data_received(RESPONSE)
    out = written(client.transport)
    assert out.startswith(b"HTTP/1.1 200 ") and b"503" not in out
    assert proxy.tally.retries == {"status_503": 1} and proxy.tally.responses == {200: 1}
    assert first.upstream.failures == 1 and cluster.retries == 1


def test_no_response_in_time_is_504_and_a_removed_upstream_is_left_for_another(
    loop: asyncio.AbstractEventLoop,
) -> None:
    proxy, cluster, client = setup(loop)
    client.data_received(REQUEST)
    conn = client.up
    assert conn is not None
    t = proxy.timeouts
    client.check_timeouts(conn.started + t.response_header_s + 1, t)
    assert written(client.transport).startswith(b"HTTP/1.1 504 ")
    assert proxy.tally.rejected == {"timeout": 1} and conn.upstream.failures == 1

    proxy, cluster, client = setup(loop)
    client.data_received(REQUEST)
    conn = client.up
    assert conn is not None
    gone = conn.upstream
    cluster.set_members({u.addr: 1 for u in cluster.upstreams.values() if u is not gone})
    client.check_timeouts(conn.started + 2.0, proxy.timeouts)
    again = client.up
    assert again is not None and again.upstream is not gone
    assert proxy.tally.retries == {"removed": 1}


@pytest.mark.parametrize(
    "switched",
    [
        SWITCHED,
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n"
        b"Sec-WebSocket-Accept: x\r\n\r\n",
    ],
)
def test_a_101_keeps_saying_it_upgrades_the_connection(
    loop: asyncio.AbstractEventLoop, switched: bytes
) -> None:
    """`Connection: upgrade` is hop-by-hop, so the upstream's is cut like any Connection
    field; the proxy's own goes in its place. Without it a WebSocket client refuses the
    handshake (RFC 6455 4.1: the client fails the connection when the 101 lacks it)."""
    _, _, client = setup(loop)
    client.data_received(UPGRADE)
    conn = client.up
    assert conn is not None
    conn.data_received(switched)
    head = written(client.transport)
    assert head.startswith(b"HTTP/1.1 101 ") and head.endswith(b"\r\n\r\n")
    fields = head.lower().split(b"\r\n")
    assert fields.count(b"connection: upgrade") == 1 and b"upgrade: websocket" in fields


@pytest.mark.parametrize("limit", [None, 1024])
def test_a_head_over_the_limit_is_refused_in_one_read_as_in_several(
    loop: asyncio.AbstractEventLoop, limit: int | None
) -> None:
    """The fast lane reads a whole head in one read with no reader, so without a check of its
    own it forwarded a head past `max_head_bytes`: the upstream dropped it, a GET was tried on
    every upstream, and one request ejected them all."""
    limits = Limits() if limit is None else Limits(max_head_bytes=limit)
    big = REQUEST[:-2] + b"X-Pad: " + b"p" * limits.max_head_bytes + b"\r\n\r\n"
    for pieces in ([big], [big[:100], big[100:]]):
        _, cluster, client = setup(loop, limits=limits)
        for piece in pieces:
            client.data_received(piece)
        assert written(client.transport).startswith(b"HTTP/1.1 431 "), pieces
        assert sum(u.requests for u in cluster.upstreams.values()) == 0
        assert all(
            not transport(c.transport).out for u in cluster.upstreams.values() for c in u.idle
        )
    # Just within the limit, the same head takes the fast lane.
    fits = (
        REQUEST[:-2] + b"X-Pad: " + b"p" * (limits.max_head_bytes - len(REQUEST) - 7) + b"\r\n\r\n"
    )
    assert len(fits) == limits.max_head_bytes + 2
    _, cluster, client = setup(loop, limits=limits)
    client.data_received(fits)
    assert client.up is not None and client.up.upstream.requests == 1


def test_a_drain_answers_busy_clients_with_close_and_closes_idle_ones_after_a_grace(
    loop: asyncio.AbstractEventLoop,
) -> None:
    """An idle keep-alive connection is not closed the moment the drain begins: its client's
    next request may be on the wire, and a close then loses it. Within the grace such a
    request is answered (`Connection: close`); past it, the idle connection closes."""
    proxy, _, busy = setup(loop)
    late = rig.client(proxy)
    idle = rig.client(proxy)
    busy.data_received(REQUEST)
    conn = busy.up
    assert conn is not None
    proxy.drain()
    proxy.close_idle_clients()
    assert not transport(idle.transport).closed and not transport(late.transport).closed
    assert proxy.busy() and not proxy.settled()
    conn.data_received(RESPONSE)  # a whole response in one read: the fast lane's case
    proxy.flush()
    sent = written(busy.transport)
    assert sent.startswith(b"HTTP/1.1 200 OK\r\n") and b"Connection: close\r\n" in sent
    assert sent.endswith(b"ok\n") and transport(busy.transport).closed and not proxy.busy()
    # The request that was on the wire as the drain began: answered, then closed.
    late.data_received(REQUEST)
    conn = late.up
    assert conn is not None
    conn.data_received(RESPONSE)
    proxy.flush()
    sent = written(late.transport)
    assert sent.startswith(b"HTTP/1.1 200 OK\r\n") and b"Connection: close\r\n" in sent
    assert transport(late.transport).closed
    assert not transport(idle.transport).closed and not proxy.settled()
    # Past the grace, the idle one closes and the drain is over.
    proxy.drain_started -= DRAIN_IDLE_GRACE_S
    idle.last_active -= DRAIN_IDLE_GRACE_S
    proxy.close_idle_clients()
    assert transport(idle.transport).closed and written(idle.transport) == b""
    assert proxy.settled()


def test_a_drain_waits_for_a_closed_connection_s_unsent_bytes(
    loop: asyncio.AbstractEventLoop,
) -> None:
    proxy, _, client = setup(loop)
    client.close()
    transport(client.transport).closed = False  # still sending its last response
    transport(client.transport).buffered = 1000
    proxy.drain()
    assert not proxy.settled()
    transport(client.transport).buffered = 0
    assert proxy.settled()


def test_a_reload_sends_new_requests_by_the_new_routes_and_lets_the_old_finish(
    loop: asyncio.AbstractEventLoop,
) -> None:
    proxy, old, client = setup(loop)
    clusters = proxy.clusters
    client.data_received(REQUEST)
    conn = client.up
    assert conn is not None and conn.upstream in old.upstreams.values()
    new = rig.cluster(1)
    rig.pool(proxy, new)
    proxy.apply(ProxySettings(routes=[Route(cluster=new, host=b"h.test")]))
    assert proxy.clusters is clusters and clusters == [new] and proxy.retired == [old]
    conn.data_received(RESPONSE)
    assert b"HTTP/1.1 200 OK\r\n" in written(client.transport)
    client.data_received(REQUEST)
    assert client.up is not None and client.up.upstream in new.upstreams.values()
    proxy._sweep()  # nothing in flight on the old cluster any more: it is let go
    assert proxy.retired == []


def test_a_drain_is_no_question_on_the_fast_lanes_yet_every_response_says_close(
    loop: asyncio.AbstractEventLoop,
) -> None:
    """The fast lanes do not ask whether the proxy drains (a question per request): the
    drain takes the request lane away (a reload during it does not give it back) and ends
    the keep-alive of the exchanges in flight, whose whole responses still take the fast
    response lane, saying `Connection: close`."""
    proxy, cluster, client = setup(loop)
    late = rig.client(proxy)
    client.data_received(REQUEST)
    conn = client.up
    assert conn is not None and proxy.fast is cluster
    proxy.drain()
    proxy.apply(ProxySettings(routes=[Route(cluster=cluster)]))
    assert proxy.fast is None and client.keep is False
    conn.data_received(RESPONSE)
    proxy.flush()
    assert b"Connection: close\r\n" in written(client.transport)
    late.data_received(REQUEST)  # the general reader's, which ends its keep-alive
    assert late.keep is False and late.up is not None
    late.up.data_received(RESPONSE)
    proxy.flush()
    assert b"Connection: close\r\n" in written(late.transport)


def test_a_response_whose_head_went_out_before_the_drain_keeps_its_connection(
    loop: asyncio.AbstractEventLoop,
) -> None:
    """Its head said keep-alive: the client will send its next request on the connection, so
    the connection is not closed after the body (the request would be lost) but left idle,
    and the drain's grace applies to it."""
    proxy, _, client = setup(loop)
    client.data_received(REQUEST)
    conn = client.up
    assert conn is not None
    head, body = RESPONSE.split(b"\r\n\r\n", 1)
    conn.data_received(head + b"\r\n\r\n")
    proxy.drain()
    conn.data_received(body)
    proxy.flush()
    sent = written(client.transport)
    assert b"Connection: close" not in sent and sent.endswith(body)
    assert client.state == HEAD and not transport(client.transport).closed
    client.data_received(REQUEST)  # its next request: answered, with close
    assert client.up is not None
    client.up.data_received(RESPONSE)
    proxy.flush()
    assert written(client.transport).count(b"Connection: close\r\n") == 1
    assert transport(client.transport).closed


def _tunnel(loop: asyncio.AbstractEventLoop) -> tuple[Any, ClientConn, Any]:
    proxy, cluster, _ = setup(loop, n=1)
    client = ClientConn(proxy)
    client.connection_made(cast(Any, FakeTransport(proxy.flush)))
    client.data_received(UPGRADE)
    conn = client.up
    assert conn is not None
    conn.data_received(SWITCHED)
    assert client.state == TUNNEL
    return cluster, client, conn


@pytest.mark.parametrize("first", ["client", "upstream"])
def test_a_tunnel_half_closed_passes_the_eof_on_and_closes_once_both_sides_did(
    loop: asyncio.AbstractEventLoop, first: str
) -> None:
    """Both EOFs were kept open for writing and nothing closed until `tunnel_idle` (an hour):
    each tunnel held two descriptors and one of its upstream's connection slots."""
    cluster, client, conn = _tunnel(loop)
    (up,) = cluster.upstreams.values()
    c_t, u_t = transport(client.transport), transport(conn.transport)
    sides = [client, conn] if first == "client" else [conn, client]
    assert sides[0].eof_received() is True  # half-closed: the other side may still send
    first_t, other_t = (c_t, u_t) if first == "client" else (u_t, c_t)
    assert other_t.eof_written and not first_t.closed and client.state == TUNNEL
    assert sides[1].eof_received() is None
    assert first_t.closed and not first_t.aborted and client.state == CLOSED
    assert client.up is None and conn.client is None
    assert up.in_flight == 0 and up.failures == 0


def test_a_tunnel_half_closed_too_long_or_idle_too_long_is_closed(
    loop: asyncio.AbstractEventLoop,
) -> None:
    _, client, conn = _tunnel(loop)
    t = client.proxy.timeouts
    now = client.proxy.loop.time()
    assert conn.eof_received() is True
    client.check_timeouts(now + t.tunnel_half_closed_s / 2, t)
    assert client.state == TUNNEL and not transport(conn.transport).closed
    client.check_timeouts(now + t.tunnel_half_closed_s + 1, t)
    assert client.state == CLOSED
    assert transport(client.transport).closed and transport(conn.transport).closed
    _, idle, idle_conn = _tunnel(loop)
    idle.check_timeouts(idle.proxy.loop.time() + t.tunnel_idle_s + 1, t)
    assert idle.state == CLOSED and transport(idle_conn.transport).closed


@pytest.mark.parametrize(
    ("peer", "ip"),
    [
        ("10.0.0.9", b"10.0.0.9"),
        ("::ffff:10.0.0.9", b"10.0.0.9"),  # an IPv4 client of a dual-stack listener
        ("::ffff:a00:9", b"::ffff:a00:9"),
        ("2001:db8::1", b"2001:db8::1"),
    ],
)
def test_the_peer_of_a_dual_stack_listener_is_its_ipv4_address(peer: str, ip: bytes) -> None:
    from dockmesh.proxy.server import peer_ip

    assert peer_ip(cast(asyncio.BaseTransport, FakeTransport(peer=(peer, 4242)))) == ip


@pytest.mark.parametrize("cut", [1, 3, 10, 23, 24, 30])
def test_the_h2_preface_hands_the_connection_over_with_every_byte_however_it_arrives(
    loop: asyncio.AbstractEventLoop, cut: int
) -> None:
    proxy, _, conn = setup(loop)
    taken: list[tuple[ClientConn, bytes]] = []
    proxy.h2_prior = lambda c, data: taken.append((c, data))
    sent = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
    conn.data_received(sent[:cut])
    if cut < 24:
        assert not taken and conn.state == HEAD and not written(conn.transport)
        conn.data_received(sent[cut:])
        assert taken == [(conn, sent)]
    else:
        # (What follows reaches the new protocol: the transport's, once handed over.)
        assert taken == [(conn, sent[:cut])]
    assert conn not in proxy.clients and conn.state == CLOSED
    assert not written(conn.transport)


def test_without_h2_the_preface_is_a_bad_request(loop: asyncio.AbstractEventLoop) -> None:
    _, _, conn = setup(loop)
    conn.data_received(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
    assert written(conn.transport).startswith(b"HTTP/1.1 400 ")
