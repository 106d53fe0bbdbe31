"""Many probes at once (dockmesh.diagnose.sweep) without namespaces: ICMP through raw sockets
that a stand-in pool hands out and that answer as scripted (the echoes' order across sources,
the pacing, resends, which replies count), TCP on this namespace's loopback, and the second
pass that confirms a disagreement. The sweep from real containers' namespaces:
tests/integration/test_why_matrix.py."""

from __future__ import annotations

import concurrent.futures
import socket
import struct
from collections.abc import Callable, Hashable, Iterator, Sequence
from typing import Any

import pytest

from dockmesh.codecs.icmp import ICMP_ECHO_REPLY, checksum
from dockmesh.diagnose import sweep as sweep_module
from dockmesh.diagnose.sweep import Observed, Probe, sweep, sweep_confirmed
from dockmesh.host.netns import NetnsError, NetnsPool

# --- ICMP, through scripted raw sockets ---------------------------------------------------------

Answer = Callable[[str, int], str | None]  # (address, how many echoes it got) → who replies


class ScriptedRawSocket:
    """A raw ICMP socket whose peers answer as `answer` says: after each echo to `address`
    (the n-th to it), the reply comes from the address `answer(address, n)` returns, or none
    comes. Readable (for the selector) while replies wait; every send and receive is logged."""

    def __init__(
        self, pid: int | None, answer: Answer, log: list[tuple[str, Any]], other_ident: bool
    ) -> None:
        self.pid, self.answer, self.log, self.other_ident = pid, answer, log, other_ident
        self._r, self._w = socket.socketpair()
        self._r.setblocking(False)
        self.waiting: list[tuple[bytes, tuple[str, int]]] = []
        self.sent: dict[str, int] = {}
        self.closed = False

    def fileno(self) -> int:
        return self._r.fileno()

    def sendto(self, packet: bytes, to: tuple[str, int]) -> int:
        address = to[0]
        ident, seq = struct.unpack("!HH", packet[4:8])
        self.sent[address] = self.sent.get(address, 0) + 1
        self.log.append(("send", (self.pid, address)))
        source = self.answer(address, self.sent[address])
        if source is not None:
            ident = (ident + 1) & 0xFFFF if self.other_ident else ident  # another socket's
            body = struct.pack("!BBHHH", ICMP_ECHO_REPLY, 0, 0, ident, seq) + packet[8:]
            body = body[:2] + struct.pack("!H", checksum(body)) + body[4:]
            self.waiting.append((b"\x45" + b"\0" * 19 + body, (source, 0)))
            self._w.send(b"x")
        return len(packet)

    def recvfrom(self, size: int) -> tuple[bytes, tuple[str, int]]:
        if not self.waiting:
            raise BlockingIOError
        self._r.recv(1)
        self.log.append(("recv", self.pid))
        return self.waiting.pop(0)

    def close(self) -> None:
        self.closed = True
        self._r.close()
        self._w.close()


class ScriptedPool:
    """Stands in for `NetnsPool` in the ICMP sweep: `submit(pid, _raw_icmp)` hands out a
    scripted socket; a pid in `gone` raises at once, one in `broken` fails in the future; the
    replies on a socket of a pid in `other_ident` carry another socket's identifier."""

    def __init__(
        self,
        answer: Answer,
        gone: Sequence[int] = (),
        broken: Sequence[int] = (),
        other_ident: Sequence[int] = (),
    ) -> None:
        self.answer, self.gone, self.broken = answer, set(gone), set(broken)
        self.other_ident = set(other_ident)
        self.log: list[tuple[str, Any]] = []
        self.sockets: list[ScriptedRawSocket] = []

    def submit(self, pid: int | None, fn: Any, *args: Any) -> concurrent.futures.Future[Any]:
        if pid in self.gone:
            raise NetnsError(f"process {pid} is gone")
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        if pid in self.broken:
            future.set_exception(OSError(1, "Operation not permitted"))
        else:
            sock = ScriptedRawSocket(pid, self.answer, self.log, pid in self.other_ident)
            self.sockets.append(sock)
            future.set_result(self.sockets[-1])
        return future


def replies(address: str, n: int) -> str | None:
    return address


def icmp(
    pool: ScriptedPool, probes: Sequence[Probe], timeout_s: float = 0.3
) -> dict[Hashable, Observed]:
    return sweep(pool, probes, timeout_s=timeout_s, resend_s=0.02)  # type: ignore[arg-type]


def test_every_destination_that_replies_is_reached() -> None:
    pool = ScriptedPool(replies)
    got = icmp(pool, [Probe(i, 10, f"10.0.0.{i}") for i in range(2, 6)])
    assert {k: (o.ok, o.detail) for k, o in got.items()} == dict.fromkeys(
        range(2, 6), (True, "echo reply")
    )
    assert all(o.latency_ms is not None and o.latency_ms >= 0 for o in got.values())
    assert all(s.closed for s in pool.sockets)


