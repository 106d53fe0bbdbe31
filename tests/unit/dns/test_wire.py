"""The DNS wire format read and written by hand (dockmesh.dns.wire), against dnspython: a query
dnspython makes reads as dnspython reads it, by hand or through the unusual path alike; any
bytes are a query, an rcode or a drop; what is framed by hand is what dnspython parses."""

from __future__ import annotations

import struct
from dataclasses import replace

import dns.edns
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dockmesh.dns import wire
from dockmesh.dns.wire import Query, parse_query, parse_unusual
from tests.outcomes import Outcomes

labels = st.lists(
    st.binary(min_size=1, max_size=20)
    | st.text("abcXYZ019-_", min_size=1, max_size=12).map(str.encode),
    min_size=0,
    max_size=5,
)
names = labels.filter(lambda ls: len(wire.wire_name(ls)) <= 255).map(
    lambda ls: dns.name.Name([*ls, b""])
)
qtypes = st.sampled_from(
    [wire.A, wire.AAAA, wire.SRV, wire.SOA, wire.ANY, wire.AXFR]
) | st.integers(1, 65535).filter(lambda t: t != wire.OPT)
qclasses = st.sampled_from([wire.IN, wire.CLASS_ANY, 3]) | st.integers(1, 65535)


@st.composite
def queries(draw: st.DrawFn) -> dns.message.Message:
    """A query as a client would send it: one question, maybe EDNS (version, payload, DO,
    options such as a cookie), the header bits a client may set."""
    q = dns.message.Message(id=draw(st.integers(0, 65535)))
    q.flags = draw(st.sampled_from([0, dns.flags.RD, dns.flags.CD, dns.flags.RD | dns.flags.AD]))
    q.find_rrset(
        q.question,
        draw(names),
        dns.rdataclass.RdataClass.make(draw(qclasses)),
        dns.rdatatype.RdataType.make(draw(qtypes)),
        create=True,
        force_unique=True,
    )
    if draw(st.booleans()):
        options: list[dns.edns.Option] = []
        if draw(st.booleans()):
            options.append(
                dns.edns.GenericOption(dns.edns.COOKIE, draw(st.binary(min_size=8, max_size=8)))
            )
        q.use_edns(
            draw(st.integers(0, 1)),
            dns.flags.DO if draw(st.booleans()) else 0,
            draw(st.integers(0, 65535)),
            options=options,
        )
    return q


def as_dnspython_reads_it(packet: bytes) -> Query:
    m = dns.message.from_wire(packet)
    (rrset,) = m.question
    name = rrset.name.to_wire()
    assert name is not None
    return Query(
        int(m.flags),
        name + struct.pack("!HH", int(rrset.rdtype), int(rrset.rdclass)),
        name.lower(),
        int(rrset.rdtype),
        int(rrset.rdclass),
        m.edns,
        m.payload if m.edns >= 0 else wire.MIN_UDP_PAYLOAD,
        bool(m.ednsflags & dns.flags.DO),
        m.edns < 0 or not m.options,
    )


def lower(b: bytes) -> bytes:
    return bytes(c + 32 if 65 <= c <= 90 else c for c in b)


@given(queries())
def test_a_query_reads_as_dnspython_reads_it(q: dns.message.Message) -> None:
    packet = q.to_wire()
    got = parse_query(packet)
    assert isinstance(got, Query)
    want = as_dnspython_reads_it(packet)
    assert got == replace(want, qname=lower(want.question[:-4]))
    # The unusual path reads it the same way (never "plain": it does not look at options).
    assert parse_unusual(packet) == replace(got, plain=False)


