"""The DNS server's protocol objects without sockets: catalog changes reaching the answers,
UDP's inlined fast path and its per-source rate, TCP framing (pipelining, split reads,
limits, back-pressure) and what one client may take (per-source and total caps, idle and
slow clients, a pipeline's turn), on a virtual-time loop where timers matter.
Real sockets, dig and the engine are in tests/integration/test_dns.py."""

from __future__ import annotations

import asyncio
import struct
from typing import Any

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dockmesh.catalog.live import LiveCatalog
from dockmesh.dns.server import DnsLimits, DnsServer, _ErrorLog, _Exempt, _Listener, _Tcp, _Udp
from dockmesh.model.catalog import Instance
from dockmesh.testing import loop
from dockmesh.testing.clock import ManualClock
from dockmesh.testing.transport import FakeTransport
from tests.unit.dns.helpers import Rd, ask, make_catalog, records


def test_the_server_invalidates_on_every_live_catalog_change() -> None:
    live = LiveCatalog(make_catalog())
    server = DnsServer(live, lambda: None)
    a = server.answerer
    assert len(records(ask(a, "api.service.dockmesh"), Rd.A)) == 3
    live.deregister("api-0")
    assert len(records(ask(a, "api.service.dockmesh"), Rd.A)) == 2
    live.register(Instance("new-1", "new", "10.9.9.9", 1), [])
    assert records(ask(a, "new.service.dockmesh"), Rd.A) == ["10.9.9.9"]
    assert server.stats.queries == {"NOERROR": 3}


def test_kv_writes_keep_the_prebuilt_answers() -> None:
    live = LiveCatalog(make_catalog())
    server = DnsServer(live, lambda: None)
    a = server.answerer
    ask(a, "api.service.dockmesh")
    assert len(a.udp_exact) == 1
    live.kv_put("config/x", b"1")
    live.kv_delete("config/x")
    assert len(a.udp_exact) == 1
    live.update_check("chk-api-3", "passing", "")  # a status DNS reads
    assert a.udp_exact == {}
    assert len(records(ask(a, "api.service.dockmesh"), Rd.A)) == 4


class FakeDatagramTransport:
    def __init__(self) -> None:
        self.sent: list[tuple[bytes, Any]] = []

    def sendto(self, data: bytes, addr: Any) -> None:
        self.sent.append((data, addr))


def test_udp_answers_from_the_exact_cache_and_counts_them() -> None:
    server = DnsServer(LiveCatalog(make_catalog()), lambda: None)
    proto = _Udp(server.answerer, _ErrorLog())
    transport = FakeDatagramTransport()
    proto.connection_made(transport)  # type: ignore[arg-type]
    q = dns.message.make_query("api.service.dockmesh", "A")
    for qid in range(5):
        q.id = qid
        proto.datagram_received(q.to_wire(), ("127.0.0.1", 5000 + qid))
    proto.datagram_received(b"\x01", ("127.0.0.1", 1))  # dropped
    assert [addr[1] for _, addr in transport.sent] == [5000, 5001, 5002, 5003, 5004]
    for qid, (data, _) in enumerate(transport.sent):
        r = dns.message.from_wire(data)
        assert r.id == qid
        assert len(records(r, Rd.A)) == 3
    assert server.stats.queries == {"NOERROR": 5}
    assert server.stats.dropped == 1


def framed(*names: str, qtype: str = "A") -> tuple[bytes, list[int]]:
    out = b""
    ids = []
    for i, name in enumerate(names):
        q = dns.message.make_query(name, qtype)
        q.id = 100 + i
        ids.append(q.id)
        wire = q.to_wire()
        out += struct.pack("!H", len(wire)) + wire
    return out, ids


def responses(buf: bytes) -> list[dns.message.Message]:
    out = []
    while buf:
        (n,) = struct.unpack("!H", buf[:2])
        out.append(dns.message.from_wire(buf[2 : 2 + n]))
        buf = buf[2 + n :]
    return out


def tcp_connection(server: DnsServer, source: str = "10.0.0.9") -> tuple[_Tcp, FakeTransport]:
    proto = _Tcp(server, _Listener("127.0.0.1", 0))
    transport = FakeTransport(peer=(source, 4242))
    proto.connection_made(transport)  # type: ignore[arg-type]
    return proto, transport


