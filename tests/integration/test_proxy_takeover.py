"""`dockmesh proxy --takeover`, real processes on loopback: a new proxy receives the listening
sockets of the one serving its port (its control socket, SCM_RIGHTS), the old one drains and
exits 0, and clients looping over it all the while see no failed request."""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.proxyenv import free_port
from tests.integration.test_agent import wait_until
from tests.integration.test_proxy_ops import SlowBackend, children_of, gone


@pytest.fixture
def slow() -> Iterator[SlowBackend]:
    b = SlowBackend("slow", 0.2)
    yield b
    b.stop()


class Proc:
    """`dockmesh proxy` on a given port, its control socket under `run_dir`."""

    def __init__(self, tmp: Path, port: int, *args: str) -> None:
        self.port = port
        self.log = tmp / f"proxy-{port}-{time.monotonic_ns()}.log"
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "DOCKMESH_RUN_DIR": str(tmp / "run")}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "dockmesh", "proxy", "--listen", f"127.0.0.1:{port}", *args],
            stdout=self.log.open("ab"),
            stderr=subprocess.STDOUT,
            env=env,
        )

    def stop(self) -> None:
        workers = children_of(self.proc.pid) if self.proc.poll() is None else set()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for w in workers:
            if not gone(w):
                os.kill(w, signal.SIGKILL)


