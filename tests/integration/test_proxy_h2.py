"""HTTP/2 through `dockmesh proxy`: h2c with prior knowledge (curl) to
HTTP/1.1 backends, gRPC unary and server streaming to an HTTP/2 upstream with its trailers
carried end to end, a rapid-reset attacker that does not starve a normal client, and the
drain's GOAWAY letting a stream in flight finish."""

from __future__ import annotations

import contextlib
import json
import re
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import h2.config
import h2.connection
import h2.events
import hpack
import hyperframe.frame
import pytest

from tests.integration.proxyenv import Backend, ProxyProc, backends, h2_frames, h2c_socket

CURL_H2C = ["curl", "-s", "--http2-prior-knowledge", "--max-time", "10"]


def curl(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["curl", "-s", "--max-time", "10", *args], capture_output=True)


@pytest.fixture
def plain(tmp_path: Path) -> Iterator[tuple[ProxyProc, list[Backend]]]:
    with backends(2) as bes:
        proxy = ProxyProc(tmp_path, *(a for b in bes for a in ("--backend", b.url)))
        try:
            yield proxy, bes
        finally:
            proxy.stop()


def test_h2c_with_prior_knowledge_reaches_http1_backends(
    plain: tuple[ProxyProc, list[Backend]],
) -> None:
    proxy, _ = plain
    out = curl("--http2-prior-knowledge", "-w", "\n%{http_version}", f"{proxy.url}/a?b=1")
    body, _, version = out.stdout.rpartition(b"\n")
    assert version == b"2", out
    doc = json.loads(body)
    assert doc["path"] == "/a?b=1" and doc["method"] == "GET"
    # The same edits as HTTP/1.1's: forwarded fields set, the client's claim replaced.
    assert doc["headers"]["x-forwarded-for"] == "127.0.0.1"
    assert doc["headers"]["host"] == f"127.0.0.1:{proxy.port}"
    assert "x-request-id" in doc["headers"]
    out = curl(
        "--http2-prior-knowledge", "-H", "X-Forwarded-For: 10.6.6.6", "-d", "x" * 70_000,
        f"{proxy.url}/post",
    )  # fmt: skip
    doc = json.loads(out.stdout)
    assert doc["received"] == 70_000 and doc["method"] == "POST"
    assert doc["headers"]["x-forwarded-for"] == "127.0.0.1"
    # A chunked response, and one larger than a stream's window.
    out = curl("--http2-prior-knowledge", f"{proxy.url}/stream")
    assert out.stdout == b"".join(b"%d," % i * 100 for i in range(50))
    out = curl("--http2-prior-knowledge", f"{proxy.url}/big/300000")
    assert out.stdout == b"b" * 300_000
    # Many streams on one connection, spread over both backends.
    urls = [f"{proxy.url}/n{i}" for i in range(20)]
    # (--parallel-immediate: curl 7.88 without it fails on any h2c server, HAProxy's too.)
    out = curl("--http2-prior-knowledge", "--parallel", "--parallel-immediate", *urls)
    docs = [json.loads(x) for x in out.stdout.replace(b"}{", b"}\n{").split(b"\n")]
    assert sorted(d["path"] for d in docs) == sorted(f"/n{i}" for i in range(20))
    assert {d["backend"] for d in docs} == {"be1", "be2"}
    # Paths are normalised before matching, as HTTP/1.1's; a bad one is refused.
    out = curl("--http2-prior-knowledge", "--path-as-is", "-w", "%{http_code}", f"{proxy.url}/../x")
    assert out.stdout.endswith(b"400"), out
    # HTTP/1.1 on the same port is untouched.
    out = curl("--http1.1", f"{proxy.url}/h1")
    assert json.loads(out.stdout)["path"] == "/h1"


def test_h2c_streams_get_the_routes_and_the_retries_of_http1(tmp_path: Path) -> None:
    with backends(2) as (a, b):
        dead = socket.socket()
        dead.bind(("127.0.0.1", 0))
        dead_url = f"http://127.0.0.1:{dead.getsockname()[1]}"
        dead.close()
        cfg = tmp_path / "routes.yaml"
        cfg.write_text(
            "routes:\n"
            f"  - host: admin.internal\n    backends: [{a.url}]\n"
            f"  - prefix: /p/\n    backends: [{dead_url}, {b.url}]\n    balance: round_robin\n"
        )
        proxy = ProxyProc(tmp_path, "--config", str(cfg))
        try:
            out = curl(
                "--http2-prior-knowledge", "-H", "Host: admin.internal", f"{proxy.url}/x"
            )  # fmt: skip
            assert json.loads(out.stdout)["backend"] == "be1"
            out = curl("--http2-prior-knowledge", "-w", "%{http_code}", f"{proxy.url}/nowhere")
            assert out.stdout.endswith(b"404"), out
            # The dead backend refuses connections: each request is tried on the other.
            for i in range(6):
                out = curl("--http2-prior-knowledge", f"{proxy.url}/p/{i}")
                assert json.loads(out.stdout)["backend"] == "be2", out
        finally:
            proxy.stop()


