"""Small parsers for values in dockmesh.yaml: durations and port mappings."""

from __future__ import annotations

import re
from dataclasses import dataclass

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ns|us|ms|s|m|h)")
_UNIT_NS = {
    "ns": 1,
    "us": 1_000,
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60_000_000_000,
    "h": 3_600_000_000_000,
}


def parse_duration_ns(text: str | int | float) -> int:
    """`2s`, `500ms`, `1m30s`, `1.5s` (Go's and compose's forms) or a number of seconds."""
    if isinstance(text, bool):
        raise ValueError(f"{text!r} is not a duration")
    if isinstance(text, (int, float)):
        if text < 0:
            raise ValueError(f"{text!r} is negative")
        return int(text * 1_000_000_000)
    s = text.strip()
    if not s:
        raise ValueError("empty duration")
    pos, total = 0, 0.0
    for m in _DURATION.finditer(s):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNIT_NS[m.group(2)]
        pos = m.end()
    if pos != len(s):
        raise ValueError(f"{text!r} is not a duration (e.g. 2s, 500ms, 1m30s)")
    return int(total)


@dataclass(frozen=True, slots=True)
class PortMapping:
    container_port: int
    protocol: str = "tcp"
    host_ip: str | None = None
    host_port: int | None = None  # None: let the engine pick

    def key(self) -> str:
        return f"{self.container_port}/{self.protocol}"


def _port(text: str, what: str) -> int:
    if not text.isdigit():
        raise ValueError(f"{what} {text!r} is not a port number")
    n = int(text)
    if not 1 <= n <= 65535:
        raise ValueError(f"{what} {n} is outside 1-65535")
    return n


def parse_port(spec: str | int) -> PortMapping:
    """`8080`, `18080:8080`, `127.0.0.1:18080:8080`, `127.0.0.1::8080`, `[::1]:80:80`, `/udp`."""
    if isinstance(spec, bool):
        raise ValueError(f"{spec!r} is not a port mapping")
    if isinstance(spec, int):
        return PortMapping(_port(str(spec), "container port"))
    text = spec.strip()
    body, _, proto = text.partition("/")
    proto = proto or "tcp"
    if proto not in ("tcp", "udp", "sctp"):
        raise ValueError(f"protocol {proto!r} is not tcp, udp or sctp")
    host_ip: str | None = None
    if body.startswith("["):
        end = body.find("]")
        if end < 0 or body[end + 1 : end + 2] != ":":
            raise ValueError(f"{spec!r}: malformed IPv6 host address")
        host_ip, body = body[1:end], body[end + 2 :]
        parts = body.split(":")
        if len(parts) != 2:
            raise ValueError(f"{spec!r}: expected [IP]:HOST_PORT:CONTAINER_PORT")
        host, cont = parts
    else:
        parts = body.split(":")
        if len(parts) == 1:
            host, cont = "", parts[0]
        elif len(parts) == 2:
            host, cont = parts
        elif len(parts) == 3:
            host_ip, host, cont = parts
        else:
            raise ValueError(f"{spec!r}: expected [IP:]HOST_PORT:CONTAINER_PORT")
    if host_ip == "":
        host_ip = None
    if host_ip is not None:
        import ipaddress

        try:
            ipaddress.ip_address(host_ip)
        except ValueError:
            raise ValueError(f"{spec!r}: host address {host_ip!r} is not an IP address") from None
    return PortMapping(
        _port(cont, "container port"),
        proto,
        host_ip,
        _port(host, "host port") if host else None,
    )
