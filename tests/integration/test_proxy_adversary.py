"""`dockmesh proxy` attacked as an adversary and an HAProxy operator would, on what the edge
already promises: framing the upstream agrees on, prefixes that cannot be left, forwarded
fields nobody can spoof, and the operations (drain, reload, port, workers) holding."""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.proxyenv import (
    Backend,
    ProxyProc,
    backends,
    free_port,
    vhost_proxy,
)
from tests.integration.proxyenv import ask_raw as ask


@pytest.fixture
def vhosts(tmp_path: Path) -> Iterator[tuple[ProxyProc, Backend, Backend]]:
    with vhost_proxy(tmp_path) as v:
        yield v


@pytest.mark.parametrize("field", ["Content-Length", "Transfer-Encoding", "Host"])
def test_connection_cannot_name_framing_fields_or_host_away(
    vhosts: tuple[ProxyProc, Backend, Backend], field: str
) -> None:
    """`Connection: Content-Length` made the proxy cut Content-Length (a hop-by-hop field by
    the client's word) yet forward the body: the upstream read the body as the next request
    on a pooled connection (a smuggled request, its response queued for someone else)."""
    proxy, admin, p = vhosts
    smuggled = b"GET /p/smuggled HTTP/1.1\r\nHost: public\r\n\r\n"
    if field == "Transfer-Encoding":
        framing = b"Transfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n" % (
            len(smuggled),
            smuggled,
        )
    else:
        framing = b"Content-Length: %d\r\n\r\n%s" % (len(smuggled), smuggled)
    head = b"POST /p/x HTTP/1.1\r\nHost: public\r\nConnection: close, " + field.encode() + b"\r\n"
    status, doc, out = ask(proxy.port, head + framing)
    assert status == 200 and doc is not None, out
    assert doc["headers"].get("host") == "public"
    assert doc["received"] == len(smuggled), doc
    time.sleep(0.3)
    assert p.hits == 1 and admin.hits == 0


@pytest.mark.parametrize(
    "target",
    [
        "/p/..%2Fadmin",
        "/p/..%2fadmin",
        "/p/%2e%2e%2fadmin",
        "/p/x/..%2F..%2Fadmin",
        "/p/..%5Cadmin",
        "/p/..\\admin",
        "/p/x\\..\\..\\admin",
        "/p/..;/admin",
        "/p/%2e%2e;x=1/admin",
        "/p/.%2E%5c..%5cadmin",
    ],
)
def test_dot_segments_behind_encoded_slashes_backslashes_or_params_are_refused(
    vhosts: tuple[ProxyProc, Backend, Backend], target: str
) -> None:
    """An upstream that decodes %2F (busybox httpd, nginx serving files), takes `\\` for `/`
    (IIS, WHATWG URL parsers) or strips `;params` (Tomcat, Jetty) resolves these out of `/p/`:
    the proxy cannot know which it is, so it refuses them (a real path never holds them)."""
    proxy, admin, p = vhosts
    status, _, out = ask(
        proxy.port, f"GET {target} HTTP/1.1\r\nHost: public\r\nConnection: close\r\n\r\n".encode()
    )
    assert status == 400, (target, out)
    assert p.hits == 0 and admin.hits == 0


def test_encoded_slashes_and_semicolons_that_hide_nothing_pass_as_sent(
    vhosts: tuple[ProxyProc, Backend, Backend],
) -> None:
    proxy = vhosts[0]
    for target in ("/p/a%2Fb", "/p/a;v=1/b", "/p/a%5Cb", "/p/...%2Fx", "/p/.x%2f"):
        status, doc, out = ask(
            proxy.port,
            f"GET {target} HTTP/1.1\r\nHost: public\r\nConnection: close\r\n\r\n".encode(),
        )
        assert status == 200 and doc is not None, (target, out)
        assert doc["path"] == target


SPOOFED = (
    b"X-Real-IP: 10.9.8.7\r\n"
    b"X-Forwarded-Port: 443\r\n"
    b"X-Forwarded-Prefix: /admin\r\n"
    b"X-Forwarded-Server: trusted.internal\r\n"
    b"X-Forwarded-Ssl: on\r\n"
    b"X_Forwarded_For: 10.9.8.7\r\n"
    b"X-Client-IP: 10.9.8.7\r\n"
)


