"""`dockmesh proxy` as a process in front of real backends: curl and Python clients;
keep-alive, forwarded fields, streaming both ways, chunked, WebSocket upgrade, smuggling
refused, retries on connect failure, breakers opening, and discovery following a real
`dockmesh agent` over labelled containers."""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import free_subnets
from tests.integration.proxyenv import Backend, ProxyProc, backends, free_port, raw
from tests.integration.test_agent import AgentProc, wait_until


@pytest.fixture
def three() -> Iterator[list[Backend]]:
    with backends(3) as bs:
        yield bs


@pytest.fixture
def proxy(tmp_path: Path, three: list[Backend]) -> Iterator[ProxyProc]:
    args = [a for b in three for a in ("--backend", b.url)]
    p = ProxyProc(tmp_path, *args)
    yield p
    p.stop()


def curl(*args: str) -> str:
    return subprocess.run(
        ["curl", "-sS", "--max-time", "20", *args], capture_output=True, text=True, check=True
    ).stdout


def test_round_robin_over_keep_alive_with_forwarded_fields(
    proxy: ProxyProc, three: list[Backend]
) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)
    seen = []
    for _ in range(6):
        conn.request(
            "GET",
            "/echo",
            headers={
                "X-Forwarded-For": "203.0.113.7",
                "Connection": "keep-alive, X-Secret",
                "X-Secret": "s",
            },
        )
        r = conn.getresponse()
        doc = json.loads(r.read())
        assert r.status == 200
        assert r.getheader("Connection") is None
        seen.append(doc["backend"])
        h = doc["headers"]
        assert h["x-forwarded-for"] == "127.0.0.1"  # the client's claim replaced: not trusted
        assert h["x-forwarded-proto"] == "http"
        assert h["x-forwarded-host"] == f"127.0.0.1:{proxy.port}"
        assert h["x-request-id"]
        assert "x-secret" not in h and "connection" not in h
    assert sorted(seen) == ["be1", "be1", "be2", "be2", "be3", "be3"]
    conn.close()
    st = proxy.status()["upstreams"]
    assert {u["address"] for u in st} == {f"127.0.0.1:{b.port}" for b in three}
    assert all(u["breaker"] == "closed" and u["healthy"] and not u["ejected"] for u in st)
    assert sum(u["requests"] for u in st) == 6
    m = proxy.metrics()
    assert 'dockmesh_proxy_requests_total{code="200"} 6.0' in m
    assert "dockmesh_proxy_request_duration_seconds_bucket" in m


def test_streams_a_chunked_upload_and_a_chunked_download(proxy: ProxyProc, tmp_path: Path) -> None:
    big = tmp_path / "big"
    big.write_bytes(b"x" * (20 * 1024 * 1024))
    out = json.loads(
        curl(
            "-X",
            "POST",
            "-H",
            "Transfer-Encoding: chunked",
            "--data-binary",
            f"@{big}",
            proxy.url + "/up",
        )
    )
    assert out["received"] == 20 * 1024 * 1024
    out = json.loads(curl("-X", "PUT", "--data-binary", f"@{big}", proxy.url + "/up"))
    assert out["received"] == 20 * 1024 * 1024
    body = curl(proxy.url + "/stream")
    assert body == "".join(f"{i}," * 100 for i in range(50))


def test_websocket_upgrade_passes_through(proxy: ProxyProc) -> None:
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as s:
        s.sendall(
            b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
        )
        head = b""
        while b"\r\n\r\n" not in head:
            head += s.recv(4096)
        assert head.startswith(b"HTTP/1.1 101")
        # What a WebSocket client checks before it trusts the tunnel (RFC 6455 4.1).
        fields = head.lower().split(b"\r\n")
        assert b"connection: upgrade" in fields and b"upgrade: websocket" in fields
        s.sendall(b"hello")
        got = b""
        while len(got) < 5:
            got += s.recv(100)
        assert got == b"HELLO"


