"""The questions another host's command line asks this agent about its own containers
(`/v1/dockmesh/stats`, `/v1/dockmesh/doctor`, `/v1/dockmesh/flows`, `/v1/dockmesh/probe`),
parsed from the raw query string. Pure: bytes in, a question out, or an `ApiError` 400 whose
reason is one line.

A container is named as Docker names one: a name (`[a-zA-Z0-9][a-zA-Z0-9_.-]*`, a leading `/`
allowed as the engine reports it) or an id; nothing else reaches the topology's lookup. The
work a question may cost is bounded here: a few containers at once, and a doctor's waits
under a few seconds.
"""

from __future__ import annotations

import ipaddress
import math
import re
from dataclasses import dataclass
from urllib.parse import unquote_to_bytes

from dockmesh.api.errors import bad_request, shown

MAX_QUERY_BYTES = 16 * 1024
MAX_NAME = 255
MAX_CONTAINERS = 64  # names in one stats question
DOCTOR_TIMEOUT_S = 1.0
MAX_DOCTOR_TIMEOUT_S = 5.0
MIN_DOCTOR_TIMEOUT_S = 0.05
FLOWS_BY = ("container", "service")
PROBE_PROTOCOLS = ("icmp", "tcp", "udp")
PROBE_PAYLOADS = ("datagram", "dns")
PROBE_TIMEOUT_S = 1.0
MAX_PROBE_TIMEOUT_S = 10.0  # and a second pass of at most twice as long, when confirming
MAX_ADDRESS = 64
_NAME = re.compile(r"/?[A-Za-z0-9][A-Za-z0-9_.-]*")
_KNOWN = {
    "stats": frozenset({"container"}),
    "doctor": frozenset({"container", "timeout"}),
    "flows": frozenset({"by"}),
    "probe": frozenset(
        {"container", "address", "port", "proto", "timeout", "payload", "expect_reply", "expected"}
    ),
}


@dataclass(frozen=True, slots=True)
class StatsQuestion:
    containers: tuple[str, ...]  # empty: every container of the agent's engines


@dataclass(frozen=True, slots=True)
class DoctorQuestion:
    container: str
    timeout_s: float


@dataclass(frozen=True, slots=True)
class FlowsQuestion:
    by: str


@dataclass(frozen=True, slots=True)
class ProbeQuestion:
    """One probe from `container`'s namespace to `address`: an ICMP echo, a TCP connect or a
    UDP datagram (`payload` "dns": a DNS query a server answers from itself). `expected`:
    the asker's verdict; a first observation that disagrees is tried again (as `matrix`
    confirms), None: one pass."""

    container: str
    address: str
    protocol: str
    port: int | None
    timeout_s: float
    payload: str = "datagram"
    expect_reply: bool = True
    expected: bool | None = None


def _pairs(raw: bytes, kind: str) -> list[tuple[str, bytes]]:
    """`a=1&b=2` → [("a", b"1"), ("b", b"2")], values still bytes (decoded by whoever knows
    what they must be). An unknown parameter is refused: it would ask a question this agent
    does not answer."""
    if len(raw) > MAX_QUERY_BYTES:
        raise bad_request(f"the query string is longer than {MAX_QUERY_BYTES} bytes")
    out: list[tuple[str, bytes]] = []
    for part in raw.split(b"&"):
        if not part:
            continue
        key_raw, _, value = part.partition(b"=")
        key_bytes = unquote_to_bytes(key_raw.replace(b"+", b" "))
        try:
            key = key_bytes.decode("ascii")
        except UnicodeDecodeError:
            raise bad_request(f"unknown parameter {shown(key_bytes)}") from None
        if key not in _KNOWN[kind]:
            raise bad_request(f"unknown parameter {shown(key)}")
        out.append((key, unquote_to_bytes(value.replace(b"+", b" "))))
    return out


def container_name(value: bytes) -> str:
    """A container's name or id from a client's bytes, or a 400 saying why not."""
    if not value:
        raise bad_request("container: empty")
    if len(value) > MAX_NAME + 1:
        raise bad_request(f"container: longer than {MAX_NAME} characters")
    try:
        text = value.decode("ascii")
    except UnicodeDecodeError:
        raise bad_request(f"container {shown(value)}: not a container name or id") from None
    if not _NAME.fullmatch(text):
        raise bad_request(f"container {shown(text)}: not a container name or id")
    return text.removeprefix("/")


def _one(pairs: list[tuple[str, bytes]], key: str) -> bytes | None:
    values = [v for k, v in pairs if k == key]
    if len(values) > 1:
        raise bad_request(f"{key}: given {len(values)} times")
    return values[0] if values else None


def parse_stats(raw: bytes) -> StatsQuestion:
    pairs = _pairs(raw, "stats")
    if len(pairs) > MAX_CONTAINERS:
        raise bad_request(f"container: at most {MAX_CONTAINERS} in one question")
    names = tuple(dict.fromkeys(container_name(v) for _, v in pairs))
    return StatsQuestion(names)


