"""Latency probes (dockmesh.diagnose.latency) without containers: the target between two
containers' shared network, and TCP connect and HTTP GET samples from this process's own
namespace (a pid the pool runs inline) to listeners on loopback. ICMP samples need raw
sockets in a container's namespace: tests/integration/test_bench.py."""

from __future__ import annotations

import contextlib
import http.server
import os
import socket
import threading
from collections.abc import Iterator
from dataclasses import replace

import pytest

from dockmesh.diagnose.latency import (
    ProbeError,
    Target,
    accept_queue,
    measure,
    pick_target,
    running_local,
    stream_samples,
)
from dockmesh.host.netns import NetnsPool
from tests.unit.topos import container, network, topology

ME = os.getpid()


def shop() -> object:
    return topology(
        [network("front", "10.1.0.0/24"), network("back", "10.2.0.0/24")],
        [
            container("web", {"front": "10.1.0.2", "back": "10.2.0.2"}),
            container("api", {"back": "10.2.0.3"}),
            container("db", {"back": ("10.2.0.4", None)}),
            container("alone", {"front": "10.1.0.9"}),
            container("off", {"back": "10.2.0.5"}, state="exited"),
            replace(container("hostly", {}), network_mode="host"),
        ],
    )


def test_the_target_is_the_destination_on_the_first_network_both_share() -> None:
    t = pick_target(shop(), "web", "api")  # type: ignore[arg-type]
    assert (t.src.name, t.dst.name, t.address, t.network) == ("web", "api", "10.2.0.3", "back")


@pytest.mark.parametrize(
    ("src", "dst", "why"),
    [
        ("api", "alone", "api and alone share no network (api: back; alone: front)"),
        ("nobody", "api", "no container named 'nobody'"),
        ("api", "off", "off is not running (exited)"),
        ("hostly", "api", "hostly uses the host's network"),
    ],
)
def test_a_probe_that_cannot_be_run_says_why(src: str, dst: str, why: str) -> None:
    with pytest.raises(ProbeError, match=why.replace("(", r"\(").replace(")", r"\)")):
        pick_target(shop(), src, dst)  # type: ignore[arg-type]


def test_a_running_container_without_a_pid_is_not_running_here() -> None:
    topo = topology([], [replace(container("ghost", {}), pid=None)])
    with pytest.raises(ProbeError, match="ghost is not running"):
        running_local(topo, "ghost")


class Quiet(http.server.ThreadingHTTPServer):
    def handle_error(self, request: object, client_address: object) -> None:
        pass  # a connect sample resets its connection: not an error here


class Page(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"ok"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def web() -> Iterator[int]:
    server = Quiet(("127.0.0.1", 0), Page)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()


def accepting(answer: bytes) -> Iterator[int]:
    """A listener (room for 512 waiting connections) that accepts every connection, writes
    `answer` and closes it."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(512)
    s.settimeout(0.05)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = s.accept()
            except OSError:
                continue
            with conn, contextlib.suppress(OSError):
                conn.sendall(answer)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        yield int(s.getsockname()[1])
    finally:
        stop.set()
        t.join()
        s.close()


@pytest.fixture
def not_http() -> Iterator[int]:
    yield from accepting(b"SSH-2.0-nope\r\n")


@pytest.fixture
def plain() -> Iterator[int]:
    yield from accepting(b"")


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def me(name: str) -> object:
    return replace(container(name, {"lo": "127.0.0.1"}), pid=ME)


def test_tcp_and_http_samples_on_loopback(web: int) -> None:
    with NetnsPool() as pool:
        tcp, lost_tcp = stream_samples(pool, ME, "127.0.0.1", web, 5, "tcp", 5.0, dst_pid=ME)
        got, lost_http = stream_samples(pool, ME, "127.0.0.1", web, 3, "http", 5.0)
    assert (len(tcp), lost_tcp, len(got), lost_http) == (5, 0, 3, 0)
    assert all(ms > 0 for ms in tcp + got)


def test_samples_that_fail_are_counted_lost(not_http: int) -> None:
    with NetnsPool() as pool:
        refused = stream_samples(pool, ME, "127.0.0.1", closed_port(), 3, "tcp", 2.0)
        wrong = stream_samples(pool, ME, "127.0.0.1", not_http, 2, "http", 2.0)
    assert refused == ([], 3)
    assert wrong == ([], 2)


def test_more_samples_than_a_batch_of_sockets_paced_by_the_accept_queue(plain: int) -> None:
    with NetnsPool() as pool:
        samples, lost = stream_samples(pool, ME, "127.0.0.1", plain, 120, "tcp", 5.0, dst_pid=ME)
    assert (len(samples), lost) == (120, 0)


def test_measure_needs_a_port_for_tcp_and_http() -> None:
    target = Target(me("a"), me("b"), "127.0.0.1", "lo")  # type: ignore[arg-type]
    with NetnsPool() as pool, pytest.raises(ProbeError, match="needs a port"):
        measure(pool, target, "http", 1)


def test_the_accept_queue_of_a_listener_read_from_the_host() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(7)
        port = s.getsockname()[1]
        clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(3)]
        try:
            q = accept_queue(ME, "127.0.0.1", port)
        finally:
            for c in clients:
                c.close()
    assert q == 3  # /proc shows the connections waiting
    assert accept_queue(ME, "127.0.0.1", closed_port()) is None