@pytest.mark.parametrize(
    "attack",
    [
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nContent-Length: 40\r\n\r\nabcd",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nX: y\r\n folded\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nX: " + b"y" * 70000 + b"\r\n\r\n",
    ],
)
def test_malformed_and_smuggling_requests_get_400_and_a_closed_connection(
    proxy: ProxyProc, three: list[Backend], attack: bytes
) -> None:
    before = sum(b.hits for b in three)
    out = raw(proxy.port, attack)
    assert out.split(b" ")[1] in (b"400", b"431")
    assert out.count(b"HTTP/1.1") == 1  # one answer, then closed: nothing smuggled through
    assert b"Connection: close" in out
    assert (
        sum(b.hits for b in three) - before <= 1
    )  # the chunked one may reach a backend with a valid body... never a second request
    with urlopen(proxy.url + "/") as r:
        assert r.status == 200  # and the proxy is fine


def test_a_head_over_the_limit_never_reaches_a_backend(
    proxy: ProxyProc, three: list[Backend]
) -> None:
    """In one write, the head reached the backends (whose own reader answered 431, which hid
    it), and a backend that dropped it instead was tried three times and ejected."""
    out = raw(proxy.port, b"GET / HTTP/1.1\r\nHost: a\r\nX: " + b"y" * 70000 + b"\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 431 ") and out.endswith(b"request header fields too large\n")
    assert sum(u["requests"] for u in proxy.status()["upstreams"]) == 0


def urlopen(url: str) -> Any:
    import urllib.request

    return urllib.request.urlopen(url, timeout=10)


def test_connect_failures_are_retried_elsewhere(tmp_path: Path, three: list[Backend]) -> None:
    dead = free_port()
    p = ProxyProc(
        tmp_path,
        "--backend",
        f"http://127.0.0.1:{dead}",
        *[a for b in three for a in ("--backend", b.url)],
    )
    try:
        for _ in range(30):
            with urlopen(p.url + "/echo") as r:
                assert r.status == 200
        st = {u["address"]: u for u in p.status()["upstreams"]}
        assert st[f"127.0.0.1:{dead}"]["failures"] >= 1
        assert "dockmesh_proxy_retries_total" in p.metrics()
        wait_until(
            lambda: (
                not {u["address"]: u for u in p.status()["upstreams"]}[f"127.0.0.1:{dead}"][
                    "healthy"
                ]
            ),
            10,
        )
    finally:
        p.stop()


def test_an_upstream_that_keeps_failing_opens_its_breaker_and_then_503_says_why(
    tmp_path: Path,
) -> None:
    # The upstream failing itself (503), with 500 counted and panic off so that the one host
    # may go: the cap still keeps half of two, so the breaker that opens is the first's only.
    with backends(2) as (a, b):
        p = ProxyProc(
            tmp_path,
            "--backend",
            a.url,
            "--backend",
            b.url,
            "--failure-statuses",
            "500,502,503,504",
            "--panic-threshold",
            "0",
        )
        try:
            codes = []
            for _ in range(12):
                conn = http.client.HTTPConnection("127.0.0.1", p.port, timeout=10)
                conn.request("POST", "/status/500", body=b"x")
                r = conn.getresponse()
                codes.append((r.status, r.read()))
                conn.close()
            assert codes[0][0] == 500
            breakers = sorted(u["breaker"] for u in p.status()["upstreams"])
            assert breakers == ["closed", "open"]  # 50% of 2: one out, never both
            assert all(status == 500 for status, _ in codes)  # the other still answers
        finally:
            p.stop()


def _hammer(url: str, stop: threading.Event, codes: list[int]) -> None:
    while not stop.is_set():
        try:
            with urllib.request.urlopen(url, timeout=10) as r:
                codes.append(r.status)
        except urllib.error.HTTPError as e:
            codes.append(e.code)
        except OSError:
            codes.append(0)


