"""The agent is a peer, not an authority: whatever a server at $DOCKMESH_AGENT sends, the
commands get a topology or None (then they read the engine) — in bounded time."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from dockmesh import agentclient
from dockmesh.model.topology import EngineInfo, Topology

GOOD = Topology(3, (EngineInfo("local", "unix:///x", "20.10"),), (), ()).to_json()


def serve(handler: Callable[[socket.socket], None]) -> Iterator[str]:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    stop = threading.Event()

    def loop() -> None:
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except OSError:
                continue
            threading.Thread(target=handler, args=(conn,), daemon=True).start()

    t = threading.Thread(target=loop, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.getsockname()[1]}"
    stop.set()
    t.join()
    srv.close()


def replying(body: bytes, drip_s: float = 0.0) -> Callable[[socket.socket], None]:
    def handle(conn: socket.socket) -> None:
        try:
            conn.recv(65536)
            head = f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            if drip_s:
                for b in head + body:
                    conn.sendall(bytes([b]))
                    time.sleep(drip_s)
            else:
                conn.sendall(head + body)
        except OSError:
            pass
        finally:
            conn.close()

    return handle


@pytest.fixture(autouse=True)
def fresh(monkeypatch: pytest.MonkeyPatch) -> None:
    agentclient._answers.clear()
    monkeypatch.setattr(agentclient, "DEADLINE_S", 1.0)


@pytest.mark.parametrize(
    "body",
    [
        b'{"hello": "world"}',
        b"[1, 2, 3]",
        b'"just a string"',
        b'{"version": "x", "engines": "no", "networks": {}, "containers": 7}',
        json.dumps({**GOOD, "version": float("nan")}).encode(),
        b"[" * 200_000 + b"]" * 200_000,
        b"\xff\xfe not even text",
    ],
)
def test_anything_but_a_topology_is_none(monkeypatch: pytest.MonkeyPatch, body: bytes) -> None:
    for url in serve(replying(body)):
        monkeypatch.setenv("DOCKMESH_AGENT", url)
        assert agentclient.agent_topology() is None


def test_a_topology_is_read_and_asked_once(monkeypatch: pytest.MonkeyPatch) -> None:
    for url in serve(replying(json.dumps(GOOD).encode())):
        monkeypatch.setenv("DOCKMESH_AGENT", url)
        topo = agentclient.agent_topology()
        assert topo is not None and topo.to_json() == GOOD
    monkeypatch.setenv("DOCKMESH_AGENT", "http://127.0.0.1:1")
    assert agentclient.agent_topology() is not None  # the answer of this process stands


def test_a_slow_server_costs_one_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    for url in serve(replying(json.dumps(GOOD).encode(), drip_s=0.2)):
        monkeypatch.setenv("DOCKMESH_AGENT", url)
        # The deadline (1 s here) ends the exchange, not the server; asked once.
        assert agentclient.agent_topology() is None
        assert agentclient._answers == {agentclient.TOPOLOGY_PATH: None}


@pytest.mark.parametrize("url", ["http://127.0.0.1:99999", "http://[::1", "ftp://x", "garbage"])
def test_a_malformed_agent_url_is_none(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    monkeypatch.setenv("DOCKMESH_AGENT", url)
    assert agentclient.agent_topology() is None
