"""The takeover's exchange between two ends in one process: the listening sockets go over
(the very sockets: what one accepts, the other's queue no longer holds), `go` makes the old
end drain, a new end that never says `go` leaves the old one serving."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dockmesh.proxy.run import listen_groups
from dockmesh.proxy.takeover import Control, TakeoverError, control_path, take_over


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    lp = asyncio.new_event_loop()
    t = threading.Thread(target=lp.run_forever, daemon=True)
    t.start()
    yield lp
    lp.call_soon_threadsafe(lp.stop)
    t.join(5)
    lp.close()


def listener() -> socket.socket:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(16)
    return s


def start(loop: asyncio.AbstractEventLoop, control: Control) -> None:
    async def go() -> None:
        control.start(loop)

    asyncio.run_coroutine_threadsafe(go(), loop).result(5)


def test_the_sockets_go_over_and_go_makes_the_old_end_drain(
    tmp_path: Path, loop: asyncio.AbstractEventLoop
) -> None:
    sock = listener()
    port = sock.getsockname()[1]
    path = control_path("127.0.0.1", port, str(tmp_path))
    assert path == str(tmp_path / f"proxy-127.0.0.1-{port}.sock")
    drained = threading.Event()
    old = Control(path, [sock], drained.set)
    start(loop, old)
    assert (Path(path).stat().st_mode & 0o777) == 0o600
    handoff = take_over(path, "127.0.0.1", port)
    (got,) = handoff.socks
    assert got.getsockname() == sock.getsockname() and got.fileno() != sock.fileno()
    # The same socket: a connection queued before is accepted on the new end.
    with socket.create_connection(("127.0.0.1", port)):
        got.setblocking(True)
        conn, _ = got.accept()
        conn.close()
    # The new end binds the control's name anew; the old end's close then leaves it alone.
    new = Control(path, [got], lambda: None)
    start(loop, new)
    handoff.confirm()
    assert drained.wait(5) and old.handed_over
    loop.call_soon_threadsafe(old.close)
    asyncio.run_coroutine_threadsafe(asyncio.sleep(0.05), loop).result(5)
    assert Path(path).exists()
    loop.call_soon_threadsafe(new.close)
    asyncio.run_coroutine_threadsafe(asyncio.sleep(0.05), loop).result(5)
    assert not Path(path).exists()
    sock.close()
    got.close()


def test_a_new_end_that_never_says_go_leaves_the_old_one_serving(
    tmp_path: Path, loop: asyncio.AbstractEventLoop
) -> None:
    sock = listener()
    port = sock.getsockname()[1]
    path = control_path("127.0.0.1", port, str(tmp_path))
    drained = threading.Event()
    old = Control(path, [sock], drained.set)
    start(loop, old)
    handoff = take_over(path, "127.0.0.1", port)
    handoff.abandon()
    for s in handoff.socks:
        s.close()
    assert not drained.wait(0.3) and not old.handed_over
    # And it can still be taken over.
    again = take_over(path, "127.0.0.1", port)
    again.confirm()
    assert drained.wait(5)
    loop.call_soon_threadsafe(old.close)
    for s in [sock, *again.socks]:
        s.close()


def test_nothing_to_take_over_or_another_port_is_refused(
    tmp_path: Path, loop: asyncio.AbstractEventLoop
) -> None:
    with pytest.raises(TakeoverError, match=r"no dockmesh proxy serves 127\.0\.0\.1:1 "):
        take_over(str(tmp_path / "none.sock"), "127.0.0.1", 1)
    sock = listener()
    port = sock.getsockname()[1]
    path = control_path("127.0.0.1", port, str(tmp_path))
    old = Control(path, [sock], lambda: None)
    start(loop, old)
    with pytest.raises(TakeoverError, match=r"does not listen on 127\.0\.0\.1:1$"):
        take_over(path, "127.0.0.1", 1)
    loop.call_soon_threadsafe(old.close)
    sock.close()


@given(st.integers(1, 12), st.integers(1, 8))
def test_received_sockets_are_spread_over_the_workers_each_served_once(k: int, w: int) -> None:
    socks = [socket.socket() for _ in range(k)]
    try:
        groups = listen_groups(socks, w)
        assert len(groups) == w
        assert sorted(s.fileno() for g in groups for s in g) == sorted(s.fileno() for s in socks)
    finally:
        for s in socks:
            s.close()
    assert max(map(len, groups)) - min(map(len, groups)) <= 1