def test_a_client_asking_for_500s_leaves_everyone_elses_requests_alone(tmp_path: Path) -> None:
    with backends(3) as bs:
        p = ProxyProc(tmp_path, *[a for b in bs for a in ("--backend", b.url)])
        try:
            stop = threading.Event()
            bad: list[int] = []
            hammer = threading.Thread(target=_hammer, args=(p.url + "/status/500", stop, bad))
            hammer.start()
            good: list[int] = []
            try:
                deadline = time.monotonic() + 3
                while time.monotonic() < deadline:
                    with urlopen(p.url + "/echo") as r:
                        good.append(r.status)
            except urllib.error.HTTPError as e:
                good.append(e.code)
            finally:
                stop.set()
                hammer.join()
            assert len(bad) >= 15 and set(bad) == {500}
            assert len(good) >= 15 and set(good) == {200}
            ups = p.status()["upstreams"]
            assert all(u["breaker"] == "closed" for u in ups)
        finally:
            p.stop()


def test_one_upstream_answering_errors_is_never_taken_out(tmp_path: Path) -> None:
    with backends(1) as (b,):
        p = ProxyProc(tmp_path, "--backend", b.url)
        try:
            for status in (500, 503):
                codes = []
                for _ in range(20):
                    try:
                        urlopen(f"{p.url}/status/{status}")
                    except urllib.error.HTTPError as e:
                        codes.append(e.code)
                assert codes == [status] * 20  # the upstream's answer, relayed: never the proxy's
            with urlopen(p.url + "/echo") as r:
                assert r.status == 200
            assert p.status()["upstreams"][0]["breaker"] == "closed"
        finally:
            p.stop()


