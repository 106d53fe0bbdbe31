"""Small parsers for values in dockmesh.yaml: durations and port mappings."""

from __future__ import annotations

import re

from dockmesh.model.config import PortMapping
from dockmesh.model.durations import parse_duration_ns

__all__ = ["PortMapping", "parse_duration_ns", "parse_port"]


def _port(text: str, what: str) -> int:
    if not re.fullmatch(r"[0-9]{1,5}", text):
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