# --- TLS (a context of the test's own until the TLS listeners land) -----------------------------


# --- gRPC -------------------------------------------------------------------------------------


@pytest.fixture
def grpc_proxy(tmp_path: Path) -> Iterator[ProxyProc]:
    """A gRPC server on loopback (generic handlers, bytes as they are) behind the proxy."""

    def unary(req: bytes, ctx: grpc.ServicerContext) -> bytes:
        md = dict(ctx.invocation_metadata())
        return b"echo:" + req + b":" + str(md.get("x-forwarded-for", "-")).encode()

    def stream(req: bytes, ctx: grpc.ServicerContext) -> Iterator[bytes]:
        for i in range(int(req)):
            yield b"%d" % i * 1000

    def total(reqs: Iterator[bytes], ctx: grpc.ServicerContext) -> bytes:
        return b"%d" % sum(len(r) for r in reqs)

    def missing(req: bytes, ctx: grpc.ServicerContext) -> bytes:
        ctx.set_trailing_metadata((("x-why", "asked"),))
        ctx.abort(grpc.StatusCode.NOT_FOUND, "no such thing")
        raise AssertionError  # abort raises

    handler = grpc.method_handlers_generic_handler(
        "test.Echo",
        {
            "Unary": grpc.unary_unary_rpc_method_handler(unary),
            "Stream": grpc.unary_stream_rpc_method_handler(stream),
            "Missing": grpc.unary_unary_rpc_method_handler(missing),
            "Total": grpc.stream_unary_rpc_method_handler(total),
        },
    )
    server = grpc.server(futures.ThreadPoolExecutor(4))
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    cfg = tmp_path / "routes.yaml"
    cfg.write_text(f"routes:\n  - backends: [http://127.0.0.1:{port}]\n    upstream_protocol: h2\n")
    proxy = ProxyProc(tmp_path, "--config", str(cfg))
    try:
        yield proxy
    finally:
        proxy.stop()
        server.stop(0)


def test_grpc_unary_and_server_streaming_through_the_proxy(grpc_proxy: ProxyProc) -> None:
    with grpc.insecure_channel(
        f"127.0.0.1:{grpc_proxy.port}", options=[("grpc.enable_http_proxy", 0)]
    ) as ch:
        unary = ch.unary_unary("/test.Echo/Unary")
        assert unary(b"hi", timeout=10) == b"echo:hi:127.0.0.1"
        stream = ch.unary_stream("/test.Echo/Stream")
        got = list(stream(b"50", timeout=10))
        assert got == [b"%d" % i * 1000 for i in range(50)]
        # A client stream larger than the windows: the body flows as the upstream takes it.
        upload = ch.stream_unary("/test.Echo/Total")
        assert upload(iter([b"u" * 10_000] * 100), timeout=20) == b"1000000"
        # An error's status travels in the trailers (grpc-status, grpc-message).
        missing = ch.unary_unary("/test.Echo/Missing")
        with pytest.raises(grpc.RpcError) as e:
            missing(b"x", timeout=10)
        err: Any = e.value
        assert err.code() == grpc.StatusCode.NOT_FOUND
        assert err.details() == "no such thing"
        assert ("x-why", "asked") in tuple(err.trailing_metadata())
        # Many calls at once on the client's one connection.
        calls = [unary.future(b"%d" % i, timeout=10) for i in range(50)]
        assert sorted(c.result() for c in calls) == sorted(
            b"echo:%d:127.0.0.1" % i for i in range(50)
        )


# --- limits -----------------------------------------------------------------------------------


def _h2_client(port: int) -> tuple[socket.socket, h2.connection.H2Connection]:
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    c.initiate_connection()
    s.sendall(c.data_to_send())
    return s, c


def _status(port: int, path: str) -> str:
    out = curl("--http2-prior-knowledge", "-o", "/dev/null", "-w", "%{http_code}",
               f"http://127.0.0.1:{port}{path}")  # fmt: skip
    return out.stdout.decode()


