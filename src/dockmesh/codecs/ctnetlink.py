"""The kernel's conntrack table on the wire (ctnetlink, nfnetlink subsystem 1). Pure.

Reading: `DumpDecoder.feed` takes each datagram a dump returns (a run of netlink messages)
and gives the entries in it as `ConntrackFlow` values, without building an object per
attribute: a decoder that makes one object per attribute (pyroute2's) spends 0.7-0.8 ms an
entry, 36-42 s for a 50,000-entry table. Here the usual shape of an entry's two tuples (TCP,
UDP or SCTP over IPv4 or IPv6: the kernel writes their attributes always in the same order
and sizes) is checked and read with two `struct` calls; the attributes after the tuples are
walked once and their shape (every header, where the counters are) is remembered for the
entries of the same length, which are then checked and read with two more. Anything else
takes the general walk over the attributes. Addresses are formatted once each.

Writing: the dump request (optionally filtered in the kernel by mark or zone) and the
request that inserts an entry (what `conntrack -I` sends; the benchmark fills a table with
it).

Arbitrary bytes give `CtnetlinkError` (a `ValueError`) with a one-line reason, never
another exception and never a loop that does not advance: every length is checked against
the bytes that are there before it is used, and every step moves forward by at least 4
bytes.

Layout (include/uapi/linux/netfilter/nfnetlink_conntrack.h): a netlink header (16 bytes), the
nfgenmsg (family, version, resource id: 4 bytes), then attributes: 4-byte header (length,
type; bit 15 marks a nested one) and the payload padded to 4 bytes. Numbers in payloads are
big-endian; the headers are in the host's order.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass
from typing import NamedTuple

NLMSG_NOOP, NLMSG_ERROR, NLMSG_DONE, NLMSG_OVERRUN = 1, 2, 3, 4
NLM_F_REQUEST, NLM_F_MULTI, NLM_F_ACK = 0x1, 0x2, 0x4
NLM_F_DUMP_INTR = 0x10
NLM_F_DUMP = 0x300
NLM_F_EXCL, NLM_F_CREATE = 0x200, 0x400
NLA_F_NESTED = 0x8000
NLA_TYPE_MASK = 0x3FFF

NFNL_SUBSYS_CTNETLINK = 1
IPCTNL_MSG_CT_NEW, IPCTNL_MSG_CT_GET = 0, 1
CT_NEW = (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_NEW
CT_GET = (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_GET

# enum ctattr_type
CTA_TUPLE_ORIG, CTA_TUPLE_REPLY, CTA_STATUS, CTA_PROTOINFO = 1, 2, 3, 4
CTA_TIMEOUT, CTA_MARK, CTA_COUNTERS_ORIG, CTA_COUNTERS_REPLY = 7, 8, 9, 10
CTA_ZONE, CTA_MARK_MASK = 18, 21
# enum ctattr_tuple, ctattr_ip, ctattr_l4proto, ctattr_counters, ctattr_protoinfo(_tcp)
CTA_TUPLE_IP, CTA_TUPLE_PROTO, CTA_TUPLE_ZONE = 1, 2, 3
CTA_IP_V4_SRC, CTA_IP_V4_DST, CTA_IP_V6_SRC, CTA_IP_V6_DST = 1, 2, 3, 4
CTA_PROTO_NUM, CTA_PROTO_SRC_PORT, CTA_PROTO_DST_PORT = 1, 2, 3
CTA_COUNTERS_PACKETS, CTA_COUNTERS_BYTES = 1, 2
CTA_COUNTERS32_PACKETS, CTA_COUNTERS32_BYTES = 3, 4
CTA_PROTOINFO_TCP, CTA_PROTOINFO_TCP_STATE = 1, 1
TCP_CONNTRACK_ESTABLISHED = 3
IPS_SEEN_REPLY, IPS_ASSURED, IPS_CONFIRMED = 0x2, 0x4, 0x8

AF_UNSPEC, AF_INET, AF_INET6 = 0, 2, 10

_NLMSG = struct.Struct("=IHHII")  # length, type, flags, sequence, port id
_NLA = struct.Struct("=HH")
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_ERRNO = struct.Struct("=i")
_NFGEN = struct.Struct("=BBH")


class CtnetlinkError(ValueError):
    """Bytes that are not what a ctnetlink dump sends, or the kernel's error answer."""

    def __init__(self, reason: str, errno: int = 0) -> None:
        super().__init__(reason)
        self.errno = errno  # the kernel's error number (positive), 0: the bytes were wrong


