"""Named middlewares: the routes file's section (every problem with its line), header edits
on raw heads, the choice of an encoding, streaming compression and a route's chain."""

from __future__ import annotations

import gzip

import brotli
import pytest
from hypothesis import given
from hypothesis import strategies as st

from dockmesh.errors import SpecError
from dockmesh.proxy import http1
from dockmesh.proxy.config import load_config
from dockmesh.proxy.middleware import (
    Chain,
    ChunkedEncoder,
    CompressSpec,
    Dechunker,
    HeaderEdits,
    HeadersSpec,
    MaxBodySpec,
    RateLimitSpec,
    choose_encoding,
    edit_fields,
    make_encoder,
    parse_size,
    resolve_chain,
    type_matches,
)

GOOD = b"""\
middlewares:
  hdr:
    headers:
      request: {set: {X-Env: prod}, remove: [X-Debug], add: {X-Tag: a}}
      response: {remove: [Server], add: {X-Frame-Options: DENY}}
  rl: {rate_limit: {rate: 120, period: 1m, burst: 5, per: route}}
  small: {max_body: 10k}
  squeeze: {compress: {min_size: 256, encodings: [gzip], types: [text/*]}}
access_log: {path: "-", format: json, sample: 0.5}
routes:
  - prefix: /a
    backends: [http://127.0.0.1:9001]
    middlewares: [hdr, rl]
  - backends: [http://127.0.0.1:9001]
"""


def test_a_good_file() -> None:
    s = load_config(GOOD, "r.yaml")
    assert s.routes[0].middlewares == ["hdr", "rl"] and s.routes[1].middlewares == []
    m = s.middlewares
    assert m["hdr"] == HeadersSpec(
        HeaderEdits((b"x-debug",), ((b"X-Env", b"prod"),), ((b"X-Tag", b"a"),)),
        HeaderEdits((b"server",), (), ((b"X-Frame-Options", b"DENY"),)),
    )
    assert m["rl"] == RateLimitSpec(rate=2.0, burst=5, per="route")
    assert m["small"] == MaxBodySpec(10 * 1024)
    assert m["squeeze"] == CompressSpec(("gzip",), 256, ("text/*",), 5)
    assert s.access_log is not None
    assert (s.access_log.path, s.access_log.format, s.access_log.sample) == ("-", "json", 0.5)


def test_every_problem_at_once_with_its_line() -> None:
    bad = b"""\
middlewares:
  h: {headers: {request: {set: {Content-Length: "5"}, remove: [bad name]}}}
  r: {rate_limit: {rate: 0, burst: 5}}
  b: {max_body: lots}
  c: {compress: {encodings: [zstd], level: 12}}
  two: {max_body: 1, compress: {}}
  odd: {sparkle: {}}
access_log: {path: /x, format: xml, sample: 2}
routes:
  - backends: [http://127.0.0.1:9001]
    middlewares: [h, nobody]
"""
    with pytest.raises(SpecError) as e:
        load_config(bad, "r.yaml")
    text = str(e.value)
    for expected in (
        "r.yaml:2: middlewares.h.headers.request.set.Content-Length: Content-Length frames",
        "r.yaml:2: middlewares.h.headers.request.remove.0: 'bad name' is not a header",
        "r.yaml:3: middlewares.r.rate_limit.rate",
        "r.yaml:4: middlewares.b.max_body: 'lots' is not a size",
        "r.yaml:5: middlewares.c.compress.encodings.0: 'zstd'",
        "r.yaml:6: middlewares.two: must be a mapping with one of",
        "r.yaml:7: middlewares.odd.sparkle: unknown kind",
        "r.yaml:8: access_log.format",
        "r.yaml:11: routes.0.middlewares.1: 'nobody' is not declared",
    ):
        assert expected in text, (expected, text)


