"""The DNS server's protocol objects without sockets: catalog changes reaching the answers,
UDP's inlined fast path, TCP framing (pipelining, split reads, limits, back-pressure).
Real sockets, dig and the engine are in tests/integration/test_dns.py."""

from __future__ import annotations

import asyncio
import struct
from typing import Any

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype

from dockmesh.catalog.live import LiveCatalog
from dockmesh.dns.server import DnsServer, _ErrorLog, _Listener, _Tcp, _Udp
from dockmesh.model.catalog import Instance
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


def tcp_connection(server: DnsServer) -> tuple[_Tcp, FakeTransport]:
    proto = _Tcp(server, _Listener("127.0.0.1", 0))
    transport = FakeTransport()
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


def test_tcp_closes_on_a_length_above_the_limit_and_refuses_over_the_connection_limit() -> None:
    async def run() -> None:
        server = DnsServer(
            LiveCatalog(make_catalog()), lambda: None, max_tcp_query=512, max_tcp_connections=2
        )
        proto, transport = tcp_connection(server)
        proto.data_received(struct.pack("!H", 513))
        assert transport.closed
        assert transport.data() == b""
        _, second = tcp_connection(server)
        _, third = tcp_connection(server)
        assert not second.aborted
        assert third.aborted
        assert server.stats.tcp_refused == 1

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
