"""The data plane's settings: timeouts, limits and routes, as the composition root (`run`)
builds them from the flags and the routes file. Plain values; pure."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any

from dockmesh.proxy import http1
from dockmesh.proxy.cluster import Cluster
from dockmesh.proxy.middleware import Chain


@dataclass
class Timeouts:
    connect_s: float = 3.0
    response_header_s: float = 30.0
    client_header_s: float = 10.0
    idle_s: float = 60.0
    tunnel_idle_s: float = 3600.0
    # A tunnel one side half-closed: how long the other side's EOF is awaited.
    tunnel_half_closed_s: float = 30.0
    pool_idle_s: float = 15.0
    # A request body: each `Limits.request_buffer_bytes` of it (or all of a smaller one)
    # must come within this, else 408 (a minimum rate: slowloris bodies end).
    client_body_s: float = 30.0
    # A client that takes none of its response for this long is closed (nginx's
    # send_timeout): it would hold its upstream connection and the bytes waiting for it.
    client_send_s: float = 60.0


@dataclass
class Limits:
    max_head_bytes: int = http1.MAX_HEAD_BYTES
    max_client_connections: int = 10_000
    max_connections_per_upstream: int = 1024
    # Bytes of requests a client sent ahead while one of its requests is in flight. Past
    # this (or one head of `max_head_bytes`, if larger), the client is not read until its
    # exchange ends: the backlog costs a copy per request served from it, so it stays small.
    max_pipelined_bytes: int = 64 * 1024
    # A request body up to this is read whole before an upstream is asked for (nginx's
    # client_body_buffer_size): a slow upload holds no upstream connection. A larger one
    # streams once this much is in.
    request_buffer_bytes: int = 64 * 1024
    # Connections from one client address (IPv6: its /64) at once; 0: no limit.
    max_connections_per_client: int = 0
    # Upstream HTTP/1.1 connections one client HTTP/2 connection's streams hold at once (an
    # HTTP/1.1 client holds one): its other streams wait for a slot.
    max_upstream_per_h2_connection: int = 16
    # Bytes held for clients in all (what they sent ahead, bodies being buffered, responses
    # they have not taken yet), per worker: near it, idle keep-alives are closed, then past
    # it the connections holding the most (`guard.shed`).
    max_buffered_bytes: int = 64 * 1024 * 1024


@dataclass
class Route:
    # The server's connections are its pool's kind: it narrows the type where it reads them.
    cluster: Cluster[Any]
    host: bytes | None = None  # lower-case, no port; None: any
    prefix: bytes = b"/"
    # Removed from the front of the path before forwarding (a label's strip_prefix).
    strip: bytes | None = None
    # The routes file's middlewares this route's requests go through, by name.
    middlewares: tuple[str, ...] = ()
    # Its middlewares, compiled (None: none, and the fast lane may take its requests).
    chain: Chain | None = None
    name: str = ""  # as the access log names it


@dataclass
class ProxySettings:
    routes: list[Route]
    timeouts: Timeouts = field(default_factory=Timeouts)
    limits: Limits = field(default_factory=Limits)
    # hash:<header> / hash:cookie:<name> / hash:ip, per cluster name.
    hash_keys: dict[str, str] = field(default_factory=dict)
    # Peers whose X-Forwarded-For is appended to and whose Forwarded is kept (proxies in
    # front of this one); from anyone else both are replaced. None by default.
    trusted_proxies: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = field(
        default_factory=list
    )

    def trusts(self, ip: bytes) -> bool:
        if not self.trusted_proxies:
            return False
        try:
            addr = ipaddress.ip_address(ip.decode())
        except ValueError:
            return False
        return any(addr in net for net in self.trusted_proxies)
