"""Named middlewares: what the routes file's `middlewares:` section declares and a route lists
(`middlewares: [a, b]`), compiled into the route's `Chain`. Pure: specs in, decisions and
edited bytes out; the time is given, the server carries the decisions out.

Kinds (each middleware is a mapping with exactly one of these keys):

- `headers`: `request:` / `response:` edits, each with `remove: [NAME]`, `set: {NAME: VALUE}`
  (replaces every field of that name) and `add: {NAME: VALUE}` (one more field), applied in
  that order, after the proxy's own edits (X-Forwarded-*, X-Request-Id). Framing and
  hop-by-hop fields (Content-Length, Transfer-Encoding, Connection, ...) cannot be edited:
  that would make the proxy and its peer disagree where a message ends.
- `rate_limit`: `rate` requests per `period` (default 1s), bursts of `burst` (default: the
  rate, at least 1), `per: client` (default; IPv6 clients by their /64) or `per: route`;
  `max_clients` buckets at most (default 10000, the least recently seen forgotten first).
  Over the limit: 429 with Retry-After, nothing forwarded. Per worker process.
- `max_body`: a size (`1048576`, `512k`, `10m`, `1g`): a larger Content-Length is answered
  413 before anything is forwarded; a chunked body is answered 413 as soon as its chunk sizes
  add up to more (what went before it has been forwarded: the upstream connection is closed).
- `compress`: `encodings` (default [br, gzip]; br only when the brotli package is installed),
  `min_size` (default 1024: a Content-Length below it is sent as it is), `types` (media types,
  `text/*` style wildcards; default text/*, JSON, JavaScript, XML, SVG), `level` (gzip 1-9,
  default 5). A response is compressed when the client accepts an encoding, the upstream sent
  none, its type matches, its Content-Length is at least `min_size` (or it has none: chunked,
  or until the connection closes), and the request is HTTP/1.1 (the result is sent chunked,
  streaming: a chunk out per read in, the compressor's window the only memory kept; an
  upstream's chunks are taken apart first, their trailers dropped). Vary: Accept-Encoding is added
  to every response of a compressible type; a strong ETag becomes weak; a response that says
  `Cache-Control: no-transform` is sent as it came.

A route's chain (`resolve_chain`) is made from the names it lists, in order; unknown names are
reported, not ignored. A route without middlewares has no chain and costs nothing more.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from dockmesh.model.durations import parse_duration_ns
from dockmesh.projectfile.problems import Path, Problem
from dockmesh.resilience.ratelimit import RateLimiter

try:  # pragma: no cover - depends on what is installed
    import brotli as _brotli
except ImportError:  # pragma: no cover
    _brotli = None

HAVE_BROTLI = _brotli is not None
KINDS = ("headers", "rate_limit", "max_body", "compress")
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_VALUE = re.compile(rb"[\t\x20-\x7e\x80-\xff]*")
# Fields whose edit would change where a message ends, or that are the connection's own.
FIXED_FIELDS = frozenset(
    (
        "content-length",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "upgrade",
    )
)
DEFAULT_TYPES = (
    "text/*",
    "application/json",
    "application/javascript",
    "application/xml",
    "application/xhtml+xml",
    "application/rss+xml",
    "application/atom+xml",
    "application/wasm",
    "image/svg+xml",
)
# Streams a client reads as they come: compressing would hold their events back.
NEVER_TYPES = ("text/event-stream",)


# --- specs --------------------------------------------------------------------------------


@dataclass(frozen=True)
class HeaderEdits:
    remove: tuple[bytes, ...] = ()  # lower-case names
    set: tuple[tuple[bytes, bytes], ...] = ()
    add: tuple[tuple[bytes, bytes], ...] = ()

    def __bool__(self) -> bool:
        return bool(self.remove or self.set or self.add)

    def then(self, other: HeaderEdits) -> HeaderEdits:
        """These edits followed by `other`'s, as one (a later set wins over an earlier add)."""
        if not self:
            return other
        if not other:
            return self
        gone = set(other.remove) | {n.lower() for n, _ in other.set}
        return HeaderEdits(
            remove=self.remove + tuple(n for n in other.remove if n not in self.remove),
            set=tuple(p for p in self.set if p[0].lower() not in gone) + other.set,
            add=tuple(p for p in self.add if p[0].lower() not in gone) + other.add,
        )


