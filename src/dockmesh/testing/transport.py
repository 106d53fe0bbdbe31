"""Transports that record what is written: an asyncio Protocol driven without sockets (the
proxy's connections in its unit tests). Call the protocol's callbacks by hand
(`connection_made`, `data_received`, `connection_lost`) and read what it wrote."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


class FakeTransport:
    """What a protocol wrote, as its peer would see it, and the flow-control calls it made.

    `before_read` runs before `out` is read: a protocol that defers writes to the end of the
    event loop's pass (the proxy's `Proxy.flush`) sends them then, as the loop would.
    Writing after `close`, `abort` or `write_eof` fails the test: nothing may follow the end.
    """

    def __init__(
        self,
        before_read: Callable[[], None] | None = None,
        peer: tuple[str, int] = ("10.0.0.9", 4242),
    ) -> None:
        self.before_read = before_read
        self.peer = peer
        self.written: list[bytes] = []
        self.closed = False
        self.aborted = False
        self.eof_written = False
        self.reading = True
        self.buffered = 0  # what `get_write_buffer_size` answers

    @property
    def out(self) -> list[bytes]:
        if self.before_read is not None:
            self.before_read()
        return self.written

    def data(self) -> bytes:
        """All that was written, in one piece."""
        return b"".join(self.out)

    def write(self, data: bytes) -> None:
        assert not self.closed, "a write after the transport was closed"
        self.written.append(data)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True
        self.aborted = True

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        # The end of what this side sends (a lingering close): nothing is written after it.
        self.closed = True
        self.eof_written = True

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        return None

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.peer if name == "peername" else default

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def is_reading(self) -> bool:
        return self.reading