def test_every_forwarded_claim_from_an_untrusted_peer_is_dropped(tmp_path: Path) -> None:
    """X-Forwarded-For/-Proto/-Host were replaced, but X-Real-IP (nginx's realip, Traefik),
    X-Forwarded-Port/-Prefix/-Ssl (URL building in Spring, Rails, Django) and the underscore
    spelling (a CGI or WSGI server reads `X_Forwarded_For` as `X-Forwarded-For`) went
    through: anyone could claim an address or https."""
    with backends(1) as (b,):
        plain = ProxyProc(tmp_path, "--backend", b.url)
        try:
            for extra in (b"", b"Connection: keep-alive\r\n"):  # fast lane and general reader
                status, doc, out = ask(
                    plain.port, b"GET /x HTTP/1.1\r\nHost: public\r\n" + extra + SPOOFED + b"\r\n"
                )
                assert status == 200 and doc is not None, out
                h = doc["headers"]
                assert h["x-forwarded-for"] == "127.0.0.1"
                leaked = {
                    k for k in h if k.replace("_", "-").startswith(("x-real-", "x-forwarded-"))
                }
                assert leaked == {"x-forwarded-for", "x-forwarded-proto", "x-forwarded-host"}, h
                assert h["x-client-ip"] == "10.9.8.7"  # not a forwarding field: left alone
        finally:
            plain.stop()
        cfg = tmp_path / "trusted.yaml"
        cfg.write_text(f"trusted_proxies: [127.0.0.0/8]\nroutes:\n  - backends: [{b.url}]\n")
        trusting = ProxyProc(tmp_path, "--config", str(cfg))
        try:
            status, doc, out = ask(
                trusting.port, b"GET /x HTTP/1.1\r\nHost: public\r\n" + SPOOFED + b"\r\n"
            )
            assert status == 200 and doc is not None, out
            h = doc["headers"]
            # A trusted proxy's own claims reach the upstream as it sent them.
            assert h["x-real-ip"] == "10.9.8.7" and h["x-forwarded-port"] == "443"
            assert h["x-forwarded-prefix"] == "/admin"
        finally:
            trusting.stop()


def test_an_upgrade_to_h2c_is_not_passed_on(vhosts: tuple[ProxyProc, Backend, Backend]) -> None:
    """An upstream that speaks h2c would answer 101 and then serve, over the tunnel, any
    request the client likes on any path, none of them routed (h2c smuggling past `/p/`)."""
    proxy, _, p = vhosts
    status, doc, out = ask(
        proxy.port,
        b"GET /p/x HTTP/1.1\r\nHost: public\r\nConnection: Upgrade, HTTP2-Settings\r\n"
        b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\nConnection: close\r\n\r\n",
    )
    assert status == 200 and doc is not None, out
    assert "upgrade" not in doc["headers"] and "http2-settings" not in doc["headers"]
    assert p.hits == 1


def test_a_sighup_to_a_file_with_no_routes_keeps_the_running_ones(tmp_path: Path) -> None:
    with backends(1) as (b,):
        cfg = tmp_path / "routes.yaml"
        cfg.write_text(f"routes:\n  - backends: [{b.url}]\n")
        proxy = ProxyProc(tmp_path, "--config", str(cfg))
        try:
            get = b"GET /x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
            assert ask(proxy.port, get)[0] == 200
            cfg.write_text("routes: []\n")
            proxy.proc.send_signal(signal.SIGHUP)
            deadline = time.monotonic() + 10
            while "has no routes" not in proxy.log.read_text() and time.monotonic() < deadline:
                time.sleep(0.1)
            assert "has no routes: keeping the running configuration" in proxy.log.read_text()
            assert ask(proxy.port, get)[0] == 200
            assert proxy.proc.poll() is None
        finally:
            proxy.stop()