def test_echoes_go_out_one_destination_from_each_source_in_turn() -> None:
    pool = ScriptedPool(replies)
    probes = [Probe(f"{pid}-{i}", pid, f"10.{pid}.0.{i}") for pid in (1, 2, 3) for i in range(3)]
    icmp(pool, probes)
    sends = [who for what, who in pool.log if what == "send"]
    assert sends == [(pid, f"10.{pid}.0.{i}") for i in range(3) for pid in (1, 2, 3)]


def test_replies_are_read_between_batches_of_echoes() -> None:
    pool = ScriptedPool(replies)
    n = 3 * sweep_module.SEND_BATCH + 5
    icmp(pool, [Probe(i, 7, str(ipv4(i))) for i in range(n)])
    kinds = [what for what, _ in pool.log]
    first_read = kinds.index("recv")
    assert first_read == sweep_module.SEND_BATCH  # the first look after SEND_BATCH echoes
    assert kinds[: 2 * sweep_module.SEND_BATCH + 2].count("recv") == sweep_module.SEND_BATCH
    assert kinds.count("send") == n  # everyone replied at once: nothing was sent twice


def ipv4(i: int) -> str:
    return f"10.1.{i // 250}.{i % 250 + 2}"


def test_a_silent_destination_is_sent_to_again_and_one_that_wakes_up_is_reached() -> None:
    def answer(address: str, n: int) -> str | None:
        return {"10.0.0.2": None, "10.0.0.3": address if n >= 3 else None}.get(address, address)

    pool = ScriptedPool(answer)
    got = icmp(pool, [Probe("silent", 1, "10.0.0.2"), Probe("late", 1, "10.0.0.3")], 0.5)
    assert (got["silent"].ok, got["silent"].detail) == (False, "no reply within 0.5 s")
    assert got["late"].ok
    (sock,) = pool.sockets
    assert sock.sent["10.0.0.3"] == 3  # resent until it answered, then no more
    assert sock.sent["10.0.0.2"] >= 3


def test_a_reply_from_another_address_or_to_another_echo_does_not_count() -> None:
    def answer(address: str, n: int) -> str | None:
        return "10.0.0.99" if address == "10.0.0.2" else address

    pool = ScriptedPool(answer, other_ident=[2])
    got = icmp(
        pool,
        [
            Probe("spoofed", 1, "10.0.0.2"),
            Probe("fine", 1, "10.0.0.3"),
            Probe("other socket's", 2, "10.0.0.4"),
        ],
    )
    assert not got["spoofed"].ok and got["fine"].ok
    assert not got["other socket's"].ok
    assert pool.sockets[0].sent["10.0.0.3"] == 1  # answered: not sent again


def test_a_source_whose_namespace_cannot_be_entered() -> None:
    pool = ScriptedPool(replies, gone=[5], broken=[6])
    got = icmp(
        pool,
        [Probe("gone", 5, "10.0.0.2"), Probe("broken", 6, "10.0.0.3"), Probe("ok", 7, "10.0.0.4")],
    )
    assert got["gone"] == Observed(False, None, "source namespace: process 5 is gone")
    assert not got["broken"].ok and got["broken"].detail.startswith("source namespace: ")
    assert got["ok"].ok


# --- TCP, on this namespace's loopback ------------------------------------------------------------


@pytest.fixture
def listener() -> Iterator[int]:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    s.listen(16)
    try:
        yield int(s.getsockname()[1])
    finally:
        s.close()


def closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # nothing listens once it is closed


def test_tcp_connected_and_refused(listener: int) -> None:
    with NetnsPool() as pool:
        got = sweep(
            pool,
            [
                Probe("open", None, "127.0.0.1", listener),
                Probe("closed", None, "127.0.0.1", closed_port()),
            ],
            timeout_s=5.0,
        )
    assert (got["open"].ok, got["open"].detail) == (True, "connected")
    assert (got["closed"].ok, got["closed"].detail) == (False, "refused: nothing listens there")


def test_tcp_probes_beyond_the_sockets_open_at_once_go_in_rounds(
    listener: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sweep_module, "MAX_IN_FLIGHT", 3)
    with NetnsPool() as pool:
        got = sweep(pool, [Probe(i, None, "127.0.0.1", listener) for i in range(10)], timeout_s=5.0)
    assert set(got) == set(range(10)) and all(o.ok for o in got.values())


def test_both_kinds_from_a_source_that_is_gone() -> None:
    pool = ScriptedPool(replies, gone=[5])
    got = sweep(pool, [Probe("ping", 5, "10.0.0.2"), Probe("tcp", 5, "10.0.0.2", 80)])  # type: ignore[arg-type]
    assert {k: o.detail for k, o in got.items()} == {
        "ping": "source namespace: process 5 is gone",
        "tcp": "source namespace: process 5 is gone",
    }


# --- a disagreement is probed again before it is a mismatch ---------------------------------------


