"""HTTP/2's side of the proxy, the pure part: a stream's header list as the HTTP/1.1 head the
proxy's decisions read (routing, forwarded fields, hop-by-hop cuts, path normalisation: all
of `http1`), an HTTP/1.1 head back as a header list, a chunked body decoded, and the bound on
streams a client resets (rapid reset). Bytes and times in, values out.

A stream's request is written as an HTTP/1.1 head and read by `http1.parse_request_head`,
the reader every HTTP/1.1 request meets: what it refuses is refused for HTTP/2 too, and what
it normalises is normalised the same way. The head then gets the same edits
(`http1.edit_request_head`); to an HTTP/2 upstream the edited head goes back to a header list.
"""

from __future__ import annotations

from dockmesh.proxy import http1

# Connection-specific fields (RFC 9113 8.2.2), never in an HTTP/2 message: cut from what an
# HTTP/1.1 upstream answers.
_CONNECTION_SPECIFIC = frozenset(
    (
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"transfer-encoding",
        b"upgrade",
        b"te",
    )
)
_FORBIDDEN_IN_VALUE = (b"\r", b"\n", b"\x00")


class StreamRefused(ValueError):
    """A stream's request the proxy cannot carry: answered with `status`."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def request_head(headers: list[tuple[bytes, bytes]], end_stream: bool) -> tuple[bytes, bool]:
    """The HTTP/1.1 head (CRLF CRLF included) of a stream's request header list, and whether
    the client asked for trailers (`te: trailers`, which gRPC sends). A request with a body
    and no Content-Length says `Transfer-Encoding: chunked` (its body is sent so to an
    HTTP/1.1 upstream); `end_stream` says it has none."""
    method = path = authority = None
    lines: list[bytes] = []
    cookies: list[bytes] = []
    host = None
    length = False
    trailers = False
    for name, value in headers:
        if any(c in value for c in _FORBIDDEN_IN_VALUE) or any(
            c in name for c in _FORBIDDEN_IN_VALUE
        ):
            raise StreamRefused("a field holds CR, LF or NUL")
        if name[:1] == b":":
            if name == b":method":
                method = value
            elif name == b":path":
                path = value
            elif name == b":authority":
                authority = value
            elif name not in (b":scheme", b":protocol"):
                raise StreamRefused(f"unknown pseudo-header {name!r}")
            continue
        if name == b"host":
            host = value
            continue
        if name == b"cookie":
            # Split into crumbs in HTTP/2 (RFC 9113 8.2.3), one field in HTTP/1.1.
            cookies.append(value)
            continue
        if name == b"te":
            trailers = value.strip().lower() == b"trailers"
            continue
        if name in _CONNECTION_SPECIFIC:
            raise StreamRefused(f"connection-specific field {name.decode(errors='replace')}")
        if name == b"content-length":
            length = True
        lines.append(name + b": " + value + b"\r\n")
    if method is None or path is None:
        raise StreamRefused("a request needs :method and :path")
    if method == b"CONNECT":
        raise StreamRefused("CONNECT is not proxied over HTTP/2", 501)
    if path[:1] != b"/" and path != b"*":
        # Origin-form only, or `*` (RFC 9113 8.3.1; read as HTTP/1.1's: OPTIONS only): an
        # absolute URI would be routed by its host, not by :authority.
        raise StreamRefused("bad request target")
    authority = authority if authority is not None else host
    out = [method, b" ", path, b" HTTP/1.1\r\n"]
    if authority is not None:
        out += [b"Host: ", authority, b"\r\n"]
    if cookies:
        out += [b"Cookie: ", b"; ".join(cookies), b"\r\n"]
    out += lines
    if not end_stream and not length:
        out.append(b"Transfer-Encoding: chunked\r\n")
    out.append(b"\r\n")
    return b"".join(out), trailers


def content_length(headers: list[tuple[bytes, bytes]]) -> int | None:
    """The content-length a stream's request header list declares, or None (none, or one
    `h2` would have refused: it checks the value's form and that copies agree)."""
    for name, value in headers:
        if name == b"content-length":
            return int(value) if value.isdigit() else None
    return None


def _fields(head: bytes) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    """A head's first line and its fields (names lower-case, values trimmed)."""
    lines = head.split(b"\r\n")
    fields: list[tuple[bytes, bytes]] = []
    for line in lines[1:]:
        if not line:
            continue
        name, _, value = line.partition(b":")
        fields.append((name.strip().lower(), value.strip(b" \t")))
    return lines[0], fields


