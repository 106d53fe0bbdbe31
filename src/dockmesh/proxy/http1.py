r"""HTTP/1.1 message heads and body framing for a proxy, sans-IO: bytes in, decisions and edited
bytes out. Nothing here touches a socket or a clock.

Theory of operation
-------------------
A proxy must agree with *every* server behind it on where each message ends, or an attacker
can hide a second request inside the first (request smuggling). So this reader is strict where
RFC 9112 allows leniency, and the proxy forwards exactly the bytes this reader accepted:

- a head ends at the first CRLF CRLF; a bare LF or CR anywhere in it, a line folded onto the
  next (obs-fold), whitespace between a field name and its colon, a name that is not a token,
  or a control character in a value is an error (400);
- the request line is `METHOD SP TARGET SP HTTP/1.x` with single spaces and a target of
  visible ASCII; the target is the one thing forwarded otherwise than it came: made
  origin-form (an absolute-form's authority replaces Host) with its path normalised
  (`paths`), so the upstream sees exactly what was routed;
- Content-Length is digits only; several Content-Length fields are an error unless equal;
- Transfer-Encoding is accepted only as exactly one field whose value is `chunked`; any other
  coding is an error (501 would be kinder; 400 is safer), and Transfer-Encoding together with
  Content-Length is an error (the classic CL.TE / TE.CL smuggling);
- a chunked body is read with `ChunkedReader`: hex sizes below 2**52 without sign, spaces or
  `0x`, extensions with no CR or LF, exactly CRLF after each chunk, trailer fields validated
  as header fields. Its raw bytes are forwarded unchanged, so the next hop sees the very
  framing checked here.

Heads are not rebuilt field by field: one regular expression validates the whole field block
and another finds the few fields a proxy acts on (hop-by-hop fields, framing, Host,
X-Forwarded-*, X-Request-Id). Editing cuts those spans out of the raw bytes and appends new
lines, which keeps per-request Python work small whatever the number of headers.
"""

from __future__ import annotations

import re

from dockmesh.proxy import paths

MAX_HEAD_BYTES = 64 * 1024
MAX_CHUNK_LINE = 4096

_TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
# Field lines: each a token, a colon, and a value of visible characters, spaces, tabs and
# obs-text. No CR, LF or NUL inside a line; no space before the colon; no folding.
_FIELDS = re.compile(rb"(?:" + _TOKEN + rb":[\t\x20-\x7e\x80-\xff]*\r\n)*")
# The fields a proxy acts on, found in a lower-cased copy of the head (same offsets): one
# regular expression without IGNORECASE, which is several times faster than with it.
_INTERESTING = re.compile(
    rb"\n(host|content-length|transfer-encoding|connection|keep-alive|proxy-connection|te|"
    rb"trailer|upgrade|expect|x-forwarded-for|x-request-id|proxy-authenticate|"
    rb"proxy-authorization|forwarded|x[-_]forwarded[-_][-_.0-9a-z]*|x[-_]real[-_]ip):"
)
_RESPONSE_FIELDS = re.compile(
    rb"\n(content-length|transfer-encoding|connection|keep-alive|proxy-connection|te|trailer|"
    rb"upgrade|proxy-authenticate):"
)
_OWS = b" \t"


# Hop-by-hop fields (RFC 9110 7.6.1) plus the legacy Proxy-Connection.
HOP_BY_HOP = frozenset(
    (
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"proxy-authenticate",
        b"proxy-authorization",
    )
)
_CHUNK_SIZE = re.compile(rb"([0-9A-Fa-f]{1,16})(;[\t\x20-\x7e\x80-\xff]*)?")
_DIGITS = re.compile(rb"[0-9]{1,18}")