def test_tcp_answers_pipelined_queries_in_order_whatever_the_read_boundaries() -> None:
    async def run() -> None:
        server = DnsServer(LiveCatalog(make_catalog()), lambda: None)
        stream, ids = framed(
            "api.service.dockmesh", "nosuch.service.dockmesh", "web.service.dockmesh"
        )
        for chunk in (len(stream), 1, 2, 7):
            proto, transport = tcp_connection(server)
            for i in range(0, len(stream), chunk):
                proto.data_received(stream[i : i + chunk])
            got = responses(transport.data())
            assert [r.id for r in got] == ids
            assert [r.rcode() for r in got] == [
                dns.rcode.NOERROR,
                dns.rcode.NXDOMAIN,
                dns.rcode.NOERROR,
            ]
            proto.connection_lost(None)
        assert server.stats.tcp_connections == 0
        assert server.stats.tcp_accepted == 4

    asyncio.run(run())


def test_tcp_gives_the_full_answer_udp_truncates() -> None:
    async def run() -> None:
        live = LiveCatalog()
        for i in range(60):
            live.register(Instance(f"b{i}", "big", f"10.2.0.{i + 1}", 80), [])
        server = DnsServer(live, lambda: None)
        proto, transport = tcp_connection(server)
        stream, _ = framed("big.service.dockmesh")
        proto.data_received(stream)
        (r,) = responses(transport.data())
        assert not r.flags & dns.flags.TC
        assert len(records(r, dns.rdatatype.RdataType.A)) == 60

    asyncio.run(run())


def test_tcp_closes_on_a_length_above_the_limit() -> None:
    async def run() -> None:
        server = DnsServer(
            LiveCatalog(make_catalog()), lambda: None, limits=DnsLimits(max_tcp_query=512)
        )
        proto, transport = tcp_connection(server)
        proto.data_received(struct.pack("!H", 513))
        assert transport.closed
        assert transport.data() == b""

    asyncio.run(run())


def test_tcp_stops_reading_while_the_client_does_not_read() -> None:
    async def run() -> None:
        server = DnsServer(LiveCatalog(make_catalog()), lambda: None)
        proto, transport = tcp_connection(server)
        proto.pause_writing()
        assert not transport.reading
        proto.resume_writing()
        assert transport.reading

    asyncio.run(run())


# --- what one client may take -----------------------------------------------------------------


def query(name: str = "api.service.dockmesh", qid: int = 1) -> bytes:
    q = dns.message.make_query(name, "A")
    q.id = qid
    w = q.to_wire()
    return struct.pack("!H", len(w)) + w


def lost(*pairs: tuple[_Tcp, FakeTransport]) -> None:
    """What the loop does after a transport closed: tell its protocol."""
    for proto, transport in pairs:
        if transport.closed:
            proto.connection_lost(None)


def test_a_source_over_its_cap_makes_room_by_closing_its_own_longest_idle_connection() -> None:
    async def run() -> None:
        server = DnsServer(
            LiveCatalog(make_catalog()),
            lambda: None,
            limits=DnsLimits(tcp_per_source=2, max_tcp_connections=100),
        )
        first = tcp_connection(server, "10.0.0.1")
        await asyncio.sleep(1)
        second = tcp_connection(server, "10.0.0.1")
        await asyncio.sleep(1)
        first[0].data_received(query())  # answered: idle again, from now
        other = tcp_connection(server, "10.0.0.2")
        third = tcp_connection(server, "10.0.0.1")
        assert second[1].closed and not second[1].aborted  # idle the longest: closed gently
        assert not first[1].closed and not third[1].closed and not other[1].closed
        lost(first, second, third, other)
        assert server.stats.refused[("tcp", "tcp_per_source")] == 1
        assert server.slots.count("10.0.0.1") == 2
        # Both busy (a query under way): the next one is refused, the others kept.
        first[0].data_received(query()[:5])
        third[0].data_received(query()[:5])
        fourth = tcp_connection(server, "10.0.0.1")
        assert fourth[1].closed
        assert not first[1].closed and not third[1].closed
        assert server.stats.tcp_refused == 1
        assert server.stats.refused[("tcp", "tcp_per_source")] == 2
        # Another source is served meanwhile.
        other[0].data_received(query(qid=7))
        assert [r.id for r in responses(other[1].data())] == [7]

    loop.run(run)


def test_the_total_cap_closes_anyone_s_longest_idle_connection() -> None:
    async def run() -> None:
        server = DnsServer(
            LiveCatalog(make_catalog()),
            lambda: None,
            limits=DnsLimits(tcp_per_source=2, max_tcp_connections=3),
        )
        a = tcp_connection(server, "10.0.0.1")
        await asyncio.sleep(1)
        b = tcp_connection(server, "10.0.0.2")
        c = tcp_connection(server, "10.0.0.3")
        d = tcp_connection(server, "10.0.0.4")
        assert a[1].closed and not b[1].closed and not c[1].closed and not d[1].closed
        assert server.stats.refused[("tcp", "tcp_total")] == 1
        lost(a, b, c, d)
        assert server.stats.tcp_connections == 3

    loop.run(run)