# Named tuples, not dataclasses: a dump makes three of these an entry, and a tuple is made
# several times faster than a frozen dataclass (which sets each field through a call).
class Tuple5(NamedTuple):
    src: str
    dst: str
    sport: int
    dport: int


class ConntrackFlow(NamedTuple):
    """One conntrack entry, reduced to what dockmesh aggregates."""

    proto: int
    orig: Tuple5
    reply: Tuple5
    orig_packets: int = 0
    orig_bytes: int = 0
    reply_packets: int = 0
    reply_bytes: int = 0


def _hdr_word(length: int, kind: int) -> int:
    """An attribute header (host order) read as a big-endian 32-bit number: how the fast
    path's single big-endian `struct` call sees it."""
    return int.from_bytes(_NLA.pack(length, kind), "big")


@dataclass(frozen=True, slots=True)
class _Layout:
    """An entry's start as the kernel writes it for TCP, UDP, SCTP or UDP-Lite over one
    family (ctnetlink_dump_tuples): the nfgenmsg, then each tuple's nest holding the IP
    nest (source, destination) and the protocol nest (number, source and destination
    port). `headers` reads every attribute header of it at once (compared with `expected`),
    `values` the addresses, numbers and ports at once."""

    size: int
    headers: struct.Struct
    expected: tuple[int, ...]
    values: struct.Struct
    v6: bool


def _layout(address: int, src: int, dst: int) -> _Layout:
    ip = 4 + 2 * (4 + address)
    whole = 4 + ip + 28
    one = (
        _hdr_word(ip, CTA_TUPLE_IP | NLA_F_NESTED),
        _hdr_word(4 + address, src),
        _hdr_word(4 + address, dst),
        _hdr_word(28, CTA_TUPLE_PROTO | NLA_F_NESTED),
        _hdr_word(5, CTA_PROTO_NUM),
        _hdr_word(6, CTA_PROTO_SRC_PORT),
        _hdr_word(6, CTA_PROTO_DST_PORT),
    )
    return _Layout(
        4 + 2 * whole,
        struct.Struct(">4x" + 2 * f" I I I{address}x I{address}x I I4x I4x I4x"),
        (
            _hdr_word(whole, CTA_TUPLE_ORIG | NLA_F_NESTED),
            *one,
            _hdr_word(whole, CTA_TUPLE_REPLY | NLA_F_NESTED),
            *one,
        ),
        struct.Struct(">4x" + 2 * f" 4x 4x 4x{address}s 4x{address}s 4x 4xB3x 4xH2x 4xH2x"),
        address == 16,
    )


# By the first tuple's nest header, which differs with the family.
_LAYOUTS = {
    x.expected[0]: x
    for x in (_layout(4, CTA_IP_V4_SRC, CTA_IP_V4_DST), _layout(16, CTA_IP_V6_SRC, CTA_IP_V6_DST))
}
_FIRST = struct.Struct(">4xI")
# Both counters nests as the kernel writes them, one after the other: the nest, packets,
# bytes (64-bit), twice; 56 bytes.
_FAST_COUNTERS = struct.Struct(">I I Q I Q I I Q I Q")
_FAST_COUNTERS_H = struct.Struct(">I I 8x I 8x I I 8x I 8x")
_FAST_COUNTERS_V = struct.Struct(">8x Q 4x Q 8x Q 4x Q")
_FAST_COUNTERS_HEADERS = (
    _hdr_word(28, CTA_COUNTERS_ORIG | NLA_F_NESTED),
    _hdr_word(12, CTA_COUNTERS_PACKETS),
    _hdr_word(12, CTA_COUNTERS_BYTES),
    _hdr_word(28, CTA_COUNTERS_REPLY | NLA_F_NESTED),
    _hdr_word(12, CTA_COUNTERS_PACKETS),
    _hdr_word(12, CTA_COUNTERS_BYTES),
)
_ENTRY_WANTED = frozenset((CTA_TUPLE_ORIG, CTA_TUPLE_REPLY, CTA_COUNTERS_ORIG, CTA_COUNTERS_REPLY))
_ADDRESS_CACHE_MAX = 1 << 16


