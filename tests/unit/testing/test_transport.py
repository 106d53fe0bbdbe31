"""The recording transport: what a protocol wrote, in order, as its peer would read it."""

from __future__ import annotations

import pytest

from dockmesh.testing.transport import FakeTransport


def test_it_records_writes_and_runs_the_deferred_ones_before_a_read() -> None:
    deferred: list[bytes] = []

    def send_deferred() -> None:
        for d in deferred:
            t.write(d)
        deferred.clear()

    t = FakeTransport(send_deferred)
    t.write(b"a")
    deferred.append(b"b")
    assert t.written == [b"a"]  # not read yet: what is deferred waits
    assert t.out == [b"a", b"b"] and t.data() == b"ab" and deferred == []
    assert t.get_extra_info("peername") == ("10.0.0.9", 4242)
    assert t.get_extra_info("socket", "none") == "none"


def test_flow_control_and_the_end() -> None:
    t = FakeTransport()
    t.pause_reading()
    assert not t.is_reading()
    t.resume_reading()
    assert t.is_reading() and t.get_write_buffer_size() == 0 and t.can_write_eof()
    t.write_eof()
    assert t.is_closing() and t.eof_written and not t.aborted
    with pytest.raises(AssertionError, match="after the transport was closed"):
        t.write(b"late")
    other = FakeTransport()
    other.abort()
    assert other.is_closing() and other.aborted
