"""The conntrack table on the wire (dockmesh.codecs.ctnetlink): entries a kernel wrote, read
back; what the encoder writes, read back the same (the fast path and the general walk
agree); anything else refused with one CtnetlinkError, never another exception."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dockmesh.codecs.ctnetlink import (
    CT_GET,
    CT_NEW,
    CTA_MARK,
    CTA_MARK_MASK,
    CTA_ZONE,
    NLM_F_DUMP,
    NLM_F_MULTI,
    NLM_F_REQUEST,
    ConntrackFlow,
    CtnetlinkError,
    DumpDecoder,
    Tuple5,
    done_message,
    dump_request,
    entry_message,
    error_message,
)
from tests.outcomes import Outcomes

# Three entries a 6.18 kernel wrote in one datagram (inserted with `conntrack -I` into a
# namespace's table, accounting on): UDP over IPv6, TCP over IPv4, an ICMP echo.
KERNEL_DATAGRAM = bytes.fromhex(
    "280100000001020007000000692d00000a0000004c0001802c00018014000300fd0000000000000000000000"
    "0000000214000400fd0000000000000000000000000000031c00028005000100110000000600020014e90000"
    "06000300003500004c0002802c00018014000300fd00000000000000000000000000000314000400fd000000"
    "0000000000000000000000021c000280050001001100000006000200003500000600030014e9000008000300"
    "00000008080008000000000008000c00812c3d5e08000b000000000108000700000002571c0009800c000100"
    "00000000000000000c00020000000000000000001c000a800c00010000000000000000000c00020000000000"
    "000000001c001880080001000000000008000200000000000800030000000000"
    "280100000001020007000000692d0000020000003400018014000180080001000a630002080002000a630003"
    "1c0002800500010006000000060002009c400000060003001f9000003400028014000180080001000a630003"
    "080002000a6300021c0002800500010006000000060002001f900000060003009c400000080003000000000e"
    "080008000000000008000c00cf3938f208000b00000000010800070000000257300004802c00018005000100"
    "0300000005000200000000000500030000000000060004000a000000060005000a0000001c0009800c000100"
    "00000000000000000c00020000000000000000001c000a800c00010000000000000000000c00020000000000"
    "000000001c001880080001000000000008000200000000000800030000000000"
    "080100000001020007000000692d0000020000003c00018014000180080001000a630002080002000a630003"
    "24000280050001000100000006000400004d0000050005000800000005000600000000003c00028014000180"
    "080001000a630003080002000a63000224000280050001000100000006000400004d00000500050000000000"
    "05000600000000000800030000000008080008000000000008000c00658ea69308000b000000000108000700"
    "0000001d1c0009800c00010000000000000000000c00020000000000000000001c000a800c00010000000000"
    "000000000c00020000000000000000001c001880080001000000000008000200000000000800030000000000"
)


def flow(proto: int, a: str, b: str, sport: int, dport: int, *counts: int) -> ConntrackFlow:
    return ConntrackFlow(proto, Tuple5(a, b, sport, dport), Tuple5(b, a, dport, sport), *counts)


def test_what_a_kernel_wrote_is_read() -> None:
    d = DumpDecoder(seq=7)
    assert d.feed(KERNEL_DATAGRAM) == [
        flow(17, "fd00::2", "fd00::3", 5353, 53),
        flow(6, "10.99.0.2", "10.99.0.3", 40000, 8080),
        flow(1, "10.99.0.2", "10.99.0.3", 0, 0),
    ]
    assert not d.done
    assert d.feed(done_message(7)) == []
    assert d.done


def test_an_error_answer_carries_the_kernels_number() -> None:
    with pytest.raises(CtnetlinkError) as e:
        DumpDecoder().feed(error_message(1))  # EPERM
    assert e.value.errno == 1
    assert DumpDecoder().feed(error_message(0)) == []  # an acknowledgement


def test_a_dump_that_ends_with_an_error_says_so() -> None:
    done = bytearray(done_message(3))
    done[16:20] = struct.pack("=i", -4)
    with pytest.raises(CtnetlinkError) as e:
        DumpDecoder().feed(bytes(done))
    assert e.value.errno == 4


def test_messages_of_another_dump_or_after_the_end_are_refused() -> None:
    with pytest.raises(CtnetlinkError, match="sequence"):
        DumpDecoder(seq=1).feed(done_message(2))
    d = DumpDecoder()
    with pytest.raises(CtnetlinkError, match="after the end"):
        d.feed(done_message() + done_message())


def test_the_dump_request_and_its_kernel_filters() -> None:
    plain = dump_request(9)
    length, kind, flags, seq, _ = struct.unpack_from("=IHHII", plain)
    assert (length, kind, flags, seq) == (20, CT_GET, NLM_F_REQUEST | NLM_F_DUMP, 9)
    filtered = dump_request(9, mark=(0x10, 0xF0), zone=5)
    attrs = filtered[20:]
    assert struct.unpack_from("=HH", attrs, 0) == (8, CTA_MARK)
    assert struct.unpack_from(">I", attrs, 4) == (0x10,)
    assert struct.unpack_from("=HH", attrs, 8) == (8, CTA_MARK_MASK)
    assert struct.unpack_from("=HH", attrs, 16) == (6, CTA_ZONE)
    assert struct.unpack_from("=I", filtered)[0] == len(filtered)


u16 = st.integers(0, 0xFFFF)
u64 = st.integers(0, 2**64 - 1)
v4 = st.ip_addresses(v=4).map(str)
v6 = st.ip_addresses(v=6).map(str)


@st.composite
def flows(draw: st.DrawFn) -> ConntrackFlow:
    proto = draw(st.sampled_from([1, 6, 17, 58, 132]))
    a, b = draw(st.one_of(st.tuples(v4, v4), st.tuples(v6, v6)))
    ports = proto in (6, 17, 132)
    sport, dport = (draw(u16), draw(u16)) if ports else (0, 0)
    counts = draw(st.tuples(u64, u64, u64, u64))
    return flow(proto, a, b, sport, dport, *counts)


def as_dump(fs: list[ConntrackFlow], seq: int = 1) -> bytes:
    return b"".join(
        entry_message(f, seq=seq, kind=CT_NEW, flags=NLM_F_MULTI, counters=True) for f in fs
    )


@given(st.lists(flows(), max_size=20), st.integers(1, 5))
def test_entries_written_are_read_back_in_any_datagram_split(
    fs: list[ConntrackFlow], parts: int
) -> None:
    messages = [as_dump([f]) for f in fs] + [done_message(1)]
    d = DumpDecoder(seq=1)
    got: list[ConntrackFlow] = []
    size = max(1, len(messages) // parts)
    for i in range(0, len(messages), size):
        got += d.feed(b"".join(messages[i : i + size]))
    assert got == fs and d.done


@given(flows())
def test_the_general_walk_reads_what_the_fast_path_reads(f: ConntrackFlow) -> None:
    """The same entry with its tuple's two nests swapped (legal netlink, not the kernel's
    usual order) takes the general walk; it must read the same."""
    raw = bytearray(as_dump([f]))
    off = 20  # the first tuple's nest header
    length = struct.unpack_from("=H", raw, off)[0]
    inner = bytes(raw[off + 4 : off + length])
    ip_len = (struct.unpack_from("=H", inner, 0)[0] + 3) & ~3
    raw[off + 4 : off + length] = inner[ip_len:] + inner[:ip_len]
    assert DumpDecoder().feed(bytes(raw)) == [f]


def test_an_entry_without_both_tuples_is_skipped() -> None:
    whole = as_dump([flow(6, "10.0.0.1", "10.0.0.2", 1, 2)])
    first = struct.unpack_from("=H", whole, 20)[0]
    cut = bytearray(whole[:20] + whole[20 + first :])
    struct.pack_into("=I", cut, 0, len(cut))
    assert DumpDecoder().feed(bytes(cut)) == []


def test_any_bytes_decode_or_are_refused_cleanly() -> None:
    seen = Outcomes()

    @settings(max_examples=400)
    @given(st.binary(max_size=600))
    def run(data: bytes) -> None:
        try:
            DumpDecoder().feed(data)
        except CtnetlinkError:
            seen("refused")
            return
        seen("accepted")

    run()
    seen.require(refused=0.5)


def test_damaged_dumps_decode_or_are_refused_cleanly() -> None:
    """Real dumps with bytes changed, cut or inserted: the decoder's checks, not the
    framing's first look, are what these reach."""
    seen = Outcomes()

    @settings(max_examples=400)
    @given(
        st.lists(flows(), min_size=1, max_size=4),
        st.lists(st.tuples(st.integers(0, 2000), st.integers(0, 255)), max_size=6),
        st.integers(0, 2000),
    )
    def run(fs: list[ConntrackFlow], changes: list[tuple[int, int]], cut: int) -> None:
        raw = bytearray(as_dump(fs) + done_message(1))
        for at, value in changes:
            raw[at % len(raw)] = value
        try:
            got = DumpDecoder(seq=1).feed(bytes(raw[: len(raw) - cut % 40]))
        except CtnetlinkError:
            seen("refused")
            return
        assert all(isinstance(g, ConntrackFlow) for g in got)
        seen("accepted")

    run()
    seen.require(refused=0.1, accepted=0.1)


@pytest.mark.parametrize(("a", "b"), [("10.1.0.2", "10.1.0.3"), ("fd00:1::2", "fd00:1::3")])
def test_the_usual_entries_take_the_fast_paths(
    monkeypatch: pytest.MonkeyPatch, a: str, b: str
) -> None:
    """TCP entries with counters, IPv4 or IPv6, in the kernel's layout: no general tuple
    walk and no general counters walk (a regression here costs a busy host's table
    seconds)."""
    import dockmesh.codecs.ctnetlink as codec

    def refuse(*_: object) -> None:
        raise AssertionError("the general walk was taken")

    fs = [flow(6, a, b, 40000 + i, 8080, i, 2 * i, 3 * i, 4 * i) for i in range(5)]
    monkeypatch.setattr(codec.DumpDecoder, "_tuple", refuse)
    monkeypatch.setattr(codec, "_counters", refuse)
    d = DumpDecoder()
    assert d.feed(as_dump(fs)) == fs
    assert len(d._shapes) == 1  # learned from the first entry, used for the other four