_SHAPES_MAX = 64


@dataclass(frozen=True, slots=True)
class _Shape:
    """The attributes after an entry's tuples, as one entry had them: `headers` reads every
    attribute header (and the counters' inner ones) at their places, `expected` is what
    they were; `counters` reads the four counter values (None: the entry had none)."""

    headers: struct.Struct
    expected: tuple[int, ...]
    counters: struct.Struct | None


def _shape(base: int, heads: list[int], counters_at: int, buf: bytes) -> _Shape:
    words = sorted(
        {h - base for h in heads}
        | (set() if counters_at < 0 else {counters_at - base + d for d in (0, 4, 16, 28, 32, 44)})
    )
    fmt, cursor = ">", 0
    for w in words:
        fmt += f"{w - cursor}xI" if w > cursor else "I"
        cursor = w + 4
    headers = struct.Struct(fmt)
    counters = None
    if counters_at >= 0:
        r = counters_at - base
        counters = struct.Struct(f">{r + 8}xQ4xQ8xQ4xQ")
    return _Shape(headers, headers.unpack_from(buf, base), counters)


def _attrs(buf: bytes, start: int, end: int, what: str) -> dict[int, tuple[int, int]]:
    """The attributes in buf[start:end]: type → (payload start, payload end), the first of
    each type kept. Fewer than 4 bytes left at the end are padding."""
    out: dict[int, tuple[int, int]] = {}
    off = start
    while end - off >= 4:
        length, kind = _NLA.unpack_from(buf, off)
        if length < 4 or off + length > end:
            raise CtnetlinkError(f"{what}: an attribute of {length} bytes at {off} overruns it")
        out.setdefault(kind & NLA_TYPE_MASK, (off + 4, off + length))
        off += (length + 3) & ~3
    return out


