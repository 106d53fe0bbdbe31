"""HTTP/2 client connections against recording transports: whatever frames a client sends, the
connection answers or ends with GOAWAY, never raises; a reset flood ends it; a drain sends its
GOAWAY and refuses new streams."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any, cast

import h2.config
import h2.connection
import h2.events
import hyperframe.frame
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dockmesh.proxy import h2conn
from dockmesh.testing.transport import FakeTransport
from tests.unit.proxy.rig import setup

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
GET = [(":method", "GET"), (":scheme", "http"), (":authority", "x"), (":path", "/")]


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    lp = asyncio.new_event_loop()
    yield lp
    lp.close()


def connect(loop: asyncio.AbstractEventLoop) -> tuple[h2conn.H2Client, FakeTransport]:
    proxy, _, _ = setup(loop)
    h = h2conn.H2Client(proxy, tls=False)
    t = FakeTransport(lambda: h.write_out())
    h.connection_made(cast(Any, t))
    return h, t


def frames(t: FakeTransport) -> list[hyperframe.frame.Frame]:
    out = []
    view = memoryview(t.data())
    while len(view) >= 9:
        f, n = hyperframe.frame.Frame.parse_frame_header(view[:9])
        f.parse_body(view[9 : 9 + n])
        out.append(f)
        view = view[9 + n :]
    return out


def client() -> h2.connection.H2Connection:
    c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    c.initiate_connection()
    return c


@settings(max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.binary(max_size=64), max_size=8), st.booleans())
def test_any_bytes_after_the_preface_are_answered_or_end_the_connection(
    loop: asyncio.AbstractEventLoop, chunks: list[bytes], settings_first: bool
) -> None:
    h, t = connect(loop)
    first = PREFACE + (hyperframe.frame.SettingsFrame(0).serialize() if settings_first else b"")
    h.data_received(first)
    for c in chunks:
        if t.closed or t.eof_written:
            break
        h.data_received(c)
    for s in list(h.streams.values()):
        assert s.task is not None
        s.task.cancel()
    h.connection_lost(None)
    assert h.closed and not h.streams


def test_a_reset_flood_gets_goaway_enhance_your_calm(loop: asyncio.AbstractEventLoop) -> None:
    h, t = connect(loop)
    c = client()
    for _ in range(300):
        sid = c.get_next_available_stream_id()
        c.send_headers(sid, GET, end_stream=True)
        c.reset_stream(sid)
    h.data_received(c.data_to_send())
    assert t.eof_written  # a lingering close: FIN, its bytes read and dropped
    h.data_received(b"\x00" * 100)  # (more of its frames: dropped)
    goaway = [f for f in frames(t) if isinstance(f, hyperframe.frame.GoAwayFrame)]
    assert [g.error_code for g in goaway] == [h2.errors.ErrorCodes.ENHANCE_YOUR_CALM]
    # Every stream it opened was cancelled before it began.
    loop.run_until_complete(asyncio.sleep(0))
    assert not h.streams


def test_a_drain_says_goaway_and_refuses_later_streams(loop: asyncio.AbstractEventLoop) -> None:
    h, t = connect(loop)
    c = client()
    c.send_headers(1, GET, end_stream=True)
    h.data_received(c.data_to_send())
    assert h.busy()
    h.drain()
    goaway = [f for f in frames(t) if isinstance(f, hyperframe.frame.GoAwayFrame)]
    assert [(g.last_stream_id, g.error_code) for g in goaway] == [(1, 0)]
    c.send_headers(3, GET, end_stream=True)
    h.data_received(c.data_to_send())
    resets = [f for f in frames(t) if isinstance(f, hyperframe.frame.RstStreamFrame)]
    assert [(r.stream_id, r.error_code) for r in resets] == [
        (3, h2.errors.ErrorCodes.REFUSED_STREAM)
    ]
    assert not t.closed  # stream 1 is still to be answered

    async def answered() -> None:
        while h.streams:
            await asyncio.sleep(0.01)

    # (The rig's upstreams refuse connections: stream 1 is answered 502, then it closes.)
    loop.run_until_complete(asyncio.wait_for(answered(), 10))
    ends = [f for f in frames(t) if f.stream_id == 1 and "END_STREAM" in f.flags]
    assert ends and t.eof_written


def test_a_ping_flood_from_a_client_that_does_not_read_is_cut_off(
    loop: asyncio.AbstractEventLoop,
) -> None:
    h, t = connect(loop)
    c = client()
    h.data_received(c.data_to_send())
    for _ in range(10):
        c.ping(b"12345678")
    h.data_received(c.data_to_send())
    h.write_out()
    assert not t.closed  # its answers were written
    t.buffered = h2conn.MAX_UNREAD + 1  # and it reads none of them
    c.ping(b"12345678")
    h.data_received(c.data_to_send())
    h.write_out()
    assert t.aborted