def admin_pids(port: int) -> set[int]:
    """The processes (the proxy, or its workers) serving the admin endpoint."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=5) as r:
        json.load(r)
    out = subprocess.run(
        ["ss", "-Hltnp", f"sport = :{port}"], capture_output=True, text=True, check=True
    ).stdout
    return {int(m) for m in re.findall(r"pid=(\d+)", out)}


def answers(port: int) -> bool:
    try:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        c.request("GET", "/")
        ok = c.getresponse().status == 200
        c.close()
        return ok
    except OSError:
        return False


@pytest.mark.parametrize(("old_workers", "new_workers"), [(1, 1), (2, 1), (1, 2)])
def test_takeover_under_load_fails_no_request_and_the_old_proxy_exits_0(
    tmp_path: Path, slow: SlowBackend, old_workers: int, new_workers: int
) -> None:
    """Twelve clients loop on a 0.2 s upstream (eight over kept-alive connections, reopened
    when told `Connection: close`; four with a new connection per request) while a second
    proxy takes the port over: every request gets its 200, the old proxy exits 0 once its
    requests in flight are done, and the new one serves on (and is the one that drains on
    its own SIGTERM)."""
    port, admin = free_port(), free_port()
    both = ("--backend", slow.url, "--admin", f"127.0.0.1:{admin}")
    old = Proc(tmp_path, port, *both, "--workers", str(old_workers))
    new: Proc | None = None
    stop = threading.Event()
    failures: list[object] = []
    done: list[float] = []

    def loop(keep_alive: bool) -> None:
        c: http.client.HTTPConnection | None = None
        while not stop.is_set():
            try:
                if c is None:
                    c = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
                c.request("GET", "/x")
                r = c.getresponse()
                doc: Any = json.loads(r.read())
                if r.status != 200 or doc["backend"] != "slow":
                    failures.append(r.status)
                done.append(time.monotonic())
                if not keep_alive or (r.getheader("Connection") or "").lower() == "close":
                    c.close()
                    c = None
            except Exception as e:  # a failed request is what this test counts
                failures.append(repr(e))
                if c is not None:
                    c.close()
                c = None
        if c is not None:
            c.close()

    threads = [threading.Thread(target=loop, args=(i < 8,)) for i in range(12)]
    try:
        wait_until(lambda: answers(port), 20)
        for t in threads:
            t.start()
        wait_until(lambda: len(done) > 30, 20)
        new = Proc(tmp_path, port, *both, "--workers", str(new_workers), "--takeover")
        assert old.proc.wait(30) == 0, old.log.read_text()
        exited = time.monotonic()
        assert new.proc.poll() is None, new.log.read_text()
        wait_until(lambda: sum(1 for t in done if t > exited) > 30, 20)
        stop.set()
        for t in threads:
            t.join(30)
        assert failures == []
        assert "took the listening sockets over" in new.log.read_text()
        # --admin too is the new proxy's (the old one let it go as its drain began).
        assert new.proc.pid in admin_pids(admin)
        new.proc.send_signal(signal.SIGTERM)
        assert new.proc.wait(15) == 0
        assert not answers(port)
    finally:
        stop.set()
        old.stop()
        if new is not None:
            new.stop()


def test_a_takeover_can_be_taken_over_in_turn(tmp_path: Path, slow: SlowBackend) -> None:
    port = free_port()
    procs = [Proc(tmp_path, port, "--backend", slow.url)]
    try:
        wait_until(lambda: answers(port), 20)
        for _ in range(2):
            procs.append(Proc(tmp_path, port, "--backend", slow.url, "--takeover"))
            assert procs[-2].proc.wait(30) == 0
            assert answers(port)
        assert procs[-1].proc.poll() is None
    finally:
        for p in procs:
            p.stop()
    assert not (tmp_path / "run" / f"proxy-127.0.0.1-{port}.sock").exists()


def test_takeover_with_no_proxy_to_take_over_is_one_line_and_exit_2(tmp_path: Path) -> None:
    port = free_port()
    r = subprocess.run(
        [
            *(sys.executable, "-m", "dockmesh", "proxy", "--listen", f"127.0.0.1:{port}"),
            *("--backend", "http://127.0.0.1:1", "--takeover"),
        ],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "DOCKMESH_RUN_DIR": str(tmp_path / "run")},
    )
    assert r.returncode == 2
    line = r.stderr.strip()
    assert "\n" not in line
    assert line.startswith(f"dockmesh: --takeover: no dockmesh proxy serves 127.0.0.1:{port}")


def test_the_tls_listener_is_taken_over_with_the_plain_one(
    tmp_path: Path, slow: SlowBackend
) -> None:
    """A proxy serving --listen and --tls-listen hands both over: the successor serves the
    very TLS socket and the plain one, and the old one exits 0."""
    from tests.integration.test_proxy_tls import dockmesh

    ca = tmp_path / "ca"
    assert dockmesh("ca", "init", "--dir", str(ca)).returncode == 0
    routes = tmp_path / "routes.yaml"
    routes.write_text(f"routes:\n  - host: app.test\n    backends: [{slow.url}]\n")
    port, tls_port = free_port(), free_port()
    args = ("--config", str(routes), "--tls-listen", f"127.0.0.1:{tls_port}",
            "--tls", "internal", "--ca-dir", str(ca))  # fmt: skip

    def both_answer() -> bool:
        codes = subprocess.run(
            ["curl", "-s", "-o", "/dev/null", "-o", "/dev/null", "-w", "%{http_code} ",
             "--max-time", "5", "--cacert", str(ca / "ca.crt"),
             "--resolve", f"app.test:{tls_port}:127.0.0.1", f"https://app.test:{tls_port}/",
             "--resolve", f"app.test:{port}:127.0.0.1", f"http://app.test:{port}/"],
            capture_output=True, text=True, timeout=30,
        ).stdout  # fmt: skip
        return codes.split() == ["200", "200"]

    old = Proc(tmp_path, port, *args)
    new: Proc | None = None
    try:
        wait_until(both_answer, 20)
        new = Proc(tmp_path, port, *args, "--takeover")
        assert old.proc.wait(30) == 0, old.log.read_text()
        assert both_answer(), new.log.read_text()
        for p in (port, tls_port):
            out = subprocess.run(
                ["ss", "-Hltnp", f"sport = :{p}"], capture_output=True, text=True, check=True
            ).stdout
            assert {int(m) for m in re.findall(r"pid=(\d+)", out)} == {new.proc.pid}, out
    finally:
        old.stop()
        if new is not None:
            new.stop()
