"""Latency probes sent from inside a container's network namespace, driven from the host.

The sockets are made in the source container's namespace by `NetnsPool` and used from the
caller's thread: the container needs no ping, no curl, no shell. Three kinds:

- ICMP echo from a raw socket (root on the host is enough; the container needs nothing);
- TCP connect: the time for the three-way handshake, closed with a reset afterwards so a
  thousand samples leave no TIME_WAIT sockets behind in the container;
- HTTP GET: connect, request, the whole response read (what a client waits for).

Targets are always addresses of containers the topology knows (the destination's address on
a network both share): nothing is sent anywhere else.
"""

from __future__ import annotations

import contextlib
import random
import select
import socket
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from dockmesh.codecs.icmp import echo_reply as parse_echo_reply
from dockmesh.codecs.icmp import echo_request
from dockmesh.host.netns import NetnsPool
from dockmesh.host.sockets import listening
from dockmesh.model.topology import Container, Topology

_MAX_HTTP_RESPONSE = 1 << 20


class ProbeError(Exception):
    """A probe that cannot be run as asked (no shared network, a container not running)."""


@dataclass(frozen=True, slots=True)
class Target:
    src: Container
    dst: Container
    address: str
    network: str


def running_local(topo: Topology, name: str) -> Container:
    c = topo.container(name)
    if c is None:
        raise ProbeError(f"no container named {name!r}")
    if not c.running or not c.pid:
        raise ProbeError(f"{c.name} is not running ({c.state})")
    if c.network_mode == "host":
        raise ProbeError(f"{c.name} uses the host's network: it has no namespace of its own")
    return c


def pick_target(topo: Topology, src: str, dst: str) -> Target:
    """DST's IPv4 address on the first of SRC's networks that DST is on too."""
    s, d = running_local(topo, src), running_local(topo, dst)
    for a in s.attachments:
        b = d.attachment(a.network_id) if a.network_id else None
        if b is None:
            b = next((x for x in d.attachments if x.network == a.network), None)
        if b is not None and b.ipv4:
            return Target(s, d, b.ipv4, a.network)
    raise ProbeError(
        f"{s.name} and {d.name} share no network ({s.name}: "
        f"{', '.join(a.network for a in s.attachments) or 'none'}; {d.name}: "
        f"{', '.join(a.network for a in d.attachments) or 'none'})"
    )


def _blocking_sockets(n: int, family: int, kind: int, proto: int) -> list[socket.socket]:
    out = []
    try:
        for _ in range(n):
            out.append(socket.socket(family, kind, proto))
    except BaseException:
        for s in out:
            s.close()
        raise
    return out


