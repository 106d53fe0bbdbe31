"""The takeover's exchange between two ends in one process: the listening sockets go over
(the very sockets: what one accepts, the other's queue no longer holds), `go` makes the old
end drain, a new end that never says `go` leaves the old one serving."""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dockmesh.proxy.run import listen_groups
from dockmesh.proxy.takeover import (
    Control,
    TakeoverError,
    control_path,
    run_dir,
    take_over,
    unsafe_dir,
)


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


def test_a_run_directory_another_user_owns_or_anyone_may_write_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stranger who made the run directory first (or one open to all) could put its own
    socket at the name a takeover connects to: such a directory holds no control socket."""
    ours = tmp_path / "ours"
    ours.mkdir(mode=0o700)
    monkeypatch.setenv("DOCKMESH_RUN_DIR", str(ours))
    assert run_dir() == str(ours)
    ours.chmod(0o777)
    with pytest.raises(TakeoverError, match=r"may be written by others \(mode 777\)"):
        run_dir()
    ours.chmod(0o1733)
    with pytest.raises(TakeoverError, match="may be written by others"):
        run_dir()
    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o755)
    stranger = 65534 if os.getuid() != 65534 else 65533
    assert unsafe_dir(os.stat(theirs), os.getuid()) is None
    st = os.stat(theirs)
    as_theirs = os.stat_result((st.st_mode, *st[1:4], stranger, *st[5:]))
    assert unsafe_dir(as_theirs, os.getuid()) == f"belongs to another user (uid {stranger})"
    if os.getuid() == 0:  # root can make it truly another's
        os.chown(theirs, stranger, stranger)
        theirs.chmod(0o777)
        monkeypatch.setenv("DOCKMESH_RUN_DIR", str(theirs))
        with pytest.raises(TakeoverError, match="belongs to another user"):
            run_dir()
    f = tmp_path / "file"
    f.write_text("")
    assert unsafe_dir(os.stat(f), os.getuid()) == "is not a directory"


def test_two_takeovers_at_once_one_gets_the_sockets_the_other_is_refused(
    tmp_path: Path, loop: asyncio.AbstractEventLoop
) -> None:
    """Both new proxies asking before either says `go` both got the sockets, and both said
    `go`: two processes then served the port, the old one drained, and a later takeover
    reached only one of them. One handoff at a time; none after one went through."""
    sock = listener()
    port = sock.getsockname()[1]
    path = control_path("127.0.0.1", port, str(tmp_path))
    drained = threading.Event()
    old = Control(path, [sock], drained.set)
    start(loop, old)
    first = take_over(path, "127.0.0.1", port)
    with pytest.raises(TakeoverError, match="handed no socket over"):
        take_over(path, "127.0.0.1", port)
    # The first gives up: the old proxy serves on and can be taken over again.
    first.abandon()
    for s in first.socks:
        s.close()
    deadline = time.monotonic() + 5
    while True:
        try:
            again = take_over(path, "127.0.0.1", port)
            break
        except TakeoverError:
            assert time.monotonic() < deadline
            time.sleep(0.05)
    again.confirm()
    assert drained.wait(5)
    with pytest.raises(TakeoverError):
        take_over(path, "127.0.0.1", port)
    for s in again.socks:
        s.close()
    loop.call_soon_threadsafe(old.close)
    asyncio.run_coroutine_threadsafe(asyncio.sleep(0.05), loop).result(5)
    sock.close()
