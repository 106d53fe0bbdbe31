"""The conntrack shell (dockmesh.observe.conntrack.dump) over a stand-in netlink socket: it
asks for a dump, hands each datagram to the decoder until the dump's end, and turns every
failure (the kernel's refusal, bytes that are not a dump, a socket error) into one
ConntrackError line."""

from __future__ import annotations

import os
import socket
import struct
from typing import Any

import pytest

from dockmesh.codecs.ctnetlink import (
    CT_GET,
    NLM_F_MULTI,
    ConntrackFlow,
    Tuple5,
    done_message,
    entry_message,
    error_message,
)
from dockmesh.observe.conntrack import ConntrackError, dump


class FakeNetlink:
    """Answers the dump request with the datagrams it was given (their sequence numbers
    set to the request's)."""

    def __init__(self, datagrams: list[bytes | OSError]) -> None:
        self.datagrams = datagrams
        self.sent: list[bytes] = []
        self.seq = 0
        self.closed = False

    def __call__(self, *_: Any) -> FakeNetlink:
        return self

    def __enter__(self) -> FakeNetlink:
        return self

    def __exit__(self, *_: object) -> None:
        self.closed = True

    def setsockopt(self, *_: Any) -> None:
        pass

    def bind(self, _: Any) -> None:
        pass

    def send(self, data: bytes) -> int:
        self.sent.append(data)
        self.seq = struct.unpack_from("=I", data, 8)[0]
        return len(data)

    def recv(self, _: int) -> bytes:
        if not self.datagrams:
            return b""
        d = self.datagrams.pop(0)
        if isinstance(d, OSError):
            raise d
        out, off = bytearray(d), 0
        while off + 16 <= len(out):
            length = struct.unpack_from("=I", out, off)[0]
            struct.pack_into("=I", out, off + 8, self.seq)
            off += max(16, (length + 3) & ~3)
        return bytes(out)


def flow(i: int) -> ConntrackFlow:
    a, b = "10.0.0.2", "10.0.0.3"
    return ConntrackFlow(6, Tuple5(a, b, 1000 + i, 80), Tuple5(b, a, 80, 1000 + i), i, i, i, i)


def entries(fs: list[ConntrackFlow]) -> bytes:
    return b"".join(entry_message(f, flags=NLM_F_MULTI, kind=0x100, counters=True) for f in fs)


def use(monkeypatch: pytest.MonkeyPatch, datagrams: list[bytes | OSError]) -> FakeNetlink:
    """The stand-in for the test's duration (the module reads `socket.socket` when called)."""
    fake = FakeNetlink(datagrams)
    monkeypatch.setattr(socket, "socket", fake)
    return fake


def test_a_dump_in_several_datagrams_is_read_to_its_end(monkeypatch: pytest.MonkeyPatch) -> None:
    fs = [flow(i) for i in range(7)]
    fake = use(monkeypatch, [entries(fs[:3]), entries(fs[3:]), done_message()])
    assert list(dump()) == fs
    ((request,),) = [fake.sent]
    assert struct.unpack_from("=H", request, 4) == (CT_GET,)
    assert fake.closed


def test_the_kernels_refusal_is_one_line_with_its_errno(monkeypatch: pytest.MonkeyPatch) -> None:
    use(monkeypatch, [error_message(1)])
    with pytest.raises(ConntrackError) as e:
        list(dump())
    assert e.value.errno == 1
    assert str(e.value) == f"conntrack: the kernel refused the dump: {os.strerror(1)}"


@pytest.mark.parametrize(
    ("datagrams", "says"),
    [
        ([b"\x01\x02\x03"], "shorter than a netlink header"),
        ([entries([flow(1)])], "ended without its last message"),
        ([OSError(105, "No buffer space available")], "No buffer space available"),
    ],
)
def test_other_failures_are_one_conntrack_line(
    monkeypatch: pytest.MonkeyPatch, datagrams: list[bytes | OSError], says: str
) -> None:
    use(monkeypatch, datagrams)
    with pytest.raises(ConntrackError, match=says) as e:
        list(dump())
    assert str(e.value).startswith("conntrack: ") and "\n" not in str(e.value)