def _raw_icmp_socket(pool: NetnsPool, pid: int) -> socket.socket:
    made = pool.run(pid, _blocking_sockets, 1, socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    return made[0]


def ping_many(
    pool: NetnsPool,
    pid: int,
    addresses: Sequence[str],
    timeout_s: float = 1.0,
    rng: random.Random | None = None,
) -> dict[str, float | None]:
    """One ICMP echo to each address at once from `pid`'s namespace: address → round trip in
    ms, or None when no reply came within `timeout_s`."""
    rng = rng or random.Random()
    result: dict[str, float | None] = dict.fromkeys(addresses)
    if not addresses:
        return result
    ident = rng.randrange(1, 0xFFFF)
    sock = _raw_icmp_socket(pool, pid)
    with sock:
        sock.setblocking(False)
        sent: dict[int, tuple[str, float]] = {}
        for seq, address in enumerate(dict.fromkeys(addresses), start=1):
            with contextlib.suppress(OSError):  # unreachable at once: stays None
                sock.sendto(echo_request(ident, seq), (address, 0))
                sent[seq] = (address, time.perf_counter())
        deadline = time.perf_counter() + timeout_s
        while sent:
            left = deadline - time.perf_counter()
            if left <= 0 or not select.select([sock], [], [], left)[0]:
                break
            try:
                packet, (source, _) = sock.recvfrom(2048)
            except BlockingIOError:
                continue
            now = time.perf_counter()
            got = parse_echo_reply(packet)
            if got is None or got[0] != ident or got[1] not in sent:
                continue
            address, t0 = sent[got[1]]
            if source == address:
                result[address] = (now - t0) * 1000
                del sent[got[1]]
    return result


def icmp_samples(
    pool: NetnsPool,
    pid: int,
    address: str,
    count: int,
    timeout_s: float = 1.0,
    interval_s: float = 0.0,
    rng: random.Random | None = None,
) -> tuple[list[float], int]:
    """`count` echo requests one after another (each waits for its reply or the timeout)."""
    rng = rng or random.Random()
    ident = rng.randrange(1, 0xFFFF)
    sock = _raw_icmp_socket(pool, pid)
    samples: list[float] = []
    lost = 0
    with sock:
        for seq in range(1, count + 1):
            seq16 = seq & 0xFFFF
            t0 = time.perf_counter()
            try:
                sock.sendto(echo_request(ident, seq16), (address, 0))
            except OSError:
                lost += 1
                continue
            deadline = t0 + timeout_s
            while True:
                left = deadline - time.perf_counter()
                if left <= 0 or not select.select([sock], [], [], left)[0]:
                    lost += 1
                    break
                packet, (source, _) = sock.recvfrom(2048)
                now = time.perf_counter()
                if source == address and parse_echo_reply(packet) == (ident, seq16):
                    samples.append((now - t0) * 1000)
                    break
            if interval_s:
                time.sleep(interval_s)
    return samples, lost


def _connect_sample(sock: socket.socket, address: str, port: int, timeout_s: float) -> float:
    sock.settimeout(timeout_s)
    t0 = time.perf_counter()
    sock.connect((address, port))
    return (time.perf_counter() - t0) * 1000


def _http_sample(sock: socket.socket, address: str, port: int, timeout_s: float) -> float:
    request = (
        f"GET / HTTP/1.1\r\nHost: {address}:{port}\r\nUser-Agent: dockmesh-bench\r\n"
        "Connection: close\r\n\r\n"
    ).encode()
    sock.settimeout(timeout_s)
    t0 = time.perf_counter()
    sock.connect((address, port))
    sock.sendall(request)
    first = b""
    total = 0
    while total <= _MAX_HTTP_RESPONSE:
        chunk = sock.recv(65536)
        if not chunk:
            break
        if not first:
            first = chunk
        total += len(chunk)
    elapsed = (time.perf_counter() - t0) * 1000
    if not first.startswith(b"HTTP/"):
        raise OSError("not an HTTP response")
    return elapsed


def _reset_close(sock: socket.socket) -> None:
    # SO_LINGER 0: close sends a reset, so no TIME_WAIT socket stays in the container.
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def accept_queue(dst_pid: int, address: str, port: int) -> int | None:
    """The connections waiting in the accept queue of DST's listener on address:port (or on
    the wildcard), from its /proc/<pid>/net/tcp; None when unreadable or not listening."""
    # IPv4 only: it is read between samples, and the targets are IPv4 addresses.
    for x in listening(dst_pid, ("tcp",)) or ():
        if x.port == port and x.address in (address, "0.0.0.0"):
            return x.queued
    return None


def _wait_for_accepts(dst_pid: int, address: str, port: int, timeout_s: float) -> None:
    """Waits (up to `timeout_s`) until the server's accept queue is empty (/proc does not
    tell the queue's limit, so no fuller queue is known to be safe).

    A connect completes in the kernel before the server accepts it. Connecting faster than
    the server accepts (busybox httpd forks per connection, with a backlog of 9) fills the
    queue; the kernel then drops SYNs and the client retries after a second: the samples
    would time the server's accept loop, not the network. So connect samples are paced by
    the server's own queue, read from the host."""
    deadline = time.perf_counter() + timeout_s
    while time.perf_counter() < deadline:
        q = accept_queue(dst_pid, address, port)
        if not q:
            return
        time.sleep(0.0005)


def stream_samples(
    pool: NetnsPool,
    pid: int,
    address: str,
    port: int,
    count: int,
    mode: str,
    timeout_s: float = 1.0,
    interval_s: float = 0.0,
    dst_pid: int | None = None,
) -> tuple[list[float], int]:
    """TCP connect or HTTP GET samples; a sample that fails or times out is lost. Sockets
    are made in batches (one namespace switch per batch, outside the timed part). With
    `dst_pid`, connect samples wait for room in the server's accept queue (untimed)."""
    one: Callable[[socket.socket, str, int, float], float] = (
        _connect_sample if mode == "tcp" else _http_sample
    )
    samples: list[float] = []
    lost = 0
    done = 0
    while done < count:
        batch = pool.run(
            pid, _blocking_sockets, min(100, count - done), socket.AF_INET, socket.SOCK_STREAM, 0
        )
        for sock in batch:
            if mode == "tcp" and dst_pid is not None:
                _wait_for_accepts(dst_pid, address, port, timeout_s)
            try:
                samples.append(one(sock, address, port, timeout_s))
            except OSError:
                lost += 1
            finally:
                _reset_close(sock) if mode == "tcp" else sock.close()
            done += 1
            if interval_s:
                time.sleep(interval_s)
    return samples, lost


def measure(
    pool: NetnsPool,
    target: Target,
    mode: str,
    count: int,
    port: int | None = None,
    timeout_s: float = 1.0,
    interval_s: float = 0.0,
) -> tuple[list[float], int]:
    assert target.src.pid is not None
    if mode == "icmp":
        return icmp_samples(pool, target.src.pid, target.address, count, timeout_s, interval_s)
    if port is None:
        raise ProbeError(f"--mode {mode} needs a port (--port)")
    return stream_samples(
        pool,
        target.src.pid,
        target.address,
        port,
        count,
        mode,
        timeout_s,
        interval_s,
        target.dst.pid,
    )
