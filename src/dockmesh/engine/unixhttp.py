"""Plain HTTP/1.1 GETs to an engine's unix socket, for the reads a snapshot makes by the
hundred.

A snapshot inspects every container. Through docker-py each inspect costs about 2.5 ms of
the client's CPU (requests' session machinery, proxy look-ups through the whole environment
on every call), which at 500 containers was most of a resync; `http.client` on a kept-alive
socket costs a tenth of that. One connection per thread: the caller's pool of workers each
keeps its own for the length of the snapshot.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import threading
import time
import weakref
from typing import Any

from dockmesh.errors import EngineError


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        # A unix socket whose backlog is full refuses a connect with a timeout at once
        # (EAGAIN), where TCP would wait: wait here, within the timeout.
        deadline = time.monotonic() + (self.timeout if self.timeout is not None else 30.0)
        while True:
            try:
                sock.connect(self._path)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    sock.close()
                    raise
                time.sleep(0.002)
            except OSError:
                sock.close()
                raise
        self.sock = sock


class UnixGets:
    """`get_json(path)` from any thread: the decoded JSON, or None for a 404. Raises OSError
    or `http.client.HTTPException` when the engine does not answer, EngineError carrying the
    engine's reason for another status. `close()` closes every connection made."""

    def __init__(self, socket_path: str, timeout: float = 30.0) -> None:
        self._socket_path = socket_path
        self._timeout = timeout
        self._local = threading.local()
        # Weakly: a long-lived instance is used by threads that come and go, and a thread's
        # connection goes with it; `close()` closes those still open.
        self._conns: weakref.WeakSet[_UnixConnection] = weakref.WeakSet()
        self._lock = threading.Lock()

    def _conn(self) -> _UnixConnection:
        conn: _UnixConnection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = _UnixConnection(self._socket_path, self._timeout)
            self._local.conn = conn
            with self._lock:
                self._conns.add(conn)
        return conn

    def get(self, path: str) -> tuple[int, bytes]:
        """The status and body of `GET path`; OSError or `http.client.HTTPException` when the
        engine does not answer."""
        conn = self._conn()
        for attempt in (1, 2):
            reused = conn.sock is not None
            try:
                conn.request("GET", path, headers={"Accept": "application/json"})
                resp = conn.getresponse()
                return resp.status, resp.read()
            except (OSError, http.client.HTTPException) as e:
                conn.close()  # the next call on this thread connects afresh
                # A kept-alive connection the engine closed meanwhile (it restarted): a GET
                # is asked once more, on a new connection; anything else is the engine's state.
                stale = isinstance(
                    e, (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError)
                )
                if not (reused and stale and attempt == 1):
                    raise
        raise AssertionError("unreachable")  # the second attempt returns or raises

    def get_json(self, path: str) -> Any:
        status, body = self.get(path)
        if status == 404:
            return None
        if status != 200:
            text = body[:300].decode("utf-8", "replace")
            with contextlib.suppress(ValueError, AttributeError):  # the engine's own reason
                text = str(json.loads(body).get("message", text))
            raise EngineError(" ".join(text.split()) or f"status {status}")
        return json.loads(body)

    def close(self) -> None:
        with self._lock:
            conns = list(self._conns)
            self._conns = weakref.WeakSet()
        for c in conns:
            c.close()