def parse_timeout(
    value: bytes, low: float = MIN_DOCTOR_TIMEOUT_S, high: float = MAX_DOCTOR_TIMEOUT_S
) -> float:
    """`1.5` or `1.5s` (seconds) within the bounds (the doctor's by default)."""
    text = value.decode("ascii", "replace").removesuffix("s")
    try:
        seconds = float(text)
    except ValueError:
        raise bad_request(f"timeout {shown(value)}: not a number of seconds") from None
    if not math.isfinite(seconds) or not (low <= seconds <= high):
        raise bad_request(f"timeout {shown(value)}: from {low:g} to {high:g} seconds")
    return seconds


def parse_doctor(raw: bytes) -> DoctorQuestion:
    pairs = _pairs(raw, "doctor")
    name = _one(pairs, "container")
    if name is None:
        raise bad_request("container: missing (?container=NAME)")
    timeout = _one(pairs, "timeout")
    return DoctorQuestion(
        container_name(name), DOCTOR_TIMEOUT_S if timeout is None else parse_timeout(timeout)
    )


def parse_flows(raw: bytes) -> FlowsQuestion:
    by = _one(_pairs(raw, "flows"), "by")
    if by is None:
        return FlowsQuestion("container")
    text = by.decode("ascii", "replace")
    if text not in FLOWS_BY:
        raise bad_request(f"by {shown(by)}: 'container' or 'service'")
    return FlowsQuestion(text)


def _flag(key: str, value: bytes) -> bool:
    if value in (b"1", b"true"):
        return True
    if value in (b"0", b"false"):
        return False
    raise bad_request(f"{key} {shown(value)}: true or false")


def probe_address(value: bytes) -> str:
    """An IPv4 or IPv6 address (no name, no scope, no port), in its compressed form."""
    if not value:
        raise bad_request("address: empty")
    if len(value) > MAX_ADDRESS:
        raise bad_request(f"address: longer than {MAX_ADDRESS} characters")
    text = value.decode("ascii", "replace")
    try:
        if "%" in text:  # a scope names an interface of the asker's machine, not of this one
            raise ValueError(text)
        addr = ipaddress.ip_address(text)
    except ValueError:
        raise bad_request(f"address {shown(value)}: not an IPv4 or IPv6 address") from None
    if addr.is_unspecified or addr.is_multicast:
        # 0.0.0.0 is this namespace; a multicast address is many hosts, not one destination.
        raise bad_request(f"address {shown(value)}: not one destination's address")
    return str(addr)


def parse_probe(raw: bytes) -> ProbeQuestion:
    pairs = _pairs(raw, "probe")
    name, address = _one(pairs, "container"), _one(pairs, "address")
    if name is None:
        raise bad_request("container: missing (?container=NAME)")
    if address is None:
        raise bad_request("address: missing (?address=IP)")
    proto_raw = _one(pairs, "proto")
    port_raw = _one(pairs, "port")
    proto = "tcp" if port_raw is not None else "icmp"
    if proto_raw is not None:
        proto = proto_raw.decode("ascii", "replace")
        if proto not in PROBE_PROTOCOLS:
            raise bad_request(f"proto {shown(proto_raw)}: 'icmp', 'tcp' or 'udp'")
    port: int | None = None
    if proto == "icmp":
        if port_raw is not None:
            raise bad_request("port: an ICMP echo has none")
    else:
        if port_raw is None:
            raise bad_request(f"port: missing ({proto} needs ?port=N)")
        if not (port_raw.isdigit() and len(port_raw) <= 5 and 1 <= int(port_raw) <= 65535):
            raise bad_request(f"port {shown(port_raw)}: from 1 to 65535")
        port = int(port_raw)
    payload_raw, reply_raw = _one(pairs, "payload"), _one(pairs, "expect_reply")
    if proto != "udp" and (payload_raw is not None or reply_raw is not None):
        raise bad_request("payload and expect_reply: for a UDP probe only")
    payload = "datagram"
    if payload_raw is not None:
        payload = payload_raw.decode("ascii", "replace")
        if payload not in PROBE_PAYLOADS:
            raise bad_request(f"payload {shown(payload_raw)}: 'datagram' or 'dns'")
    timeout = _one(pairs, "timeout")
    expected = _one(pairs, "expected")
    return ProbeQuestion(
        container_name(name),
        probe_address(address),
        proto,
        port,
        PROBE_TIMEOUT_S
        if timeout is None
        else parse_timeout(timeout, MIN_DOCTOR_TIMEOUT_S, MAX_PROBE_TIMEOUT_S),
        payload,
        True if reply_raw is None else _flag("expect_reply", reply_raw),
        None if expected is None else _flag("expected", expected),
    )