@dataclass(frozen=True)
class HeadersSpec:
    request: HeaderEdits = HeaderEdits()
    response: HeaderEdits = HeaderEdits()


@dataclass(frozen=True)
class RateLimitSpec:
    rate: float  # tokens a second
    burst: int
    per: str = "client"  # or "route"
    max_clients: int = 10_000


@dataclass(frozen=True)
class MaxBodySpec:
    limit: int


@dataclass(frozen=True)
class CompressSpec:
    encodings: tuple[str, ...] = ("br", "gzip")
    min_size: int = 1024
    types: tuple[str, ...] = DEFAULT_TYPES
    level: int = 5


MiddlewareSpec = HeadersSpec | RateLimitSpec | MaxBodySpec | CompressSpec


# --- parsing ------------------------------------------------------------------------------

_SIZE = re.compile(r"([0-9]+)\s*([kmg]i?b?|b)?", re.IGNORECASE)


def parse_size(value: object) -> int:
    """Bytes from `1048576`, `512k`, `10m`, `1g` (powers of 1024); ValueError saying why."""
    if isinstance(value, bool):
        raise ValueError("must be a size such as 1048576, 512k or 10m")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("must not be negative")
        return value
    m = _SIZE.fullmatch(str(value).strip())
    if m is None:
        raise ValueError(f"{value!r} is not a size: expected bytes or a number with k, m or g")
    unit = (m.group(2) or "b")[0].lower()
    return int(m.group(1)) * {"b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}[unit]


def parse_middlewares(data: object, problems: list[Problem]) -> dict[str, MiddlewareSpec]:
    """The `middlewares:` section: name → spec; every problem goes to `problems` with its
    path, the middlewares with problems are left out."""
    out: dict[str, MiddlewareSpec] = {}
    if data is None:
        return out
    if not isinstance(data, dict):
        problems.append(Problem(("middlewares",), "must be a mapping of names to middlewares"))
        return out
    for name, body in data.items():
        path: Path = ("middlewares", name)
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.\-]*", name):
            problems.append(Problem(path, "a middleware's name is letters, digits, _ . -"))
            continue
        if not isinstance(body, dict) or len(body) != 1:
            problems.append(Problem(path, f"must be a mapping with one of {', '.join(KINDS)}"))
            continue
        ((kind, conf),) = body.items()
        before = len(problems)
        spec: MiddlewareSpec | None = None
        if kind == "headers":
            spec = _parse_headers(conf, (*path, kind), problems)
        elif kind == "rate_limit":
            spec = _parse_rate_limit(conf, (*path, kind), problems)
        elif kind == "max_body":
            try:
                spec = MaxBodySpec(parse_size(conf))
            except ValueError as e:
                problems.append(Problem((*path, kind), str(e)))
        elif kind == "compress":
            spec = _parse_compress(conf, (*path, kind), problems)
        else:
            problems.append(Problem((*path, kind), f"unknown kind (expected {', '.join(KINDS)})"))
        if spec is not None and len(problems) == before:
            out[name] = spec
    return out


def _mapping(
    conf: object, path: Path, known: tuple[str, ...], problems: list[Problem]
) -> dict[str, Any]:
    if conf is None:
        return {}
    if not isinstance(conf, dict):
        problems.append(Problem(path, f"must be a mapping ({', '.join(known)})"))
        return {}
    for k in conf:
        if k not in known:
            problems.append(Problem((*path, k), f"unknown key (expected {', '.join(known)})"))
    return {k: v for k, v in conf.items() if k in known}