def test_sizes() -> None:
    assert parse_size(5) == 5
    assert parse_size("512k") == 512 * 1024
    assert parse_size("10MiB") == 10 << 20
    assert parse_size("1g") == 1 << 30
    for bad in ("-1", "1t", "", True):
        with pytest.raises(ValueError, match="size"):
            parse_size(bad)


names = st.sampled_from([b"X-A", b"x-a", b"X-B", b"Accept", b"X-Request-Id", b"Via"])
values = st.binary(max_size=10).map(lambda b: bytes(c for c in b if 0x20 <= c <= 0x7E).strip())
fields = st.lists(st.tuples(names, values), max_size=8)
edits = st.builds(
    HeaderEdits,
    st.lists(names.map(bytes.lower), max_size=3).map(tuple),
    st.lists(st.tuples(names, values), max_size=3).map(tuple),
    st.lists(st.tuples(names, values), max_size=3).map(tuple),
)


def _head(fs: list[tuple[bytes, bytes]]) -> bytes:
    return b"GET / HTTP/1.0\r\n" + b"".join(n + b": " + v + b"\r\n" for n, v in fs) + b"\r\n"


@given(fields, edits)
def test_header_edits_remove_set_add_and_keep_the_rest_in_order(
    fs: list[tuple[bytes, bytes]], e: HeaderEdits
) -> None:
    out = edit_fields(_head(fs), e)
    assert out.startswith(b"GET / HTTP/1.0\r\n") and out.endswith(b"\r\n\r\n")
    req = http1.parse_request_head(out, 65536)  # still a head the reader takes
    assert req is not None and req.head_len == len(out)
    lines = out[:-4].split(b"\r\n")[1:]
    got = [(ln.split(b": ", 1)[0], ln.split(b": ", 1)[1]) for ln in lines]
    gone = set(e.remove) | {n.lower() for n, _ in e.set}
    kept = [f for f in fs if f[0].lower() not in gone]
    assert got == kept + list(e.set) + list(e.add)
    for n in e.remove:
        if n not in {m.lower() for m, _ in e.set + e.add}:
            assert all(g[0].lower() != n for g in got)


@given(fields, edits, edits)
def test_edits_composed_equal_edits_applied_in_turn_for_the_names_they_leave(
    fs: list[tuple[bytes, bytes]], a: HeaderEdits, b: HeaderEdits
) -> None:
    # A composed chain gives each name the fields it would have after both, in turn.
    one = edit_fields(_head(fs), a.then(b))
    two = edit_fields(edit_fields(_head(fs), a), b)

    def by_name(head: bytes) -> dict[bytes, list[bytes]]:
        out: dict[bytes, list[bytes]] = {}
        for ln in head[:-4].split(b"\r\n")[1:]:
            n, _, v = ln.partition(b": ")
            out.setdefault(n.lower(), []).append(v)
        return {k: sorted(v) for k, v in out.items()}

    assert by_name(one) == by_name(two)


tokens = st.sampled_from(["gzip", "br", "deflate", "identity", "*", "x-gzip", "zstd"])
weights = st.one_of(st.none(), st.sampled_from(["0", "0.0", "0.5", "1", "1.0", "bogus", "2"]))


@given(st.lists(st.tuples(tokens, weights), max_size=6), st.permutations(["br", "gzip"]))
def test_the_encoding_chosen_is_one_the_client_accepts_in_the_servers_order(
    items: list[tuple[str, str | None]], offered: list[str]
) -> None:
    header = ", ".join(t if w is None else f"{t};q={w}" for t, w in items).encode()
    got = choose_encoding(header, offered)

    def weight(name: str) -> float | None:
        found = [w for t, w in items if t == name]
        if not found:
            return None
        w = found[-1]
        try:
            v = 1.0 if w is None else float(w)
        except ValueError:
            return 0.0
        return v if 0 <= v <= 1 else 0.0

    def ok(enc: str) -> bool:
        w = weight(enc)
        if w is None and enc == "gzip":
            w = weight("x-gzip")
        if w is None:
            w = weight("*")
        return w is not None and w > 0

    acceptable = [e for e in offered if ok(e)]
    assert got == (acceptable[0] if acceptable else None)