def _dual_stack() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _dual_stack(), reason="no IPv6 on this host")
def test_an_ipv4_client_of_a_dual_stack_listener_is_its_ipv4_address(tmp_path: Path) -> None:
    """On `--listen [::]:PORT` an IPv4 peer is seen as `::ffff:127.0.0.1`: the upstream got
    that in X-Forwarded-For and `trusted_proxies: [127.0.0.0/8]` never matched it."""
    with backends(1) as (b,):
        cfg = tmp_path / "routes.yaml"
        cfg.write_text(
            f"trusted_proxies: [127.0.0.0/8, '::1/128']\nroutes:\n  - backends: [{b.url}]\n"
        )
        port = free_port()
        log = tmp_path / "proxy.log"
        proc = subprocess.Popen(
            [sys.executable, "-m", "dockmesh", "proxy", "--listen", f"[::]:{port}",
             "--config", str(cfg)],
            stdout=log.open("ab"), stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 20
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
                    time.sleep(0.1)
            get = b"GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 10.9.8.7\r\nConnection: close\r\n\r\n"
            for client, seen in (("127.0.0.1", "127.0.0.1"), ("::1", "::1")):
                with socket.create_connection((client, port), timeout=5) as s:
                    s.sendall(get)
                    out = b""
                    while chunk := s.recv(65536):
                        out += chunk
                doc = json.loads(out.partition(b"\r\n\r\n")[2])
                assert doc["headers"]["x-forwarded-for"] == f"10.9.8.7, {seen}", doc
        finally:
            proc.terminate()
            proc.wait(15)


@pytest.mark.parametrize("size", [b"10000000000000", b"ffffffffffffffff", b"8000000000000000"])
def test_a_chunk_size_a_next_hop_could_overflow_or_round_is_refused(
    vhosts: tuple[ProxyProc, Backend, Backend], size: bytes
) -> None:
    """Forwarded as it came, a size of 2**52 or more is rounded by a parser keeping integers
    in doubles and negative in a signed 64-bit one: each reads the chunk's end elsewhere."""
    proxy, admin, _ = vhosts
    status, _, out = ask(
        proxy.port,
        b"POST /p/x HTTP/1.1\r\nHost: public\r\nTransfer-Encoding: chunked\r\n\r\n"
        + size
        + b"\r\nGET /p/smuggled HTTP/1.1\r\nHost: public\r\n\r\n",
    )
    assert status == 400 and b"chunk size too large" in out, out
    assert admin.hits == 0


def test_a_worker_killed_is_started_again_and_serves(tmp_path: Path) -> None:
    """The parent had closed its listening sockets after the first fork: a worker started
    again (after kill -9, or the OOM killer) failed at once on a closed descriptor, and again
    every second, and the proxy ran on the workers left."""
    from tests.integration.test_proxy_ops import children_of, gone

    with backends(1) as (b,):
        proxy = ProxyProc(tmp_path, "--backend", b.url, "--workers", "2")
        seen: set[int] = set()
        try:
            first = children_of(proxy.proc.pid)
            seen |= first
            assert len(first) == 2
            os.kill(min(first), signal.SIGKILL)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                now = children_of(proxy.proc.pid)
                seen |= now
                if len(now) == 2 and now != first:
                    break
                time.sleep(0.1)
            time.sleep(2)  # a worker that cannot serve exits within this
            now = children_of(proxy.proc.pid)
            seen |= now
            assert len(now) == 2 and all(not gone(w) for w in now), proxy.log.read_text()
            assert "Bad file descriptor" not in proxy.log.read_text()
            get = b"GET /x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
            assert all(ask(proxy.port, get)[0] == 200 for _ in range(40))
        finally:
            proxy.stop()
            for w in seen:
                if not gone(w):
                    os.kill(w, signal.SIGKILL)


@pytest.mark.parametrize(
    "framing",
    [
        b"Transfer-Encoding:\tCHUNKED\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        b"Content-Length: 5\r\ncontent-length: 05\r\n\r\nhello",
    ],
)
def test_the_upstream_gets_the_framing_in_one_canonical_line(
    vhosts: tuple[ProxyProc, Backend, Backend], framing: bytes
) -> None:
    proxy, _, p = vhosts
    status, doc, out = ask(proxy.port, b"POST /p/x HTTP/1.1\r\nHost: public\r\n" + framing)
    assert status == 200 and doc is not None, out
    h = doc["headers"]
    assert (h.get("transfer-encoding"), h.get("content-length")) in (
        ("chunked", None),
        (None, "5"),
    ), h
    assert doc["received"] == 5 and p.hits == 1


def test_transfer_encoding_in_an_http10_request_is_400(
    vhosts: tuple[ProxyProc, Backend, Backend],
) -> None:
    """RFC 9112 §6.1: the framing of an HTTP/1.0 message with Transfer-Encoding is faulty. An
    HTTP/1.0 upstream may ignore it and read the chunks as the next request."""
    proxy, admin, p = vhosts
    status, _, out = ask(
        proxy.port,
        b"POST /p/x HTTP/1.0\r\nHost: public\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"2b\r\nGET /p/smuggled HTTP/1.1\r\nHost: public\r\n\r\n\r\n0\r\n\r\n",
    )
    assert status == 400, out
    assert p.hits == 0 and admin.hits == 0


def test_tunnels_reset_by_the_client_give_their_descriptors_back(tmp_path: Path) -> None:
    """The client's RST (SO_LINGER 0) right after the 101, and a client that sends half a
    frame and its FIN: neither leaves a descriptor behind."""
    with backends(1) as (b,):
        proxy = ProxyProc(tmp_path, "--backend", b.url)
        pid = proxy.proc.pid
        try:
            get = b"GET /x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
            assert ask(proxy.port, get)[0] == 200
            baseline = len(os.listdir(f"/proc/{pid}/fd"))
            upgrade = (
                b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
            )
            for i in range(300):
                s = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
                s.sendall(upgrade)
                got = b""
                while b"\r\n\r\n" not in got:
                    got += s.recv(4096)
                assert got.startswith(b"HTTP/1.1 101"), got
                if i % 2:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                else:
                    s.sendall(b"\x81\x85")
                    s.shutdown(socket.SHUT_WR)
                s.close()
            deadline = time.monotonic() + 15
            after = len(os.listdir(f"/proc/{pid}/fd"))
            while after > baseline + 4 and time.monotonic() < deadline:
                time.sleep(0.2)
                after = len(os.listdir(f"/proc/{pid}/fd"))
            assert after <= baseline + 4, (
                f"{after} descriptors open after 300 tunnels, {baseline} before"
            )
            assert ask(proxy.port, get)[0] == 200
        finally:
            proxy.stop()