def _field_name(name: object, path: Path, problems: list[Problem]) -> bytes | None:
    if not isinstance(name, str) or not _TOKEN.fullmatch(name):
        problems.append(Problem(path, f"{name!r} is not a header field name"))
        return None
    if name.lower() in FIXED_FIELDS:
        problems.append(Problem(path, f"{name} frames the message or the connection: not editable"))
        return None
    return name.encode()


def _parse_edits(conf: object, path: Path, problems: list[Problem]) -> HeaderEdits:
    given = _mapping(conf, path, ("remove", "set", "add"), problems)
    remove: list[bytes] = []
    pairs: dict[str, list[tuple[bytes, bytes]]] = {"set": [], "add": []}
    names = given.get("remove") or []
    if not isinstance(names, list):
        problems.append(Problem((*path, "remove"), "must be a list of header names"))
        names = []
    for i, n in enumerate(names):
        b = _field_name(n, (*path, "remove", i), problems)
        if b is not None:
            remove.append(b.lower())
    for what in ("set", "add"):
        fields = given.get(what) or {}
        if not isinstance(fields, dict):
            problems.append(Problem((*path, what), "must be a mapping of header names to values"))
            continue
        for n, v in fields.items():
            b = _field_name(n, (*path, what, n), problems)
            text = "" if v is None else str(v).lower() if isinstance(v, bool) else str(v)
            try:
                value = text.encode("latin-1")
            except UnicodeEncodeError:
                value = b"\n"  # refused below
            if not _VALUE.fullmatch(value):
                problems.append(Problem((*path, what, n), "a value is one line of text"))
            elif b is not None:
                pairs[what].append((b, value.strip(b" \t")))
    return HeaderEdits(tuple(remove), tuple(pairs["set"]), tuple(pairs["add"]))


def _parse_headers(conf: object, path: Path, problems: list[Problem]) -> HeadersSpec:
    given = _mapping(conf, path, ("request", "response"), problems)
    return HeadersSpec(
        _parse_edits(given.get("request"), (*path, "request"), problems),
        _parse_edits(given.get("response"), (*path, "response"), problems),
    )


def _number(v: object) -> float | None:
    if isinstance(v, bool) or not isinstance(v, int | float) or v != v:
        return None
    return float(v)


def _parse_rate_limit(conf: object, path: Path, problems: list[Problem]) -> RateLimitSpec | None:
    given = _mapping(conf, path, ("rate", "period", "burst", "per", "max_clients"), problems)
    rate = _number(given.get("rate"))
    if rate is None or not 0 < rate <= 1e9:
        problems.append(Problem((*path, "rate"), "must be a number of requests > 0 (per period)"))
        return None
    period_s = 1.0
    if "period" in given:
        try:
            period_s = parse_duration_ns(given["period"]) / 1e9
        except ValueError as e:
            problems.append(Problem((*path, "period"), str(e)))
            return None
        if period_s <= 0:
            problems.append(Problem((*path, "period"), "must be longer than 0"))
            return None
    burst = given.get("burst", max(1, int(rate)))
    if isinstance(burst, bool) or not isinstance(burst, int) or not 1 <= burst <= 1_000_000_000:
        problems.append(Problem((*path, "burst"), "must be a whole number >= 1"))
        return None
    per = given.get("per", "client")
    if per not in ("client", "route"):
        problems.append(Problem((*path, "per"), "must be client or route"))
        return None
    max_clients = given.get("max_clients", 10_000)
    if isinstance(max_clients, bool) or not isinstance(max_clients, int) or max_clients < 1:
        problems.append(Problem((*path, "max_clients"), "must be a whole number >= 1"))
        return None
    return RateLimitSpec(rate / period_s, burst, per, max_clients)