def test_loopback_has_no_per_source_cap_unless_asked() -> None:
    async def run() -> None:
        for limit_loopback, kept in ((False, 5), (True, 2)):
            server = DnsServer(
                LiveCatalog(make_catalog()),
                lambda: None,
                limits=DnsLimits(tcp_per_source=2, limit_loopback=limit_loopback),
            )
            conns = [tcp_connection(server, "127.0.0.1") for _ in range(5)]
            lost(*conns)
            assert server.stats.tcp_connections == kept

    loop.run(run)


def test_an_idle_connection_is_closed_after_the_idle_timeout_and_each_query_restarts_it() -> None:
    async def run() -> None:
        server = DnsServer(
            LiveCatalog(make_catalog()), lambda: None, limits=DnsLimits(tcp_idle_timeout_s=10)
        )
        proto, transport = tcp_connection(server)
        await asyncio.sleep(9)
        proto.data_received(query())
        await asyncio.sleep(9)
        assert not transport.closed
        await asyncio.sleep(1.5)
        assert transport.closed and not transport.aborted
        assert server.stats.refused[("tcp", "idle")] == 1
        assert len(responses(transport.data())) == 1

    loop.run(run)


def test_a_client_too_slow_to_send_its_query_is_cut_off() -> None:
    async def run() -> None:
        server = DnsServer(
            LiveCatalog(make_catalog()), lambda: None, limits=DnsLimits(tcp_slow_timeout_s=2)
        )
        whole = query()
        # In pieces within the time: answered.
        proto, transport = tcp_connection(server)
        for i in range(len(whole)):
            proto.data_received(whole[i : i + 1])
            await asyncio.sleep(1.9 / len(whole))
        assert len(responses(transport.data())) == 1
        # A byte every second: cut off 2 s after the message's first byte.
        proto, transport = tcp_connection(server)
        proto.data_received(whole[:1])
        await asyncio.sleep(1)
        proto.data_received(whole[1:2])
        await asyncio.sleep(0.9)
        assert not transport.closed
        await asyncio.sleep(0.2)
        assert transport.aborted
        assert server.stats.refused[("tcp", "slow")] == 1

    loop.run(run)


def test_a_client_that_does_not_read_its_answers_is_cut_off() -> None:
    async def run() -> None:
        server = DnsServer(
            LiveCatalog(make_catalog()), lambda: None, limits=DnsLimits(tcp_slow_timeout_s=2)
        )
        proto, transport = tcp_connection(server)
        proto.data_received(query())
        proto.pause_writing()  # the kernel's buffer is full: the client does not read
        await asyncio.sleep(1)
        proto.resume_writing()  # it read
        await asyncio.sleep(5)
        assert not transport.closed
        proto.pause_writing()
        await asyncio.sleep(2.1)
        assert transport.aborted
        assert server.stats.refused[("tcp", "slow")] == 1

    loop.run(run)


def test_a_long_pipeline_is_answered_a_turn_at_a_time() -> None:
    async def run() -> None:
        server = DnsServer(
            LiveCatalog(make_catalog()), lambda: None, limits=DnsLimits(tcp_pipeline=8)
        )
        proto, transport = tcp_connection(server)
        stream = b"".join(query(qid=i) for i in range(20))
        proto.data_received(stream)
        assert len(responses(transport.data())) == 8
        assert not transport.reading  # the rest waits for its turn; nothing more is read
        other, other_t = tcp_connection(server, "10.0.0.2")
        other.data_received(query(qid=99))  # another client's query comes first
        assert [r.id for r in responses(other_t.data())] == [99]
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert [r.id for r in responses(transport.data())] == list(range(20))
        assert transport.reading

    loop.run(run)


def test_a_pipeline_waits_while_the_client_does_not_read() -> None:
    async def run() -> None:
        server = DnsServer(LiveCatalog(make_catalog()), lambda: None)
        proto, transport = tcp_connection(server)
        transport_write = transport.write

        def write(data: bytes) -> None:
            transport_write(data)
            if len(transport.written) == 3:
                proto.pause_writing()

        transport.write = write  # type: ignore[method-assign]
        proto.data_received(b"".join(query(qid=i) for i in range(10)))
        assert len(transport.written) == 3
        await asyncio.sleep(1)
        assert len(transport.written) == 3
        proto.resume_writing()
        await asyncio.sleep(0)
        assert [r.id for r in responses(transport.data())] == list(range(10))
        assert transport.reading

    loop.run(run)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=70), max_size=12), st.integers(1, 4))