def test_encodings_by_example() -> None:
    assert choose_encoding(b"gzip, deflate, br", ("br", "gzip")) == "br"
    assert choose_encoding(b"gzip;q=1, br;q=0", ("br", "gzip")) == "gzip"
    assert choose_encoding(b"*;q=0", ("br", "gzip")) is None
    assert choose_encoding(b"identity", ("br", "gzip")) is None
    assert choose_encoding(None, ("gzip",)) is None


def test_types() -> None:
    assert type_matches(b"text/html; charset=utf-8", ("text/*",))
    assert type_matches(b"Application/JSON", ("application/json",))
    assert not type_matches(b"image/png", ("text/*", "application/json"))
    assert not type_matches(b"text/event-stream", ("text/*",))
    assert not type_matches(None, ("text/*",))


def _dechunk(data: bytes) -> bytes:
    r = http1.ChunkedReader()
    assert r.feed(data) == len(data) and r.done
    out = b""
    while data:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line, 16)
        out += data[:size]
        data = data[size + 2 :]
    return out


@given(st.lists(st.binary(max_size=3000), max_size=20), st.sampled_from(["gzip", "br"]))
def test_streamed_compression_frames_chunks_that_decode_to_the_body(
    pieces: list[bytes], encoding: str
) -> None:
    enc = ChunkedEncoder(make_encoder(encoding))
    framed = b"".join(enc.feed(p) for p in pieces) + enc.end()
    body = _dechunk(framed)
    plain = gzip.decompress(body) if encoding == "gzip" else brotli.decompress(body)
    assert plain == b"".join(pieces)


@given(
    st.lists(st.binary(min_size=1, max_size=300), max_size=10),
    st.booleans(),
    st.booleans(),
    st.data(),
)
def test_a_chunked_body_taken_apart_in_any_pieces_gives_its_data(
    chunks: list[bytes], ext: bool, trailers: bool, data: st.DataObject
) -> None:
    raw = b"".join(b"%x%s\r\n%s\r\n" % (len(c), b";x=1" if ext else b"", c) for c in chunks) + (
        b"0\r\nX-T: 1\r\n\r\n" if trailers else b"0\r\n\r\n"
    )
    cuts = sorted(data.draw(st.lists(st.integers(0, len(raw)), max_size=8)))
    d = Dechunker()
    got = b""
    prev = 0
    for c in [*cuts, len(raw)]:
        got += d.feed(raw[prev:c])
        prev = c
    assert got == b"".join(chunks) and d.state == d.DONE


@given(st.lists(st.binary(max_size=2000), max_size=8))
def test_a_chunked_upstream_body_compressed(chunks: list[bytes]) -> None:
    raw = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks if c) + b"0\r\n\r\n"
    enc = ChunkedEncoder(make_encoder("gzip"), dechunk=True)
    framed = b"".join(enc.feed(raw[i : i + 100]) for i in range(0, len(raw), 100)) + enc.end()
    assert gzip.decompress(_dechunk(framed)) == b"".join(chunks)
    assert enc.sent == len(framed)


RESP = b'HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5000\r\nETag: "v1"\r\nServer: x\r\n\r\n'


