"""`dockmesh proxy` middlewares and access log against real backends: header edits seen by
the backend and the client, 429 after the burst, 413 before the upstream sees a byte, gzip and
br bodies curl decodes, the access log's lines in both formats, sampled under wrk load, and
reopened for logrotate."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.proxyenv import Backend, ProxyProc, backends, raw

ROUTES = """\
middlewares:
  hdr:
    headers:
      request: {{set: {{X-Env: prod}}, remove: [X-Debug], add: {{X-Tag: mw}}}}
      response: {{remove: [Server], add: {{X-Frame-Options: DENY}}}}
  limited: {{rate_limit: {{rate: 1, period: 10s, burst: 3, per: client}}}}
  small: {{max_body: 1k}}
  squeeze: {{compress: {{min_size: 512}}}}
access_log: {{path: {log}, format: common}}
routes:
  - prefix: /rl/
    backends: [{url}]
    middlewares: [limited]
  - prefix: /up/
    backends: [{url}]
    middlewares: [small]
  - prefix: /big/
    backends: [{url}]
    middlewares: [squeeze]
  - prefix: /stream
    backends: [{url}]
    middlewares: [squeeze]
  - backends: [{url}]
    middlewares: [hdr]
"""


@pytest.fixture
def mw(tmp_path: Path) -> Iterator[tuple[ProxyProc, Backend, Path]]:
    log = tmp_path / "access.log"
    with backends(1) as (b,):
        cfg = tmp_path / "routes.yaml"
        cfg.write_text(ROUTES.format(url=b.url, log=log))
        proxy = ProxyProc(tmp_path, "--config", str(cfg))
        try:
            yield proxy, b, log
        finally:
            proxy.stop()


def curl(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["curl", "-sS", "--max-time", "10", *args], capture_output=True)


def head_and_body(out: bytes) -> tuple[str, bytes]:
    head, _, body = out.partition(b"\r\n\r\n")
    return head.decode("latin-1"), body


def wait_for_lines(path: Path, n: int, timeout: float = 5.0) -> list[str]:
    deadline = time.monotonic() + timeout
    while True:
        lines = path.read_text().splitlines() if path.exists() else []
        if len(lines) >= n or time.monotonic() > deadline:
            return lines
        time.sleep(0.05)


def test_header_edits_reach_the_backend_and_the_client(
    mw: tuple[ProxyProc, Backend, Path],
) -> None:
    proxy, _, _ = mw
    r = curl("-i", "-H", "X-Debug: 1", "-H", "X-Env: dev", f"{proxy.url}/x")
    head, body = head_and_body(r.stdout)
    seen = json.loads(body)["headers"]
    assert seen["x-env"] == "prod" and seen["x-tag"] == "mw" and "x-debug" not in seen
    assert seen["x-forwarded-for"] == "127.0.0.1"  # the proxy's own edits stay
    assert "X-Frame-Options: DENY" in head
    assert not re.search(r"(?im)^server:", head)


def test_429_after_the_burst_with_retry_after_and_nothing_forwarded(
    mw: tuple[ProxyProc, Backend, Path],
) -> None:
    proxy, b, _ = mw
    statuses = []
    for _ in range(5):
        out = raw(proxy.port, b"GET /rl/a HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        statuses.append(int(out.split(b" ", 2)[1]))
    assert statuses == [200, 200, 200, 429, 429]
    assert re.search(rb"\r\nRetry-After: (10|9)\r\n", out), out
    assert b.hits == 3
    # A keep-alive connection stays open after a 429 for a body-less request.
    out = raw(
        proxy.port,
        b"GET /rl/b HTTP/1.1\r\nHost: t\r\n\r\nGET /x HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    )
    assert out.startswith(b"HTTP/1.1 429") and out.count(b"HTTP/1.1 200 OK") == 1, out
    assert 'rejected_total{reason="rate_limit"} 3.0' in proxy.metrics()


def test_413_before_the_upstream_sees_the_body(mw: tuple[ProxyProc, Backend, Path]) -> None:
    proxy, b, _ = mw
    hits = b.hits
    out = raw(
        proxy.port,
        b"POST /up/a HTTP/1.1\r\nHost: t\r\nContent-Length: 5000\r\nExpect: 100-continue\r\n\r\n",
    )
    assert out.startswith(b"HTTP/1.1 413 "), out
    assert b.hits == hits
    ok = curl("-d", "x" * 1024, f"{proxy.url}/up/a")
    assert json.loads(ok.stdout)["received"] == 1024
    # Chunked: refused at the size line that goes past the bound.
    out = raw(
        proxy.port,
        b"POST /up/a HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"200\r\n" + b"y" * 512 + b"\r\n400\r\n" + b"z" * 1024 + b"\r\n0\r\n\r\n",
    )
    assert b"413 Content Too Large" in out, out
    assert 'rejected_total{reason="body_too_large"} 2.0' in proxy.metrics()
    small = curl("-H", "Transfer-Encoding: chunked", "-d", "x" * 1000, f"{proxy.url}/up/a")
    assert json.loads(small.stdout)["received"] == 1000


def test_http2_streams_go_through_the_routes_rate_limit_body_bound_and_header_edits(
    mw: tuple[ProxyProc, Backend, Path],
) -> None:
    """A route's middlewares hold for HTTP/2 clients too: h2c cannot step around a rate limit
    or a body bound that HTTP/1.1 meets."""
    proxy, b, _ = mw
    h2 = ("--http2-prior-knowledge", "-o", "/dev/null", "-w", "%{http_code} ")
    codes = [curl(*h2, f"{proxy.url}/rl/h2").stdout.decode().strip() for _ in range(5)]
    assert codes == ["200", "200", "200", "429", "429"], codes
    r = curl("--http2-prior-knowledge", "-i", f"{proxy.url}/rl/h2")
    assert re.search(rb"(?im)^retry-after: (10|9)\r$", r.stdout), r.stdout
    hits = b.hits
    r = curl(*h2, "-d", "x" * 5000, f"{proxy.url}/up/a")
    assert r.stdout.decode().strip() == "413", r
    assert b.hits == hits
    # No Content-Length (curl streams stdin): cut when the bytes pass the bound.
    r = subprocess.run(
        ["curl", "-sS", "--max-time", "10", "--http2-prior-knowledge", "-T", "-",
         "-X", "POST", f"{proxy.url}/up/a"],
        input=b"z" * 5000, capture_output=True,
    )  # fmt: skip
    assert r.returncode != 0 or b"larger than 1024 bytes" in r.stdout, r
    ok = curl("--http2-prior-knowledge", "-d", "x" * 1000, f"{proxy.url}/up/a")
    assert json.loads(ok.stdout)["received"] == 1000
    r = curl("--http2-prior-knowledge", "-H", "X-Debug: 1", f"{proxy.url}/x")
    seen = json.loads(r.stdout)["headers"]
    assert seen["x-env"] == "prod" and "x-debug" not in seen


@pytest.mark.parametrize("encoding", ["gzip", "br"])
def test_compressed_bodies_decoded_by_curl(
    mw: tuple[ProxyProc, Backend, Path], encoding: str
) -> None:
    proxy, _, _ = mw
    r = curl("-i", "-H", f"Accept-Encoding: {encoding}", f"{proxy.url}/big/20000")
    head, body = head_and_body(r.stdout)
    assert f"Content-Encoding: {encoding}" in head and "Vary: Accept-Encoding" in head
    assert "Transfer-Encoding: chunked" in head and "Content-Length" not in head
    assert len(body) < 2000
    decoded = curl("--compressed", "-H", f"Accept-Encoding: {encoding}", f"{proxy.url}/big/20000")
    assert decoded.stdout == b"b" * 20000
    # Not accepted, or too small: as it came.
    plain = curl("-i", f"{proxy.url}/big/20000")
    assert "Content-Length: 20000" in head_and_body(plain.stdout)[0]
    small = curl("-i", "-H", f"Accept-Encoding: {encoding}", f"{proxy.url}/big/100")
    assert "Content-Encoding" not in head_and_body(small.stdout)[0]
    # Several compressed responses on one keep-alive connection, read by curl in turn.
    many = curl("--compressed", *[f"{proxy.url}/big/{n}" for n in (3000, 600, 9000)])
    assert many.stdout == b"b" * 12600
    # A chunked upstream body: taken apart, compressed, chunked again.
    r = curl("-i", "-H", f"Accept-Encoding: {encoding}", f"{proxy.url}/stream")
    head, body = head_and_body(r.stdout)
    assert f"Content-Encoding: {encoding}" in head and head.count("Transfer-Encoding") == 1
    streamed = curl("--compressed", "-H", f"Accept-Encoding: {encoding}", f"{proxy.url}/stream")
    assert streamed.stdout.decode() == "".join(f"{i}," * 100 for i in range(50))


def test_common_lines_in_the_file_and_reopened_after_a_rotation(
    mw: tuple[ProxyProc, Backend, Path],
) -> None:
    proxy, _, log = mw
    curl(f"{proxy.url}/x?y=1")
    curl(f"{proxy.url}/nowhere-is-routed-here", "-H", "Host: h")
    raw(proxy.port, b"GET /rl/c HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    lines = wait_for_lines(log, 3)
    assert len(lines) == 3, lines
    pat = (
        r"127\.0\.0\.1 - - \[\d\d/\w{3}/\d{4}:\d\d:\d\d:\d\d \+0000\] "
        r'"GET (\S+) HTTP/1\.1" (\d{3}) (\d+|-) "(\S+)" "(\S+)" \d+ms'
    )
    parsed = [re.fullmatch(pat, line) for line in lines]
    assert all(parsed), lines
    first = parsed[0]
    assert first is not None
    assert first.group(1) == "/x?y=1" and first.group(2) == "200"
    assert first.group(4) == "route4" and first.group(5).startswith("127.0.0.1:")
    assert int(first.group(3)) > 0
    os.rename(log, log.with_suffix(".1"))
    proxy.proc.send_signal(signal.SIGUSR1)
    time.sleep(0.3)
    curl(f"{proxy.url}/after")
    lines = wait_for_lines(log, 1)
    assert len(lines) == 1 and '"GET /after HTTP/1.1" 200' in lines[0], lines
    assert len(log.with_suffix(".1").read_text().splitlines()) == 3


def json_lines(proxy: ProxyProc, n: int, limit_s: float = 5) -> list[dict[str, object]]:
    """The access log's JSON lines on the proxy's stdout, once there are `n` (or `limit_s`)."""
    deadline = time.monotonic() + limit_s
    docs: list[dict[str, object]] = []
    while len(docs) < n and time.monotonic() < deadline:
        time.sleep(0.1)
        docs = [json.loads(x) for x in proxy.log.read_text().splitlines() if x.startswith("{")]
    return docs


def test_json_lines_on_stdout(tmp_path: Path) -> None:
    with backends(1) as (b,):
        proxy = ProxyProc(
            tmp_path, "--backend", b.url, "--access-log", "-", "--access-log-format", "json"
        )
        try:
            curl(f"{proxy.url}/j?k=v")
            docs = json_lines(proxy, 1)
        finally:
            proxy.stop()
    assert len(docs) == 1, proxy.log.read_text()
    d = docs[0]
    assert d["method"] == "GET" and d["path"] == "/j?k=v" and d["status"] == 200
    assert d["client"] == "127.0.0.1" and d["route"] == "backends"
    assert d["upstream"] == f"127.0.0.1:{b.port}" and isinstance(d["bytes"], int)
    assert d["bytes"] > 0 and isinstance(d["duration_ms"], float)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", str(d["time"]))


def test_bad_access_log_flags_exit_2_with_one_line(tmp_path: Path) -> None:
    for args, why in (
        (["--access-log", "-", "--access-log-format", "xml"], "format"),
        (["--access-log", "-", "--access-log-sample", "0"], "sample"),
        (["--access-log", str(tmp_path / "no" / "such" / "dir.log")], "No such file"),
    ):
        r = subprocess.run(
            ["dockmesh", "proxy", "--listen", "127.0.0.1:0", "--backend", "http://127.0.0.1:1",
             *args],
            capture_output=True,
            text=True,
            env={**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"},
        )  # fmt: skip
        assert r.returncode == 2, r
        assert why in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def _total(metrics: str, name: str) -> float:
    return sum(
        float(m.group(1)) for m in re.finditer(rf"(?m)^{name}(?:{{[^}}]*}})? ([0-9.e+]+)$", metrics)
    )


def test_a_sampled_log_under_wrk_load_keeps_its_share(tmp_path: Path) -> None:
    log = tmp_path / "sampled.log"
    with backends(2) as bs:
        proxy = ProxyProc(
            tmp_path,
            *[a for b in bs for a in ("--backend", b.url)],
            "--access-log", str(log), "--access-log-sample", "0.1",
        )  # fmt: skip
        try:
            r = subprocess.run(
                ["wrk", "-t1", "-c8", "-d2s", f"{proxy.url}/w"],
                capture_output=True,
                text=True,
                timeout=30,
            )
            assert r.returncode == 0, r.stderr
            assert "Non-2xx" not in r.stdout and "Socket errors" not in r.stdout, r.stdout
            time.sleep(0.6)  # a flush and a sweep
            m = proxy.metrics()
        finally:
            proxy.stop()
    served = _total(m, "dockmesh_proxy_requests_total")
    lines = log.read_text().splitlines()
    assert served > 100, m
    # Every tenth line, evenly (an accumulator, not a coin); none dropped at this load.
    assert abs(len(lines) - served / 10) <= 1, (len(lines), served)
    assert 'dockmesh_proxy_access_log_lines_total{outcome="dropped"} 0.0' in m
    found = re.search(r'access_log_lines_total\{outcome="sampled_out"\} ([0-9.e+]+)', m)
    assert found is not None, m
    # (The sweep copies the counts every 0.25 s: all of them by now.)
    assert abs(float(found.group(1)) + len(lines) - served) <= 1, m


def test_a_reload_changes_the_middlewares_of_a_kept_connection(tmp_path: Path) -> None:
    """The chain is the route's at each request: a connection kept across a reload that
    drops it (the fast lane then) sees none of it, and one that adds it sees it."""
    import http.client

    with backends(1) as (b,):
        cfg = tmp_path / "routes.yaml"
        with_mw = (
            "middlewares:\n  hdr: {headers: {response: {add: {X-Mw: 'on'}}}}\n"
            f"routes:\n  - backends: [{b.url}]\n    middlewares: [hdr]\n"
        )
        without = f"routes:\n  - backends: [{b.url}]\n"
        cfg.write_text(with_mw)
        proxy = ProxyProc(tmp_path, "--config", str(cfg))
        try:
            c = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=5)
            seen = []
            for text in (with_mw, without, with_mw):
                cfg.write_text(text)
                proxy.proc.send_signal(signal.SIGHUP)
                time.sleep(0.5)
                for _ in range(3):
                    c.request("GET", "/x")
                    r = c.getresponse()
                    r.read()
                    seen.append(r.getheader("X-Mw"))
            assert seen == ["on"] * 3 + [None] * 3 + ["on"] * 3
        finally:
            proxy.stop()


def test_http2_streams_are_in_the_access_log(tmp_path: Path) -> None:
    """A stream's line as an HTTP/1.1 exchange's, `HTTP/2.0`: forwarded, and the proxy's own
    answer (a path it refuses). They were not logged at all."""
    with backends(1) as (b,):
        proxy = ProxyProc(
            tmp_path, "--backend", b.url, "--access-log", "-", "--access-log-format", "json"
        )
        try:
            h2c = ["--http2-prior-knowledge", "--path-as-is"]
            curl(*h2c, f"{proxy.url}/big/3000")
            curl(*h2c, f"{proxy.url}/../nope")
            docs = json_lines(proxy, 2)
        finally:
            proxy.stop()
    assert len(docs) == 2, proxy.log.read_text()
    ok, refused = docs
    assert ok["protocol"] == "HTTP/2.0" and ok["method"] == "GET" and ok["status"] == 200
    assert ok["path"] == "/big/3000" and ok["bytes"] == 3000
    assert ok["upstream"] == f"127.0.0.1:{b.port}" and ok["route"] == "backends"
    assert refused["protocol"] == "HTTP/2.0" and refused["status"] == 400
    assert refused["upstream"] == "-" and refused["route"] == "-"