def test_what_the_hand_parser_does_not_read_goes_to_dnspython() -> None:
    # A query carrying another record than OPT (an update's prerequisite, a TSIG): dnspython
    # reads all of it, and the answer is never cached by its bytes.
    q = dns.message.make_query("api.service.dockmesh", "A")
    rrset = q.find_rrset(
        q.additional,
        dns.name.from_text("x.service.dockmesh"),
        dns.rdataclass.IN,
        dns.rdatatype.A,
        create=True,
    )
    rrset.add(dns.rdata.from_text("IN", "A", "10.0.0.1"), 60)
    got = parse_query(q.to_wire())
    assert isinstance(got, Query) and got.qtype == wire.A and not got.plain
    # A pointer where the question's first label should be: there is no name before it to
    # point at, and dnspython refuses it.
    packet = q.to_wire()[:10] + b"\x00\x00" + struct.pack("!H", 0xC000 | 12) + b"\x00\x01\x00\x01"
    assert parse_query(packet) == wire.FORMERR


@pytest.mark.parametrize(
    ("packet", "result"),
    [
        (b"", None),
        (b"\x00" * 11, None),
        (b"\x12\x34\x80\x00" + b"\x00" * 8, None),  # a response: never answered
        (b"\x12\x34\x28\x00" + b"\x00\x01" + b"\x00" * 6, wire.NOTIMP),  # opcode UPDATE
        (b"\x12\x34\x01\x00" + b"\x00\x02" + b"\x00" * 6, wire.FORMERR),  # two questions
        (b"\x12\x34\x01\x00" + b"\x00\x01" + b"\x00" * 6 + b"\x03ab", wire.FORMERR),  # cut short
        (b"\x12\x34\x01\x00" + b"\x00\x01" + b"\x00" * 6 + b"\x00\x00\x01\x00\x01!", wire.FORMERR),
    ],
)
def test_what_is_dropped_or_answered_with_the_header_alone(
    packet: bytes, result: int | None
) -> None:
    assert parse_query(packet) == result


def test_a_name_longer_than_255_bytes_is_a_format_error() -> None:
    name = b"".join(b"\x3f" + b"a" * 63 for _ in range(4)) + b"\x00"  # 257 bytes
    packet = b"\x12\x34\x01\x00\x00\x01" + b"\x00" * 6 + name + b"\x00\x01\x00\x01"
    assert parse_query(packet) == wire.FORMERR


def spoil(packet: bytes, at: int, value: int) -> bytes:
    at %= len(packet)
    return packet[:at] + bytes([value]) + packet[at + 1 :]


def test_any_bytes_are_a_query_an_rcode_or_a_drop() -> None:
    """Queries as clients send them, with a byte changed, cut short or grown, and any bytes:
    never an exception; a query read by hand is the one dnspython reads whenever dnspython
    reads the packet; an rcode is FORMERR or NOTIMP."""
    seen = Outcomes()
    packets = queries().map(lambda q: q.to_wire())

    @settings(max_examples=200)
    @given(
        st.one_of(
            packets,
            packets,
            st.builds(spoil, packets, st.integers(0, 400), st.integers(0, 255)),
            st.builds(lambda p, n: p[:n], packets, st.integers(0, 60)),
            st.builds(lambda p, b: p + b, packets, st.binary(min_size=1, max_size=4)),
            st.binary(max_size=80),
        )
    )
    def run(packet: bytes) -> None:
        got = parse_query(packet)
        if got is None:
            seen("dropped")
            assert len(packet) < 12 or packet[2] & 0x80
            return
        if isinstance(got, int):
            seen("rcode")
            assert got in (wire.FORMERR, wire.NOTIMP)
            return
        try:
            want = as_dnspython_reads_it(packet)
        except Exception:  # dnspython is stricter on what the answer does not depend on
            seen("query dnspython refuses")
            return
        seen("query")
        assert (got.qname, got.qtype, got.qclass, got.edns, got.do) == (
            lower(want.question[:-4]),
            want.qtype,
            want.qclass,
            want.edns,
            want.do,
        )

    run()
    seen.require(query=0.25, rcode=0.1, dropped=0.02)


