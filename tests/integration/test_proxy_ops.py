"""`dockmesh proxy` as an operator runs it, a real process on loopback: SIGTERM drains the
requests in flight, SIGHUP reloads --config under load, a second proxy on a served port
refuses to start, and workers die with their parent (even on kill -9)."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.integration.proxyenv import Backend, ProxyProc, backends
from tests.integration.test_agent import wait_until


class SlowHandler(BaseHTTPRequestHandler):
    """Answers every request after `server.delay` seconds with its name."""

    protocol_version = "HTTP/1.1"
    server: SlowBackend

    def log_message(self, format: str, *args: Any) -> None:
        return None

    def do_GET(self) -> None:
        with self.server.lock:
            self.server.received += 1
        time.sleep(self.server.delay)
        body = json.dumps({"backend": self.server.name}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class SlowBackend(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256

    def __init__(self, name: str, delay: float) -> None:
        super().__init__(("127.0.0.1", 0), SlowHandler)
        self.name = name
        self.delay = delay
        self.received = 0
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


@pytest.fixture
def slow() -> Iterator[SlowBackend]:
    b = SlowBackend("slow", 1.0)
    yield b
    b.stop()


def get(
    port: int, path: str, conn: http.client.HTTPConnection | None = None
) -> tuple[int, str, Any]:
    """(status, the Connection field, the JSON body) of one GET."""
    c = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    try:
        c.request("GET", path)
        r = c.getresponse()
        body = r.read()
        return r.status, (r.getheader("Connection") or "").lower(), json.loads(body)
    finally:
        if conn is None:
            c.close()


def children_of(pid: int) -> set[int]:
    out = set()
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/children") as f:
            out |= {int(x) for x in f.read().split()}
    return out


def gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def stop_proxy(p: ProxyProc) -> None:
    """Stops the proxy and, should a worker outlive it (the failure some tests look for),
    that worker too."""
    workers = children_of(p.proc.pid) if p.proc.poll() is None else set()
    p.stop()
    for w in workers:
        if not gone(w):
            os.kill(w, signal.SIGKILL)


@pytest.mark.parametrize("workers", [1, 2])
def test_sigterm_drains_the_requests_in_flight_and_exits_0(
    tmp_path: Path, slow: SlowBackend, workers: int
) -> None:
    """20 clients loop over their kept-alive connections to a 1 s upstream; SIGTERM comes
    while each has a request in flight: every request gets its 200, the first after SIGTERM
    says `Connection: close` (so the clients stop: they open no new connection), the port
    stops taking connections, and the process exits 0 as soon as they are done."""
    p = ProxyProc(
        tmp_path, "--backend", slow.url, "--workers", str(workers), "--drain-timeout", "20"
    )
    n = 20
    results: list[tuple[int, str, Any] | BaseException] = []
    conns = [http.client.HTTPConnection("127.0.0.1", p.port, timeout=30) for _ in range(n)]
    try:
        for c in conns:
            c.connect()

        def client(c: http.client.HTTPConnection) -> None:
            end = time.monotonic() + 30
            while time.monotonic() < end:
                try:
                    r = get(p.port, "/x", c)
                except BaseException as e:
                    results.append(e)
                    return
                results.append(r)
                if r[1] == "close":
                    return

        threads = [threading.Thread(target=client, args=(c,)) for c in conns]
        for t in threads:
            t.start()
        wait_until(lambda: slow.received >= n, 10)
        p.proc.send_signal(signal.SIGTERM)
        t0 = time.monotonic()
        for t in threads:
            t.join(40)
        assert [r for r in results if not isinstance(r, tuple) or r[0] != 200] == []
        assert len(results) == n
        assert {r[1] for r in results if isinstance(r, tuple)} == {"close"}
        assert p.proc.wait(15) == 0
        assert time.monotonic() - t0 < 10
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", p.port), timeout=2).close()
    finally:
        for c in conns:
            c.close()
        stop_proxy(p)


def test_sigterm_closes_idle_keep_alives_and_exits_at_once(tmp_path: Path) -> None:
    with backends(1) as (b,):
        p = ProxyProc(tmp_path, "--backend", b.url, "--drain-timeout", "20")
        c = http.client.HTTPConnection("127.0.0.1", p.port, timeout=10)
        try:
            assert get(p.port, "/x", c)[0] == 200
            t0 = time.monotonic()
            p.proc.send_signal(signal.SIGTERM)
            assert p.proc.wait(10) == 0
            assert time.monotonic() - t0 < 5
        finally:
            c.close()
            p.stop()


def test_a_request_sent_on_an_idle_keep_alive_as_the_drain_begins_is_answered(
    tmp_path: Path,
) -> None:
    """The race of a drain: the client's next request is on the wire (or sent a moment
    later) on a keep-alive connection the proxy sees as idle. Closing it then would lose the
    request (RemoteDisconnected): it is answered, with `Connection: close`."""
    with backends(1) as (b,):
        p = ProxyProc(tmp_path, "--backend", b.url, "--drain-timeout", "20")
        c = http.client.HTTPConnection("127.0.0.1", p.port, timeout=10)
        try:
            assert get(p.port, "/x", c)[:2] == (200, "")
            p.proc.send_signal(signal.SIGTERM)
            time.sleep(0.3)
            status, connection, _ = get(p.port, "/x", c)
            assert (status, connection) == (200, "close")
            assert p.proc.wait(10) == 0
        finally:
            c.close()
            p.stop()


def routes_to(cfg: Path, *urls: str) -> None:
    tmp = cfg.with_suffix(".tmp")
    lines = ["routes:"]
    for url in urls:
        prefix = "/slow" if "slow" in url else "/"
        lines += [f"  - prefix: {prefix}", f"    backends: [{url.split('#')[0]}]"]
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, cfg)


@pytest.mark.parametrize("workers", [1, 2])
def test_sighup_reloads_the_config_under_load_without_a_failed_request(
    tmp_path: Path, slow: SlowBackend, workers: int
) -> None:
    """Four clients loop over keep-alive while requests wait on a 1 s upstream; SIGHUP with
    `/` moved from be1 to be2: no request fails, the slow ones finish, and be2 answers. A
    broken file on the next SIGHUP is logged and the running routes stay."""
    with backends(2) as (a, b):
        cfg = tmp_path / "routes.yaml"
        routes_to(cfg, slow.url + "#slow", a.url)
        p = ProxyProc(tmp_path, "--config", str(cfg), "--workers", str(workers))
        stop = threading.Event()
        failures: list[object] = []
        seen: list[str] = []

        def loop() -> None:
            c = http.client.HTTPConnection("127.0.0.1", p.port, timeout=20)
            try:
                while not stop.is_set():
                    try:
                        status, _, doc = get(p.port, "/x", c)
                        if status != 200:
                            failures.append(status)
                        seen.append(doc["backend"])
                    except Exception as e:  # a failed request is what this test counts
                        failures.append(repr(e))
                        c.close()
            finally:
                c.close()

        def slow_one() -> None:
            try:
                status, _, doc = get(p.port, "/slow/y")
                if status != 200 or doc["backend"] != "slow":
                    failures.append(("slow", status))
            except Exception as e:
                failures.append(repr(e))

        try:
            loops = [threading.Thread(target=loop) for _ in range(4)]
            slows = [threading.Thread(target=slow_one) for _ in range(8)]
            for t in loops + slows:
                t.start()
            wait_until(lambda: slow.received >= 8 and len(seen) > 50, 10)
            assert set(seen) == {"be1"}
            routes_to(cfg, slow.url + "#slow", b.url)
            p.proc.send_signal(signal.SIGHUP)
            wait_until(lambda: seen[-20:] == ["be2"] * 20, 10)
            cfg.write_text("routes:\n  - prefix: nope\n")
            p.proc.send_signal(signal.SIGHUP)
            time.sleep(1)
            mark = len(seen)
            time.sleep(0.5)
            assert set(seen[mark:]) == {"be2"}
            stop.set()
            for t in loops + slows:
                t.join(30)
            assert failures == []
            assert p.proc.poll() is None
            assert "keeping the running configuration" in p.log.read_text()
        finally:
            stop.set()
            stop_proxy(p)
        assert p.proc.returncode == 0


def second_proxy(port: int, backend: Backend) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "dockmesh",
            "proxy",
            "--listen",
            f"127.0.0.1:{port}",
            "--backend",
            backend.url,
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )


@pytest.mark.parametrize("workers", [1, 2])
def test_a_second_proxy_on_a_served_port_refuses_to_start(tmp_path: Path, workers: int) -> None:
    with backends(1) as (b,):
        p = ProxyProc(tmp_path, "--backend", b.url, "--workers", str(workers))
        try:
            r = second_proxy(p.port, b)
            assert r.returncode == 2
            assert r.stderr.strip() == (
                f"dockmesh: --listen 127.0.0.1:{p.port} is already served by another process"
            )
        finally:
            stop_proxy(p)
        # Once it is free, the port is the next proxy's (its last connections' TIME_WAIT
        # does not count).
        q = ProxyProc(tmp_path, "--backend", b.url)
        q.stop()


def test_workers_die_with_their_parent_even_on_kill_9(tmp_path: Path) -> None:
    with backends(1) as (b,):
        p = ProxyProc(tmp_path, "--backend", b.url, "--workers", "2")
        workers: set[int] = set()
        try:
            workers = children_of(p.proc.pid)
            assert len(workers) == 2
            p.proc.kill()
            p.proc.wait()
            wait_until(lambda: all(gone(w) for w in workers), 10)
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection(("127.0.0.1", p.port), timeout=2).close()
        finally:
            p.stop()
            for w in workers:  # left behind only when this test fails
                if not gone(w):
                    os.kill(w, signal.SIGKILL)


def test_a_worker_that_dies_is_started_again_on_the_same_socket(tmp_path: Path) -> None:
    """The parent keeps the listening sockets: a worker started again serves its own (it
    got one the parent had closed, failed with EBADF, and was started again every second,
    the port served by the others alone)."""
    with backends(1) as (b,):
        p = ProxyProc(tmp_path, "--backend", b.url, "--workers", "2")
        workers: set[int] = set()
        try:
            workers = children_of(p.proc.pid)
            victim = min(workers)
            os.kill(victim, signal.SIGKILL)
            wait_until(lambda: len(children_of(p.proc.pid) - {victim}) == 2, 10)
            now = children_of(p.proc.pid)
            time.sleep(2.5)  # a worker failing would be started again once a second
            assert children_of(p.proc.pid) == now
            assert "failed" not in p.log.read_text()
            for _ in range(20):
                assert get(p.port, "/x")[0] == 200
        finally:
            workers |= children_of(p.proc.pid) if p.proc.poll() is None else set()
            p.stop()
            for w in workers:
                if not gone(w):
                    os.kill(w, signal.SIGKILL)