def test_a_rapid_reset_attacker_is_cut_off_and_does_not_starve_a_normal_client(
    plain: tuple[ProxyProc, list[Backend]],
) -> None:
    proxy, bes = plain
    stop = threading.Event()
    outcome: dict[int, dict[str, Any]] = {0: {}, 1: {}}

    def attack(n: int) -> None:
        said = outcome[n]
        s, c = _h2_client(proxy.port)
        sent = 0
        headers = [(":method", "GET"), (":scheme", "http"), (":authority", "x"), (":path", "/")]

        def read(timeout: float) -> bool:
            """Reads what the proxy sent; True once it said GOAWAY (with ENHANCE_YOUR_CALM)."""
            s.settimeout(timeout)
            with contextlib.suppress(OSError, h2.exceptions.ProtocolError):
                while data := s.recv(65536):
                    for ev in c.receive_data(data):
                        if isinstance(ev, h2.events.ConnectionTerminated):
                            said["goaway"] = ev.error_code
                            return True
            return False

        try:
            while not stop.is_set() and sent < 100_000:
                for _ in range(50):
                    sid = c.get_next_available_stream_id()
                    c.send_headers(sid, headers, end_stream=True)
                    c.reset_stream(sid)
                    sent += 1
                s.sendall(c.data_to_send())
                if read(0.001):
                    break
        except (OSError, h2.exceptions.ProtocolError):
            pass
        if "goaway" not in said:
            read(2)
        said["sent"] = sent
        s.close()

    attackers = [threading.Thread(target=attack, args=(n,)) for n in range(2)]
    for t in attackers:
        t.start()
    try:
        codes = [_status(proxy.port, f"/ok{i}") for i in range(30)]
    finally:
        stop.set()
        for t in attackers:
            t.join(30)
    assert codes == ["200"] * 30
    calm = h2.errors.ErrorCodes.ENHANCE_YOUR_CALM
    assert all(o.get("goaway") == calm for o in outcome.values()), outcome
    # Each attacker was cut off long before its streams could all start requests.
    assert bes[0].hits + bes[1].hits < 30 + 2 * 1000


def test_sigterm_sends_goaway_and_the_stream_in_flight_finishes(tmp_path: Path) -> None:
    slow = SlowBackend()
    proxy = ProxyProc(tmp_path, "--backend", slow.url, "--drain-timeout", "10")
    try:
        s, c = _h2_client(proxy.port)
        headers = [(":method", "GET"), (":scheme", "http"), (":authority", "x"),
                   (":path", "/slow")]  # fmt: skip
        c.send_headers(1, headers, end_stream=True)
        s.sendall(c.data_to_send())
        slow.arrived.wait(10)
        proxy.proc.terminate()
        # Read as frames (`h2`'s client state machine takes nothing after a GOAWAY).
        raw_in = b""
        with contextlib.suppress(OSError):
            while data := s.recv(65536):
                raw_in += data
        frames = []
        view = memoryview(raw_in)
        while len(view) >= 9:
            frame, length = hyperframe.frame.Frame.parse_frame_header(view[:9])
            frame.parse_body(view[9 : 9 + length])
            frames.append(frame)
            view = view[9 + length :]
        kinds = [type(f).__name__ for f in frames]
        goaway = kinds.index("GoAwayFrame")
        # The GOAWAY came first, then the answer of the stream it let finish.
        assert "HeadersFrame" in kinds[goaway:], kinds
        body = b"".join(f.data for f in frames if isinstance(f, hyperframe.frame.DataFrame))
        assert body == b"slow done\n"
        last = frames[goaway]
        assert isinstance(last, hyperframe.frame.GoAwayFrame) and last.last_stream_id == 1
        assert proxy.proc.wait(15) == 0
    finally:
        proxy.stop()
        slow.stop()