def test_a_chain_compresses_what_it_should_and_only_that() -> None:
    chain = Chain(
        [
            ("h", HeadersSpec(response=HeaderEdits(remove=(b"server",)))),
            ("c", CompressSpec(min_size=1000)),
        ]
    )
    head, enc = chain.response_head(RESP, 200, 5000, False, "gzip")
    assert enc is not None
    assert b"Content-Length" not in head and b"Server" not in head
    assert b"Content-Encoding: gzip\r\n" in head and b"Transfer-Encoding: chunked\r\n" in head
    assert b"Vary: Accept-Encoding\r\n" in head and b'ETag: W/"v1"' in head
    # Too small, not accepted, already encoded, an image: as it came, but Vary where it
    # could have been compressed.
    head, enc = chain.response_head(RESP, 200, 500, False, "gzip")
    assert enc is None and b"Content-Length: 5000" in head and b"Vary" in head
    head, enc = chain.response_head(RESP, 200, 5000, False, None)
    assert enc is None and b"Vary: Accept-Encoding" in head
    done = RESP.replace(b"ETag", b"Content-Encoding: br\r\nX")
    assert chain.response_head(done, 200, 5000, False, "gzip")[1] is None
    kept = RESP.replace(b"ETag", b"Cache-Control: public, no-transform\r\nX")
    assert chain.response_head(kept, 200, 5000, False, "gzip")[1] is None
    png = RESP.replace(b"text/plain", b"image/png")
    head, enc = chain.response_head(png, 200, 5000, False, "gzip")
    assert enc is None and b"Vary" not in head
    # A body that ends with the connection, or chunked: its length is unknown, so compressed.
    assert chain.response_head(RESP, 200, None, False, "gzip")[1] is not None
    chunked = RESP.replace(b"Content-Length: 5000", b"Transfer-Encoding: chunked")
    head, enc = chain.response_head(chunked, 200, None, True, "gzip")
    assert enc is not None and head.lower().count(b"transfer-encoding") == 1
    assert chain.response_head(RESP, 304, 5000, False, "gzip")[1] is None


def test_a_chain_asks_for_an_encoding_only_for_http11_requests_with_a_body_to_come() -> None:
    chain = Chain([("c", CompressSpec())])
    head = b"GET / HTTP/1.1\r\nAccept-Encoding: gzip\r\n\r\n"
    assert chain.encoding_for(head, 1, b"GET") == "gzip"
    assert chain.encoding_for(head, 0, b"GET") is None
    assert chain.encoding_for(head, 1, b"HEAD") is None
    assert Chain([]).encoding_for(head, 1, b"GET") is None


def test_a_chain_limits_by_client_and_by_route() -> None:
    chain = Chain(
        [
            ("per-client", RateLimitSpec(rate=1.0, burst=2, per="client")),
            ("per-route", RateLimitSpec(rate=1.0, burst=3, per="route")),
        ]
    )
    assert chain.admit(b"a", 0.0) == 0.0
    assert chain.admit(b"a", 0.0) == 0.0
    assert chain.admit(b"a", 0.0) > 0  # a's bucket is empty
    assert chain.admit(b"b", 0.0) > 0  # the route's 3 were taken (a's refused one too)
    assert chain.admit(b"b", 1.0) == 0.0


def test_resolve_chain_reports_unknown_names() -> None:
    defined = {"a": MaxBodySpec(10), "b": MaxBodySpec(5)}
    chain, unknown = resolve_chain(["a", "x", "b"], defined)
    assert unknown == ["x"] and chain is not None
    assert chain.names == ("a", "b") and chain.max_body == 5
    assert resolve_chain([], defined) == (None, [])


def test_a_chunked_body_past_its_bound_is_refused_at_the_size_line() -> None:
    r = http1.ChunkedReader(limit=1000)
    assert r.feed(b"200\r\n" + b"x" * 512 + b"\r\n") > 0
    with pytest.raises(http1.ProtocolError, match="larger than 1000") as e:
        r.feed(b"1f5\r\n")  # 512 + 501: before any of its data
    assert e.value.status == 413
    ok = http1.ChunkedReader(limit=1000)
    body = b"200\r\n" + b"x" * 512 + b"\r\n1e8\r\n" + b"y" * 488 + b"\r\n0\r\n\r\n"
    assert ok.feed(body) == len(body) and ok.done and ok.size == 1000
