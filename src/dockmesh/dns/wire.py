"""The few pieces of the DNS wire format the answer path reads and writes by hand. Pure.

Why by hand: a query on the hot path is a 12-byte header, one question and at most an OPT
record; reading that with a loop over bytes costs a fraction of dnspython's full parser, and
it is all the server needs to find a prebuilt answer. Anything else (a compressed question
name, more records, a TSIG) goes to dnspython (`parse_unusual`), which validates the whole
message. Resource records are framed by hand too so that each is an independent byte string
that can be rotated, counted and dropped without re-rendering the message (see `answer`).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final

import dns.flags
import dns.message
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype

# Header flag bits (RFC 1035 §4.1.1, RFC 4035 §3.2 for AD and CD).
QR: Final = int(dns.flags.QR)
AA: Final = int(dns.flags.AA)
TC: Final = int(dns.flags.TC)
RD: Final = int(dns.flags.RD)
RA: Final = int(dns.flags.RA)
CD: Final = int(dns.flags.CD)
OPCODE_MASK: Final = 0x7800
# What a response copies from its query: RD (RFC 1035) and CD (RFC 6840 §5.9).
ECHOED: Final = RD | CD
DO_BIT: Final = int(dns.flags.DO)

NOERROR: Final = int(dns.rcode.NOERROR)
FORMERR: Final = int(dns.rcode.FORMERR)
SERVFAIL: Final = int(dns.rcode.SERVFAIL)
NXDOMAIN: Final = int(dns.rcode.NXDOMAIN)
NOTIMP: Final = int(dns.rcode.NOTIMP)
REFUSED: Final = int(dns.rcode.REFUSED)
BADVERS: Final = int(dns.rcode.BADVERS)

A: Final = int(dns.rdatatype.A)
SOA: Final = int(dns.rdatatype.SOA)
AAAA: Final = int(dns.rdatatype.AAAA)
SRV: Final = int(dns.rdatatype.SRV)
OPT: Final = int(dns.rdatatype.OPT)
IXFR: Final = int(dns.rdatatype.IXFR)
AXFR: Final = int(dns.rdatatype.AXFR)
MAILB: Final = int(dns.rdatatype.MAILB)
MAILA: Final = int(dns.rdatatype.MAILA)
ANY: Final = int(dns.rdatatype.ANY)
IN: Final = int(dns.rdataclass.IN)
CLASS_ANY: Final = int(dns.rdataclass.ANY)

MIN_UDP_PAYLOAD: Final = 512  # RFC 1035, and RFC 6891 §6.2.5's floor for smaller EDNS values
MAX_MESSAGE: Final = 65535  # a TCP message's 2-byte length
POINTER_TO_QNAME: Final = b"\xc0\x0c"  # the question name starts right after the header

_HEADER = struct.Struct("!HHHH")
_TYPE_CLASS = struct.Struct("!HH")
# OPT after its name and type: class (= payload size), TTL (= ext. rcode, version, flags), rdlen
_OPT_TAIL = struct.Struct("!HIH")
_RR_HEAD = struct.Struct("!HHIH")
_FLAGS = struct.Struct("!H")
_SRV = struct.Struct("!HHH")
_SOA_TAIL = struct.Struct("!IIIII")
_ZERO_COUNTS = b"\x00" * 8
_OPTION_HEAD = struct.Struct("!HHH")  # option code, length, EDE's INFO-CODE


@dataclass(frozen=True, slots=True)
class Query:
    """What a query asks, as far as the answer depends on it."""

    flags: int
    question: bytes  # the question section as sent: name (case kept), type, class
    qname: bytes  # the name in wire form, lowercased the way DNS compares (ASCII only)
    qtype: int
    qclass: int
    edns: int  # the OPT record's version, -1 without one
    payload: int  # the client's UDP payload size (512 without EDNS)
    do: bool  # EDNS DO bit, echoed in the response's OPT (RFC 3225 §3)
    # Read by hand and holds nothing the response does not depend on (no EDNS options such
    # as a cookie that changes per query): the bytes after its ID decide the response alone,
    # so they can key a cache of finished responses.
    plain: bool


def parse_query(packet: bytes) -> Query | int | None:
    """The query in `packet`; an rcode to answer with the header alone (FORMERR, NOTIMP);
    or None to drop it: too short for a header, or a response (answering one could start a
    loop between two servers)."""
    n = len(packet)
    if n < 12:
        return None
    flags = (packet[2] << 8) | packet[3]
    if flags & QR:
        return None
    if flags & OPCODE_MASK:
        return NOTIMP
    qdcount, ancount, nscount, arcount = _HEADER.unpack_from(packet, 4)
    if qdcount != 1:
        return FORMERR
    i = 12
    while True:
        if i >= n:
            return FORMERR
        length = packet[i]
        if length == 0:
            i += 1
            break
        if length > 63:  # a compression pointer or an obsolete label type: rare in a question
            return parse_unusual(packet)
        i += length + 1
    if i - 12 > 255 or i + 4 > n:
        return FORMERR
    qtype, qclass = _TYPE_CLASS.unpack_from(packet, i)
    qend = i + 4
    if ancount or nscount or arcount > 1:
        return parse_unusual(packet)
    edns, payload, do, plain = -1, MIN_UDP_PAYLOAD, False, True
    if arcount == 1:
        if n - qend < 11 or packet[qend] != 0 or packet[qend + 1 : qend + 3] != b"\x00\x29":
            return parse_unusual(packet)
        payload, ttl, rdlen = _OPT_TAIL.unpack_from(packet, qend + 3)
        j = qend + 11
        if j + rdlen != n:
            return FORMERR
        while j < n:  # the options must tile the RDATA exactly
            if j + 4 > n:
                return FORMERR
            j += 4 + ((packet[j + 2] << 8) | packet[j + 3])
        if j != n:
            return FORMERR
        edns = (ttl >> 16) & 0xFF
        do = bool(ttl & DO_BIT)
        plain = rdlen == 0
    elif qend != n:
        return FORMERR
    return Query(
        flags, packet[12:qend], packet[12:i].lower(), qtype, qclass, edns, payload, do, plain
    )


def parse_unusual(packet: bytes) -> Query | int:
    """A query the hand parser leaves to dnspython, which checks all of it."""
    try:
        msg = dns.message.from_wire(packet)
    except Exception:  # dnspython raises more than DNSException on hostile input
        return FORMERR
    if len(msg.question) != 1:
        return FORMERR
    q = msg.question[0]
    name = q.name.to_wire()
    if name is None:  # pragma: no cover - to_wire without a file always returns bytes
        return FORMERR
    question = name + _TYPE_CLASS.pack(int(q.rdtype), int(q.rdclass))
    return Query(
        int(msg.flags),
        question,
        name.lower(),
        int(q.rdtype),
        int(q.rdclass),
        msg.edns,
        msg.payload if msg.edns >= 0 else MIN_UDP_PAYLOAD,
        bool(msg.ednsflags & DO_BIT),
        False,
    )


def header_only(packet: bytes, rcode: int) -> bytes:
    """A response of the header alone (no question echoed) with `rcode`: for queries whose
    question cannot be read or is not a question we take."""
    flags = (packet[2] << 8) | packet[3]
    return packet[:2] + _FLAGS.pack(QR | (flags & (OPCODE_MASK | RD)) | rcode) + _ZERO_COUNTS


def counts(an: int, ns: int, ar: int) -> bytes:
    return _HEADER.pack(1, an, ns, ar)


def flags_bytes(flags: int) -> bytes:
    return _FLAGS.pack(flags)


def rr(owner: bytes, rdtype: int, ttl: int, rdata: bytes) -> bytes:
    """One resource record of class IN; `owner` is a wire name or a compression pointer."""
    return owner + _RR_HEAD.pack(rdtype, IN, ttl, len(rdata)) + rdata


def srv_rdata(priority: int, weight: int, port: int, target: bytes) -> bytes:
    """RFC 2782; the target stays uncompressed (RFC 3597 §4)."""
    return _SRV.pack(priority, _u16(weight), _u16(port)) + target


def soa_rdata(mname: bytes, rname: bytes, serial: int, times: tuple[int, int, int, int]) -> bytes:
    return mname + rname + _SOA_TAIL.pack(serial, *times)


def _u16(x: int) -> int:
    return max(0, min(x, 0xFFFF))


def pointer(offset: int) -> bytes:
    return _FLAGS.pack(0xC000 | offset)


def opt(payload: int, ext_rcode: int, do: bool, options: bytes = b"") -> bytes:
    """The response's OPT record: our payload size, version 0, `options` (framed ones, e.g.
    `ede`; RFC 6891 §6.1)."""
    ttl = ((ext_rcode >> 4) << 24) | (DO_BIT if do else 0)
    return b"\x00" + _RR_HEAD.pack(OPT, payload, ttl, len(options)) + options


EDE: Final = 15  # the Extended DNS Error option (RFC 8914 §2)
EDE_NOT_AUTHORITATIVE: Final = 20
EDE_TEXT_MAX: Final = 400  # bytes of EXTRA-TEXT kept: the option stays well inside 512


def ede(info_code: int, text: str) -> bytes:
    """An Extended DNS Error option (RFC 8914): the code and a UTF-8 text for people, cut to
    `EDE_TEXT_MAX` bytes (never inside a character)."""
    extra = text.encode()[:EDE_TEXT_MAX].decode(errors="ignore").encode()
    return _OPTION_HEAD.pack(EDE, 2 + len(extra), info_code) + extra


def split_labels(name: bytes) -> list[bytes]:
    """The labels of an uncompressed wire name (without the root)."""
    labels = []
    i = 0
    while name[i]:
        labels.append(name[i + 1 : i + 1 + name[i]])
        i += 1 + name[i]
    return labels


def wire_name(labels: list[bytes]) -> bytes:
    return b"".join(bytes((len(x),)) + x for x in labels) + b"\x00"
