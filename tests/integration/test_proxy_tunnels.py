"""WebSocket tunnels through `dockmesh proxy` as a process, with aiohttp on both ends (a
WebSocket echo backend on loopback, `ws_connect` as the client): the handshake a browser
checks is accepted, and a tunnel ends, its file descriptors and upstream slot returned, as soon
as either side closes (not after `tunnel_idle`)."""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from tests.integration.proxyenv import ProxyProc, backends


class WsBackend:
    """An aiohttp app on a loopback port, in a thread of its own: /ws echoes in upper case,
    anything else answers 200."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.runner: web.AppRunner | None = None
        self.port = 0
        ready = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(ready,), daemon=True)
        self.thread.start()
        assert ready.wait(10)

    def _run(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)

        async def ws(request: web.Request) -> web.StreamResponse:
            sock = web.WebSocketResponse()
            await sock.prepare(request)
            async for msg in sock:
                if msg.type == aiohttp.WSMsgType.TEXT:
                    await sock.send_str(msg.data.upper())
            return sock

        async def plain(request: web.Request) -> web.Response:
            return web.Response(text="ok")

        async def start() -> None:
            app = web.Application()
            app.router.add_get("/ws", ws)
            app.router.add_get("/", plain)
            self.runner = web.AppRunner(app)
            await self.runner.setup()
            site = web.TCPSite(self.runner, "127.0.0.1", 0)
            await site.start()
            server = site._server
            assert server is not None
            self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]

        self.loop.run_until_complete(start())
        ready.set()
        self.loop.run_forever()

    def stop(self) -> None:
        async def cleanup() -> None:
            if self.runner is not None:
                await self.runner.cleanup()

        asyncio.run_coroutine_threadsafe(cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture
def ws_proxy(tmp_path: Path) -> Iterator[ProxyProc]:
    backend = WsBackend()
    try:
        p = ProxyProc(tmp_path, "--backend", f"http://127.0.0.1:{backend.port}")
        try:
            yield p
        finally:
            p.stop()
    finally:
        backend.stop()


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def plain_get(proxy: ProxyProc) -> int:
    with urllib.request.urlopen(proxy.url + "/", timeout=10) as r:
        return int(r.status)


async def session(url: str, http: aiohttp.ClientSession, word: str) -> None:
    async with http.ws_connect(url) as ws:
        await ws.send_str(word)
        msg = await ws.receive(timeout=10)
        assert msg.type == aiohttp.WSMsgType.TEXT and msg.data == word.upper()


def test_aiohttp_ws_connect_through_the_proxy(ws_proxy: ProxyProc) -> None:
    async def main() -> None:
        async with aiohttp.ClientSession() as http:
            await session(ws_proxy.url + "/ws", http, "hello")

    asyncio.run(main())


def test_the_101_keeps_connection_upgrade(ws_proxy: ProxyProc) -> None:
    with socket.create_connection(("127.0.0.1", ws_proxy.port), timeout=5) as s:
        s.sendall(
            b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
            b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        )
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = s.recv(4096)
            assert chunk, head
            head += chunk
    fields = head.split(b"\r\n\r\n")[0].lower().split(b"\r\n")
    assert fields[0].startswith(b"http/1.1 101"), head
    connection = [f for f in fields if f.startswith(b"connection:")]
    assert connection and all(b"upgrade" in f for f in connection), head
    assert b"upgrade: websocket" in fields, head
    assert b"sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo=" in fields, head


def test_sessions_opened_and_closed_give_their_descriptors_back(ws_proxy: ProxyProc) -> None:
    pid = ws_proxy.proc.pid
    assert plain_get(ws_proxy) == 200
    baseline = open_fds(pid)
    n = 2000

    async def main() -> None:
        # Sessions one after another in batches: a leak shows as one descriptor pair each,
        # and past the per-upstream limit (1,024) as 503s to everything.
        connector = aiohttp.TCPConnector(limit=50, force_close=True)
        async with aiohttp.ClientSession(connector=connector) as http:
            for start in range(0, n, 50):
                await asyncio.gather(
                    *(
                        session(ws_proxy.url + "/ws", http, f"w{i}")
                        for i in range(start, start + 50)
                    )
                )

    asyncio.run(main())
    deadline = time.monotonic() + 10
    after = open_fds(pid)
    while after > baseline + 10 and time.monotonic() < deadline:
        time.sleep(0.2)
        after = open_fds(pid)
    assert after <= baseline + 10, f"{after} descriptors open after {n} sessions, {baseline} before"
    assert plain_get(ws_proxy) == 200
    print(f"descriptors: {baseline} before, {after} after {n} sessions")


def _read_to_eof(s: socket.socket) -> bytes:
    got = b""
    while chunk := s.recv(4096):  # until the proxy's EOF (a timeout fails)
        got += chunk
    return got


UPGRADE = b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"


def test_a_half_closed_tunnel_still_answers_then_ends(tmp_path: Path) -> None:
    """The client's EOF goes on to the upstream (which then answers and closes): what the
    upstream sent after it still arrives, then the proxy closes the client's side too; an EOF
    sent before the 101 goes into the tunnel as well."""
    with backends(1) as (backend,):
        proxy = ProxyProc(tmp_path, "--backend", backend.url)
        try:
            with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as s:
                s.sendall(UPGRADE)
                head = b""
                while b"\r\n\r\n" not in head:
                    head += s.recv(4096)
                s.sendall(b"hello")
                s.shutdown(socket.SHUT_WR)
                got = head + _read_to_eof(s)
            assert got.startswith(b"HTTP/1.1 101") and got.endswith(b"HELLO"), got
            with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as s:
                s.sendall(UPGRADE)
                s.shutdown(socket.SHUT_WR)
                assert _read_to_eof(s).startswith(b"HTTP/1.1 101")
        finally:
            proxy.stop()
