"""An adversary on TLS, HTTP/2, the watched routes file and the takeover's run directory:
HTTP/2 connections (h2c and h2 by ALPN) held to `max_connections` as HTTP/1.1's are, header
fields HTTP/2 forbids never reaching a backend, a flood of TLS clients that never finish
their handshake beside a normal client, and a routes file grown past its bound refused whole
rather than read cut short."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import hpack
import hyperframe.frame
import pytest

from tests.integration.proxyenv import (
    H2_PREFACE,
    Backend,
    ProxyProc,
    backends,
    free_port,
    h2_frames,
    h2c_socket,
    raw,
)


def _served(s: socket.socket) -> bool:
    """Whether the proxy speaks HTTP/2 on `s` (its SETTINGS) and keeps it open a moment."""
    frames = h2_frames(s, time.monotonic() + 0.5)
    return any(isinstance(f, hyperframe.frame.SettingsFrame) for f in frames) and not any(
        isinstance(f, hyperframe.frame.GoAwayFrame) for f in frames
    )


def _status_of(f: hyperframe.frame.HeadersFrame) -> str | None:
    """The :status of a HEADERS frame that opens a block (a fresh decoder each: tests
    send one block per connection)."""
    fields = dict(hpack.Decoder().decode(bytes(f.data), raw=True))
    value = fields.get(b":status")
    return value.decode() if value is not None else None


def _get(port: int, path: str = "/") -> bytes:
    return raw(port, b"GET " + path.encode() + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")


@pytest.fixture
def limited(tmp_path: Path) -> Iterator[tuple[ProxyProc, Backend]]:
    with backends(1) as (be,):
        cfg = tmp_path / "routes.yaml"
        cfg.write_text(f"limits: {{max_connections: 4}}\nroutes:\n  - backends: [{be.url}]\n")
        proxy = ProxyProc(tmp_path, "--config", str(cfg))
        try:
            yield proxy, be
        finally:
            proxy.stop()


def test_h2c_connections_count_against_max_connections(
    limited: tuple[ProxyProc, Backend],
) -> None:
    proxy, _ = limited
    held = [h2c_socket(proxy.port) for _ in range(4)]
    try:
        assert all(_served(s) for s in held)
        # The limit is reached: a fifth client, HTTP/1.1 or HTTP/2, is refused.
        assert _get(proxy.port).startswith(b"HTTP/1.1 503"), "h2c connections not counted"
        extra = h2c_socket(proxy.port)
        assert not _served(extra)
        extra.close()
    finally:
        for s in held:
            s.close()
    deadline = time.monotonic() + 5
    while not _get(proxy.port).startswith(b"HTTP/1.1 200"):
        assert time.monotonic() < deadline, "slots not given back"
        time.sleep(0.1)


def _dockmesh(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dockmesh", *args],
        capture_output=True, text=True, timeout=60, env={**os.environ, **env},
    )  # fmt: skip


@pytest.fixture
def tls_limited(tmp_path: Path) -> Iterator[tuple[ProxyProc, int, Path]]:
    ca = tmp_path / "ca"
    r = _dockmesh("ca", "init", "--dir", str(ca), env={})
    assert r.returncode == 0, r.stderr
    with backends(1) as (be,):
        cfg = tmp_path / "routes.yaml"
        cfg.write_text(
            "limits: {max_connections: 4}\n"
            f"routes:\n  - host: app.test\n    backends: [{be.url}]\n"
            "tls: {internal: true, handshake_timeout: 2s}\n"
        )
        port = free_port()
        proxy = ProxyProc(
            tmp_path, "--config", str(cfg), "--tls-listen", f"127.0.0.1:{port}",
            env={"DOCKMESH_CA_DIR": str(ca)},
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 20
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    assert time.monotonic() < deadline, proxy.log.read_text()
                    time.sleep(0.1)
            yield proxy, port, ca / "ca.crt"
        finally:
            proxy.stop()


def _tls(port: int, cafile: Path, alpn: list[str]) -> ssl.SSLSocket:
    ctx = ssl.create_default_context(cafile=str(cafile))
    ctx.set_alpn_protocols(alpn)
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    return ctx.wrap_socket(s, server_hostname="app.test")


def _tls_get(port: int, cafile: Path) -> bytes:
    with _tls(port, cafile, ["http/1.1"]) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n")
        out = b""
        with contextlib.suppress(OSError):
            while chunk := s.recv(65536):
                out += chunk
        return out


def test_h2_over_tls_connections_count_against_max_connections(
    tls_limited: tuple[ProxyProc, int, Path],
) -> None:
    proxy, port, cafile = tls_limited
    held = []
    try:
        for _ in range(4):
            s = _tls(port, cafile, ["h2"])
            assert s.selected_alpn_protocol() == "h2"
            s.sendall(H2_PREFACE + hyperframe.frame.SettingsFrame(0).serialize())
            held.append(s)
        assert all(_served(s) for s in held)
        assert _tls_get(port, cafile).startswith(b"HTTP/1.1 503"), "h2 connections not counted"
        extra = _tls(port, cafile, ["h2"])
        extra.sendall(H2_PREFACE + hyperframe.frame.SettingsFrame(0).serialize())
        assert not _served(extra), "a fifth h2 connection served past max_connections"
        extra.close()
    finally:
        for s in held:
            s.close()
    deadline = time.monotonic() + 5
    while not _tls_get(port, cafile).startswith(b"HTTP/1.1 200"):
        assert time.monotonic() < deadline, "slots not given back"
        time.sleep(0.1)
    assert "overload" in proxy.metrics()


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_a_flood_of_clients_that_never_finish_the_handshake_neither_holds_fds_nor_starves(
    tls_limited: tuple[ProxyProc, int, Path],
) -> None:
    """1,000 TCP connections to the TLS port that send nothing (and 200 that send half a
    ClientHello): a normal client is served meanwhile, and all of them are closed within
    the handshake timeout (2 s), the process's descriptors back to where they were."""
    proxy, port, cafile = tls_limited
    assert _tls_get(port, cafile).startswith(b"HTTP/1.1 200")
    before = _fds(proxy.proc.pid)
    silent: list[socket.socket] = []
    try:
        for i in range(1200):
            s = socket.socket()
            s.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                s.connect(("127.0.0.1", port))
            silent.append(s)
            if i >= 1000:
                with contextlib.suppress(OSError):
                    s.send(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")  # a hello cut short
        time.sleep(0.5)
        started = time.monotonic()
        got = _tls_get(port, cafile)
        assert got.startswith(b"HTTP/1.1 200"), got[:80]
        assert time.monotonic() - started < 2.0
        deadline = time.monotonic() + 8
        while _fds(proxy.proc.pid) > before + 5:
            assert time.monotonic() < deadline, (before, _fds(proxy.proc.pid))
            time.sleep(0.2)
    finally:
        for s in silent:
            s.close()


def _stream(port: int, fields: list[tuple[str, str]]) -> list[hyperframe.frame.Frame]:
    """One request stream with `fields` (hpack-encoded as given: no client-side checks)."""
    s = h2c_socket(port)
    try:
        h = hyperframe.frame.HeadersFrame(1)
        h.data = hpack.Encoder().encode(fields)
        h.flags.add("END_HEADERS")
        h.flags.add("END_STREAM")
        s.sendall(h.serialize())
        return h2_frames(s, time.monotonic() + 1.5)
    finally:
        s.close()


BASE = [(":method", "GET"), (":scheme", "http"), (":authority", "x"), (":path", "/")]


@pytest.mark.parametrize(
    "extra",
    [
        [("X-Upper", "1")],
        [("connection", "keep-alive")],
        [("te", "gzip")],
        [("transfer-encoding", "chunked")],
        [("upgrade", "h2c")],
        [("keep-alive", "5")],
        [("proxy-connection", "close")],
        [("x-a", "1\r\nX-Injected: 1")],
        [(":path", "/again")],
        [(":status", "200")],
    ],
)
def test_fields_http2_forbids_are_refused_and_never_reach_the_backend(
    limited: tuple[ProxyProc, Backend], extra: list[tuple[str, str]]
) -> None:
    proxy, be = limited
    hits = be.hits
    frames = _stream(proxy.port, BASE + extra)
    answered = [f for f in frames if isinstance(f, hyperframe.frame.HeadersFrame)]
    ended = [
        f
        for f in frames
        if isinstance(f, hyperframe.frame.RstStreamFrame | hyperframe.frame.GoAwayFrame)
    ]
    statuses = [_status_of(f) for f in answered]
    assert ended or all(st == "400" for st in statuses), (extra, statuses)
    assert be.hits == hits, extra
    # A well-formed one on a new connection is served.
    frames = _stream(proxy.port, BASE)
    answered = [f for f in frames if isinstance(f, hyperframe.frame.HeadersFrame)]
    assert [_status_of(f) for f in answered] == ["200"]


def test_a_routes_file_grown_past_its_bound_is_refused_whole_not_read_cut_short(
    tmp_path: Path,
) -> None:
    """The watched file rewritten 3 MiB long: its first 2 MiB alone are a valid file with
    fewer routes. Reading only those would drop the routes after them; the file is refused
    and the running configuration kept."""
    with backends(2) as (be1, be2):
        cfg = tmp_path / "routes.yaml"
        cfg.write_text(
            f"routes:\n  - prefix: /a\n    backends: [{be1.url}]\n  - backends: [{be2.url}]\n"
        )
        proxy = ProxyProc(tmp_path, "--config", str(cfg))
        try:
            assert b'"backend": "be1"' in _get(proxy.port, "/a")
            pad = ("# " + "x" * 1000 + "\n") * 3300  # over 3 MiB of comments
            big = tmp_path / "routes.new"
            big.write_text(
                f"routes:\n  - backends: [{be2.url}]\n{pad}"
                f"  - prefix: /a\n    backends: [{be1.url}]\n"
            )
            assert big.stat().st_size > 3 * 1024 * 1024
            os.replace(big, cfg)
            deadline = time.monotonic() + 6
            while b"larger than" not in proxy.log.read_bytes():
                assert time.monotonic() < deadline, proxy.log.read_text()[-2000:]
                time.sleep(0.2)
            assert b'"backend": "be1"' in _get(proxy.port, "/a")
        finally:
            proxy.stop()


def test_a_routes_file_replaced_by_a_fifo_does_not_hang_the_proxy(tmp_path: Path) -> None:
    """The watched path becomes a FIFO nobody writes to (or a symlink to one): reading it
    would block the event loop for good. It is refused as not a regular file."""
    with backends(1) as (be,):
        cfg = tmp_path / "routes.yaml"
        cfg.write_text(f"routes:\n  - backends: [{be.url}]\n")
        proxy = ProxyProc(tmp_path, "--config", str(cfg))
        try:
            fifo = tmp_path / "fifo"
            os.mkfifo(fifo)
            link = tmp_path / "link"
            link.symlink_to(fifo)
            os.replace(link, cfg)
            deadline = time.monotonic() + 6
            while b"not a regular file" not in proxy.log.read_bytes():
                assert time.monotonic() < deadline, proxy.log.read_text()[-2000:]
                time.sleep(0.2)
            assert _get(proxy.port).startswith(b"HTTP/1.1 200")
        finally:
            proxy.stop()
            # A proxy stuck in open() is unblocked by a writer, then stopped.
            with contextlib.suppress(OSError):
                fd = os.open(tmp_path / "fifo", os.O_WRONLY | os.O_NONBLOCK)
                os.close(fd)


def _hello(name: bytes) -> bytes:
    """A ClientHello whose SNI is `name` (8 bytes: put in place of `app.test`, the lengths
    around it unchanged), as a client that does not encode names would send it."""
    into, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    c = ssl._create_unverified_context().wrap_bio(into, out, server_hostname="app.test")
    with contextlib.suppress(ssl.SSLWantReadError):
        c.do_handshake()
    hello = out.read()
    assert len(name) == 8 and hello.count(b"app.test") == 1
    return hello.replace(b"app.test", name)


def test_sni_bytes_outside_ascii_are_refused_without_a_traceback_each(
    tls_limited: tuple[ProxyProc, int, Path],
) -> None:
    """`ssl` decodes the SNI as ASCII before the proxy's callback sees it and prints a
    traceback for each name it cannot decode: 300 such handshakes must not write 1,500
    lines to the log (a disk filled by a client), and a normal client is served."""
    proxy, port, cafile = tls_limited
    hello = _hello(b"\xffpp.test")
    for _ in range(300):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(hello)
            with contextlib.suppress(OSError):
                s.recv(4096)
    assert _tls_get(port, cafile).startswith(b"HTTP/1.1 200")
    text = proxy.log.read_text(errors="replace")
    assert text.count("UnicodeDecodeError") <= 1, text[-3000:]
    assert len(text.splitlines()) < 20, text[-3000:]


def _send_stream(port: int, frames: list[hyperframe.frame.Frame]) -> list[hyperframe.frame.Frame]:
    s = h2c_socket(port)
    try:
        s.sendall(b"".join(f.serialize() for f in frames))
        return h2_frames(s, time.monotonic() + 2.0)
    finally:
        s.close()


def _headers(fields: list[tuple[str, str]], *flags: str) -> hyperframe.frame.HeadersFrame:
    h = hyperframe.frame.HeadersFrame(1)
    h.data = hpack.Encoder().encode(fields)
    for f in ("END_HEADERS", *flags):
        h.flags.add(f)
    return h


POST = [(":method", "POST"), (":scheme", "http"), (":authority", "x"), (":path", "/up")]


def test_a_body_shorter_than_its_content_length_is_refused_not_left_to_the_upstream(
    limited: tuple[ProxyProc, Backend],
) -> None:
    """`h2` checks DATA against content-length, but not a stream ended by its HEADERS or by
    trailers: forwarded as it was, the upstream waits for bytes that never come, holding a
    connection of the pool until a timeout (100 streams a connection, few connections empty
    the pool). RFC 9113 §8.1.1: such a request is malformed."""
    proxy, be = limited
    hits = be.hits
    frames = _send_stream(proxy.port, [_headers([*POST, ("content-length", "20")], "END_STREAM")])
    assert any(isinstance(f, hyperframe.frame.RstStreamFrame) for f in frames) or any(
        isinstance(f, hyperframe.frame.HeadersFrame) and _status_of(f) == "400" for f in frames
    ), frames
    assert be.hits == hits
    data = hyperframe.frame.DataFrame(1)
    data.data = b"abc"
    trailers = hyperframe.frame.HeadersFrame(1)
    trailers.data = hpack.Encoder().encode([("x-t", "1")])
    trailers.flags.add("END_HEADERS")
    trailers.flags.add("END_STREAM")
    start = time.monotonic()
    frames = _send_stream(proxy.port, [_headers([*POST, ("content-length", "20")]), data, trailers])
    assert any(isinstance(f, hyperframe.frame.RstStreamFrame) for f in frames), frames
    assert time.monotonic() - start < 2.5


@pytest.mark.parametrize("path", ["http://other.test/x", "x/../y", "*"])
def test_an_http2_path_not_in_origin_form_is_refused(
    limited: tuple[ProxyProc, Backend], path: str
) -> None:
    """RFC 9113 8.3.1: `:path` is origin-form (or `*` for OPTIONS); an absolute URI there
    would route by a host other than `:authority`, which no HTTP/2 client sends."""
    proxy, be = limited
    hits = be.hits
    fields = [(":method", "GET"), (":scheme", "http"), (":authority", "x"), (":path", path)]
    frames = _stream(proxy.port, fields)
    statuses = [_status_of(f) for f in frames if isinstance(f, hyperframe.frame.HeadersFrame)]
    assert statuses == ["400"], (path, statuses)
    assert be.hits == hits


def test_one_h2_connection_with_its_windows_shut_does_not_take_the_whole_pool(
    tmp_path: Path,
) -> None:
    """One h2c connection, SETTINGS_INITIAL_WINDOW_SIZE 0, 50 streams for a large body,
    beside `max_connections_per_upstream: 40`: a normal client must still be served
    (HTTP/1.1's one connection holds one upstream connection at most)."""
    with backends(1) as (be,):
        cfg = tmp_path / "routes.yaml"
        cfg.write_text(
            f"limits: {{max_connections_per_upstream: 40}}\nroutes:\n  - backends: [{be.url}]\n"
        )
        proxy = ProxyProc(tmp_path, "--config", str(cfg))
        s = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
        try:
            shut = hyperframe.frame.SettingsFrame(0)
            shut.settings = {hyperframe.frame.SettingsFrame.INITIAL_WINDOW_SIZE: 0}
            enc = hpack.Encoder()
            out = [H2_PREFACE, shut.serialize()]
            for sid in range(1, 101, 2):
                h = hyperframe.frame.HeadersFrame(sid)
                h.data = enc.encode(
                    [(":method", "GET"), (":scheme", "http"), (":authority", "x"),
                     (":path", "/big/1000000")]
                )  # fmt: skip
                h.flags.add("END_HEADERS")
                h.flags.add("END_STREAM")
                out.append(h.serialize())
            s.sendall(b"".join(out))
            time.sleep(1.5)
            assert _get(proxy.port).startswith(b"HTTP/1.1 200")
        finally:
            s.close()
            proxy.stop()


@pytest.mark.parametrize("connection", ["Upgrade, HTTP2-Settings", "Upgrade"])
def test_an_h2c_upgrade_is_not_passed_to_the_upstream(
    limited: tuple[ProxyProc, Backend], connection: str
) -> None:
    """h2c smuggling: a backend that accepts `Upgrade: h2c` (Go's h2c handler does) would
    take HTTP/2 streams through the tunnel, past the routes, the forwarded fields and the
    middlewares. The request goes on as a plain one; a WebSocket upgrade still goes."""
    proxy, _ = limited
    out = raw(
        proxy.port,
        b"GET /x HTTP/1.1\r\nHost: a\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n"
        b"Connection: " + connection.encode() + b", close\r\n\r\n",
    )
    assert out.startswith(b"HTTP/1.1 200"), out[:200]
    headers = json.loads(out.partition(b"\r\n\r\n")[2])["headers"]
    assert "upgrade" not in headers and "upgrade" not in headers.get("connection", "")
    out = raw(
        proxy.port,
        b"GET /x HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade, close\r\n\r\n",
    )
    assert json.loads(out.partition(b"\r\n\r\n")[2])["headers"]["upgrade"] == "websocket"


def test_http2_with_prior_knowledge_inside_tls_is_forwarded_as_https(
    tls_limited: tuple[ProxyProc, int, Path],
) -> None:
    """A TLS client that negotiates no h2 (ALPN http/1.1) and then sends HTTP/2's preface is
    served HTTP/2 all the same: its requests came over TLS, so X-Forwarded-Proto is https
    (an application that trusts it would otherwise redirect it, or drop Secure cookies)."""
    _, port, cafile = tls_limited
    with _tls(port, cafile, ["http/1.1"]) as s:
        h = _headers(
            [(":method", "GET"), (":scheme", "https"), (":authority", "app.test"), (":path", "/")],
            "END_STREAM",
        )
        s.sendall(H2_PREFACE + hyperframe.frame.SettingsFrame(0).serialize() + h.serialize())
        frames = h2_frames(s, time.monotonic() + 2.0)
    body = b"".join(bytes(f.data) for f in frames if isinstance(f, hyperframe.frame.DataFrame))
    assert json.loads(body)["headers"]["x-forwarded-proto"] == "https", body