class SlowBackend:
    """An HTTP/1.1 backend answering after a second."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.arrived = threading.Event()
        self.done = False
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while not self.done:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn: socket.socket) -> None:
        with conn:
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                data += chunk
            if b"dockmesh-proxy-check" in data:
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                return
            self.arrived.set()
            time.sleep(1.0)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nslow done\n")
            with contextlib.suppress(OSError):
                conn.recv(1)

    def stop(self) -> None:
        self.done = True
        self.sock.close()


def test_settings_bound_streams_and_header_lists_and_floods_end_the_connection(
    plain: tuple[ProxyProc, list[Backend]],
) -> None:
    proxy, _ = plain
    s = h2c_socket(proxy.port)
    settings = h2_frames(s, time.monotonic() + 1.0)[0]
    assert isinstance(settings, hyperframe.frame.SettingsFrame)
    assert settings.settings[hyperframe.frame.SettingsFrame.MAX_CONCURRENT_STREAMS] == 100
    assert settings.settings[hyperframe.frame.SettingsFrame.MAX_HEADER_LIST_SIZE] == 65536
    # A CONTINUATION flood: a header block that never ends.
    headers = hyperframe.frame.HeadersFrame(1)
    headers.data = b"\x82\x86\x84"  # :method GET, :scheme http, :path /
    flood = [headers.serialize()]
    for _ in range(200):
        cont = hyperframe.frame.ContinuationFrame(1)
        cont.data = b"\x40\x01x\x7f\x00" + b"a" * 127  # literal fields, never END_HEADERS
        flood.append(cont.serialize())
    with contextlib.suppress(OSError):
        s.sendall(b"".join(flood))
    frames = h2_frames(s, time.monotonic() + 5)
    assert any(isinstance(f, hyperframe.frame.GoAwayFrame) for f in frames), frames
    s.close()
    # A header list beyond the limit, in one block.
    s = h2c_socket(proxy.port)
    block = hpack.Encoder().encode(
        [(":method", "GET"), (":scheme", "http"), (":path", "/")]
        + [(f"x-{i}", "v" * 16_000) for i in range(6)]
    )
    big = hyperframe.frame.HeadersFrame(1)
    big.data = block[:16_000]
    big.flags.add("END_STREAM")
    conts = []
    for at in range(16_000, len(block), 16_000):
        c = hyperframe.frame.ContinuationFrame(1)
        c.data = block[at : at + 16_000]
        if at + 16_000 >= len(block):
            c.flags.add("END_HEADERS")
        conts.append(c.serialize())
    with contextlib.suppress(OSError):
        s.sendall(big.serialize() + b"".join(conts))
    frames = h2_frames(s, time.monotonic() + 5)
    assert any(
        isinstance(f, hyperframe.frame.GoAwayFrame | hyperframe.frame.RstStreamFrame)
        for f in frames
    ), frames
    assert not any(isinstance(f, hyperframe.frame.HeadersFrame) for f in frames)
    s.close()
    # A normal client meanwhile.
    assert _status(proxy.port, "/fine") == "200"


def test_an_idle_h2_connection_and_a_stream_whose_window_stays_shut_are_ended(
    tmp_path: Path,
) -> None:
    with backends(1) as (be,):
        cfg = tmp_path / "routes.yaml"
        cfg.write_text(f"timeouts: {{idle: 1s}}\nroutes:\n  - backends: [{be.url}]\n")
        proxy = ProxyProc(tmp_path, "--config", str(cfg))
        try:
            s = h2c_socket(proxy.port)
            t0 = time.monotonic()
            frames = h2_frames(s, t0 + 10)
            assert time.monotonic() - t0 < 5
            assert isinstance(frames[-1], hyperframe.frame.GoAwayFrame), frames
            s.close()
            # A client that never opens its window for the response.
            s = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
            shut = hyperframe.frame.SettingsFrame(
                0, settings={hyperframe.frame.SettingsFrame.INITIAL_WINDOW_SIZE: 0}
            )
            req = hyperframe.frame.HeadersFrame(1)
            req.data = hpack.Encoder().encode(
                [(":method", "GET"), (":scheme", "http"), (":authority", "x"),
                 (":path", "/big/300000")]
            )  # fmt: skip
            req.flags.add("END_HEADERS")
            req.flags.add("END_STREAM")
            s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + shut.serialize() + req.serialize())
            frames = h2_frames(s, time.monotonic() + 4)
            kinds = [type(f).__name__ for f in frames if f.stream_id == 1]
            assert kinds == ["HeadersFrame", "RstStreamFrame"], frames
            s.close()
            assert _status(proxy.port, "/after") == "200"
        finally:
            proxy.stop()


def _upstream_connections(proxy: ProxyProc) -> int:
    return sum(
        int(float(line.rsplit(" ", 1)[1]))
        for line in proxy.metrics().splitlines()
        if line.startswith("dockmesh_proxy_upstream_connections{")
    )


def test_upstream_connections_of_streams_are_counted_and_closed_when_idle(
    tmp_path: Path,
) -> None:
    with backends(1) as (be,):
        cfg = tmp_path / "routes.yaml"
        cfg.write_text(
            "timeouts: {pool_idle: 1s}\nlimits: {max_connections_per_upstream: 3}\n"
            f"routes:\n  - backends: [{be.url}]\n"
        )
        proxy = ProxyProc(tmp_path, "--config", str(cfg))
        try:
            urls = [f"{proxy.url}/n{i}" for i in range(8)]
            out = curl("--http2-prior-knowledge", "--parallel", "--parallel-immediate",
                       "-w", "\nCODE=%{http_code}\n", *urls)  # fmt: skip
            codes = re.findall(rb"CODE=(\d+)", out.stdout)
            assert len(codes) == 8, out
            # At most 3 connections to the upstream: the others got 503 at once, or waited
            # for none (no queue), or found one back in the pool.
            assert set(codes) <= {b"200", b"503"} and b"200" in codes, out
            assert 1 <= _upstream_connections(proxy) <= 3
            deadline = time.monotonic() + 10
            while _upstream_connections(proxy) and time.monotonic() < deadline:
                time.sleep(0.2)
            assert _upstream_connections(proxy) == 0
        finally:
            proxy.stop()