class DumpDecoder:
    """Decodes the datagrams of one conntrack dump, in order; `done` once the kernel said
    the dump ended. One decoder per dump (it remembers the addresses it formatted)."""

    def __init__(self, seq: int | None = None) -> None:
        self.seq = seq  # when given, messages of other sequence numbers are refused
        self.done = False
        self.interrupted = False  # the table changed during the dump (NLM_F_DUMP_INTR)
        self._v4: dict[bytes, str] = {}
        self._v6: dict[bytes, str] = {}
        self._shapes: dict[int, _Shape] = {}

    def feed(self, data: bytes) -> list[ConntrackFlow]:
        """The entries of one datagram. Messages other than entries (a no-op, a type this
        does not know) are skipped; an error answer raises with the kernel's errno."""
        out: list[ConntrackFlow] = []
        off, n = 0, len(data)
        while off < n:
            if self.done:
                raise CtnetlinkError("a message after the end of the dump")
            if n - off < 16:
                raise CtnetlinkError(f"{n - off} bytes at {off}: shorter than a netlink header")
            length, kind, flags, seq, _port = _NLMSG.unpack_from(data, off)
            if length < 16 or off + length > n:
                raise CtnetlinkError(f"a netlink message of {length} bytes at {off} overruns it")
            if self.seq is not None and seq != self.seq:
                raise CtnetlinkError(f"a message of sequence {seq}, not {self.seq}")
            if flags & NLM_F_DUMP_INTR:
                self.interrupted = True
            end = off + length
            if kind == CT_NEW:
                flow = self._entry(data, off + 16, end)
                if flow is not None:
                    out.append(flow)
            elif kind == NLMSG_DONE:
                self.done = True
                if length >= 20:
                    (code,) = _ERRNO.unpack_from(data, off + 16)
                    if code < 0:
                        raise CtnetlinkError(f"the dump ended with error {-code}", -code)
            elif kind == NLMSG_ERROR:
                if length < 20:
                    raise CtnetlinkError("an error message without its number")
                (code,) = _ERRNO.unpack_from(data, off + 16)
                if code < 0:
                    raise CtnetlinkError(f"the kernel answered error {-code}", -code)
            elif kind == NLMSG_OVERRUN:
                raise CtnetlinkError("the kernel lost messages (overrun)")
            off += (length + 3) & ~3
        return out

    def _entry(self, buf: bytes, start: int, end: int) -> ConntrackFlow | None:
        """An entry (after the netlink header): None when it lacks a tuple or its tuples
        disagree on the protocol (not one connection dockmesh can count)."""
        if end - start < 4:
            raise CtnetlinkError("a conntrack message without its nfgenmsg")
        layout = _LAYOUTS.get(_FIRST.unpack_from(buf, start)[0]) if end - start >= 8 else None
        if (
            layout is None
            or end - start < layout.size
            or layout.headers.unpack_from(buf, start) != layout.expected
        ):
            return self._rest(buf, start + 4, end, None, None)
        osrc, odst, onum, osport, odport, rsrc, rdst, rnum, rsport, rdport = (
            layout.values.unpack_from(buf, start)
        )
        if layout.v6:
            cache, addr = self._v6, self._addr6
        else:
            cache, addr = self._v4, self._addr4
        orig = Tuple5(cache.get(osrc) or addr(osrc), cache.get(odst) or addr(odst), osport, odport)
        reply = Tuple5(cache.get(rsrc) or addr(rsrc), cache.get(rdst) or addr(rdst), rsport, rdport)
        off = start + layout.size
        shape = self._shapes.get(end - off)
        if shape is None or shape.headers.unpack_from(buf, off) != shape.expected:
            return self._rest(buf, off, end, (onum, orig), (rnum, reply))
        if onum != rnum:
            return None
        if shape.counters is None:
            return ConntrackFlow(onum, orig, reply)
        return ConntrackFlow(onum, orig, reply, *shape.counters.unpack_from(buf, off))

    def _rest(
        self,
        buf: bytes,
        off: int,
        end: int,
        orig: tuple[int, Tuple5] | None,
        reply: tuple[int, Tuple5] | None,
    ) -> ConntrackFlow | None:
        """The general walk over an entry's attributes from `off` (past the tuples when the
        fast path read them). After the fast path, the walk's shape (every attribute's
        header, the counters' place) is remembered for entries of the same length: the next
        one whose headers all match is read with two `struct` calls, no walk."""
        base, heads, counters_at, learnable = off, [], -1, orig is not None
        op = ob = rp = rb = 0
        unpack = _NLA.unpack_from
        while end - off >= 4:
            length, kind = unpack(buf, off)
            if length < 4 or off + length > end:
                raise CtnetlinkError(f"an attribute of {length} bytes at {off} overruns its entry")
            heads.append(off)
            kind &= NLA_TYPE_MASK
            if kind in _ENTRY_WANTED:
                if kind == CTA_TUPLE_ORIG:
                    if orig is None:
                        orig = self._tuple(buf, off + 4, off + length)
                elif kind == CTA_TUPLE_REPLY:
                    if reply is None:
                        reply = self._tuple(buf, off + 4, off + length)
                elif (
                    kind == CTA_COUNTERS_ORIG
                    and counters_at < 0
                    and end - off >= _FAST_COUNTERS.size
                    and _FAST_COUNTERS_H.unpack_from(buf, off) == _FAST_COUNTERS_HEADERS
                ):
                    op, ob, rp, rb = _FAST_COUNTERS_V.unpack_from(buf, off)
                    counters_at = off
                    heads.append(off + 28)
                    off += _FAST_COUNTERS.size
                    continue
                elif kind == CTA_COUNTERS_ORIG:
                    op, ob = _counters(buf, off + 4, off + length)
                    learnable = False
                else:
                    rp, rb = _counters(buf, off + 4, off + length)
                    learnable = False
            off += (length + 3) & ~3
        if learnable and len(self._shapes) < _SHAPES_MAX:
            self._shapes[end - base] = _shape(base, heads, counters_at, buf)
        if orig is None or reply is None or orig[0] != reply[0]:
            return None
        return ConntrackFlow(orig[0], orig[1], reply[1], op, ob, rp, rb)

    def _tuple(self, buf: bytes, start: int, end: int) -> tuple[int, Tuple5] | None:
        """A tuple's nest, walked: (protocol number, tuple), None without addresses or a
        protocol number."""
        t = _attrs(buf, start, end, "a tuple")
        if CTA_TUPLE_IP not in t or CTA_TUPLE_PROTO not in t:
            return None
        ip = _attrs(buf, *t[CTA_TUPLE_IP], "a tuple's addresses")
        proto = _attrs(buf, *t[CTA_TUPLE_PROTO], "a tuple's protocol")
        if CTA_IP_V4_SRC in ip and CTA_IP_V4_DST in ip:
            src = self._addr4(_payload(buf, ip[CTA_IP_V4_SRC], 4, "an IPv4 source"))
            dst = self._addr4(_payload(buf, ip[CTA_IP_V4_DST], 4, "an IPv4 destination"))
        elif CTA_IP_V6_SRC in ip and CTA_IP_V6_DST in ip:
            src = self._addr6(_payload(buf, ip[CTA_IP_V6_SRC], 16, "an IPv6 source"))
            dst = self._addr6(_payload(buf, ip[CTA_IP_V6_DST], 16, "an IPv6 destination"))
        else:
            return None
        if CTA_PROTO_NUM not in proto:
            return None
        num = _payload(buf, proto[CTA_PROTO_NUM], 1, "a protocol number")[0]
        sport = dport = 0
        if CTA_PROTO_SRC_PORT in proto and CTA_PROTO_DST_PORT in proto:
            (sport,) = _U16.unpack(_payload(buf, proto[CTA_PROTO_SRC_PORT], 2, "a port"))
            (dport,) = _U16.unpack(_payload(buf, proto[CTA_PROTO_DST_PORT], 2, "a port"))
        return num, Tuple5(src, dst, sport, dport)

    def _addr4(self, raw: bytes) -> str:
        text = self._v4.get(raw)
        if text is None:
            text = "%d.%d.%d.%d" % (raw[0], raw[1], raw[2], raw[3])  # noqa: UP031 (fastest)
            if len(self._v4) < _ADDRESS_CACHE_MAX:
                self._v4[raw] = text
        return text

    def _addr6(self, raw: bytes) -> str:
        text = self._v6.get(raw)
        if text is None:
            text = str(ipaddress.IPv6Address(raw))
            if len(self._v6) < _ADDRESS_CACHE_MAX:
                self._v6[raw] = text
        return text


