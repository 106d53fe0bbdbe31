"""Real processes for the proxy's integration tests: threaded HTTP backends on loopback ports
and `dockmesh proxy` itself as a subprocess on free ports."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import hyperframe.frame


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Backend

    def log_message(self, format: str, *args: Any) -> None:
        return None

    def _body_length(self) -> int:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            n = 0
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b""):
                        pass
                    return n
                left = size
                while left:
                    left -= len(self.rfile.read(min(left, 1 << 20)))
                n += size
                self.rfile.readline()
        length = int(self.headers.get("Content-Length", "0"))
        left = length
        while left:
            left -= len(self.rfile.read(min(left, 1 << 20)))
        return length

    def _send(self, status: int, body: bytes, ctype: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def handle_one(self) -> None:
        if self.headers.get("User-Agent") == "dockmesh-proxy-check":
            self.server.checks += 1  # the proxy's own active check, not a forwarded request
        else:
            self.server.hits += 1
        n = self._body_length()
        if self.path.startswith("/status/"):
            self._send(int(self.path.split("/")[2]), b"as asked\n", "text/plain")
        elif self.path.startswith("/big/"):
            self._send(200, b"b" * int(self.path.split("/")[2]), "text/plain")
        elif self.path == "/stream":
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for i in range(50):
                chunk = b"%d," % i * 100
                self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            self.wfile.write(b"0\r\n\r\n")
        elif self.path == "/ws" and self.headers.get("Upgrade", "").lower() == "websocket":
            self.send_response(101)
            self.send_header("Upgrade", "websocket")
            self.send_header("Connection", "Upgrade")
            self.end_headers()
            self.wfile.flush()
            while data := self.connection.recv(65536):
                self.connection.sendall(data.upper())
            self.close_connection = True
        else:
            doc = {
                "backend": self.server.name,
                "method": self.command,
                "path": self.path,
                "headers": {k.lower(): v for k, v in self.headers.items()},
                "received": n,
            }
            self._send(200, json.dumps(doc).encode())

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = handle_one


class Backend(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, name: str) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.name = name
        self.hits = 0  # requests forwarded by the proxy
        self.checks = 0
        self.port = self.server_address[1]
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


@contextlib.contextmanager
def backends(n: int) -> Iterator[list[Backend]]:
    started = [Backend(f"be{i}") for i in range(1, n + 1)]
    try:
        yield started
    finally:
        for b in started:
            b.stop()


class ProxyProc:
    def __init__(self, tmp: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.admin_port = free_port()
        self.log = tmp / f"proxy-{self.port}.log"
        self.proc = subprocess.Popen(
            [
                sys.executable, "-m", "dockmesh", "proxy",
                "--listen", f"127.0.0.1:{self.port}",
                "--admin", f"127.0.0.1:{self.admin_port}",
                *args,
            ],
            stdout=self.log.open("ab"),
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        )  # fmt: skip
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                self.status()
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                if self.proc.poll() is not None:
                    raise AssertionError(self.log.read_text()) from None
                time.sleep(0.1)
        raise AssertionError("proxy did not answer: " + self.log.read_text())

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def status(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}/status", timeout=5) as r:
            doc: dict[str, Any] = json.load(r)
            return doc

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}/metrics", timeout=5) as r:
            return str(r.read().decode())

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def raw(port: int, data: bytes, timeout: float = 5.0) -> bytes:
    """Sends `data` on a fresh connection and reads until the proxy closes it."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        out = b""
        with contextlib.suppress(TimeoutError, ConnectionResetError):
            while chunk := s.recv(65536):
                out += chunk
        return out


def ask_raw(port: int, data: bytes) -> tuple[int, dict[str, Any] | None, bytes]:
    """(status, the backend's echo or None, the raw response) of `data` on its own
    connection."""
    out = raw(port, data)
    status = int(out.split(b" ", 2)[1]) if out else 0
    body = out.partition(b"\r\n\r\n")[2]
    doc = json.loads(body) if status == 200 and body.startswith(b"{") else None
    return status, doc, out


@contextlib.contextmanager
def vhost_proxy(tmp: Path) -> Iterator[tuple[ProxyProc, Backend, Backend]]:
    """A proxy with two virtual hosts: `admin.internal` (any path) and `public` (under /p/
    only), each its own backend."""
    with backends(2) as (admin, p):
        cfg = tmp / "routes.yaml"
        cfg.write_text(
            "routes:\n"
            f"  - host: admin.internal\n    backends: [{admin.url}]\n"
            f"  - host: public\n    prefix: /p/\n    backends: [{p.url}]\n"
        )
        proxy = ProxyProc(tmp, "--config", str(cfg))
        try:
            yield proxy, admin, p
        finally:
            proxy.stop()


H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def h2_frames(s: socket.socket, until: float) -> list[hyperframe.frame.Frame]:
    """The HTTP/2 frames read on `s` until the proxy closes or `until` (monotonic)."""
    got = b""
    with contextlib.suppress(OSError):
        while time.monotonic() < until:
            s.settimeout(max(0.05, until - time.monotonic()))
            data = s.recv(65536)
            if not data:
                break
            got += data
    frames = []
    view = memoryview(got)
    while len(view) >= 9:
        frame, length = hyperframe.frame.Frame.parse_frame_header(view[:9])
        if len(view) < 9 + length:
            break
        frame.parse_body(view[9 : 9 + length])
        frames.append(frame)
        view = view[9 + length :]
    return frames


def h2c_socket(port: int) -> socket.socket:
    """A connection to the proxy at `port` that has sent HTTP/2's preface and SETTINGS."""
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.sendall(H2_PREFACE + hyperframe.frame.SettingsFrame(0).serialize())
    return s
