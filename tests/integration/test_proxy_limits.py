"""`dockmesh proxy` held to its resource limits, a real process on loopback with real
backends: slow uploads hold no upstream connection (a normal client beside them is served as
if they were not there) and end with 408 when too slow; clients that never read their
responses cost a bounded amount of memory, are let go, and the memory comes back; the
connections from one address are capped; a route's breaker and retry settings apply, show in
/status, and change on SIGHUP."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import os
import re
import select
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.proxyenv import ProxyProc, backends, free_port, raw
from tests.integration.test_agent import wait_until

SLOW_UPLOADS = 1100
# What each client that never reads asks for: past what the kernel's buffers take (a few MiB
# per connection on loopback), so that the rest waits in the proxy.
SIZE = 8 * 1024 * 1024


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def metric(text: str, name: str, **labels: str) -> float:
    """The sum of a metric's samples with these labels (0 when none)."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name) or line.startswith("#"):
            continue
        m = re.match(r"([a-z_]+)(\{[^}]*\})? (\S+)", line)
        if not m or m.group(1) != name:
            continue
        got = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
        if all(got.get(k) == v for k, v in labels.items()):
            total += float(m.group(3))
    return total


class BigBackend:
    """Answers every request with `size` bytes, streamed from one shared buffer as fast as the
    reader takes them (asyncio in a thread: a thousand connections cost no thread each)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.chunk = b"b" * 65536
        self.requests = 0
        self.open = 0
        self.loop = asyncio.new_event_loop()
        self.port = 0
        started = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(started,), daemon=True)
        self.thread.start()
        started.wait(10)

    def _run(self, started: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.open += 1
            try:
                while True:
                    head = await reader.readuntil(b"\r\n\r\n")
                    if not head:
                        return
                    self.requests += 1
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % self.size)
                    left = self.size
                    while left:
                        n = min(left, len(self.chunk))
                        writer.write(self.chunk[:n] if n < len(self.chunk) else self.chunk)
                        left -= n
                        await writer.drain()
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
                return
            finally:
                self.open -= 1
                writer.close()

        async def main() -> None:
            server = await asyncio.start_server(serve, "127.0.0.1", 0, backlog=4096)
            self.port = server.sockets[0].getsockname()[1]
            started.set()
            async with server:
                await server.serve_forever()

        with contextlib.suppress(asyncio.CancelledError, RuntimeError):
            self.loop.run_until_complete(main())

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        for t in asyncio.all_tasks(self.loop):
            self.loop.call_soon_threadsafe(t.cancel)
        self.thread.join(5)


@contextlib.contextmanager
def proxy_with(tmp: Path, config: str, *args: str) -> Iterator[ProxyProc]:
    cfg = tmp / "routes.yaml"
    cfg.write_text(config)
    proxy = ProxyProc(tmp, "--config", str(cfg), *args)
    try:
        yield proxy
    finally:
        proxy.stop()


def get(port: int, path: str = "/x", timeout: float = 5.0) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        r.read()
        return r.status
    finally:
        conn.close()


def test_slow_uploads_hold_no_upstream_connection_and_a_normal_client_is_served(
    tmp_path: Path,
) -> None:
    """1,100 uploads sending a byte a second beside a normal client: the upstream allows 50
    connections, so had each upload held one, the normal client would get 503s (0/142 in
    the report); buffered, the uploads cost the upstream nothing."""
    with (
        backends(1) as (b,),
        proxy_with(
            tmp_path,
            f"limits: {{max_connections_per_upstream: 50}}\nroutes:\n  - backends: [{b.url}]\n",
        ) as proxy,
    ):
        slow: list[socket.socket] = []
        try:
            for i in range(SLOW_UPLOADS):
                s = socket.create_connection(("127.0.0.1", proxy.port), 5)
                s.sendall(
                    b"POST /upload/%d HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n" % i
                )
                slow.append(s)
            ok = 0
            deadline = time.monotonic() + 60
            for n in range(150):
                if n % 10 == 0:
                    for s in slow:  # a byte a second, give or take: they never finish
                        with contextlib.suppress(OSError):
                            s.send(b"x")
                ok += get(proxy.port) == 200
                assert time.monotonic() < deadline
            assert ok == 150
            assert b.hits == 150  # no upload reached the backend
            m = proxy.metrics()
            assert metric(m, "dockmesh_proxy_client_connections") >= SLOW_UPLOADS
            assert metric(m, "dockmesh_proxy_upstream_connections") <= 2
        finally:
            for s in slow:
                s.close()


def test_a_body_too_slow_for_its_minimum_rate_is_408_and_a_fast_one_goes_through(
    tmp_path: Path,
) -> None:
    with (
        backends(1) as (b,),
        proxy_with(
            tmp_path,
            "timeouts: {client_body: 1s}\nlimits: {request_buffer_bytes: 1024}\n"
            f"routes:\n  - backends: [{b.url}]\n",
        ) as proxy,
    ):
        with socket.create_connection(("127.0.0.1", proxy.port), 10) as s:
            s.sendall(b"POST /u HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n")
            t0 = time.monotonic()
            answer = b""
            while not answer and time.monotonic() - t0 < 8:
                s.send(b"x")
                ready, _, _ = select.select([s], [], [], 0.3)
                if ready:
                    answer = s.recv(65536)
            assert answer.startswith(b"HTTP/1.1 408 "), answer
        assert b.hits == 0
        assert (
            metric(proxy.metrics(), "dockmesh_proxy_rejected_total", reason="client_body_timeout")
            == 1
        )
        # A body larger than the buffer, sent briskly, streams through whole.
        body = b"y" * 300_000
        out = raw(
            proxy.port,
            b"POST /u HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: %d\r\n\r\n"
            % len(body)
            + body,
        )
        assert out.startswith(b"HTTP/1.1 200 "), out[:200]
        assert json.loads(out.partition(b"\r\n\r\n")[2])["received"] == len(body)


@pytest.mark.alone
def test_clients_that_never_read_cost_a_bounded_amount_are_let_go_and_memory_comes_back(
    tmp_path: Path,
) -> None:
    """1,000 clients ask for SIZE each and read none of it: what the proxy holds for them
    stays within its budget (the biggest holders are closed past it), they are let go after
    client_send, and the memory comes back (not 272 MiB kept)."""
    n, budget = 1000, 32 * 1024 * 1024
    big = BigBackend(SIZE)
    try:
        with proxy_with(
            tmp_path,
            f"timeouts: {{client_send: 10s}}\nlimits: {{max_buffered_bytes: {budget}}}\n"
            f"routes:\n  - backends: [{big.url}]\n",
        ) as proxy:
            pid = proxy.proc.pid
            assert get(proxy.port, timeout=30) == 200  # warm: its pools, its code
            baseline = rss_mib(pid)
            clients = []
            try:
                for _ in range(n):
                    s = socket.socket()
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                    s.connect(("127.0.0.1", proxy.port))
                    s.sendall(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
                    clients.append(s)
                # Until (nearly) every request reached the backend: on a loaded machine the
                # proxy takes a while to push the first bytes of each through the kernel.
                peak = baseline
                deadline = time.monotonic() + 45
                while time.monotonic() < deadline and big.requests < n * 0.95:
                    peak = max(peak, rss_mib(pid))
                    time.sleep(0.2)
                # Settled: what is kept while they are held (before client_send lets the
                # first ones go), once the proxy says it holds no more than its budget (on a
                # loaded machine its sweeps come late) and its allocator has had the chance
                # to give back what was shed.
                wait_until(
                    lambda: metric(proxy.metrics(), "dockmesh_proxy_buffered_bytes") <= budget,
                    10,
                )
                # What is kept: the least of the samples over a few seconds, ending as soon
                # as one is within bounds (the allocator hands back at the next sweep's trim).
                bound = budget / 2**20 + n * 40 / 1024
                samples: list[float] = []
                settle = time.monotonic() + 6
                while not samples or (
                    min(samples) - baseline >= bound and time.monotonic() < settle
                ):
                    samples.append(rss_mib(pid))
                    peak = max(peak, samples[-1])
                    time.sleep(0.2)
                kept = min(samples)
                m = proxy.metrics()
                held_m = metric(m, "dockmesh_proxy_buffered_bytes")
                shed = [line for line in m.splitlines() if "closed_total{" in line]
                assert big.requests >= n * 0.95, big.requests  # they did ask
                assert metric(m, "dockmesh_proxy_client_connections") > 0, m  # still held
                # Let go after client_send, their upstream connections with them.
                wait_until(
                    lambda: metric(proxy.metrics(), "dockmesh_proxy_client_connections") == 0,
                    20,
                )
                m = proxy.metrics()
                closed = metric(m, "dockmesh_proxy_client_closed_total")
                assert closed >= n // 2, m
                wait_until(
                    lambda: metric(proxy.metrics(), "dockmesh_proxy_upstream_connections") <= 2,
                    10,
                )
                time.sleep(1)
                after = rss_mib(pid)
                # Kept: within the budget plus what a connection costs the process besides
                # (its transport, its upstream connection and theirs): measured +31 MiB with
                # a 32 MiB budget, where the same clients kept +398 MiB before (272 in the
                # report). A burst may pass it for a moment: shedding frees memory at the
                # end of the loop's pass, and one pass may bring hundreds of upstream reads
                # (+54 MiB measured at the peak); still far from what was kept before.
                print(
                    f"\nbaseline {baseline:.0f} MiB, peak {peak:.0f}, kept {kept:.0f}, after {after:.0f}"
                )
                assert kept - baseline < bound, (baseline, peak, samples, held_m, shed)
                assert peak - baseline < 4 * budget / 2**20, (baseline, peak, kept)
                assert after - baseline < 24, (baseline, peak, after)
            finally:
                for s in clients:
                    s.close()
            assert get(proxy.port, timeout=30) == 200
    finally:
        big.stop()


def test_connections_from_one_address_are_capped(tmp_path: Path) -> None:
    with (
        backends(1) as (b,),
        proxy_with(
            tmp_path,
            f"limits: {{max_connections_per_client: 5}}\nroutes:\n  - backends: [{b.url}]\n",
        ) as proxy,
    ):
        held = [socket.create_connection(("127.0.0.1", proxy.port)) for _ in range(5)]
        try:
            out = raw(proxy.port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            assert out.startswith(b"HTTP/1.1 503 ") and b"too many connections from" in out
            m = proxy.metrics()
            assert metric(m, "dockmesh_proxy_rejected_total", reason="client_connections") >= 1
            held.pop().close()
            wait_until(lambda: get(proxy.port) == 200, 5)
        finally:
            for s in held:
                s.close()


def test_a_routes_breaker_and_retry_settings_apply_show_and_reload(tmp_path: Path) -> None:
    dead = free_port()  # nothing listens: every attempt there fails to connect
    with backends(1) as (b,):
        config = (
            "passive: {max_ejection_percent: 50}\nroutes:\n"
            f"  - backends: [{b.url}, http://127.0.0.1:{dead}]\n"
            "    breaker: {failures: 2, open_for: 45s}\n"
            "    retry: {attempts: 1}\n"
        )
        with proxy_with(tmp_path, config) as proxy:
            doc = proxy.status()
            (c,) = doc["clusters"]
            assert c["breaker"]["failures"] == 2 and c["breaker"]["open_for_s"] == 45.0
            assert c["breaker"]["open_max_s"] == 45.0 and c["retry"]["attempts"] == 1
            statuses = [get(proxy.port) for _ in range(8)]
            # No retry: the dead upstream's attempts fail as 502, two of them; then its
            # breaker is open, for 45 s.
            assert statuses.count(502) == 2 and statuses.count(200) == 6, statuses
            ups = {u["address"]: u for u in proxy.status()["upstreams"]}
            assert ups[f"127.0.0.1:{dead}"]["breaker"] == "open"
            assert get(proxy.port) == 200
            # A reload with other settings: a new cluster, its breakers closed.
            (tmp_path / "routes.yaml").write_text(
                config.replace("failures: 2, open_for: 45s", "failures: 7")
            )
            os.kill(proxy.proc.pid, signal.SIGHUP)
            wait_until(lambda: proxy.status()["clusters"][0]["breaker"]["failures"] == 7, 10)
            ups = {u["address"]: u for u in proxy.status()["upstreams"]}
            assert ups[f"127.0.0.1:{dead}"]["breaker"] == "closed"
