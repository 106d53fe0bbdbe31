"""`UnixGets` against a small HTTP server on a unix socket: JSON, a 404 as None, another
status as the engine's reason, one kept-alive connection per thread, an absent engine."""

from __future__ import annotations

import http.server
import json
import socketserver
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dockmesh.engine.unixhttp import UnixGets
from dockmesh.errors import EngineError


class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    connections = 0


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, Server]]:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def address_string(self) -> str:
            return "unix"

        def setup(self) -> None:
            super().setup()
            srv.connections += 1

        def do_GET(self) -> None:
            answers: dict[str, tuple[int, Any]] = {
                "/ok": (200, {"Id": "x", "n": [1, 2]}),
                "/gone": (404, {"message": "No such container: gone"}),
                "/fire": (500, {"message": "the engine\nis on fire"}),
                "/plain": (503, "busy"),
                "/bye": (200, {"bye": True}),
            }
            status, doc = answers[self.path]
            body = (json.dumps(doc) if not isinstance(doc, str) else doc).encode()
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            if self.path == "/bye":  # a keep-alive connection the engine then closes
                self.close_connection = True

    path = str(tmp_path / "e.sock")
    srv = Server(path, Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield path, srv
    srv.shutdown()
    srv.server_close()


def test_answers_and_statuses(server: tuple[str, Server]) -> None:
    path, _ = server
    gets = UnixGets(path)
    try:
        assert gets.get_json("/ok") == {"Id": "x", "n": [1, 2]}
        assert gets.get_json("/gone") is None
        with pytest.raises(EngineError, match=r"^the engine is on fire$"):
            gets.get_json("/fire")
        with pytest.raises(EngineError, match=r"^busy$"):
            gets.get_json("/plain")
    finally:
        gets.close()


def test_one_kept_alive_connection_per_thread(server: tuple[str, Server]) -> None:
    path, srv = server
    gets = UnixGets(path)
    try:
        for _ in range(20):
            gets.get_json("/ok")
        threads = [
            threading.Thread(target=lambda: [gets.get_json("/ok") for _ in range(10)])
            for _ in range(3)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert srv.connections == 4
    finally:
        gets.close()


def test_an_absent_engine_is_an_os_error(tmp_path: Path) -> None:
    gets = UnixGets(str(tmp_path / "nothing.sock"))
    with pytest.raises(FileNotFoundError):
        gets.get_json("/ok")
    gets.close()


def test_a_kept_alive_connection_the_engine_closed_is_asked_again_on_a_new_one(
    server: tuple[str, Server],
) -> None:
    """An engine that restarted closed every connection: the next GET on a kept one finds it
    closed and is asked once more on a new connection, not reported as the engine gone."""
    path, srv = server
    gets = UnixGets(path)
    try:
        assert gets.get_json("/bye") == {"bye": True}
        assert gets.get_json("/ok") == {"Id": "x", "n": [1, 2]}
        assert srv.connections == 2
    finally:
        gets.close()