def _parse_compress(conf: object, path: Path, problems: list[Problem]) -> CompressSpec | None:
    given = _mapping(conf, path, ("encodings", "min_size", "types", "level"), problems)
    spec = CompressSpec()
    encodings = given.get("encodings", list(spec.encodings))
    if not isinstance(encodings, list) or not encodings:
        problems.append(Problem((*path, "encodings"), "must be a list of br, gzip"))
        return None
    for i, e in enumerate(encodings):
        if e not in ("br", "gzip"):
            problems.append(Problem((*path, "encodings", i), f"{e!r}: expected br or gzip"))
    try:
        min_size = parse_size(given.get("min_size", spec.min_size))
    except ValueError as e:
        problems.append(Problem((*path, "min_size"), str(e)))
        return None
    types = given.get("types", list(spec.types))
    if not isinstance(types, list) or not types:
        problems.append(Problem((*path, "types"), "must be a list of media types (text/*)"))
        return None
    for i, t in enumerate(types):
        if not isinstance(t, str) or not re.fullmatch(r"[a-z0-9.+\-]+/(\*|[a-z0-9.+\-]+)", t):
            problems.append(Problem((*path, "types", i), f"{t!r} is not a media type"))
    level = given.get("level", spec.level)
    if isinstance(level, bool) or not isinstance(level, int) or not 1 <= level <= 9:
        problems.append(Problem((*path, "level"), "must be from 1 to 9"))
        return None
    return CompressSpec(tuple(dict.fromkeys(encodings)), min_size, tuple(types), level)


# --- header edits -------------------------------------------------------------------------


def edit_fields(head: bytes, edits: HeaderEdits) -> bytes:
    """`head` (a start line and fields, ending with an empty line) with `edits` applied: the
    fields named in `remove` or `set` gone, then `set`'s and `add`'s fields appended. Every
    other line is kept as it was, in its order."""
    gone = set(edits.remove)
    gone.update(n.lower() for n, _ in edits.set)
    lines = head[:-4].split(b"\r\n") if head.endswith(b"\r\n\r\n") else head.split(b"\r\n")
    kept = [lines[0]]
    if gone:
        for line in lines[1:]:
            if line.partition(b":")[0].rstrip(b" \t").lower() not in gone:
                kept.append(line)
    else:
        kept += lines[1:]
    kept += [n + b": " + v for n, v in edits.set]
    kept += [n + b": " + v for n, v in edits.add]
    return b"\r\n".join(kept) + b"\r\n\r\n"


def field_value(head: bytes, name: bytes) -> bytes | None:
    """The value of the first field `name` (lower-case) in `head`, or None."""
    m = re.search(rb"\r\n" + re.escape(name) + rb"[ \t]*:[ \t]*([^\r]*?)[ \t]*\r\n", head, re.I)
    return m.group(1) if m else None


# --- compression --------------------------------------------------------------------------


def choose_encoding(accept: bytes | None, offered: Sequence[str]) -> str | None:
    """The first of `offered` (the server's preference) that the Accept-Encoding value
    `accept` allows (q > 0, by name or by `*`), or None."""
    if not accept:
        return None
    q: dict[str, float] = {}
    for item in accept.decode("latin-1").split(","):
        name, _, params = item.partition(";")
        name = name.strip().lower()
        if not name:
            continue
        weight = 1.0
        for p in params.split(";"):
            k, _, v = p.partition("=")
            if k.strip().lower() == "q":
                try:
                    weight = float(v.strip())
                except ValueError:
                    weight = 0.0
                if not 0.0 <= weight <= 1.0 or weight != weight:
                    weight = 0.0
        q[name] = weight
    for enc in offered:
        alias = "x-gzip" if enc == "gzip" and "x-gzip" in q else "*"
        given = q.get(enc, q.get(alias))
        if given is not None and given > 0:
            return enc
    return None


def type_matches(content_type: bytes | None, types: Sequence[str]) -> bool:
    """Whether the media type of a Content-Type value is one of `types` (`text/*` style)."""
    if not content_type:
        return False
    media = content_type.split(b";", 1)[0].strip().lower().decode("latin-1")
    if media in NEVER_TYPES:
        return False
    major = media.split("/", 1)[0]
    return any(t == media or (t.endswith("/*") and t[:-2] == major) for t in types)


class Encoder(Protocol):
    def compress(self, data: bytes) -> bytes: ...

    def finish(self) -> bytes: ...