# --- what is framed by hand -------------------------------------------------------------------


def test_the_header_alone_answers_with_the_rcode_and_nothing_else() -> None:
    q = dns.message.make_query("x.service.dockmesh", "A")
    q.flags |= dns.flags.CD
    r = dns.message.from_wire(wire.header_only(q.to_wire(), wire.NOTIMP), question_only=True)
    assert r.id == q.id and r.rcode() == dns.rcode.NOTIMP
    assert r.flags & dns.flags.QR and r.flags & dns.flags.RD and not r.flags & dns.flags.CD
    assert (r.question, r.answer, r.authority, r.additional) == ([], [], [], [])


@given(labels.filter(lambda ls: len(wire.wire_name(ls)) <= 255))
def test_labels_round_trip_through_a_wire_name(ls: list[bytes]) -> None:
    name = wire.wire_name(ls)
    assert wire.split_labels(name) == ls
    assert dns.name.from_wire(name, 0)[0] == dns.name.Name([*ls, b""])


@given(
    st.ip_addresses(v=4),
    st.integers(0, 2**31 - 1),
    st.integers(0, 65535),
    st.integers(-5, 70000),
    st.integers(-5, 70000),
    labels.filter(lambda ls: len(wire.wire_name(ls)) <= 200),
    st.booleans(),
    st.integers(512, 65535),
)
def test_records_framed_by_hand_are_what_dnspython_parses(
    address: object,
    ttl: int,
    priority: int,
    weight: int,
    port: int,
    target: list[bytes],
    do: bool,
    payload: int,
) -> None:
    q = dns.message.make_query("a.service.dockmesh", "SRV")
    question = q.to_wire()[12:]
    target_name = wire.wire_name(target)
    records = [
        wire.rr(wire.POINTER_TO_QNAME, wire.A, ttl, bytes(map(int, str(address).split(".")))),
        wire.rr(
            wire.POINTER_TO_QNAME,
            wire.SRV,
            ttl,
            wire.srv_rdata(priority, weight, port, target_name),
        ),
        wire.rr(
            wire.pointer(12),
            wire.SOA,
            ttl,
            wire.soa_rdata(wire.wire_name([b"ns"]), wire.wire_name([b"h"]), 7, (1, 2, 3, 4)),
        ),
    ]
    packet = (
        q.to_wire()[:2]
        + wire.flags_bytes(wire.QR | wire.AA)
        + wire.counts(3, 0, 1)
        + question
        + b"".join(records)
        + wire.opt(payload, 0, do)
    )
    r = dns.message.from_wire(packet)
    a, srv, soa = r.answer
    assert (a.ttl, a[0].address) == (ttl, str(address))
    assert (srv[0].priority, srv[0].weight, srv[0].port) == (
        priority,
        max(0, min(weight, 65535)),
        max(0, min(port, 65535)),
    )
    assert srv[0].target == dns.name.Name([*target, b""])
    assert (soa[0].serial, soa[0].refresh, soa[0].retry, soa[0].expire, soa[0].minimum) == (
        7,
        1,
        2,
        3,
        4,
    )
    assert all(rrset.name == dns.name.from_text("a.service.dockmesh") for rrset in r.answer)
    assert (r.edns, r.payload, bool(r.ednsflags & dns.flags.DO)) == (0, payload, do)


def test_an_extended_rcode_rides_in_the_opt_record() -> None:
    q = dns.message.make_query("a.service.dockmesh", "A", use_edns=5)
    packet = (
        q.to_wire()[:2]
        + wire.flags_bytes(wire.QR)
        + wire.counts(0, 0, 1)
        + q.to_wire()[12 : 12 + len(q.question[0].name.to_wire() or b"") + 4]
        + wire.opt(1232, wire.BADVERS, False)
    )
    r = dns.message.from_wire(packet)
    assert r.rcode() == dns.rcode.BADVERS and r.payload == 1232
