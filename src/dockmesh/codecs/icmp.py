"""ICMP echo on the wire (RFC 792; ICMPv6's, RFC 4443), for the probes that ping from inside
namespaces. Pure."""

from __future__ import annotations

import struct

ICMP_ECHO_REQUEST, ICMP_ECHO_REPLY = 8, 0
ICMP6_ECHO_REQUEST, ICMP6_ECHO_REPLY = 128, 129


def checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071) of `data`."""
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return int(~total & 0xFFFF)


def echo_request(ident: int, seq: int, payload: bytes = b"dockmesh-probe..") -> bytes:
    head = struct.pack("!BBHHH", ICMP_ECHO_REQUEST, 0, 0, ident, seq)
    sum_ = checksum(head + payload)
    return struct.pack("!BBHHH", ICMP_ECHO_REQUEST, 0, sum_, ident, seq) + payload


def echo_reply(packet: bytes) -> tuple[int, int] | None:
    """(identifier, sequence) of an IPv4 packet (as a raw socket reads it) carrying an echo
    reply, else None."""
    if len(packet) < 20:
        return None
    ihl = (packet[0] & 0x0F) * 4
    if len(packet) < ihl + 8:
        return None
    kind, _code, _sum, ident, seq = struct.unpack("!BBHHH", packet[ihl : ihl + 8])
    return (ident, seq) if kind == ICMP_ECHO_REPLY else None


def echo6_request(ident: int, seq: int, payload: bytes = b"dockmesh-probe..") -> bytes:
    """An ICMPv6 echo request with a zero checksum: the kernel computes ICMPv6's (it covers
    a pseudo-header of addresses the sender does not choose) on every raw ICMPv6 socket."""
    return struct.pack("!BBHHH", ICMP6_ECHO_REQUEST, 0, 0, ident, seq) + payload


def echo6_reply(packet: bytes) -> tuple[int, int] | None:
    """(identifier, sequence) of an ICMPv6 message (a raw ICMPv6 socket reads no IPv6 header)
    that is an echo reply, else None."""
    if len(packet) < 8:
        return None
    kind, _code, _sum, ident, seq = struct.unpack("!BBHHH", packet[:8])
    return (ident, seq) if kind == ICMP6_ECHO_REPLY else None