def test_disagreements_are_probed_again_with_a_longer_timeout() -> None:
    probes = [Probe(k, 1, f"10.0.0.{i + 2}") for i, k in enumerate("abcd")]
    expected: dict[Hashable, bool] = {"a": True, "b": True, "c": False, "d": False}
    calls: list[tuple[list[Hashable], float]] = []

    def fake(
        pool: Any, ps: Sequence[Probe], timeout_s: float, **kw: Any
    ) -> dict[Hashable, Observed]:
        calls.append(([p.key for p in ps], timeout_s))
        if len(calls) == 1:  # first pass: a and b lost (busy host), c answered, d silent
            seen = {"a": False, "b": False, "c": True, "d": False}
        else:  # second pass: a answers now, b still not, c still answers
            seen = {"a": True, "b": False, "c": True}
        return {p.key: Observed(seen[str(p.key)], None, "x") for p in ps}

    got = sweep_confirmed(None, probes, expected, timeout_s=1.0, sweep_fn=fake)  # type: ignore[arg-type]
    assert calls[0] == (["a", "b", "c", "d"], 1.0)
    assert calls[1][0] == ["a", "b", "c"] and calls[1][1] > 1.0
    assert len(calls) == 2
    assert {k: o.ok for k, o in got.items()} == {"a": True, "b": False, "c": True, "d": False}
    assert got["a"].detail.endswith("(on a second try)")
    assert got["b"].detail.endswith("(twice)")


def test_no_disagreement_no_second_pass() -> None:
    calls = []

    def fake(
        pool: Any, ps: Sequence[Probe], timeout_s: float, **kw: Any
    ) -> dict[Hashable, Observed]:
        calls.append(1)
        return {p.key: Observed(True, 0.1, "x") for p in ps}

    sweep_confirmed(None, [Probe("a", 1, "10.0.0.2")], {"a": True}, sweep_fn=fake)  # type: ignore[arg-type]
    assert calls == [1]


# --- IPv6 and UDP, on this namespace's loopback ------------------------------------------------


@pytest.fixture
def udp_echo() -> Iterator[int]:
    """A UDP socket on ::1 (and 127.0.0.1: a dual-stack socket) that sends back what it gets."""
    import threading

    s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.bind(("::", 0))
    s.settimeout(0.1)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                data, peer = s.recvfrom(2048)
            except OSError:
                continue
            s.sendto(data, peer)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        yield int(s.getsockname()[1])
    finally:
        stop.set()
        t.join()
        s.close()


def test_udp_answered_refused_dropped_and_silent(udp_echo: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as quiet:
        quiet.bind(("127.0.0.1", 0))
        silent = int(quiet.getsockname()[1])
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as gone:
            gone.bind(("127.0.0.1", 0))
            closed = int(gone.getsockname()[1])
        with NetnsPool() as pool:
            got = sweep(
                pool,
                [
                    Probe("v4", None, "127.0.0.1", udp_echo, "udp"),
                    Probe("v6", None, "::1", udp_echo, "udp"),
                    Probe("closed", None, "127.0.0.1", closed, "udp"),
                    Probe("dropped", None, "127.0.0.1", silent, "udp"),
                    Probe("silent", None, "127.0.0.1", silent, "udp", expect_reply=False),
                ],
                timeout_s=0.5,
            )
    assert got["v4"].ok and got["v6"].ok and got["v4"].detail == "answered"
    assert not got["closed"].ok and "port unreachable" in got["closed"].detail
    assert not got["closed"].inconclusive
    assert not got["dropped"].ok and "dropped" in got["dropped"].detail
    assert not got["dropped"].inconclusive
    assert got["silent"].inconclusive and not got["silent"].ok
    assert "says nothing" in got["silent"].detail


def test_ipv6_echo_and_connect_on_loopback(listener: int) -> None:
    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as six:
        six.bind(("::1", 0))
        six.listen()
        port = int(six.getsockname()[1])
        with NetnsPool() as pool:
            got = sweep(
                pool,
                [
                    Probe("ping6", None, "::1"),
                    Probe("ping4", None, "127.0.0.1"),
                    Probe("tcp6", None, "::1", port),
                    Probe("tcp4", None, "127.0.0.1", listener),
                ],
                timeout_s=2.0,
            )
    assert {k: o.ok for k, o in got.items()} == {
        "ping6": True,
        "ping4": True,
        "tcp6": True,
        "tcp4": True,
    }, got


def test_an_inconclusive_udp_probe_is_not_probed_again() -> None:
    calls: list[int] = []

    def fake(pool: Any, probes: Sequence[Probe], **kw: Any) -> dict[Hashable, Observed]:
        calls.append(len(probes))
        return {p.key: Observed(False, None, "silence", inconclusive=True) for p in probes}

    probe = Probe("u", None, "10.0.0.2", 9, "udp", expect_reply=False)
    out = sweep_confirmed(None, [probe], {"u": True}, sweep_fn=fake)  # type: ignore[arg-type]
    assert calls == [1] and out["u"].inconclusive