def test_tcp_framing_of_arbitrary_bytes_never_raises(chunks: list[bytes], turn: int) -> None:
    """Whatever bytes arrive in whatever pieces: nothing raises, every answer is a framed DNS
    message, and the connection is either open or closed, never half-counted."""

    async def run() -> None:
        server = DnsServer(
            LiveCatalog(make_catalog()),
            lambda: None,
            limits=DnsLimits(max_tcp_query=64, tcp_pipeline=turn),
        )
        errors = server.errors.count
        proto, transport = tcp_connection(server)
        for chunk in [*chunks, query()]:
            if transport.closed:
                break
            proto.data_received(chunk)
            await asyncio.sleep(0)
        await asyncio.sleep(30)  # the idle and slow timers: the connection ends
        assert transport.closed
        buf = transport.data()
        while buf:
            (n,) = struct.unpack("!H", buf[:2])
            assert 12 <= n <= len(buf) - 2
            buf = buf[2 + n :]
        assert server.errors.count == errors
        proto.connection_lost(None)
        assert server.stats.tcp_connections == 0
        assert len(server.slots) == 0

    loop.run(run)


def test_udp_queries_over_a_source_s_rate_are_dropped_and_others_answered() -> None:
    clock = ManualClock()
    server = DnsServer(
        LiveCatalog(make_catalog()),
        lambda: None,
        limits=DnsLimits(udp_rate=10, udp_burst=5),
        clock=clock,
    )
    proto = _Udp(server.answerer, _ErrorLog(), server.udp_rate, _Exempt(False))
    transport = FakeDatagramTransport()
    proto.connection_made(transport)  # type: ignore[arg-type]
    q = dns.message.make_query("api.service.dockmesh", "A").to_wire()
    for _ in range(50):
        proto.datagram_received(q, ("172.20.0.5", 40000))
    for _ in range(3):
        proto.datagram_received(q, ("172.20.0.6", 40000))
    for _ in range(50):
        proto.datagram_received(q, ("127.0.0.1", 40000))  # exempt
    sent = [addr[0] for _, addr in transport.sent]
    assert sent.count("172.20.0.5") == 5
    assert sent.count("172.20.0.6") == 3
    assert sent.count("127.0.0.1") == 50
    assert server.stats.refused[("udp", "udp_rate")] == 45
    clock.advance(0.1)
    proto.datagram_received(q, ("172.20.0.5", 40000))
    assert len(transport.sent) == 59


def test_udp_rate_limiting_can_be_turned_off_and_loopback_included() -> None:
    server = DnsServer(LiveCatalog(make_catalog()), lambda: None, limits=DnsLimits(udp_rate=0))
    assert server.udp_rate is None
    assert server.stats.refused[("udp", "udp_rate")] == 0
    exempt = _Exempt(limit_loopback=False)
    assert exempt("127.0.0.1") and exempt("::1") and exempt("::ffff:127.0.0.2")
    assert not exempt("10.0.0.1") and not exempt("fe80::1%eth0") and not exempt("nonsense")
    assert not _Exempt(limit_loopback=True)("127.0.0.1")


def test_bad_limits_are_refused() -> None:
    with pytest.raises(ValueError, match="tcp_per_source must be at least 1"):
        DnsServer(LiveCatalog(), lambda: None, limits=DnsLimits(tcp_per_source=0))
    assert DnsLimits(tcp_idle_timeout_s=float("nan"), udp_rate=-1).problems() == [
        "tcp_idle_timeout_s must be a positive number of seconds",
        "udp_rate must be 0 (no limit) or more",
    ]


def test_the_total_stays_below_the_open_file_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    import resource

    monkeypatch.setattr(resource, "getrlimit", lambda _: (1024, 4096))
    server = DnsServer(LiveCatalog(), lambda: None, limits=DnsLimits(max_tcp_connections=1024))
    assert server.slots.total == 1024 - 256
    monkeypatch.setattr(resource, "getrlimit", lambda _: (resource.RLIM_INFINITY, 4096))
    server = DnsServer(LiveCatalog(), lambda: None, limits=DnsLimits(max_tcp_connections=1024))
    assert server.slots.total == 1024