class _Gzip:
    __slots__ = ("z",)

    def __init__(self, level: int) -> None:
        self.z = zlib.compressobj(level, zlib.DEFLATED, 31)

    def compress(self, data: bytes) -> bytes:
        return self.z.compress(data)

    def finish(self) -> bytes:
        return self.z.flush()


class _Brotli:
    __slots__ = ("b",)

    def __init__(self) -> None:
        assert _brotli is not None
        # Quality 4: near gzip's speed with a better ratio; 11 costs ~100x the CPU.
        self.b = _brotli.Compressor(quality=4, lgwin=18)

    def compress(self, data: bytes) -> bytes:
        out: bytes = self.b.process(data)
        return out

    def finish(self) -> bytes:
        out: bytes = self.b.finish()
        return out


def make_encoder(encoding: str, level: int = 5) -> Encoder:
    return _Brotli() if encoding == "br" else _Gzip(level)


class Dechunker:
    """The data of a chunked body from its raw bytes, piece by piece (trailers dropped). The
    framing is checked by the reader that found the body's end (`http1.ChunkedReader`), which
    saw these bytes first: here it is only taken apart."""

    __slots__ = ("line", "remaining", "state")

    SIZE, DATA, DATA_END, TRAILER, DONE = 0, 1, 2, 3, 4

    def __init__(self) -> None:
        self.state = self.SIZE
        self.remaining = 0
        self.line = b""

    def feed(self, raw: bytes) -> bytes:
        out: list[bytes] = []
        pos, n = 0, len(raw)
        while pos < n and self.state != self.DONE:
            if self.state == self.DATA:
                take = min(self.remaining, n - pos)
                out.append(raw[pos : pos + take])
                pos += take
                self.remaining -= take
                if not self.remaining:
                    self.state = self.DATA_END
                continue
            i = raw.find(b"\n", pos)
            if i < 0:
                self.line += raw[pos:]
                break
            line = (self.line + raw[pos:i]).rstrip(b"\r")
            self.line = b""
            pos = i + 1
            if self.state == self.SIZE:
                size = int(line.split(b";", 1)[0], 16)
                self.state, self.remaining = (self.DATA, size) if size else (self.TRAILER, 0)
            elif self.state == self.DATA_END:
                self.state = self.SIZE
            elif not line:  # the empty line after the trailers
                self.state = self.DONE
        return b"".join(out)


class ChunkedEncoder:
    """A response body compressed piece by piece and framed as chunks: `feed` a piece in
    (raw chunked bytes when `dechunk`), bytes out (maybe none yet), `end` the rest and the
    last chunk. `sent` counts the bytes given out."""

    __slots__ = ("dechunker", "enc", "sent")

    def __init__(self, enc: Encoder, dechunk: bool = False) -> None:
        self.enc = enc
        self.dechunker = Dechunker() if dechunk else None
        self.sent = 0

    def feed(self, data: bytes) -> bytes:
        if self.dechunker is not None:
            data = self.dechunker.feed(data)
        out = self.enc.compress(data) if data else b""
        if not out:
            return b""
        framed = b"%x\r\n%b\r\n" % (len(out), out)
        self.sent += len(framed)
        return framed

    def end(self) -> bytes:
        out = self.enc.finish()
        framed = (b"%x\r\n%b\r\n" % (len(out), out) if out else b"") + b"0\r\n\r\n"
        self.sent += len(framed)
        return framed


def _weak_etag(head: bytes) -> bytes:
    return re.sub(rb'(\r\netag[ \t]*:[ \t]*)(")', rb"\1W/\2", head, flags=re.I)


# --- a route's chain ----------------------------------------------------------------------