def _payload(buf: bytes, span: tuple[int, int], size: int, what: str) -> bytes:
    start, end = span
    if end - start < size:
        raise CtnetlinkError(f"{what} of {end - start} bytes, expected {size}")
    return bytes(buf[start : start + size])


def _counters(buf: bytes, start: int, end: int) -> tuple[int, int]:
    """(packets, bytes) of a counters nest: 64-bit, or the old 32-bit ones."""
    c = _attrs(buf, start, end, "counters")
    values = []
    for wide, narrow in (
        (CTA_COUNTERS_PACKETS, CTA_COUNTERS32_PACKETS),
        (CTA_COUNTERS_BYTES, CTA_COUNTERS32_BYTES),
    ):
        if wide in c:
            (v,) = _U64.unpack(_payload(buf, c[wide], 8, "a 64-bit counter"))
        elif narrow in c:
            (v,) = _U32.unpack(_payload(buf, c[narrow], 4, "a 32-bit counter"))
        else:
            v = 0
        values.append(v)
    return values[0], values[1]


# Writing ---------------------------------------------------------------------------------


def _nla(kind: int, payload: bytes) -> bytes:
    length = 4 + len(payload)
    return _NLA.pack(length, kind) + payload + b"\0" * (-length % 4)


def _nest(kind: int, *parts: bytes) -> bytes:
    return _nla(kind | NLA_F_NESTED, b"".join(parts))


def _message(kind: int, flags: int, seq: int, family: int, attrs: bytes) -> bytes:
    body = _NFGEN.pack(family, 0, 0) + attrs
    return _NLMSG.pack(16 + len(body), kind, flags, seq & 0xFFFFFFFF, 0) + body


