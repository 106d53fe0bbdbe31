"""What one DNS client may take, on real sockets: a source holding hundreds of TCP connections,
or flooding UDP, while other sources ask and are answered in time.

On loopback (with `limit_loopback`, two loopback addresses stand for two clients) on asyncio
and uvloop; then from containers, through the gateway listener the agent serves them on, with
the host asking meanwhile. Nothing leaves the machine: loopback, and the test's own network
and containers.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import selectors
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from typing import Any

import dns.message
import dns.query
import dns.rcode
import pytest

from dockmesh.catalog.live import LiveCatalog
from dockmesh.dns.server import DnsLimits, DnsServer
from dockmesh.model.catalog import Instance
from tests.integration.conftest import free_subnets
from tests.integration.test_dns import LoopThread

pytestmark = [pytest.mark.integration, pytest.mark.alone]

PYTHON = "dockmesh/python:latest"
NAME = "api.service.dockmesh"
ATTACKER = "127.0.0.2"  # a second loopback address: another source
BUDGET_S = 0.1  # the acceptance: every answer within 100 ms


class Served:
    def __init__(self, lt: LoopThread, server: DnsServer, port: int) -> None:
        self.lt, self.server, self.port = lt, server, port


@pytest.fixture(params=["asyncio", "uvloop"])
def served(request: pytest.FixtureRequest) -> Iterator[Served]:
    lt = LoopThread(request.param == "uvloop")

    async def start() -> tuple[DnsServer, int]:
        live = LiveCatalog()
        for i in range(3):
            live.register(Instance(f"api-{i}", "api", f"10.77.0.{i + 1}", 8080), [])
        server = DnsServer(
            live,
            lambda: None,
            limits=DnsLimits(limit_loopback=True, udp_rate=1000, udp_burst=2000),
        )
        _, port = await server.start("127.0.0.1", 0)
        return server, port

    server, port = lt.run(start())
    try:
        yield Served(lt, server, port)
    finally:
        with contextlib.suppress(Exception):
            lt.run(server.close())
        lt.stop()


def timed_tcp(host: str, port: int, source: str | None = None) -> float:
    """Seconds for one whole TCP exchange (connect, ask, read), checked NOERROR."""
    q = dns.message.make_query(NAME, "A")
    t0 = time.monotonic()
    r = dns.query.tcp(q, host, port=port, timeout=2, source=source)
    took = time.monotonic() - t0
    assert r.rcode() == dns.rcode.NOERROR
    assert len(r.answer[0]) == 3
    return took


class Holder:
    """Keeps `count` TCP connections from `source` open, opening a new one for each the
    server closes; every other one has sent the first byte of a message and stopped."""

    def __init__(self, source: str, port: int, count: int) -> None:
        self.source, self.port, self.count = source, port, count
        self.opened = 0
        self.stop = threading.Event()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def open(self, sel: selectors.BaseSelector) -> None:
        s = socket.socket()
        s.bind((self.source, 0))
        s.settimeout(2)
        try:
            s.connect(("127.0.0.1", self.port))
            if self.opened % 2:
                s.send(b"\x00")
        except OSError:
            s.close()
            return
        self.opened += 1
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ)

    def run(self) -> None:
        with selectors.DefaultSelector() as sel:
            try:
                for _ in range(self.count):
                    self.open(sel)
                self.ready.set()
                while not self.stop.is_set():
                    for key, _ in sel.select(0.05):
                        s = key.fileobj
                        assert isinstance(s, socket.socket)
                        with contextlib.suppress(OSError):
                            if s.recv(100) != b"":
                                continue
                        sel.unregister(s)
                        s.close()
                        self.open(sel)
            finally:
                self.ready.set()
                for key in list(sel.get_map().values()):
                    with contextlib.suppress(Exception):
                        key.fileobj.close()  # type: ignore[union-attr]

    def close(self) -> None:
        self.stop.set()
        self.thread.join(10)


def test_hundreds_of_connections_held_by_one_source_starve_no_other(served: Served) -> None:
    holder = Holder(ATTACKER, served.port, 300)
    try:
        assert holder.ready.wait(30)
        times = sorted(timed_tcp("127.0.0.1", served.port) for _ in range(30))
        # Starved, a query would wait for a slot (seconds, or never). One answer of thirty may
        # meet a scheduling hiccup of a loaded machine (0.12 s once on CI): the rest are in
        # budget, and that one within a second.
        assert times[-2] < BUDGET_S and times[-1] < 1.0, times
        assert holder.opened >= 300
    finally:
        holder.close()
    stats = served.server.stats
    refused = stats.refused
    assert refused[("tcp", "tcp_per_source")] >= 300 - 16
    assert stats.errors == 0


class BusyHolder:
    """Connections from many sources (`per_source` each, the cap), each kept busy: half a
    query, the rest a second later, its answer read, again; a closed one is opened again.
    What a client pays to hold a connection the server never takes as idle."""

    def __init__(self, sources: list[str], per_source: int, port: int) -> None:
        self.lt = LoopThread(False)
        self.port = port
        self.stop = asyncio.Event()
        wire = dns.message.make_query(NAME, "A").to_wire()
        self.message = len(wire).to_bytes(2, "big") + wire
        self.future = asyncio.run_coroutine_threadsafe(
            self.run([s for s in sources for _ in range(per_source)]), self.lt.loop
        )

    async def run(self, sources: list[str]) -> None:
        tasks = [asyncio.create_task(self.hold(s)) for s in sources]
        await self.stop.wait()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def hold(self, source: str) -> None:
        while True:
            writer = None
            try:
                reader, writer = await asyncio.open_connection(
                    "127.0.0.1", self.port, local_addr=(source, 0)
                )
                while True:
                    writer.write(self.message[:5])
                    await asyncio.sleep(1.0)
                    writer.write(self.message[5:])
                    size = int.from_bytes(await reader.readexactly(2), "big")
                    await reader.readexactly(size)
            except (OSError, asyncio.IncompleteReadError):
                await asyncio.sleep(0.05)
            finally:
                if writer is not None:
                    writer.close()

    def close(self) -> None:
        self.lt.loop.call_soon_threadsafe(self.stop.set)
        with contextlib.suppress(Exception):
            self.future.result(20)
        self.lt.stop()


def test_many_sources_of_busy_connections_starve_no_other(served: Served) -> None:
    """The total full of connections that are never idle (a query a second each, from more
    sources than the total has room for at the per-source cap): a new source still gets in,
    in time, by the oldest connection of a source holding the most."""
    slots = served.server.slots
    count = slots.total // slots.per_source + 6
    sources = [f"127.0.{1 + i // 250}.{2 + i % 250}" for i in range(count)]
    holder = BusyHolder(sources, slots.per_source, served.port)
    try:
        deadline = time.monotonic() + 30
        while len(slots) < slots.total and time.monotonic() < deadline:
            time.sleep(0.2)
        assert len(slots) == slots.total
        time.sleep(1.5)  # every held connection has been busy since
        times = [timed_tcp("127.0.0.1", served.port) for _ in range(20)]
        assert max(times) < BUDGET_S, times
    finally:
        holder.close()
    assert served.server.stats.refused[("tcp", "tcp_total")] > 0
    assert served.server.stats.errors == 0


def test_a_udp_flood_from_one_source_leaves_the_others_answered(served: Served) -> None:
    stop = threading.Event()
    sent = [0]

    def flood() -> None:
        wire = dns.message.make_query(NAME, "A").to_wire()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind((ATTACKER, 0))
            s.connect(("127.0.0.1", served.port))
            s.setblocking(False)
            while not stop.is_set():
                for _ in range(1000):
                    with contextlib.suppress(BlockingIOError, ConnectionRefusedError):
                        s.send(wire)
                        sent[0] += 1

    thread = threading.Thread(target=flood, daemon=True)
    thread.start()
    try:
        time.sleep(0.5)
        answered = 0
        for _ in range(50):
            q = dns.message.make_query(NAME, "A")
            for _attempt in range(3):  # the kernel may drop ours too when the flood fills it
                try:
                    r = dns.query.udp(q, "127.0.0.1", port=served.port, timeout=1)
                except dns.exception.Timeout:
                    continue
                assert r.rcode() == dns.rcode.NOERROR
                answered += 1
                break
    finally:
        stop.set()
        thread.join(10)
    assert answered == 50
    refused = served.server.stats.refused[("udp", "udp_rate")]
    # The limiter dropped the flood. How much of it reached the server at all depends on the
    # machine's load (the kernel drops the rest when the socket's buffer is full), so no share
    # of what was sent is asserted: a loaded run saw 48% reach it.
    assert refused > 0 and sent[0] > refused


# --- from containers, through the gateway ----------------------------------------------------

HOLD = """
import selectors, socket, sys, time
gw, count = sys.argv[1], int(sys.argv[2])
sel = selectors.DefaultSelector()
opened = 0
def open_one():
    global opened
    try:
        s = socket.create_connection((gw, 53), timeout=2)
        if opened % 2:
            s.send(b"\\x00")
    except OSError:
        time.sleep(0.01)
        return
    opened += 1
    s.setblocking(False)
    sel.register(s, selectors.EVENT_READ)