class Chain:
    """The middlewares of one route, compiled: what a request and its response go through.
    Rate-limit state lives here, so each route has its own."""

    __slots__ = (
        "compress",
        "limiters",
        "max_body",
        "names",
        "request_edits",
        "response_edits",
    )

    def __init__(self, specs: Sequence[tuple[str, MiddlewareSpec]]) -> None:
        self.names = tuple(n for n, _ in specs)
        self.request_edits = HeaderEdits()
        self.response_edits = HeaderEdits()
        self.limiters: list[tuple[RateLimiter, bool]] = []  # (limiter, per client)
        self.max_body: int | None = None
        self.compress: CompressSpec | None = None
        for _, spec in specs:
            if isinstance(spec, HeadersSpec):
                self.request_edits = self.request_edits.then(spec.request)
                self.response_edits = self.response_edits.then(spec.response)
            elif isinstance(spec, RateLimitSpec):
                limiter = RateLimiter(spec.rate, spec.burst, spec.max_clients)
                self.limiters.append((limiter, spec.per == "client"))
            elif isinstance(spec, MaxBodySpec):
                self.max_body = (
                    spec.limit if self.max_body is None else min(self.max_body, spec.limit)
                )
            else:
                self.compress = spec
        if self.compress is not None:
            offered = tuple(e for e in self.compress.encodings if e != "br" or HAVE_BROTLI)
            self.compress = None if not offered else _with_encodings(self.compress, offered)

    def admit(self, client: bytes, now: float) -> float:
        """0.0 when the request of the client keyed `client` may go at `now`; else the
        seconds until it could. Every limiter is asked, and one that admits the request is
        charged for it even when another refuses it (as nginx's limit_req zones compose)."""
        wait = 0.0
        for limiter, per_client in self.limiters:
            w = limiter.take(client if per_client else b"", now)
            if w > wait:
                wait = w
        return wait

    def request_head(self, head: bytes) -> bytes:
        return edit_fields(head, self.request_edits) if self.request_edits else head

    def encoding_for(self, request_head: bytes, minor: int, method: bytes) -> str | None:
        """The encoding the response to this request may be compressed with, if any."""
        spec = self.compress
        if spec is None or minor != 1 or method == b"HEAD":
            return None
        return choose_encoding(field_value(request_head, b"accept-encoding"), spec.encodings)

    def response_head(
        self, head: bytes, status: int, length: int | None, chunked: bool, encoding: str | None
    ) -> tuple[bytes, ChunkedEncoder | None]:
        """The response head as the client gets it, and the compressor its body goes through
        (None: as it came). `length` is the Content-Length (None: unknown, the body is
        `chunked` or ends with the connection)."""
        if self.response_edits:
            head = edit_fields(head, self.response_edits)
        spec = self.compress
        if spec is None or status < 200 or status in (204, 206, 304):
            return head, None
        if not type_matches(field_value(head, b"content-type"), spec.types):
            return head, None
        encoded = field_value(head, b"content-encoding")
        cache = field_value(head, b"cache-control")
        vary = field_value(head, b"vary")
        if vary is None or b"accept-encoding" not in vary.lower():
            head = head[:-2] + b"Vary: Accept-Encoding\r\n\r\n"
        if (
            encoding is None
            or (encoded and encoded.lower() != b"identity")
            or (cache is not None and b"no-transform" in cache.lower())
            or not (length is None or length >= spec.min_size)
        ):
            return head, None
        edits = HeaderEdits(
            remove=(b"content-length", b"content-encoding", b"transfer-encoding"),
            add=((b"Content-Encoding", encoding.encode()), (b"Transfer-Encoding", b"chunked")),
        )
        head = _weak_etag(edit_fields(head, edits))
        return head, ChunkedEncoder(make_encoder(encoding, spec.level), dechunk=chunked)


def _with_encodings(spec: CompressSpec, encodings: tuple[str, ...]) -> CompressSpec:
    return CompressSpec(encodings, spec.min_size, spec.types, spec.level)


def resolve_chain(
    names: Sequence[str], defined: Mapping[str, MiddlewareSpec]
) -> tuple[Chain | None, list[str]]:
    """The chain of the middlewares `names` (in order) as `defined`, and the names not defined
    (left out of the chain; the caller reports them). No names: no chain."""
    unknown = [n for n in names if n not in defined]
    known = [(n, defined[n]) for n in names if n in defined]
    return (Chain(known) if known else None), unknown
