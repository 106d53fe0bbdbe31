"""`CuttableRelay`: bytes both ways while restored; cut, every connection through it ends
and new ones are refused; restored, it relays again."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from dockmesh.testing.relay import CuttableRelay


@pytest.fixture
def echo(tmp_path: Path) -> Iterator[str]:
    path = str(tmp_path / "echo.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(8)

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            threading.Thread(
                target=lambda c=conn: [c.sendall(d) for d in iter(lambda: c.recv(100), b"")],
                daemon=True,
            ).start()

    threading.Thread(target=serve, daemon=True).start()
    yield path
    server.close()


def talk(path: Path) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5)
    s.connect(str(path))
    return s


def test_relays_until_cut_and_again_once_restored(tmp_path: Path, echo: str) -> None:
    relay = CuttableRelay(tmp_path / "relay.sock", echo)
    relay.restore()
    try:
        s = talk(relay.path)
        s.sendall(b"ping")
        assert s.recv(100) == b"ping"
        relay.cut()
        assert s.recv(100) == b""  # the connection through it ended
        s.close()
        with pytest.raises(ConnectionRefusedError):
            talk(relay.path)
        relay.restore()
        s = talk(relay.path)
        s.sendall(b"again")
        assert s.recv(100) == b"again"
        s.close()
    finally:
        relay.cut()