def dump_request(
    seq: int,
    family: int = AF_UNSPEC,
    mark: tuple[int, int] | None = None,
    zone: int | None = None,
) -> bytes:
    """The request for a dump of the table (`family` AF_UNSPEC: IPv4 and IPv6), filtered in
    the kernel to entries whose mark under the mask equals the value (`mark` = (value,
    mask)) and to one zone, when given."""
    attrs = b""
    if mark is not None:
        attrs += _nla(CTA_MARK, _U32.pack(mark[0])) + _nla(CTA_MARK_MASK, _U32.pack(mark[1]))
    if zone is not None:
        attrs += _nla(CTA_ZONE, _U16.pack(zone))
    return _message(CT_GET, NLM_F_REQUEST | NLM_F_DUMP, seq, family, attrs)


def _family_of(address: str) -> tuple[int, bytes]:
    a = ipaddress.ip_address(address)
    return (AF_INET if a.version == 4 else AF_INET6), a.packed


def _encode_tuple(kind: int, t: Tuple5, proto: int) -> bytes:
    fs, src = _family_of(t.src)
    fd, dst = _family_of(t.dst)
    if fs != fd:
        raise ValueError(f"{t.src} and {t.dst} are of different families")
    v4 = fs == AF_INET
    ip = _nest(
        CTA_TUPLE_IP,
        _nla(CTA_IP_V4_SRC if v4 else CTA_IP_V6_SRC, src),
        _nla(CTA_IP_V4_DST if v4 else CTA_IP_V6_DST, dst),
    )
    ports = b""
    if proto in (6, 17, 132, 136):
        ports = _nla(CTA_PROTO_SRC_PORT, _U16.pack(t.sport)) + _nla(
            CTA_PROTO_DST_PORT, _U16.pack(t.dport)
        )
    return _nest(kind, ip, _nest(CTA_TUPLE_PROTO, _nla(CTA_PROTO_NUM, bytes([proto])), ports))


def entry_message(
    flow: ConntrackFlow,
    *,
    seq: int = 0,
    flags: int = NLM_F_REQUEST | NLM_F_CREATE | NLM_F_EXCL,
    kind: int = CT_NEW,
    timeout_s: int | None = 600,
    mark: int | None = None,
    zone: int | None = None,
    counters: bool = False,
) -> bytes:
    """An entry as the kernel writes it in a dump (`kind` CT_NEW, `counters`: with the
    flow's counters), or, with the default flags, the request that inserts it (as
    `conntrack -I` does: seen a reply and assured; TCP established)."""
    family, _ = _family_of(flow.orig.src)
    attrs = _encode_tuple(CTA_TUPLE_ORIG, flow.orig, flow.proto) + _encode_tuple(
        CTA_TUPLE_REPLY, flow.reply, flow.proto
    )
    if zone is not None:
        attrs += _nla(CTA_ZONE, _U16.pack(zone))
    attrs += _nla(CTA_STATUS, _U32.pack(IPS_SEEN_REPLY | IPS_ASSURED | IPS_CONFIRMED))
    if timeout_s is not None:
        attrs += _nla(CTA_TIMEOUT, _U32.pack(timeout_s))
    if flow.proto == 6:
        attrs += _nest(
            CTA_PROTOINFO,
            _nest(CTA_PROTOINFO_TCP, _nla(CTA_PROTOINFO_TCP_STATE, bytes([3]))),
        )
    if mark is not None:
        attrs += _nla(CTA_MARK, _U32.pack(mark))
    if counters:
        for nest, packets, nbytes in (
            (CTA_COUNTERS_ORIG, flow.orig_packets, flow.orig_bytes),
            (CTA_COUNTERS_REPLY, flow.reply_packets, flow.reply_bytes),
        ):
            attrs += _nest(
                nest,
                _nla(CTA_COUNTERS_PACKETS, _U64.pack(packets)),
                _nla(CTA_COUNTERS_BYTES, _U64.pack(nbytes)),
            )
    return _message(kind, flags, seq, family, attrs)


def done_message(seq: int = 0) -> bytes:
    """The message that ends a dump."""
    return _NLMSG.pack(20, NLMSG_DONE, NLM_F_MULTI, seq & 0xFFFFFFFF, 0) + _ERRNO.pack(0)


def error_message(code: int, seq: int = 0) -> bytes:
    """The kernel's answer to a request: `code` 0 an acknowledgement, else an errno."""
    return _NLMSG.pack(36, NLMSG_ERROR, 0, seq & 0xFFFFFFFF, 0) + _ERRNO.pack(-code) + b"\0" * 16
