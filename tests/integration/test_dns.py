"""The DNS server on real sockets, asked by real clients: dig (UDP and +tcp), dnspython, raw
bytes; and containers resolving through Docker's embedded DNS, which forwards what it does
not know to the server listening on their network's gateway.

The server runs on an event loop in a thread of the test (asyncio and uvloop); the catalog is
filled by hand on that loop. Nothing here leaves the machine: loopback, and the test's own
network and containers.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import shutil
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import Future
from typing import Any, TypeVar

import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import pytest

from dockmesh.catalog.live import LiveCatalog
from dockmesh.dns.server import DnsLimits, DnsServer
from dockmesh.model.catalog import CheckSpec, Instance
from dockmesh.model.topology import Attachment, Container, EngineInfo, Topology
from tests.integration.conftest import free_subnets

pytestmark = pytest.mark.integration
T = TypeVar("T")


class LoopThread:
    """An event loop in a thread: the server lives there, the test talks to it from outside."""

    def __init__(self, use_uvloop: bool) -> None:
        if use_uvloop:
            import uvloop

            self.loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
        else:
            self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 10) -> T:
        fut: Future[T] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return fut.result(timeout)

    def call(self, fn: Callable[[], T]) -> T:
        async def wrapped() -> T:
            return fn()

        return self.run(wrapped())

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


class Served:
    def __init__(self, lt: LoopThread, live: LiveCatalog, server: DnsServer, port: int) -> None:
        self.lt, self.live, self.server, self.port = lt, live, server, port
        self.topology: Topology | None = None

    def register(self, instance: Instance, checks: list[CheckSpec] | None = None) -> None:
        self.lt.call(lambda: self.live.register(instance, checks or []))

    def deregister(self, instance_id: str) -> None:
        self.lt.call(lambda: self.live.deregister(instance_id))


@pytest.fixture(params=["asyncio", "uvloop"])
def served(request: pytest.FixtureRequest) -> Iterator[Served]:
    lt = LoopThread(request.param == "uvloop")
    holder: list[Topology | None] = [None]

    async def start() -> tuple[LiveCatalog, DnsServer, int]:
        live = LiveCatalog()
        server = DnsServer(live, lambda: holder[0], limits=DnsLimits(tcp_idle_timeout_s=0.5))
        _, port = await server.start("127.0.0.1", 0)
        return live, server, port

    live, server, port = lt.run(start())
    s = Served(lt, live, server, port)
    for i in range(3):
        s.register(Instance(f"api-{i}", "api", f"10.77.0.{i + 1}", 8080, ("v1",), weight=i + 1))
    failing = CheckSpec("chk-api-9", "http", "ttl", service_id="api-9", ttl_s=60)
    s.register(Instance("api-9", "api", "10.77.0.9", 8080), [failing])
    holder[0] = Topology(
        1,
        (EngineInfo("local", "unix:///x"),),
        (),
        (
            Container(
                "c" * 64,
                "web-1",
                "local",
                "img",
                "running",
                attachments=(Attachment("n1", "front", "172.30.0.5"),),
            ),
        ),
    )
    try:
        yield s
    finally:
        with contextlib.suppress(Exception):
            lt.run(server.close())
        lt.stop()


def dig(port: int, *args: str, host: str = "127.0.0.1") -> str:
    if shutil.which("dig") is None:
        pytest.fail("dig is missing: scripts/setup.sh (setup_tools) installs dnsutils")
    proc = subprocess.run(
        ["dig", f"@{host}", "-p", str(port), "+time=2", "+tries=1", *args],
        capture_output=True,
        text=True,
        timeout=30,
    )
    return proc.stdout


def short(port: int, *args: str) -> list[str]:
    return sorted(dig(port, "+short", *args).split("\n")[:-1])


def test_dig_over_udp_and_tcp(served: Served) -> None:
    want = ["10.77.0.1", "10.77.0.2", "10.77.0.3"]
    assert short(served.port, "api.service.dockmesh") == want
    assert short(served.port, "api.service.dockmesh.", "+tcp") == want
    assert short(served.port, "API.Service.Consul", "A") == want
    assert short(served.port, "v1.api.service.dockmesh") == want
    assert short(served.port, "_api._tcp.service.dockmesh", "SRV") == [
        "1 1 8080 api-0.node.dockmesh.",
        "1 2 8080 api-1.node.dockmesh.",
        "1 3 8080 api-2.node.dockmesh.",
    ]
    assert short(served.port, "api-2.node.dockmesh") == ["10.77.0.3"]
    assert short(served.port, "web-1.container.dockmesh", "+tcp") == ["172.30.0.5"]
    out = dig(served.port, "nosuch.service.dockmesh")
    assert "status: NXDOMAIN" in out
    assert "flags: qr aa rd;" in out  # authoritative; no "ra": no recursion
    out = dig(served.port, "api.service.dockmesh", "AAAA")
    assert "status: NOERROR" in out
    assert "ANSWER: 0" in out
    assert "status: REFUSED" in dig(served.port, "example.com")


def test_changes_are_answered_at_once(served: Served) -> None:
    served.deregister("api-1")
    assert short(served.port, "api.service.dockmesh") == ["10.77.0.1", "10.77.0.3"]
    served.register(Instance("api-1", "api", "10.77.0.2", 8080))
    assert len(short(served.port, "api.service.dockmesh")) == 3
    served.lt.call(lambda: served.live.update_check("chk-api-9", "passing", ""))
    assert len(short(served.port, "api.service.dockmesh", "+tcp")) == 4


def test_truncation_then_tcp_retry(served: Served) -> None:
    for i in range(60):
        served.register(Instance(f"big-{i}", "big", f"10.78.0.{i + 1}", 80))
    out = dig(served.port, "big.service.dockmesh", "+ignore", "+noedns")
    assert "flags: qr aa tc rd;" in out
    out = dig(served.port, "big.service.dockmesh", "+noedns")  # dig retries over TCP on TC
    assert "ANSWER: 60" in out
    q = dns.message.make_query("big.service.dockmesh", "A")
    r = dns.query.udp(q, "127.0.0.1", port=served.port, timeout=2)
    assert r.flags & dns.flags.TC
    r = dns.query.tcp(q, "127.0.0.1", port=served.port, timeout=2)
    assert sum(len(rrset) for rrset in r.answer) == 60
    q = dns.message.make_query("big.service.dockmesh", "A", use_edns=0, payload=4096)
    r = dns.query.udp(q, "127.0.0.1", port=served.port, timeout=2)
    assert not r.flags & dns.flags.TC
    assert sum(len(rrset) for rrset in r.answer) == 60


def test_dnspython_client_and_several_queries_on_one_tcp_connection(served: Served) -> None:
    names = ["api.service.dockmesh", "nosuch.service.dockmesh", "api-0.node.consul"] * 5
    with socket.create_connection(("127.0.0.1", served.port), timeout=5) as s:
        wires = []
        for i, name in enumerate(names):
            q = dns.message.make_query(name, "A")
            q.id = i
            wires.append(q.to_wire())
        s.sendall(b"".join(struct.pack("!H", len(w)) + w for w in wires))
        got = [dns.query.receive_tcp(s, time.time() + 5)[0] for _ in names]
    assert [r.id for r in got] == list(range(len(names)))
    assert [r.rcode() for r in got[:3]] == [
        dns.rcode.NOERROR,
        dns.rcode.NXDOMAIN,
        dns.rcode.NOERROR,
    ]


def test_bad_packets_do_not_stop_the_others(served: Served) -> None:
    good = dns.message.make_query("api.service.dockmesh", "A")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(2)
        s.connect(("127.0.0.1", served.port))
        s.send(b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x05ab")  # truncated question
        r = dns.message.from_wire(s.recv(4096))
        assert (r.id, r.rcode()) == (0x1234, dns.rcode.FORMERR)
        for junk in (b"", b"\x00", b"\xff" * 11):  # no header: dropped
            s.send(junk)
        s.send(good.to_wire())
        assert dns.message.from_wire(s.recv(4096)).id == good.id
    # A TCP client announcing a huge message, and one that never sends, are cut off; others
    # are answered meanwhile.
    with socket.create_connection(("127.0.0.1", served.port), timeout=5) as bad:
        bad.sendall(b"\xff\xff")
        assert bad.recv(10) == b""
    idle = socket.create_connection(("127.0.0.1", served.port), timeout=5)
    idle.sendall(b"\x00\x20\x01")  # a partial message, then silence
    r = dns.query.udp(good, "127.0.0.1", port=served.port, timeout=2)
    assert r.rcode() == dns.rcode.NOERROR
    assert idle.recv(10) == b""  # closed after the idle timeout
    idle.close()
    stats = served.server.stats
    assert stats.dropped == 3
    assert stats.queries["FORMERR"] == 1
    assert stats.errors == 0


def test_listeners_come_and_go(served: Served) -> None:
    host = "127.0.0.2"  # on lo with the rest of 127/8
    _, port = served.lt.run(served.server.add_listener(host, 0))
    assert served.lt.run(served.server.add_listener(host, port)) == (host, port)
    assert dig(port, "+short", "api-0.node.dockmesh", host=host).split() == ["10.77.0.1"]
    assert dig(port, "+short", "+tcp", "api-0.node.dockmesh", host=host).split() == ["10.77.0.1"]
    served.lt.run(served.server.remove_listener(host, port))
    assert "no servers could be reached" in dig(port, "api-0.node.dockmesh", host=host)
    assert (host, port) not in served.server.listeners
    # The first listener is untouched.
    assert short(served.port, "api-0.node.dockmesh") == ["10.77.0.1"]
    with pytest.raises(OSError, match=r"DNS cannot listen on 192\.0\.2\.1:0"):
        served.lt.run(served.server.add_listener("192.0.2.1", 0))  # not an address of ours


# --- through Docker's embedded DNS --------------------------------------------------------------


@pytest.mark.parametrize("internal", [False, True], ids=["bridge", "internal"])
def test_a_container_resolves_through_the_gateway(
    api: Any, toolbox: str, prefix: str, internal: bool
) -> None:
    """`docker run --dns <gateway>`: the container asks 127.0.0.11, Docker's embedded DNS
    forwards `api.service.dockmesh` (a name it does not know) to the gateway, where the
    server listens. Port 53: `--dns` takes an address only.

    A dockmesh agent running on the machine (scripts/demo leaves one) takes port 53 on every
    bridge gateway as networks appear, this test's too. Then the server listens on a second
    address of the test network's own bridge instead (outside the range Docker hands out):
    the same path through the embedded DNS to the host side of the bridge."""
    (subnet,) = free_subnets(api, 1)
    network = ipaddress.ip_network(subnet)
    hosts = list(network.hosts())
    gateway, spare = str(hosts[0]), str(hosts[-1])
    low_half = next(network.subnets(prefixlen_diff=1))
    net, bridge = f"{prefix}-dns", f"{prefix}br"
    api.create_network(
        net,
        internal=internal,
        options={"com.docker.network.bridge.name": bridge},
        ipam={"Config": [{"Subnet": subnet, "IPRange": str(low_half), "Gateway": gateway}]},
    )
    lt = LoopThread(use_uvloop=True)
    servers: list[DnsServer] = []
    try:

        async def start() -> tuple[LiveCatalog, str]:
            live = LiveCatalog()
            for i in range(3):
                live.register(Instance(f"api-{i}", "api", f"10.79.0.{i + 1}", 8080), [])
            server = DnsServer(live, lambda: None)
            servers.append(server)
            try:
                await server.start(gateway, 53)
                return live, gateway
            except OSError as e:
                if e.errno != errno.EADDRINUSE:
                    raise
            await asyncio.to_thread(
                subprocess.run,
                ["ip", "addr", "add", f"{spare}/{network.prefixlen}", "dev", bridge],
                check=True,
            )
            await server.start(spare, 53)
            return live, spare

        live, address = lt.run(start())
        host_config = api.create_host_config(network_mode=net, dns=[address])
        cid = api.create_container(
            toolbox, name=f"{prefix}-client", command=["sleep", "300"], host_config=host_config
        )["Id"]
        api.start(cid)

        def nslookup(name: str) -> str:
            ex = api.exec_create(cid, ["nslookup", name])
            return str(api.exec_start(ex).decode())

        out = nslookup("api.service.dockmesh")
        for i in range(3):
            assert f"10.79.0.{i + 1}" in out, out
        lt.call(lambda: live.deregister("api-1"))
        out = nslookup("api.service.dockmesh")
        assert "10.79.0.2" not in out
        assert "10.79.0.1" in out
        assert "NXDOMAIN" in nslookup("nosuch.service.dockmesh")
    finally:
        for server in servers:
            with contextlib.suppress(Exception):
                lt.run(server.close())
        lt.stop()


def test_a_container_resolves_other_names_through_its_next_dns_server(
    api: Any, toolbox: str, prefix: str
) -> None:
    """`--dns <gateway> --dns <other>`: the agent answers its domains and REFUSES the rest, on
    which Docker's embedded DNS asks the next server; with the gateway alone, other names
    fail (REFUSED or SERVFAIL, by Docker's version), never an answer made up. The other resolver here is a
    second server of the test's own, for the domain `other`, on a spare address of the
    test's bridge: nothing leaves the machine."""
    (subnet,) = free_subnets(api, 1)
    network = ipaddress.ip_network(subnet)
    hosts = list(network.hosts())
    gateway, spare, other = str(hosts[0]), str(hosts[-1]), str(hosts[-2])
    low_half = next(network.subnets(prefixlen_diff=1))
    net, bridge = f"{prefix}-dns2", f"{prefix}br"
    api.create_network(
        net,
        options={"com.docker.network.bridge.name": bridge},
        ipam={"Config": [{"Subnet": subnet, "IPRange": str(low_half), "Gateway": gateway}]},
    )
    lt = LoopThread(use_uvloop=True)
    servers: list[DnsServer] = []
    try:

        async def start() -> str:
            live = LiveCatalog()
            live.register(Instance("api-0", "api", "10.79.0.1", 8080), [])
            ours = DnsServer(live, lambda: None)
            servers.append(ours)
            theirs_live = LiveCatalog()
            theirs_live.register(Instance("web-0", "web", "10.80.0.1", 80), [])
            theirs = DnsServer(theirs_live, lambda: None, domains=("other",))
            servers.append(theirs)
            await asyncio.to_thread(
                subprocess.run,
                ["ip", "addr", "add", f"{other}/{network.prefixlen}", "dev", bridge],
                check=True,
            )
            await theirs.start(other, 53)
            try:
                await ours.start(gateway, 53)
                return gateway
            except OSError as e:
                if e.errno != errno.EADDRINUSE:
                    raise
            await asyncio.to_thread(
                subprocess.run,
                ["ip", "addr", "add", f"{spare}/{network.prefixlen}", "dev", bridge],
                check=True,
            )
            await ours.start(spare, 53)
            return spare

        address = lt.run(start())

        def client(name: str, dns_servers: list[str]) -> Callable[[str], str]:
            host_config = api.create_host_config(network_mode=net, dns=dns_servers)
            cid = api.create_container(
                toolbox, name=f"{prefix}-{name}", command=["sleep", "300"], host_config=host_config
            )["Id"]
            api.start(cid)

            def nslookup(query: str) -> str:
                ex = api.exec_create(cid, ["nslookup", query])
                return str(api.exec_start(ex).decode())

            return nslookup

        both = client("both", [address, other])
        assert "10.79.0.1" in both("api.service.dockmesh")
        assert "10.80.0.1" in both("web.service.other")
        assert "NXDOMAIN" in both("nosuch.service.dockmesh")  # ours: final, not passed on
        alone = client("alone", [address])
        assert "10.79.0.1" in alone("api.service.dockmesh")
        out = alone("web.service.other")
        assert "10.80.0.1" not in out
        # Docker 20.10 passes the last server's REFUSED on; later versions answer SERVFAIL.
        assert "SERVFAIL" in out or "REFUSED" in out, out
        assert servers[0].stats.queries.get("REFUSED", 0) >= 2
    finally:
        for server in servers:
            with contextlib.suppress(Exception):
                lt.run(server.close())
        lt.stop()