for _ in range(count):
    open_one()
print("held", opened, flush=True)
while True:
    for key, _ in sel.select(0.05):
        try:
            if key.fileobj.recv(100):
                continue
        except OSError:
            pass
        sel.unregister(key.fileobj)
        key.fileobj.close()
        open_one()
"""

FLOOD = """
import socket, sys
import dns.message
wire = dns.message.make_query("api.service.dockmesh", "A").to_wire()
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.connect((sys.argv[1], 53))
s.setblocking(False)
while True:
    try:
        s.send(wire)
    except OSError:
        pass
"""

ASK = """
import sys, time
import dns.message, dns.query, dns.rcode
gw, tcp = sys.argv[1], sys.argv[2] == "tcp"
worst = 0.0
for _ in range(20):
    q = dns.message.make_query("api.service.dockmesh", "A")
    t0 = time.monotonic()
    for attempt in range(3):
        try:
            if tcp:
                r = dns.query.tcp(q, gw, port=53, timeout=2)
            else:
                r = dns.query.udp(q, gw, port=53, timeout=1)
            break
        except Exception:
            if attempt == 2:
                raise
    assert r.rcode() == dns.rcode.NOERROR and len(r.answer[0]) == 3, r
    worst = max(worst, time.monotonic() - t0)
print(f"worst {worst:.4f}", flush=True)
"""


def test_a_container_holding_hundreds_of_connections_starves_neither_the_host_nor_others(
    api: Any, prefix: str
) -> None:
    """The agent's shape: one server on loopback and on a bridge gateway. A container holds
    300 TCP connections to the gateway (opening a new one for each closed, half of them
    stuck in a message) and another floods UDP, while the host (on both addresses) and a
    third container ask over TCP, and that one over UDP too: every TCP answer within 100 ms,
    every UDP query answered."""
    try:
        api.inspect_image(PYTHON)
    except Exception:
        pytest.fail("dockmesh/python is missing: scripts/test builds it (dockmesh images build)")
    (subnet,) = free_subnets(api, 1)
    network = ipaddress.ip_network(subnet)
    hosts = list(network.hosts())
    gateway, spare = str(hosts[0]), str(hosts[-1])
    low_half = next(network.subnets(prefixlen_diff=1))
    net, bridge = f"{prefix}-dnsl", f"{prefix}br"
    api.create_network(
        net,
        options={"com.docker.network.bridge.name": bridge},
        ipam={"Config": [{"Subnet": subnet, "IPRange": str(low_half), "Gateway": gateway}]},
    )
    lt = LoopThread(use_uvloop=True)
    servers: list[DnsServer] = []
    try:

        async def start() -> tuple[DnsServer, int, str]:
            live = LiveCatalog()
            for i in range(3):
                live.register(Instance(f"api-{i}", "api", f"10.79.0.{i + 1}", 8080), [])
            server = DnsServer(live, lambda: None)
            servers.append(server)
            _, port = await server.start("127.0.0.1", 0)
            try:
                await server.add_listener(gateway, 53)
                return server, port, gateway
            except OSError as e:
                if e.errno != errno.EADDRINUSE:
                    raise
            # An agent on the machine holds port 53 of every gateway: a second address of
            # the bridge instead (see test_dns's gateway test).
            subprocess.run(
                ["ip", "addr", "add", f"{spare}/{network.prefixlen}", "dev", bridge], check=True
            )
            await server.add_listener(spare, 53)
            return server, port, spare

        server, port, address = lt.run(start())

        def run(name: str, script: str, *args: str) -> str:
            cid = api.create_container(
                PYTHON,
                name=f"{prefix}-{name}",
                command=["python3", "-c", script, *args],
                host_config=api.create_host_config(network_mode=net),
            )["Id"]
            api.start(cid)
            return str(cid)

        holder = run("hold", HOLD, address, "300")
        deadline = time.monotonic() + 60
        while b"held" not in api.logs(holder):
            assert time.monotonic() < deadline, api.logs(holder)
            time.sleep(0.2)
        run("flood", FLOOD, address)
        time.sleep(1)
        assert server.stats.refused[("tcp", "tcp_per_source")] >= 300 - 16
        for host, p in (("127.0.0.1", port), (address, 53)):
            times = [timed_tcp(host, p) for _ in range(20)]
            assert max(times) < BUDGET_S, (host, times)
        for transport in ("tcp", "udp"):
            cid = run(f"ask-{transport}", ASK, address, transport)
            assert api.wait(cid, timeout=120)["StatusCode"] == 0, api.logs(cid)
            worst = float(api.logs(cid).decode().split()[-1])
            if transport == "tcp":
                assert worst < BUDGET_S, worst
        assert server.stats.refused[("udp", "udp_rate")] > 0
        assert server.stats.errors == 0
    finally:
        for server in servers:
            with contextlib.suppress(Exception):
                lt.run(server.close())
        lt.stop()