class ProtocolError(Exception):
    """The peer broke HTTP/1.1: answer `status` (when it is the client) and close."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


# A whole head in one regular expression: the start line, every field line, the empty line.
# One C-speed match both validates the head and finds its end; only when it fails is the
# head looked at again, to tell "incomplete" from "malformed".
_FIELD_LINES = rb"(?:" + _TOKEN + rb":[\t\x20-\x7e\x80-\xff]*\r\n)*\r\n"
_REQUEST = re.compile(rb"(" + _TOKEN + rb") ([\x21-\x7e]+) HTTP/1\.([01])\r\n" + _FIELD_LINES)
_RESPONSE = re.compile(
    rb"HTTP/1\.([01]) ([0-9]{3})(?: [\t\x20-\x7e\x80-\xff]*)?\r\n" + _FIELD_LINES
)
# What the request reader does with each field it looks at.
_HOST, _CL, _TE, _CONNECTION, _UPGRADE, _XFF, _RID, _KEEP, _FWD, _CUT, _CLAIM, _XFP, _XFH = range(
    13
)
_REQUEST_ACTIONS = {
    b"host": _HOST,
    b"content-length": _CL,
    b"transfer-encoding": _TE,
    b"connection": _CONNECTION,
    b"upgrade": _UPGRADE,
    b"x-forwarded-for": _XFF,
    b"x-request-id": _RID,
    b"expect": _KEEP,
    b"forwarded": _FWD,
    # Set by the proxy itself, unless a trusted proxy in front said them (its client's
    # scheme and host: a TLS-terminating balancer's `https` must reach the app).
    b"x-forwarded-proto": _XFP,
    b"x-forwarded-host": _XFH,
}
# A URI scheme (RFC 3986 §3.1), as X-Forwarded-Proto carries one.
_SCHEME = re.compile(rb"[A-Za-z][A-Za-z0-9+.\-]{0,15}")
# An absolute-form target (RFC 9112 §3.2.2): its authority, then the rest of the target.
_ABSOLUTE = re.compile(rb"[Hh][Tt][Tt][Pp][Ss]?://([^/?#@]+)([/?][\x21-\x7e]*)?")


class RequestHead:
    """What the proxy needs of a request head (the head's bytes stay where they were)."""

    __slots__ = (
        "chunked",
        "claims",
        "connection_tokens",
        "content_length",
        "cut",
        "forwarded",
        "has_body",
        "head_len",
        "host",
        "host_replaced",
        "keep_alive",
        "method",
        "minor",
        "request_id",
        "retarget",
        "target",
        "upgrade",
        "xff",
        "xfh",
        "xfp",
    )

    def __init__(self, method: bytes, target: bytes, minor: int, head_len: int) -> None:
        self.method = method
        self.target = target
        self.minor = minor  # HTTP/1.<minor>
        self.head_len = head_len  # bytes of the head, the final CRLF CRLF included
        self.host: bytes | None = None
        self.content_length: int | None = None
        self.chunked = False
        self.has_body = False  # chunked, or a Content-Length above 0 (set by the reader)
        self.keep_alive = minor == 1
        self.upgrade: bytes | None = None
        self.xff: bytes | None = None
        self.request_id: bytes | None = None
        # (start, end) spans of lines to cut from the raw head when forwarding.
        self.cut: list[tuple[int, int]] | None = None
        # Field names listed in Connection (but close/keep-alive/upgrade): hop-by-hop too.
        self.connection_tokens: list[bytes] | None = None
        self.forwarded: bytes | None = None  # the client's Forwarded field(s)
        # The client's other forwarding claims (X-Real-IP, X-Forwarded-Port, -Prefix, ...,
        # and their underscore spellings, which CGI and WSGI servers read alike): its lines,
        # cut, and sent on only from a trusted proxy.
        self.claims: bytes | None = None
        # The client's X-Forwarded-Proto and -Host (the first of each): kept from a trusted
        # proxy only.
        self.xfp: bytes | None = None
        self.xfh: bytes | None = None
        # The target forwarded differs from the one received (normalised, or made origin-form
        # from an absolute-form whose authority then replaces Host): the request line is
        # rebuilt, and Host too when `host_replaced`.
        self.retarget = False
        self.host_replaced = False

    def __repr__(self) -> str:
        return f"RequestHead({self.method!r} {self.target!r} HTTP/1.{self.minor})"


class ResponseHead:
    __slots__ = (
        "chunked",
        "connection_tokens",
        "content_length",
        "cut",
        "head_len",
        "keep_alive",
        "minor",
        "status",
    )

    def __init__(self, status: int, minor: int, head_len: int) -> None:
        self.status = status
        self.minor = minor
        self.head_len = head_len
        self.content_length: int | None = None
        self.chunked = False
        self.keep_alive = minor == 1
        self.cut: list[tuple[int, int]] | None = None
        self.connection_tokens: list[bytes] | None = None


def _incomplete(buf: bytes | bytearray, max_head: int, what: str) -> None:
    """The head regex did not match: raise if the head is complete (so malformed) or too
    big, return if more bytes may complete it."""
    end = buf.find(b"\r\n\r\n", 0, max_head + 4)
    if end >= 0:
        raise ProtocolError(f"malformed {what}")
    if len(buf) > max_head:
        raise ProtocolError("request header fields too large", 431)
    # A head ended by a bare LF would never be found above: refuse it now rather than
    # wait for a timeout. (A bare LF inside a complete head fails the match.)
    if buf.count(b"\n") != buf.count(b"\r\n"):
        raise ProtocolError(f"bare LF in the {what}")


# Fields a Connection token never removes: the body's framing (cut from the head while the body
# goes on, the next hop would read the body as the next request: a smuggled one) and Host.
_NEVER_HOP = frozenset((b"content-length", b"transfer-encoding", b"host"))


def _connection_tokens(value: bytes) -> list[bytes]:
    tokens = (t.strip().lower() for t in value.split(b","))
    return [t for t in tokens if t and t not in _NEVER_HOP]


def parse_request_head(
    buf: bytes | bytearray, max_head: int = MAX_HEAD_BYTES
) -> RequestHead | None:
    """The request head at the start of `buf`, or None when it is not complete yet."""
    m = _REQUEST.match(buf, 0, max_head + 4)
    if m is None:
        _incomplete(buf, max_head, "request head")
        return None
    n = m.end()
    req = RequestHead(m.group(1), m.group(2), 1 if m.group(3) == b"1" else 0, n)
    te_seen = False
    host_span: tuple[int, int] | None = None
    connection: list[bytes] | None = None
    actions = _REQUEST_ACTIONS
    for f in _INTERESTING.finditer(buf[:n].lower(), m.end(3) + 1, n - 2):
        name = f.group(1)
        start = f.start() + 1
        end = buf.find(b"\r\n", f.end()) + 2
        value = bytes(buf[f.end() : end - 2]).strip(_OWS)
        action = actions.get(name, _CLAIM if name[0] == 120 else _CUT)  # 120: "x"
        if action == _HOST:
            if req.host is not None:
                raise ProtocolError("more than one Host")
            if _HOST_VALUE.fullmatch(value) is None:
                # RFC 9112 §3.2: a Host that is no authority gets 400 (as in HAProxy); sent
                # on, the upstream would route or build links with what we never checked.
                raise ProtocolError("bad Host")
            req.host = value
            host_span = (start, end)
            continue
        if action == _CL:
            if _DIGITS.fullmatch(value) is None:
                raise ProtocolError("bad Content-Length")
            length = int(value)
            if req.content_length is not None and req.content_length != length:
                raise ProtocolError("conflicting Content-Length")
            req.content_length = length
        elif action == _TE:
            if value.lower() != b"chunked" or te_seen:
                raise ProtocolError("unsupported Transfer-Encoding")
            te_seen = req.chunked = True
        # (Framing fields are cut and sent on in one canonical line: a duplicate, a tab or
        # an upper-case `CHUNKED` accepted here might not be by the next hop, which would
        # then frame the body otherwise.)
        if action in (_CL, _TE):
            if req.cut is None:
                req.cut = []
            req.cut.append((start, end))
            continue
        if action == _RID:
            req.request_id = value
            continue
        if action == _KEEP:
            continue
        if action == _CONNECTION:
            connection = _connection_tokens(value) + (connection or [])
        elif action == _UPGRADE:
            req.upgrade = value
        elif action == _XFF:
            req.xff = value if req.xff is None else req.xff + b", " + value
        elif action == _FWD:
            req.forwarded = value if req.forwarded is None else req.forwarded + b", " + value
        elif action == _CLAIM:
            req.claims = (req.claims or b"") + bytes(buf[start:end])
        elif action == _XFP and req.xfp is None and _SCHEME.fullmatch(value):
            req.xfp = value
        elif action == _XFH and req.xfh is None and value:
            req.xfh = value
        if req.cut is None:
            req.cut = []
        req.cut.append((start, end))
    if req.chunked and req.content_length is not None:
        raise ProtocolError("both Content-Length and Transfer-Encoding")
    if req.chunked and req.minor == 0:
        # Faulty framing (RFC 9112 §6.1): an HTTP/1.0 next hop may well read no body.
        raise ProtocolError("Transfer-Encoding in an HTTP/1.0 request")
    req.has_body = req.chunked or bool(req.content_length)
    if req.minor == 1 and req.host is None:
        raise ProtocolError("no Host")
    if connection is not None:
        if b"close" in connection:
            req.keep_alive = False
        elif b"keep-alive" in connection:
            req.keep_alive = True
        if req.upgrade is not None and b"upgrade" not in connection:
            req.upgrade = None  # an Upgrade not named in Connection is not an upgrade
        elif req.upgrade is not None and b"h2c" in _connection_tokens(req.upgrade):
            # HTTP/2 over the tunnel would carry any request to the upstream, never routed
            # (h2c smuggling): the request goes on as plain HTTP/1.1, as Envoy does.
            req.upgrade = None
        tokens = [t for t in connection if t not in (b"close", b"keep-alive", b"upgrade")]
        req.connection_tokens = tokens or None
    else:
        req.upgrade = None
    if req.method == b"CONNECT":
        raise ProtocolError("CONNECT is not proxied", 405)
    _settle_target(req, host_span)
    return req


def _settle_target(req: RequestHead, host_span: tuple[int, int] | None) -> None:
    """The target routed and forwarded: origin-form, its path normalised (`paths`). An
    absolute-form target's authority wins over Host (RFC 9112 §3.2.2), for routing and for
    the Host sent upstream, so routing and upstream agree on the virtual host."""
    target = req.target
    if target.startswith(b"/"):
        if not paths.is_normal(target):
            norm = paths.normalise_target(target)
            if norm is None:
                raise ProtocolError("bad request path")
            req.target = norm
            req.retarget = True
        return
    if target == b"*" and req.method == b"OPTIONS":
        return
    m = _ABSOLUTE.fullmatch(target)
    if m is None:
        raise ProtocolError("bad request target")
    rest = m.group(2) or b"/"
    norm = paths.normalise_target(rest if rest.startswith(b"/") else b"/" + rest)
    if norm is None:
        raise ProtocolError("bad request path")
    req.target = norm
    req.retarget = True
    req.host = m.group(1)
    req.host_replaced = True
    if host_span is not None:
        if req.cut is None:
            req.cut = []
        req.cut.append(host_span)


def parse_response_head(
    buf: bytes | bytearray, max_head: int = MAX_HEAD_BYTES
) -> ResponseHead | None:
    m = _RESPONSE.match(buf, 0, max_head + 4)
    if m is None:
        try:
            _incomplete(buf, max_head, "response head")
        except ProtocolError as e:
            raise ProtocolError(f"{e} from the upstream", 502) from None
        return None
    n = m.end()
    resp = ResponseHead(int(m.group(2)), 1 if m.group(1) == b"1" else 0, n)
    connection: list[bytes] | None = None
    for f in _RESPONSE_FIELDS.finditer(buf[:n].lower(), buf.find(b"\n"), n - 2):
        name = f.group(1)
        start = f.start() + 1
        end = buf.find(b"\r\n", f.end()) + 2
        value = bytes(buf[f.end() : end - 2]).strip(_OWS)
        if name == b"content-length":
            if _DIGITS.fullmatch(value) is None:
                raise ProtocolError("bad Content-Length from the upstream", 502)
            length = int(value)
            if resp.content_length is not None and resp.content_length != length:
                raise ProtocolError("conflicting Content-Length from the upstream", 502)
            resp.content_length = length
            continue
        if name == b"transfer-encoding":
            if value.lower() != b"chunked" or resp.chunked:
                raise ProtocolError("unsupported Transfer-Encoding from the upstream", 502)
            resp.chunked = True
            continue
        if name == b"connection":
            lowered = value.lower()
            # The usual values without building token lists.
            if lowered == b"keep-alive":
                resp.keep_alive = True
            elif lowered == b"close":
                resp.keep_alive = False
            else:
                connection = _connection_tokens(value) + (connection or [])
        elif resp.status == 101 and name == b"upgrade":
            continue
        if resp.cut is None:
            resp.cut = []
        resp.cut.append((start, end))
    if resp.chunked and resp.content_length is not None:
        raise ProtocolError("both Content-Length and Transfer-Encoding from the upstream", 502)
    if connection is not None:
        if b"close" in connection:
            resp.keep_alive = False
        elif b"keep-alive" in connection:
            resp.keep_alive = True
        tokens = [t for t in connection if t not in (b"close", b"keep-alive", b"upgrade")]
        resp.connection_tokens = tokens or None
    return resp


# --- the fast lane ---------------------------------------------------------------------------
# Most requests and responses have one shape: a complete head in one read, HTTP/1.1, no field
# that needs acting on but Host (requests) or Content-Length and `Connection: keep-alive`
# (responses). These functions recognise exactly that shape, checked by the same head
# expression as the general readers, and answer None for anything else — the general reader
# then decides. Returning None is never wrong; the tests hold that whatever they accept, the
# general reader reads the same way.
_RARE_REQUEST = re.compile(
    rb"\n(?:content-length|transfer-encoding|connection|keep-alive|proxy-|te:|trailer|"
    rb"upgrade|expect|x[-_]forwarded[-_]|x[-_]real[-_]ip|x-request-id|forwarded:)"
)
_RARE_RESPONSE = re.compile(rb"\n(?:transfer-encoding|keep-alive|proxy-|te:|trailer|upgrade)")


# A Host field's value (RFC 3986 authority without userinfo): an IP literal or a reg-name,
# then an optional port.
_HOST_VALUE = re.compile(rb"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._~!$&'()*+,;=%-]*)(?::[0-9]{0,5})?")


def quick_request(data: bytes) -> tuple[bytes, bytes, bytes] | None:
    """(method, target, host) when `data` is exactly one body-less HTTP/1.1 request head of
    the common shape; None otherwise."""
    if not data.endswith(b"\r\n\r\n"):
        return None
    m = _REQUEST.match(data)
    if m is None or m.end() != len(data) or m.group(3) != b"1":
        return None
    low = data.lower()
    if _RARE_REQUEST.search(low) is not None:
        return None
    i = low.find(b"\nhost:")
    if i < 0 or low.find(b"\nhost:", i + 6) >= 0:
        return None
    method = m.group(1)
    if method == b"CONNECT" or not paths.is_normal(m.group(2)):
        return None
    host = data[i + 6 : data.find(b"\r", i + 6)].strip(_OWS)
    if _HOST_VALUE.fullmatch(host) is None:
        return None
    return method, m.group(2), host


def quick_response(data: bytes) -> tuple[int, int, int, bytes] | None:
    """(status, head length, content length, head to send on) when `data` starts with an
    HTTP/1.1 response head of the common shape (a final status with a body of one
    Content-Length; at most `Connection: keep-alive`, which is cut); None otherwise."""
    m = _RESPONSE.match(data)
    if m is None or m.group(1) != b"1":
        return None
    n = m.end()
    low = data[:n].lower()
    if _RARE_RESPONSE.search(low) is not None:
        return None
    i = low.find(b"\ncontent-length:")
    if i < 0 or low.find(b"\ncontent-length:", i + 16) >= 0:
        return None
    value = data[i + 16 : low.find(b"\r", i)].strip(_OWS)
    if not value.isdigit() or len(value) > 18:
        return None
    head = data[:n]
    k = low.find(b"\nconnection:")
    if k >= 0:
        if low.find(b"\nconnection:", k + 12) >= 0:
            return None
        e = low.find(b"\r\n", k)
        if low[k + 12 : e].strip(_OWS) != b"keep-alive":
            return None
        head = data[: k + 1] + data[e + 2 : n]
    status = int(m.group(2))
    if status < 200 or status in (204, 304):
        return None
    return status, n, int(value), head


# Memos of the fast lane's verdicts, keyed by the exact head bytes: a client sends the same
# head again and again, and an upstream's response heads differ at most by their Date field
# once a second. A verdict is a pure function of the bytes, so a memo hit is exactly the
# reader's answer, for the cost of hashing the head. Bounded: cleared when full.
MEMO_SIZE = 512
REQUEST_MEMO: dict[bytes, RequestHead | None] = {}
RESPONSE_MEMO: dict[bytes, tuple[int, int, int, bytes] | None] = {}


def quick_request_head(data: bytes) -> RequestHead | None:
    """`quick_request(data)` as a RequestHead, remembered. The head is shared by every
    request with these bytes: read it, never change it."""
    try:
        return REQUEST_MEMO[data]
    except KeyError:
        pass
    q = quick_request(data)
    req = None
    if q is not None:
        req = RequestHead(q[0], q[1], 1, len(data))
        req.host = q[2]
    if len(data) <= 2048:
        if len(REQUEST_MEMO) >= MEMO_SIZE:
            REQUEST_MEMO.clear()
        REQUEST_MEMO[data] = req
    return req


def quick_response_memo(data: bytes) -> tuple[int, int, int, bytes] | None:
    """`quick_response(data)`, remembered by the head's bytes."""
    n = data.find(b"\r\n\r\n") + 4
    if n < 4 or n > 2048:
        return None if n < 4 else quick_response(data)
    head = data[:n]
    try:
        return RESPONSE_MEMO[head]
    except KeyError:
        pass
    q = quick_response(head)
    if len(RESPONSE_MEMO) >= MEMO_SIZE:
        RESPONSE_MEMO.clear()
    RESPONSE_MEMO[head] = q
    return q


def response_has_body(status: int, method: bytes) -> bool:
    return not (method == b"HEAD" or 100 <= status < 200 or status in (204, 304))


def _cut_named(head: bytes, start: int, end: int, names: list[bytes]) -> list[tuple[int, int]]:
    """Spans of the lines whose field name is one of `names` (from a Connection field)."""
    pattern = re.compile(
        rb"^(?:" + b"|".join(re.escape(n) for n in names) + rb"):[^\r]*\r\n",
        re.IGNORECASE | re.MULTILINE,
    )
    return [m.span() for m in pattern.finditer(head, start, end)]


def _without(head: bytes, cut: list[tuple[int, int]]) -> bytes:
    if not cut:
        return head
    parts = []
    pos = 0
    for a, b in sorted(cut):
        if a >= pos:
            parts.append(head[pos:a])
            pos = b
    parts.append(head[pos:])
    return b"".join(parts)


def edit_request_head(
    head: bytes,
    req: RequestHead,
    added: bytes,
) -> bytes:
    """The head to send upstream: `head` (exactly `req.head_len` bytes) without its hop-by-hop
    fields and those the proxy replaces, with `added` (complete CRLF-ended lines) appended.
    Upgrade requests keep `Connection: upgrade` and `Upgrade`."""
    cut = req.cut or []
    if req.connection_tokens:
        cut = cut + _cut_named(head, head.find(b"\r\n") + 2, len(head) - 2, req.connection_tokens)
    body = _without(head, cut) if cut else head
    if req.retarget:
        line = b"%s %s HTTP/1.%d" % (req.method, req.target, req.minor)
        body = line + body[body.find(b"\r\n") :]
        if req.host_replaced and req.host is not None:
            added = b"Host: " + req.host + b"\r\n" + added
    if req.upgrade is not None:
        added = b"Connection: upgrade\r\nUpgrade: " + req.upgrade + b"\r\n" + added
    if req.chunked:
        added = b"Transfer-Encoding: chunked\r\n" + added
    elif req.content_length is not None:
        added = b"Content-Length: %d\r\n" % req.content_length + added
    return body[:-2] + added + b"\r\n"


def edit_response_head(head: bytes, resp: ResponseHead, added: bytes) -> bytes:
    cut = resp.cut or []
    if resp.connection_tokens:
        cut = cut + _cut_named(head, head.find(b"\r\n") + 2, len(head) - 2, resp.connection_tokens)
    body = _without(head, cut) if cut else head
    if not added:
        return body
    return body[:-2] + added + b"\r\n"


def request_forwarded_fields(
    req: RequestHead,
    client_ip: bytes,
    request_id: bytes,
    trusted: bool = False,
    proto: bytes = b"http",
) -> bytes:
    """X-Forwarded-For, -Proto (`proto`: the client's scheme) and -Host (set), X-Request-Id
    (kept or made). What the client sent in X-Forwarded-For, Forwarded, X-Real-IP and the
    other X-Forwarded-* is anyone's claim: replaced or dropped, unless the peer is a trusted
    proxy (`trusted`), whose X-Forwarded-For is appended to and whose Forwarded,
    X-Forwarded-Proto, -Host and other claims are kept (its client's scheme and host are what
    the app must see)."""
    xff = client_ip if req.xff is None or not trusted else req.xff + b", " + client_ip
    if trusted and req.xfp is not None:
        proto = req.xfp
    out = b"X-Forwarded-For: " + xff + b"\r\nX-Forwarded-Proto: " + proto + b"\r\n"
    if trusted and req.forwarded is not None:
        out += b"Forwarded: " + req.forwarded + b"\r\n"
    if trusted and req.claims is not None:
        out += req.claims
    if trusted and req.xfh is not None:
        out += b"X-Forwarded-Host: " + req.xfh + b"\r\n"
    elif req.host is not None:
        out += b"X-Forwarded-Host: " + req.host + b"\r\n"
    if req.request_id is None:
        out += b"X-Request-Id: " + request_id + b"\r\n"
    return out


class ChunkedReader:
    """Finds the end of a chunked body in the raw bytes, checking its framing as it goes.

    `feed(data, start)` looks at `data[start:]` and returns how many of those bytes belong to
    the body; `done` turns True once the last chunk and its trailers have been read. The bytes
    themselves are the caller's to forward: nothing is copied but the (short) size lines.
    `size` adds up the sizes of the chunks announced so far (the body's length without its
    framing, known as soon as a size line is read, before its data); past `limit` (when not
    0) a size line raises ProtocolError with status 413, before the chunk's data."""

    __slots__ = ("_line", "_remaining", "_state", "done", "limit", "size")

    SIZE, DATA, DATA_END, TRAILER = 0, 1, 2, 3

    def __init__(self, limit: int = 0) -> None:
        self._state = self.SIZE
        self._remaining = 0
        self._line = b""
        self.done = False
        self.size = 0
        self.limit = limit

    def feed(self, data: bytes | bytearray | memoryview, start: int = 0) -> int:
        pos = start
        n = len(data)
        while pos < n and not self.done:
            state = self._state
            if state == self.DATA:
                take = min(self._remaining, n - pos)
                pos += take
                self._remaining -= take
                if self._remaining == 0:
                    self._state = self.DATA_END
                    self._line = b""
                continue
            # A line: the size line, the CRLF after data, or a trailer line.
            i = bytes(data[pos : min(n, pos + MAX_CHUNK_LINE)]).find(b"\n")
            if i < 0:
                self._line += bytes(data[pos:n])
                if len(self._line) > MAX_CHUNK_LINE:
                    raise ProtocolError("chunk line too long")
                pos = n
                break
            line = self._line + bytes(data[pos : pos + i + 1])
            pos += i + 1
            self._line = b""
            if len(line) > MAX_CHUNK_LINE or not line.endswith(b"\r\n"):
                raise ProtocolError("bad chunk framing")
            text = line[:-2]
            if b"\r" in text:
                raise ProtocolError("bare CR in chunk framing")
            if state == self.DATA_END:
                if text:
                    raise ProtocolError("chunk data longer than its size")
                self._state = self.SIZE
            elif state == self.SIZE:
                m = _CHUNK_SIZE.fullmatch(text)
                if m is None:
                    raise ProtocolError("bad chunk size")
                size = int(m.group(1), 16)
                if size >> 52:
                    # As HAProxy: no size a next hop keeping integers in doubles (JavaScript)
                    # would round, and so read a different end of the chunk from.
                    raise ProtocolError("chunk size too large")
                if size == 0:
                    self._state = self.TRAILER
                else:
                    self._remaining = size
                    self.size += size
                    if self.limit and self.size > self.limit:
                        raise ProtocolError(
                            f"the request body is larger than {self.limit} bytes", 413
                        )
                    self._state = self.DATA
            else:  # TRAILER
                if not text:
                    self.done = True
                elif _FIELDS.fullmatch(line) is None:
                    raise ProtocolError("malformed trailer field")
        return pos - start


def simple_response(
    status: int, reason: str, message: str, *, close: bool = True, extra: str = ""
) -> bytes:
    """A short response made by the proxy itself (400, 502, 503, 504…) saying why; `extra`:
    further field lines (each ending with CRLF)."""
    body = (message + "\n").encode()
    connection = "Connection: close\r\n" if close else ""
    head = (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain\r\n"
        f"Content-Length: {len(body)}\r\n{extra}{connection}\r\n"
    )
    return head.encode() + body


REASONS = {
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    413: "Content Too Large",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    501: "Not Implemented",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}
