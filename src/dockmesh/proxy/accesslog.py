"""The access log: a line per request (time, client, method, path, status, bytes, duration,
upstream, route) in the common or the JSON format, to a file or stdout (`-`).

The event loop never waits on the disk: lines are kept in a buffer, which a writer thread
takes every `FLUSH_S` (or once it holds `FLUSH_BYTES`) and writes with one `write` call, so
lines from several workers appending to one file never interleave. While the writer is busy
(a slow disk, a stdout nobody reads) the buffer grows to `MAX_BUFFER_BYTES` at most; past that
a line is dropped and counted (`dropped`, exported as a metric), never waited for. `sample`
(0 < rate <= 1) keeps that share of the lines of successful requests, deterministically (an
accumulator, not a coin): 5xx responses are always kept. `reopen()` (SIGHUP, SIGUSR1) has
the writer close and open the file again, for logrotate.

`format_common` and `format_json` are pure; `AccessLog` holds the buffer and the thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import threading
import time
from dataclasses import dataclass

from dockmesh.proxy.config import AccessLogSpec

FLUSH_S = 0.25
FLUSH_BYTES = 64 * 1024
MAX_BUFFER_BYTES = 4 * 1024 * 1024


@dataclass
class Entry:
    """One request as the log sees it."""

    when: float  # Unix time of the response's end
    client: str
    method: str
    target: str
    minor: int  # HTTP/1.<minor>
    status: int
    bytes: int  # of the response body sent
    duration_s: float
    upstream: str  # "-" when none answered
    route: str  # "-" when no route matched
    protocol: str = ""  # "HTTP/2.0" for a stream; "": HTTP/1.<minor>


_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def clf_time(when: float) -> str:
    """`10/Oct/2000:13:55:36 +0000` (UTC)."""
    t = time.gmtime(when)
    return (
        f"{t.tm_mday:02d}/{_MONTHS[t.tm_mon - 1]}/{t.tm_year}:"
        f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} +0000"
    )


def _quoted(text: str) -> str:
    """`text` safe inside the common format's double quotes: no quote, backslash or control
    character left as it is (a client must not forge a line)."""
    if text.isprintable() and '"' not in text and "\\" not in text:
        return text
    return "".join(c if c.isprintable() and c not in '"\\' else f"\\x{ord(c):02x}" for c in text)


def format_common(e: Entry, stamp: str | None = None) -> str:
    """The Common Log Format, then the route, the upstream and the duration (as Traefik's
    common format adds them): `client - - [time] "METHOD path HTTP/1.1" status bytes "route"
    "upstream" 3ms`. `stamp`: the time already formatted (`clf_time`)."""
    return (
        f"{e.client} - - [{stamp or clf_time(e.when)}] "
        f'"{_quoted(e.method)} {_quoted(e.target)} {e.protocol or f"HTTP/1.{e.minor}"}" '
        f"{e.status} "
        f'{e.bytes if e.bytes else "-"} "{_quoted(e.route)}" "{_quoted(e.upstream)}" '
        f"{round(e.duration_s * 1000)}ms\n"
    )


def format_json(e: Entry) -> str:
    t = time.gmtime(e.when)
    ms = int((e.when % 1) * 1000)
    iso = time.strftime("%Y-%m-%dT%H:%M:%S", t) + f".{ms:03d}Z"
    doc = {
        "time": iso,
        "client": e.client,
        "method": e.method,
        "path": e.target,
        "protocol": e.protocol or f"HTTP/1.{e.minor}",
        "status": e.status,
        "bytes": e.bytes,
        "duration_ms": round(e.duration_s * 1000, 3),
        "upstream": e.upstream,
        "route": e.route,
    }
    return json.dumps(doc, separators=(",", ":")) + "\n"


class Sampler:
    """Keeps `rate` of the lines offered, evenly: an accumulator, not a coin (pure)."""

    __slots__ = ("acc", "rate")

    def __init__(self, rate: float) -> None:
        if not 0 < rate <= 1:
            raise ValueError("a sample rate is > 0 and <= 1")
        self.rate = rate
        self.acc = 0.0

    def keep(self) -> bool:
        if self.rate >= 1.0:
            return True
        self.acc += self.rate
        if self.acc >= 1.0:
            self.acc -= 1.0
            return True
        return False


class AccessLog:
    """The buffer and its writer thread (see the module's docstring)."""

    def __init__(self, spec: AccessLogSpec, loop: asyncio.AbstractEventLoop) -> None:
        self.spec = spec
        self.loop = loop
        self.json = spec.format == "json"
        self.sampler = Sampler(spec.sample)
        self.buf: list[str] = []
        self.buffered = 0  # characters in buf
        self.written = 0
        self.dropped = 0  # by the loop: the buffer was full
        self.failed = 0  # by the writer: the write failed
        self.sampled_out = 0
        self._stamp_s = -1
        self._stamp = ""
        self._fd = -1
        self._reopen = False
        self._closed = False
        self._busy = False  # the writer holds a batch
        self._wake = threading.Condition()
        self._batch: str | None = None
        self._open()  # at start-up: an unusable path is an error now, not a lost log
        self._thread = threading.Thread(target=self._writer, name="access-log", daemon=True)
        self._thread.start()
        self._timer: asyncio.TimerHandle | None = loop.call_later(FLUSH_S, self._tick)

    # --- the loop's side ----------------------------------------------------------------------

    def wants(self, status: int) -> bool:
        """Whether the line of a response with `status` is to be kept (asked before the line
        is made: a line sampled out or dropped costs no formatting)."""
        if status < 500 and not self.sampler.keep():
            self.sampled_out += 1
            return False
        if self.buffered >= MAX_BUFFER_BYTES:
            self.dropped += 1
            return False
        return True

    def log(self, e: Entry) -> None:
        """The line of `e`, which `wants` kept."""
        if self.json:
            line = format_json(e)
        else:
            sec = int(e.when)
            if sec != self._stamp_s:
                self._stamp_s = sec
                self._stamp = clf_time(e.when)
            line = format_common(e, self._stamp)
        self.buf.append(line)
        self.buffered += len(line)
        if self.buffered >= FLUSH_BYTES:
            self.flush()

    def flush(self) -> None:
        """Hands the buffer to the writer, unless it is still writing the last batch (then
        the buffer keeps growing, up to its bound)."""
        if not self.buf or self._busy:
            return
        batch = "".join(self.buf)
        self.buf = []
        self.buffered = 0
        with self._wake:
            self._busy = True
            self._batch = batch
            self._wake.notify()

    def _tick(self) -> None:
        self.flush()
        if not self._closed:
            self._timer = self.loop.call_later(FLUSH_S, self._tick)

    def reopen(self) -> None:
        """The file is opened again before the next write (after logrotate moved it)."""
        with self._wake:
            self._reopen = True
            self._wake.notify()

    def close(self, timeout_s: float = 2.0) -> None:
        """Writes what is buffered (waiting at most `timeout_s`) and stops the writer."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        deadline = time.monotonic() + timeout_s
        while self._busy and time.monotonic() < deadline:
            time.sleep(0.005)
        self.flush()
        with self._wake:
            self._closed = True
            self._wake.notify()
        self._thread.join(max(0.0, deadline - time.monotonic()))

    # --- the writer thread ------------------------------------------------------------------

    def _open(self) -> None:
        if self.spec.path == "-":
            self._fd = 1
            return
        fd = os.open(self.spec.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        old, self._fd = self._fd, fd
        if old > 2:
            os.close(old)

    def _writer(self) -> None:
        while True:
            with self._wake:
                while self._batch is None and not self._reopen and not self._closed:
                    self._wake.wait()
                batch, self._batch = self._batch, None
                reopen, self._reopen = self._reopen, False
                closed = self._closed
            if reopen and self.spec.path != "-":
                with contextlib.suppress(OSError):  # the old file stays in use then
                    self._open()
            if batch is not None:
                data = batch.encode("utf-8", "replace")
                n = batch.count("\n")
                try:
                    view = memoryview(data)
                    while view:
                        view = view[os.write(self._fd, view) :]
                    self.written += n
                except OSError:
                    self.failed += n
                self._busy = False
            if closed and self._batch is None:
                if self._fd > 2:
                    os.close(self._fd)
                self._fd = -1
                return


def open_access_log(spec: AccessLogSpec, loop: asyncio.AbstractEventLoop) -> AccessLog:
    """The log `spec` asks for; OSError when its file cannot be opened."""
    return AccessLog(spec, loop)
