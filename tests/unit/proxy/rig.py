"""A proxy without sockets for the unit tests: clusters on a clock the test moves, a `Proxy`
on an event loop that is never run (the test calls the protocols' callbacks itself), pooled
upstream connections and client connections on recording transports."""

from __future__ import annotations

import asyncio
import random
from typing import Any, cast

from dockmesh.proxy.cluster import Cluster
from dockmesh.proxy.server import ClientConn, Proxy, UpstreamConn
from dockmesh.proxy.settings import ProxySettings, Route
from dockmesh.testing.clock import ManualClock
from dockmesh.testing.transport import FakeTransport

REQUEST = b"GET /a HTTP/1.1\r\nHost: h.test\r\nAccept: */*\r\n\r\n"
RESPONSE = (
    b"HTTP/1.1 200 OK\r\nServer: t\r\nContent-Length: 3\r\nConnection: keep-alive\r\n\r\nok\n"
)


def cluster(
    n: int = 2, balance: str = "round_robin", clock: ManualClock | None = None, seed: int = 0
) -> Cluster[Any]:
    """A cluster of `n` upstreams, 127.0.0.1:1 … :n."""
    c: Cluster[Any] = Cluster(
        "b", balance, clock=clock or ManualClock(1000.0), rng=random.Random(seed)
    )
    c.set_members({f"127.0.0.1:{i}": 1 for i in range(1, n + 1)})
    return c


def transport(t: asyncio.BaseTransport | None) -> FakeTransport:
    assert t is not None
    return cast(FakeTransport, t)


def pool(proxy: Proxy, c: Cluster[Any]) -> None:
    """One idle connection per upstream of `c`."""
    for up in c.upstreams.values():
        conn = UpstreamConn(proxy, up)
        conn.connection_made(cast(Any, FakeTransport(proxy.flush)))
        up.connections += 1
        up.idle.append(conn)


def client(proxy: Proxy) -> ClientConn:
    conn = ClientConn(proxy)
    conn.connection_made(cast(Any, FakeTransport(proxy.flush)))
    return conn


def setup(
    loop: asyncio.AbstractEventLoop, n: int = 2, **settings: Any
) -> tuple[Proxy, Cluster[Any], ClientConn]:
    """A proxy with one catch-all route to a cluster of `n` upstreams, each with one pooled
    connection, and a client connected to it."""
    c = cluster(n)
    proxy = Proxy(ProxySettings(routes=[Route(cluster=c)], **settings), loop)
    pool(proxy, c)
    return proxy, c, client(proxy)


def out(t: asyncio.BaseTransport | None) -> bytes:
    return transport(t).data()
