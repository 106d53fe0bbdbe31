"""Many probes at once, each from its source container's namespace: ICMP echo, TCP connect or
a UDP datagram, over IPv4 or IPv6 (the destination address says which).

The sockets are made inside the sources' namespaces (`NetnsPool`, one short job per source)
and then driven together from one thread with one epoll: 870 probes cost about one round
trip when they are answered, and one bounded timeout when they are not, never a serial wait.
Containers need no tools. Only the containers' own addresses are ever targeted.

- ICMP: one raw socket per source namespace and family, one echo per destination, re-sent to
  those that have not answered (an ARP or neighbour resolution may swallow the first), each
  reply matched on the socket's identifier, the sequence number and the replying address.
- TCP: one non-blocking connect per pair; connected means reachable, a refusal means the
  address answered but nothing listens, silence means dropped. Connections end with a reset
  (SO_LINGER 0), so no TIME_WAIT is left in the containers.
- UDP: one connected socket per pair, a datagram re-sent until something comes back. An
  answer means reachable; an ICMP port unreachable (the socket's error, ECONNREFUSED) means
  the datagram arrived and nothing listens; silence means dropped only where an answer was
  to be expected (`Probe.expect_reply`), else it says nothing (`Observed.inconclusive`).
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import os
import random
import resource
import selectors
import socket
import struct
import time
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass

from dockmesh.codecs.icmp import (
    ICMP6_ECHO_REPLY,
    ICMP_ECHO_REPLY,
    echo6_reply,
    echo6_request,
    echo_reply,
    echo_request,
)
from dockmesh.host.netns import NetnsError, NetnsPool

MAX_IN_FLIGHT = 4096  # TCP sockets open at once
_LINGER_RESET = struct.pack("ii", 1, 0)


@dataclass(frozen=True, slots=True)
class Probe:
    key: Hashable
    pid: int | None  # the source's process; None: the host
    address: str  # IPv4 or IPv6
    port: int | None = None  # None: ICMP echo; else a TCP connect (or UDP datagram)
    protocol: str = "tcp"  # with a port: tcp or udp
    payload: bytes = b"dockmesh-probe\n"  # UDP: what is sent
    # UDP: silence means dropped (a DNS query to a DNS server, a port nothing listens on);
    # False: a service may ignore a datagram it does not understand, silence says nothing.
    expect_reply: bool = True


@dataclass(frozen=True, slots=True)
class Observed:
    ok: bool
    latency_ms: float | None
    detail: str
    inconclusive: bool = False  # UDP silence where no answer was to be expected


def dns_probe_payload() -> bytes:
    """A DNS query a server answers from itself: `localhost.` without recursion desired, so
    that a forwarding server has no reason to ask anyone beyond the machine."""
    import dns.flags
    import dns.message

    msg = dns.message.make_query("localhost.", "A")
    msg.flags &= ~dns.flags.RD
    msg.id = 0x6D73
    wire: bytes = msg.to_wire()
    return wire


def observed_json(o: Observed) -> dict[str, object]:
    """An observation as an agent sends it (`/v1/dockmesh/probe`)."""
    return {
        "ok": o.ok,
        "latency_ms": o.latency_ms,
        "detail": o.detail,
        "inconclusive": o.inconclusive,
    }


def observed_from_json(doc: Mapping[str, object]) -> Observed:
    """What `observed_json` made, back; a ValueError for anything else."""
    ok, latency, detail = doc.get("ok"), doc.get("latency_ms"), doc.get("detail")
    inconclusive = doc.get("inconclusive", False)
    if not isinstance(ok, bool) or not isinstance(inconclusive, bool):
        raise ValueError("ok and inconclusive must be true or false")
    if latency is not None and (isinstance(latency, bool) or not isinstance(latency, int | float)):
        raise ValueError("latency_ms must be a number or null")
    if not isinstance(detail, str):
        raise ValueError("detail must be a string")
    return Observed(ok, None if latency is None else float(latency), detail, inconclusive)


def family_of(address: str) -> int:
    return 6 if ":" in address else 4


def _same_address(a: str, b: str) -> bool:
    try:
        return ipaddress.ip_address(a.split("%")[0]) == ipaddress.ip_address(b.split("%")[0])
    except ValueError:
        return a == b


ICMP_FILTER = 1  # SOL_RAW option: a bit mask of the ICMP types the socket does NOT receive
SOL_RAW = 255
ICMP6_FILTER = 1  # IPPROTO_ICMPV6 option: 256 bits, a set bit blocks that ICMPv6 type
UDP_RESEND_S = 0.2  # a datagram (or its answer) may be lost: sent again this often
RCVBUF_BYTES = 4 << 20  # a burst of replies (and a slow, busy reader) must not overflow it
SNDBUF_BYTES = 1 << 20
SEND_BATCH = 64  # echoes sent between two looks at the replies (pacing)
MAX_RESEND_S = 0.5  # resends to a silent destination: at least this often
RETRY_TIMEOUT_S = 2.5  # the second pass's timeout at least (a lost SYN is re-sent after 1 s)


def _raw_icmp(family: int = 4) -> socket.socket:
    """A raw ICMP (or ICMPv6) socket that receives echo replies only (not the echo requests
    other sources send to this namespace, nor errors, nor neighbour discovery), with room
    for a burst of them."""
    if family == 6:
        s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
    else:
        s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    try:
        s.setblocking(False)
        with contextlib.suppress(OSError):
            if family == 6:
                words = [0xFFFFFFFF] * 8
                words[ICMP6_ECHO_REPLY >> 5] &= ~(1 << (ICMP6_ECHO_REPLY & 31)) & 0xFFFFFFFF
                s.setsockopt(socket.IPPROTO_ICMPV6, ICMP6_FILTER, struct.pack("8I", *words))
            else:
                s.setsockopt(
                    SOL_RAW, ICMP_FILTER, struct.pack("I", ~(1 << ICMP_ECHO_REPLY) & 0xFFFFFFFF)
                )
        for force, plain, size in (
            (getattr(socket, "SO_RCVBUFFORCE", 33), socket.SO_RCVBUF, RCVBUF_BYTES),
            (getattr(socket, "SO_SNDBUFFORCE", 32), socket.SO_SNDBUF, SNDBUF_BYTES),
        ):
            try:
                s.setsockopt(socket.SOL_SOCKET, force, size)  # root: past net.core.*mem_max
            except OSError:
                with contextlib.suppress(OSError):
                    s.setsockopt(socket.SOL_SOCKET, plain, size)
    except BaseException:
        s.close()
        raise
    return s


def _tcp_sockets(n: int, families: Sequence[int] = ()) -> list[socket.socket]:
    """`n` non-blocking TCP sockets; the i-th of family `families[i]` (IPv4 past the end)."""
    out = []
    try:
        for i in range(n):
            six = i < len(families) and families[i] == 6
            s = socket.socket(socket.AF_INET6 if six else socket.AF_INET, socket.SOCK_STREAM)
            s.setblocking(False)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
            out.append(s)
    except OSError:
        for s in out:
            s.close()
        raise
    return out


def _raise_fd_limit(need: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < need + 64:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, need + 64), hard))


def sweep(
    pool: NetnsPool,
    probes: Sequence[Probe],
    timeout_s: float = 1.0,
    resend_s: float = 0.2,
    rng: random.Random | None = None,
) -> dict[Hashable, Observed]:
    """Runs every probe at once; each key → what was observed within `timeout_s`."""
    results: dict[Hashable, Observed] = {}
    icmp = [p for p in probes if p.port is None]
    tcp = [p for p in probes if p.port is not None and p.protocol != "udp"]
    udp = [p for p in probes if p.port is not None and p.protocol == "udp"]
    if icmp:
        results.update(_icmp(pool, icmp, timeout_s, resend_s, rng or random.Random()))
    for i in range(0, len(tcp), MAX_IN_FLIGHT):
        results.update(_tcp(pool, tcp[i : i + MAX_IN_FLIGHT], timeout_s))
    for i in range(0, len(udp), MAX_IN_FLIGHT):
        results.update(_udp(pool, udp[i : i + MAX_IN_FLIGHT], timeout_s))
    return results


def sweep_confirmed(
    pool: NetnsPool,
    probes: Sequence[Probe],
    expected: Mapping[Hashable, bool],
    timeout_s: float = 1.0,
    sweep_fn: Callable[..., dict[Hashable, Observed]] = sweep,
) -> dict[Hashable, Observed]:
    """`sweep`, then a second concurrent pass over every probe whose observation disagrees
    with what was expected (either way), with a longer timeout and more frequent ICMP
    resends: on a busy machine a reply can be late or a packet lost, and one lost echo or
    SYN must not be reported as a mismatch. What the second pass sees is the answer."""
    first = sweep_fn(pool, probes, timeout_s=timeout_s)
    again = [
        p
        for p in probes
        if p.key in expected
        and first[p.key].ok != expected[p.key]
        and not first[p.key].inconclusive
    ]
    if not again:
        return first
    second = sweep_fn(pool, again, timeout_s=max(RETRY_TIMEOUT_S, 2 * timeout_s), resend_s=0.1)
    out = dict(first)
    for p in again:
        o = second[p.key]
        agrees = o.ok == expected[p.key]
        note = "on a second try" if agrees else "twice"
        out[p.key] = Observed(o.ok, o.latency_ms, f"{o.detail} ({note})", o.inconclusive)
    return out


def _icmp(
    pool: NetnsPool,
    probes: Sequence[Probe],
    timeout_s: float,
    resend_s: float,
    rng: random.Random,
) -> dict[Hashable, Observed]:
    results: dict[Hashable, Observed] = {}
    by_pid: dict[tuple[int | None, int], list[Probe]] = {}
    for p in probes:
        by_pid.setdefault((p.pid, family_of(p.address)), []).append(p)
    futures: dict[tuple[int | None, int], Future[socket.socket]] = {}
    for pid, family in by_pid:
        try:
            futures[(pid, family)] = pool.submit(pid, _raw_icmp, family)
        except NetnsError as e:
            for p in by_pid[(pid, family)]:
                results[p.key] = Observed(False, None, f"source namespace: {e}")
    sel = selectors.DefaultSelector()
    # socket → (identifier, {seq: probe}); outstanding (socket, seq) → first send time
    outstanding: dict[tuple[socket.socket, int], float] = {}
    table: dict[socket.socket, tuple[int, dict[int, Probe]]] = {}
    six: set[socket.socket] = set()

    def drain(rsock: socket.socket) -> None:
        """Every reply waiting on `rsock`, each matched on the socket's identifier, its
        sequence number (one per destination) and the address that replied."""
        ident, seqs = table[rsock]
        while True:
            try:
                packet, sender = rsock.recvfrom(2048)  # IPv6: 4 items
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            got = echo6_reply(packet) if rsock in six else echo_reply(packet)
            if got is None or got[0] != ident or (rsock, got[1]) not in outstanding:
                continue
            p = seqs[got[1]]
            source = sender[0]
            if source != p.address and not _same_address(source, p.address):
                continue
            sent = outstanding.pop((rsock, got[1]))
            ms = (time.perf_counter() - sent) * 1000
            results[p.key] = Observed(True, round(ms, 3), "echo reply")

    def poll(wait: float) -> None:
        for key, _ in sel.select(wait):
            drain(key.data)

    def send_all(which: Sequence[tuple[socket.socket, int]], first: bool) -> None:
        # Paced: a look at the replies every SEND_BATCH echoes, so that no receive queue
        # (the socket's, the veth's backlog) takes the whole burst at once.
        for i, (sock, seq) in enumerate(which):
            ident, seqs = table[sock]
            _send(sock, ident, seq, seqs[seq].address, sock in six)
            if first:
                outstanding[(sock, seq)] = time.perf_counter()
            if i % SEND_BATCH == SEND_BATCH - 1:
                poll(0)

    try:
        for group, fut in futures.items():
            try:
                sock = fut.result()
            except (NetnsError, OSError) as e:
                for p in by_pid[group]:
                    results[p.key] = Observed(False, None, f"source namespace: {e}")
                continue
            ident = rng.randrange(1, 0xFFFF)
            seqs = {i + 1: p for i, p in enumerate(by_pid[group][:0xFFFE])}
            table[sock] = (ident, seqs)
            if group[1] == 6:
                six.add(sock)
            sel.register(sock, selectors.EVENT_READ, sock)
        # Interleaved across sources: one destination from each source in turn.
        order: list[tuple[socket.socket, int]] = []
        width = max((len(seqs) for _, seqs in table.values()), default=0)
        for seq in range(1, width + 1):
            order += [(sock, seq) for sock, (_, seqs) in table.items() if seq in seqs]
        send_all(order, first=True)
        # Every probe gets its whole timeout from when the last echo left, however long
        # sending them took on a busy machine.
        start = time.perf_counter()
        deadline = start + timeout_s
        interval = resend_s
        next_resend = start + interval
        while outstanding:
            now = time.perf_counter()
            if now >= deadline:
                break
            if now >= next_resend:
                send_all(list(outstanding), first=False)
                interval = min(interval * 1.5, MAX_RESEND_S)
                next_resend = time.perf_counter() + interval
            poll(max(0.0, min(deadline, next_resend) - time.perf_counter()))
        for sock, seq in outstanding:
            p = table[sock][1][seq]
            results[p.key] = Observed(False, None, f"no reply within {timeout_s:g} s")
    finally:
        sel.close()
        for sock in table:
            sock.close()
    for p in probes:
        results.setdefault(p.key, Observed(False, None, "not probed (too many from one source)"))
    return results


def _send(sock: socket.socket, ident: int, seq: int, address: str, six: bool = False) -> None:
    # An error at once (no route) leaves the probe outstanding: it ends as "no reply".
    with contextlib.suppress(OSError):
        if six:
            sock.sendto(echo6_request(ident, seq), (address, 0))
        else:
            sock.sendto(echo_request(ident, seq), (address, 0))


def _tcp_families(families: Sequence[int]) -> list[socket.socket]:
    return _tcp_sockets(len(families), families)


def _opened(
    pool: NetnsPool,
    probes: Sequence[Probe],
    make: Callable[[Sequence[int]], list[socket.socket]],
    results: dict[Hashable, Observed],
) -> Iterator[tuple[socket.socket, Probe]]:
    """A socket for each probe, made by `make` (given the probes' families) inside each
    source's namespace, all namespaces asked at once; a namespace that cannot be entered
    answers its probes in `results`."""
    by_pid: dict[int | None, list[Probe]] = {}
    for p in probes:
        by_pid.setdefault(p.pid, []).append(p)
    futures: dict[int | None, Future[list[socket.socket]]] = {}
    for pid, group in by_pid.items():
        try:
            futures[pid] = pool.submit(pid, make, [family_of(p.address) for p in group])
        except NetnsError as e:
            for p in group:
                results[p.key] = Observed(False, None, f"source namespace: {e}")
    for pid, fut in futures.items():
        try:
            socks = fut.result()
        except (NetnsError, OSError) as e:
            for p in by_pid[pid]:
                results[p.key] = Observed(False, None, f"source namespace: {e}")
            continue
        yield from zip(socks, by_pid[pid], strict=True)


def _tcp(pool: NetnsPool, probes: Sequence[Probe], timeout_s: float) -> dict[Hashable, Observed]:
    results: dict[Hashable, Observed] = {}
    _raise_fd_limit(len(probes) + 16)
    sel = selectors.DefaultSelector()
    pending: dict[socket.socket, tuple[Probe, float]] = {}
    try:
        for sock, p in _opened(pool, probes, _tcp_families, results):
            t0 = time.perf_counter()
            err = sock.connect_ex((p.address, p.port or 0))
            if err in (0, errno.EINPROGRESS):
                sel.register(sock, selectors.EVENT_WRITE, sock)
                pending[sock] = (p, t0)
            else:
                results[p.key] = Observed(False, None, os.strerror(err))
                sock.close()
        deadline = time.perf_counter() + timeout_s
        while pending:
            left = deadline - time.perf_counter()
            if left <= 0:
                break
            for key, _ in sel.select(left):
                wsock: socket.socket = key.data
                p, t0 = pending.pop(wsock)
                sel.unregister(wsock)
                err = wsock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                ms = round((time.perf_counter() - t0) * 1000, 3)
                if err == 0:
                    results[p.key] = Observed(True, ms, "connected")
                elif err == errno.ECONNREFUSED:
                    results[p.key] = Observed(False, ms, "refused: nothing listens there")
                else:
                    results[p.key] = Observed(False, ms, os.strerror(err))
                wsock.close()
        for p, _ in pending.values():
            results[p.key] = Observed(False, None, f"no answer within {timeout_s:g} s (dropped)")
    finally:
        sel.close()
        for sock in pending:
            sock.close()
    return results


def _udp_sockets(families: Sequence[int]) -> list[socket.socket]:
    out = []
    try:
        for f in families:
            s = socket.socket(socket.AF_INET6 if f == 6 else socket.AF_INET, socket.SOCK_DGRAM)
            s.setblocking(False)
            out.append(s)
    except OSError:
        for s in out:
            s.close()
        raise
    return out


def _udp(pool: NetnsPool, probes: Sequence[Probe], timeout_s: float) -> dict[Hashable, Observed]:
    results: dict[Hashable, Observed] = {}
    _raise_fd_limit(len(probes) + 16)
    sel = selectors.DefaultSelector()
    pending: dict[socket.socket, tuple[Probe, float]] = {}
    try:
        for sock, p in _opened(pool, probes, _udp_sockets, results):
            try:
                # Connected: the kernel hands this socket the ICMP errors about its peer.
                sock.connect((p.address, p.port or 0))
                sock.send(p.payload)
            except OSError as e:
                results[p.key] = Observed(False, None, os.strerror(e.errno or 0))
                sock.close()
                continue
            sel.register(sock, selectors.EVENT_READ, sock)
            pending[sock] = (p, time.perf_counter())
        start = time.perf_counter()
        deadline = start + timeout_s
        next_resend = start + UDP_RESEND_S
        while pending:
            now = time.perf_counter()
            if now >= deadline:
                break
            if now >= next_resend:
                for sock, (p, _) in pending.items():
                    with contextlib.suppress(OSError):
                        sock.send(p.payload)
                next_resend = now + UDP_RESEND_S
            for key, _ in sel.select(max(0.0, min(deadline, next_resend) - now)):
                rsock: socket.socket = key.data
                p, t0 = pending[rsock]
                ms = round((time.perf_counter() - t0) * 1000, 3)
                try:
                    rsock.recv(4096)
                except (BlockingIOError, InterruptedError):
                    continue
                except ConnectionRefusedError:
                    results[p.key] = Observed(
                        False, ms, "port unreachable: the datagram arrived, nothing listens there"
                    )
                except OSError as e:
                    results[p.key] = Observed(False, ms, os.strerror(e.errno or 0))
                else:
                    results[p.key] = Observed(True, ms, "answered")
                del pending[rsock]
                sel.unregister(rsock)
                rsock.close()
        for p, _ in pending.values():
            if p.expect_reply:
                detail = f"no answer within {timeout_s:g} s (dropped)"
                results[p.key] = Observed(False, None, detail)
            else:
                detail = (
                    f"no answer within {timeout_s:g} s, and no port unreachable: a UDP "
                    "service need not answer a datagram it does not understand, so this "
                    "says nothing"
                )
                results[p.key] = Observed(False, None, detail, inconclusive=True)
    finally:
        sel.close()
        for sock in pending:
            sock.close()
    return results