def proxy_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`dockmesh proxy --listen 127.0.0.1:1 ARGS` from this interpreter."""
    return subprocess.run(
        [sys.executable, "-m", "dockmesh", "proxy", "--listen", "127.0.0.1:1", *args],
        capture_output=True,
        text=True,
        env=env,
    )


def test_no_upstream_and_bad_flags(tmp_path: Path) -> None:
    r = proxy_cli("--bogus")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    r = proxy_cli("--backend", "ftp://x")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    for flag, value in (("--failure-statuses", "404"), ("--max-ejection-percent", "120")):
        r = proxy_cli("--backend", "http://127.0.0.1:1", flag, value)
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert flag in r.stderr
    bad = tmp_path / "routes.yaml"
    bad.write_text(
        "routes:\n  - prefix: /a\n    service: api\n  - prefix: nope\n    backends: [ftp://x]\n"
    )
    r = proxy_cli("--config", str(bad))
    assert r.returncode == 2
    assert f"{bad}:4: routes.1.prefix" in r.stderr and f"{bad}:5: routes.1.backends.0" in r.stderr
    r = proxy_cli("--service", "api", env={**os.environ, "DOCKMESH_AGENT": "ftp://127.0.0.1:1"})
    assert r.returncode == 2 and "$DOCKMESH_AGENT 'ftp://127.0.0.1:1'" in r.stderr


def test_routes_by_host_and_prefix(tmp_path: Path) -> None:
    with backends(2) as (a, b):
        cfg = tmp_path / "routes.yaml"
        cfg.write_text(
            f"routes:\n  - host: api.test\n    backends: [{a.url}]\n  - prefix: /b\n    backends: [{b.url}]\n"
        )
        p = ProxyProc(tmp_path, "--config", str(cfg))
        try:
            assert json.loads(curl("-H", "Host: api.test", p.url + "/x"))["backend"] == "be1"
            assert json.loads(curl(p.url + "/b/x"))["backend"] == "be2"
            assert curl("-o", "/dev/null", "-w", "%{http_code}", p.url + "/other") == "404"
        finally:
            p.stop()


def test_several_workers_share_the_port(tmp_path: Path, three: list[Backend]) -> None:
    p = ProxyProc(tmp_path, "--workers", "2", *[a for b in three for a in ("--backend", b.url)])
    try:
        for _ in range(20):
            with urlopen(p.url + "/echo") as r:
                assert r.status == 200
        wait_until(lambda: sum(u["requests"] for u in p.status()["upstreams"]) == 20, 5)
        assert len(p.status()["upstreams"]) == 3
    finally:
        p.stop()
    assert p.proc.returncode == 0


def test_follows_the_agent_catalog(api: Any, prefix: str, tmp_path: Path, toolbox: str) -> None:
    agent = AgentProc(tmp_path)
    agent.start()
    proxy = None
    try:
        (subnet,) = free_subnets(api, 1)
        net = f"{prefix}_net"
        api.create_network(net, ipam={"Config": [{"Subnet": subnet}]})
        svc = f"{prefix}svc"
        labels = {
            "dockmesh.service": svc,
            "dockmesh.port": "8080",
            "dockmesh.check.http": "/health",
            "dockmesh.check.interval": "1s",
        }

        def start(i: int) -> str:
            cid = str(
                api.create_container(
                    toolbox,
                    name=f"{prefix}-w{i}",
                    hostname=f"{prefix}-w{i}",
                    labels=labels,
                    host_config=api.create_host_config(network_mode=net),
                )["Id"]
            )
            api.start(cid)
            return cid

        ids = [start(1), start(2)]
        # The agent's URL from the environment, as every command reads it.
        proxy = ProxyProc(tmp_path, "--service", svc, env={"DOCKMESH_AGENT": agent.api})

        def upstreams() -> set[str]:
            return {u["address"] for u in proxy.status()["upstreams"]} if proxy else set()

        wait_until(lambda: len(upstreams()) == 2, 15)
        for _ in range(6):
            with urlopen(proxy.url + "/health") as r:
                assert r.status == 200
        ids.append(start(3))
        wait_until(lambda: len(upstreams()) == 3, 15)
        api.stop(ids[0], timeout=0)
        wait_until(lambda: len(upstreams()) == 2, 5)
        for _ in range(10):
            with urlopen(proxy.url + "/health") as r:
                assert r.status == 200
    finally:
        if proxy is not None:
            proxy.stop()
        agent.stop()


def _read_all(s: socket.socket, timeout: float = 20.0) -> bytes:
    s.settimeout(timeout)
    got = bytearray()
    while chunk := s.recv(1 << 20):
        got += chunk
    return bytes(got)


def test_a_close_never_cuts_the_last_response_short(proxy: ProxyProc) -> None:
    """The proxy ends a connection (`Connection: close`) while the client has sent more
    than the proxy reads ahead and has not read the 4 MB answer before it: a plain close
    would reset the connection and drop what the kernel had not sent yet. Lingering
    close: all of it arrives, then the end."""
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as s:
        ahead = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" * 100_000  # 2.7 MB, past any bound
        s.sendall(
            b"GET /big/4000000 HTTP/1.1\r\nHost: x\r\n\r\n"
            b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" + ahead
        )
        time.sleep(1.0)  # not reading: the proxy's writes wait in the buffers
        out = _read_all(s)
    assert out.count(b"HTTP/1.1 200 ") == 2
    assert out.count(b"b" * 1000) >= 3999  # the whole big body
    assert out.rstrip().endswith(b"}")  # the second answer is whole, and the last


def test_a_half_closed_client_gets_its_answer(proxy: ProxyProc) -> None:
    for _ in range(20):
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as s:
            s.sendall(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
            s.shutdown(socket.SHUT_WR)
            out = _read_all(s)
        assert out.startswith(b"HTTP/1.1 200 ") and out.rstrip().endswith(b"}")


def test_a_client_that_sends_ahead_without_reading_is_held_to_a_bound(
    proxy: ProxyProc,
) -> None:
    """Requests for 100 KB answers, sent ahead for seconds by a client that reads nothing:
    the proxy reads no more of them than its bound, and none while the client does not
    read its answers."""

    def rss_kb() -> int:
        for line in Path(f"/proc/{proxy.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS")

    before = rss_kb()
    req = b"GET /big/100000 HTTP/1.1\r\nHost: x\r\n\r\n" * 100
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as s:
        s.setblocking(False)
        sent = 0
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                sent += s.send(req)
            except BlockingIOError:
                time.sleep(0.01)
        grown = rss_kb() - before
    # The proxy stopped reading: what was sent waits in the kernel's buffers (seen: 4.5 MB
    # sent, 0.6 MB grown; before the bound, 20 MB sent and 13 MB grown in the same 5 s).
    assert sent < 12_000_000, f"{sent} bytes sent"
    assert grown < 8_000, f"proxy grew by {grown} kB"
    with urlopen(proxy.url + "/") as r:
        assert r.status == 200