def _connection_tokens(fields: list[tuple[bytes, bytes]]) -> set[bytes]:
    out: set[bytes] = set()
    for name, value in fields:
        if name == b"connection":
            out.update(t.strip().lower() for t in value.split(b",") if t.strip())
    return out


def upstream_h2_headers(
    head: bytes, trailers: bool, scheme: bytes = b"http"
) -> list[tuple[bytes, bytes]]:
    """The header list of an edited HTTP/1.1 request head (`http1.edit_request_head`'s), for
    an HTTP/2 upstream: its request line as pseudo-headers, Host as :authority, the
    connection-specific fields cut (Transfer-Encoding: chunked was this module's), and
    `te: trailers` when the client asked for trailers."""
    first, fields = _fields(head)
    method, _, rest = first.partition(b" ")
    target = rest.rpartition(b" ")[0]
    out: list[tuple[bytes, bytes]] = [(b":method", method), (b":scheme", scheme)]
    authority = next((v for n, v in fields if n == b"host"), None)
    if authority is not None:
        out.append((b":authority", authority))
    out.append((b":path", target))
    drop = _CONNECTION_SPECIFIC | _connection_tokens(fields) | {b"host"}
    out += [(n, v) for n, v in fields if n not in drop]
    if trailers:
        out.append((b"te", b"trailers"))
    return out


def response_headers(head: bytes) -> list[tuple[bytes, bytes]]:
    """An HTTP/1.1 response head as an HTTP/2 header list: :status, then its fields but the
    connection-specific ones (and those its Connection field names)."""
    first, fields = _fields(head)
    status = first.split(b" ", 2)[1]
    drop = _CONNECTION_SPECIFIC | _connection_tokens(fields)
    return [(b":status", status), *((n, v) for n, v in fields if n not in drop)]


def chunked(data: bytes) -> bytes:
    """A piece of a request body as one chunk (nothing for no bytes)."""
    return b"%x\r\n%b\r\n" % (len(data), data) if data else b""


LAST_CHUNK = b"0\r\n\r\n"


class ChunkDecoder:
    """A chunked body's bytes in, its data out (`feed` returns the data in `data`; `done`
    once the last chunk and the trailers were read; `rest` what followed). Framing errors
    raise `http1.ProtocolError` (the reader checks the same framing)."""

    __slots__ = ("_reader", "done", "rest")

    def __init__(self) -> None:
        self._reader = http1.ChunkedReader()
        self.done = False
        self.rest = b""

    def feed(self, data: bytes) -> bytes:
        """The body's data in `data` (the chunks' framing cut)."""
        r = self._reader
        out: list[bytes] = []
        pos = 0
        n = len(data)
        while pos < n and not r.done:
            if r._state == r.DATA:
                take = min(r._remaining, n - pos)
                out.append(data[pos : pos + take])
                r.feed(data[pos : pos + take])
                pos += take
            else:
                # The framing: a line at a time (the reader keeps a partial one), so that
                # the data after a size line is seen here.
                i = data.find(b"\n", pos)
                end = n if i < 0 else i + 1
                r.feed(data[pos:end])
                pos = end
        if r.done:
            self.done = True
            self.rest = data[pos:]
        return b"".join(out)


class ResetBudget:
    """How many streams a client may reset (RST_STREAM, or streams the proxy refused) before
    its connection is ended with GOAWAY (ENHANCE_YOUR_CALM): a token bucket of `burst`
    refilled at `per_s`. Rapid reset (CVE-2023-44487) opens and cancels streams faster than
    any client that means to read answers does; each costs the proxy the start of a request
    while holding no concurrency slot. Time is given."""

    __slots__ = ("burst", "last", "per_s", "tokens")

    def __init__(self, burst: float = 200.0, per_s: float = 100.0, now: float = 0.0) -> None:
        self.burst = burst
        self.per_s = per_s
        self.tokens = burst
        self.last = now

    def spend(self, now: float) -> bool:
        """One reset at `now`: False once the client has spent the budget."""
        if now > self.last:
            self.tokens = min(self.burst, self.tokens + (now - self.last) * self.per_s)
            self.last = now
        self.tokens -= 1.0
        return self.tokens >= 0.0
