"""The proxy's HTTP/1.1 reader and editor fed bytes: what it accepts, what it refuses (request
smuggling among them), and hypothesis fuzzing that it never crashes, never reads past the
head it reports, and that the fast lane agrees with the general reader."""

from __future__ import annotations

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from dockmesh.proxy import http1
from dockmesh.proxy.http1 import ChunkedReader, ProtocolError
from tests.outcomes import Outcomes


def req(*lines: str, body: bytes = b"") -> bytes:
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def test_a_plain_request() -> None:
    r = http1.parse_request_head(req("GET /a?b=1 HTTP/1.1", "Host: example.test", "Accept: */*"))
    assert r is not None
    assert (r.method, r.target, r.minor, r.host) == (b"GET", b"/a?b=1", 1, b"example.test")
    assert r.keep_alive and not r.has_body and not r.cut


def test_incomplete_heads_wait_for_more() -> None:
    assert http1.parse_request_head(b"GET / HTTP/1.1\r\nHost: a\r\n") is None
    assert http1.parse_request_head(b"GE") is None


@pytest.mark.parametrize(
    ("head", "status"),
    [
        # CL.TE and TE.CL smuggling
        (req("POST / HTTP/1.1", "Host: a", "Content-Length: 4", "Transfer-Encoding: chunked"), 400),
        (req("POST / HTTP/1.1", "Host: a", "Transfer-Encoding: chunked", "Content-Length: 4"), 400),
        (req("POST / HTTP/1.1", "Host: a", "Content-Length: 4", "Content-Length: 5"), 400),
        (req("POST / HTTP/1.1", "Host: a", "Content-Length: +4"), 400),
        (req("POST / HTTP/1.1", "Host: a", "Content-Length: 4, 4"), 400),
        (req("POST / HTTP/1.1", "Host: a", "Transfer-Encoding: gzip, chunked"), 400),
        (
            req(
                "POST / HTTP/1.1",
                "Host: a",
                "Transfer-Encoding: chunked",
                "Transfer-Encoding: chunked",
            ),
            400,
        ),
        (req("POST / HTTP/1.1", "Host: a", "Transfer-Encoding : chunked"), 400),
        (req("POST / HTTP/1.1", "Host: a", " Transfer-Encoding: chunked"), 400),
        (req("GET / HTTP/1.1", "Host: a", "X: b", " folded"), 400),
        (b"GET / HTTP/1.1\r\nHost: a\nX: b\r\n\r\n", 400),
        (b"GET / HTTP/1.1\nHost: a\n\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a\x00\r\n\r\n", 400),
        (req("GET / HTTP/1.1"), 400),  # no Host
        (req("GET / HTTP/1.1", "Host: a", "Host: b"), 400),
        (req("GET  / HTTP/1.1", "Host: a"), 400),
        (req("GET / HTTP/2.0", "Host: a"), 400),
        (req("CONNECT a:443 HTTP/1.1", "Host: a"), 405),
        # A Host that is no authority: never routed nor sent on.
        (req("GET / HTTP/1.1", "Host: a b"), 400),
        (req("GET / HTTP/1.1", "Host: a/b"), 400),
        (req("GET / HTTP/1.1", "Host: a@evil"), 400),
        (req("GET / HTTP/1.1", "Host: a:b"), 400),
        (req("GET / HTTP/1.1", 'Host: a"<x>'), 400),
        (req("GET / HTTP/1.1", "Host: [::1"), 400),
    ],
)
def test_refused(head: bytes, status: int) -> None:
    with pytest.raises(ProtocolError) as e:
        http1.parse_request_head(head)
    assert e.value.status == status
    assert http1.quick_request(head) is None


def test_oversized_heads_are_431() -> None:
    with pytest.raises(ProtocolError) as e:
        http1.parse_request_head(b"GET / HTTP/1.1\r\nX: " + b"a" * 70000, max_head=65536)
    assert e.value.status == 431


def test_hop_by_hop_fields_are_cut_and_forwarded_fields_set() -> None:
    head = req(
        "GET / HTTP/1.1",
        "Host: a.test",
        "Connection: keep-alive, X-Private",
        "X-Private: secret",
        "Keep-Alive: timeout=5",
        "TE: trailers",
        "Proxy-Authorization: Basic x",
        "X-Forwarded-For: 10.0.0.9",
        "X-Forwarded-Proto: https",
        "X-Request-Id: abc",
        "Accept: */*",
    )
    r = http1.parse_request_head(head)
    assert r is not None
    out = http1.edit_request_head(head, r, http1.request_forwarded_fields(r, b"127.0.0.1", b"new"))
    lines = out.split(b"\r\n")
    assert lines[0] == b"GET / HTTP/1.1"
    names = [line.split(b":")[0].lower() for line in lines[1:] if line]
    for gone in (b"connection", b"x-private", b"keep-alive", b"te", b"proxy-authorization"):
        assert gone not in names
    # The client's X-Forwarded-For is its own claim: replaced, not appended to (a trusted
    # proxy's is appended to: `test_forwarded_fields_are_kept_only_from_a_trusted_proxy`).
    assert b"X-Forwarded-For: 127.0.0.1" in lines
    assert names.count(b"x-forwarded-for") == 1
    assert b"X-Forwarded-Proto: http" in lines
    assert b"X-Forwarded-Host: a.test" in lines
    assert b"X-Request-Id: abc" in lines  # kept, not replaced
    assert names.count(b"x-forwarded-proto") == 1
    assert out.endswith(b"\r\n\r\n")


def test_upgrade_keeps_connection_upgrade() -> None:
    head = req("GET /ws HTTP/1.1", "Host: a", "Connection: Upgrade", "Upgrade: websocket")
    r = http1.parse_request_head(head)
    assert r is not None and r.upgrade == b"websocket"
    out = http1.edit_request_head(head, r, b"")
    assert b"Connection: upgrade\r\n" in out and b"Upgrade: websocket\r\n" in out


def test_http10_and_connection_close() -> None:
    r = http1.parse_request_head(req("GET / HTTP/1.0"))
    assert r is not None and not r.keep_alive
    r = http1.parse_request_head(req("GET / HTTP/1.1", "Host: a", "Connection: close"))
    assert r is not None and not r.keep_alive


def test_responses() -> None:
    raw = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\nhi"
    r = http1.parse_response_head(raw)
    assert r is not None and r.status == 200 and r.content_length == 2 and r.keep_alive
    assert (
        http1.edit_response_head(raw[: r.head_len], r, b"")
        == b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n"
    )
    q = http1.quick_response(raw)
    assert q == (200, r.head_len, 2, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n")
    with pytest.raises(ProtocolError) as e:
        http1.parse_response_head(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
    assert e.value.status == 502
    assert not http1.response_has_body(204, b"GET")
    assert not http1.response_has_body(200, b"HEAD")


def test_chunked_reader_takes_sizes_just_below_2_to_the_52() -> None:
    r = ChunkedReader()
    assert r.feed(b"fffffffffffff\r\nab") == 17 and not r.done


def test_chunked_reader_finds_the_end_across_reads() -> None:
    body = b"4\r\nWiki\r\n5;ext=1\r\npedia\r\n0\r\nTrailer: x\r\n\r\n"
    for cut in range(len(body) + 1):
        r = ChunkedReader()
        used = r.feed(body[:cut]) + r.feed(body[cut:] + b"NEXT")
        assert r.done and used == len(body)


@pytest.mark.parametrize(
    "bad",
    [
        b"4\nWiki\r\n0\r\n\r\n",
        b"0x4\r\nWiki\r\n0\r\n\r\n",
        b" 4\r\nWiki\r\n",
        b"4\r\nWikiX\r\n",
        b"-1\r\n",
        b"10000000000000\r\n",  # 2**52: a double-precision next hop would round it
        b"ffffffffffffffff\r\n",
        b"8000000000000000\r\n",  # negative in a signed 64-bit parser
    ],
)
def test_chunked_reader_refuses_bad_framing(bad: bytes) -> None:
    with pytest.raises(ProtocolError):
        ChunkedReader().feed(bad)


token = st.text(
    alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ-0123456789",
    min_size=1,
    max_size=12,
)
value = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=30)


_FRAMING = st.sampled_from(
    [
        "Content-Length: 5",
        "Content-Length: 0",
        "Content-Length: 5, 5",
        "Content-Length: +5",
        "Content-Length: 5\r\nContent-Length: 6",
        "Transfer-Encoding: chunked",
        "Transfer-Encoding: gzip, chunked",
        "Transfer-Encoding: chunked\r\nContent-Length: 5",
        "Transfer-Encoding : chunked",
        "Transfer-Encoding: xchunked",
        "Connection: close",
        "Expect: 100-continue",
    ]
)


@st.composite
def request_heads(draw: st.DrawFn) -> bytes:
    """What clients send (a request line, fields, the framing fields smugglers play with),
    often with one byte spoiled, cut short, or a bare LF or NUL put in."""
    odd = draw(st.integers(0, 3)) == 0  # a quarter: an odd request line
    methods = ["GET", "POST", "HEAD", "PUT", "DELETE", "OPTIONS"] + (["G{T", "get"] if odd else [])
    targets = ["/", "/a?b=1", "http://h.test/x"] + (["*", "/%2e%2e/x", "a b"] if odd else [])
    versions = ["HTTP/1.1", "HTTP/1.0"] + (["HTTP/2.0", "HTTP/1.x", "http/1.1"] if odd else [])
    method, target, version = (
        draw(st.sampled_from(methods)),
        draw(st.sampled_from(targets)),
        draw(st.sampled_from(versions)),
    )
    lines = [f"{method} {target} {version}"]
    if draw(st.integers(0, 7)):  # mostly: HTTP/1.1 wants one
        lines.append("Host: h.test")
    lines += [f"{k}: {v}" for k, v in draw(st.lists(st.tuples(token, value), max_size=6))]
    if draw(st.booleans()):
        lines += draw(st.lists(_FRAMING, max_size=2))
    data = ("\r\n".join(lines) + "\r\n\r\n").encode()
    spoil = draw(st.sampled_from(["none", "none", "none", "byte", "cut", "lf", "nul"]))
    if spoil == "none":
        return data
    at = draw(st.integers(0, len(data) - 1))
    if spoil == "byte":
        return data[:at] + bytes([draw(st.integers(0, 255))]) + data[at + 1 :]
    if spoil == "cut":
        return data[:at]
    return data[:at] + (b"\n" if spoil == "lf" else b"\0") + data[at:]


def test_fuzz_the_request_reader_never_crashes() -> None:
    """Any bytes: a head whose end is where its first CRLF CRLF is, None (incomplete), or
    ProtocolError with a client-error status — and the strategy reaches all three."""
    seen = Outcomes()

    @settings(max_examples=300)
    @given(st.one_of(request_heads(), request_heads(), request_heads(), st.binary(max_size=300)))
    @example(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    def run(data: bytes) -> None:
        try:
            r = http1.parse_request_head(data)
        except ProtocolError as e:
            seen("refused")
            status = e.status
            assert status in (400, 405, 431, 501, 505), status
            return
        if r is None:
            seen("incomplete")
            assert b"\r\n\r\n" not in data[: http1.MAX_HEAD_BYTES]
            return
        seen("parsed")
        assert 0 < r.head_len <= len(data)
        assert data[r.head_len - 4 : r.head_len] == b"\r\n\r\n"
        assert b"\r\n\r\n" not in data[: r.head_len - 4]

    run()
    seen.require(parsed=0.15, refused=0.1, incomplete=0.03)


@given(
    st.sampled_from(["GET", "POST", "HEAD", "DELETE", "OPTIONS"]),
    st.lists(st.tuples(token, value), max_size=12),
    st.booleans(),
)
def test_fast_lane_agrees_with_the_general_reader(
    method: str, fields: list[tuple[str, str]], host: bool
) -> None:
    lines = (
        [f"{method} /p HTTP/1.1"]
        + (["Host: h.test"] if host else [])
        + [f"{k}: {v}" for k, v in fields]
    )
    head = req(*lines)
    quick = http1.quick_request(head)
    try:
        general = http1.parse_request_head(head)
    except ProtocolError:
        assert quick is None
        return
    if quick is None:
        return
    assert general is not None
    assert (general.method, general.target, general.host) == quick
    assert not general.cut and not general.has_body and general.keep_alive


@given(st.lists(st.tuples(token, value), max_size=12), st.integers(0, 10**6))
def test_fuzz_the_header_editor_keeps_a_valid_head(fields: list[tuple[str, str]], n: int) -> None:
    head = req("GET / HTTP/1.1", "Host: a", *[f"{k}: {v}" for k, v in fields])
    try:
        r = http1.parse_request_head(head)
    except ProtocolError:
        return
    assert r is not None
    out = http1.edit_request_head(
        head, r, http1.request_forwarded_fields(r, b"10.1.2.3", b"%d" % n)
    )
    again = http1.parse_request_head(out)  # what we send is itself a valid head...
    assert again is not None and again.head_len == len(out)
    assert (
        again.content_length == r.content_length and again.chunked == r.chunked
    )  # ...framed alike
    assert again.connection_tokens is None and again.upgrade is None


@given(
    st.lists(st.tuples(token, value), max_size=10), st.integers(100, 599), st.binary(max_size=40)
)
def test_fast_response_lane_agrees(fields: list[tuple[str, str]], status: int, body: bytes) -> None:
    raw = (
        f"HTTP/1.1 {status} X\r\n"
        + "".join(f"{k}: {v}\r\n" for k, v in fields)
        + f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    quick = http1.quick_response(raw)
    try:
        general = http1.parse_response_head(raw)
    except ProtocolError:
        assert quick is None
        return
    if quick is None:
        return
    assert general is not None
    assert quick[:3] == (general.status, general.head_len, general.content_length)
    assert quick[3] == http1.edit_response_head(raw[: general.head_len], general, b"")


@given(
    st.lists(st.tuples(token, value), max_size=10),
    st.integers(100, 599),
    st.binary(max_size=40),
    st.binary(max_size=40),
)
def test_memoised_fast_lanes_answer_as_the_readers(
    fields: list[tuple[str, str]], status: int, body: bytes, other: bytes
) -> None:
    head = (
        f"HTTP/1.1 {status} X\r\n"
        + "".join(f"{k}: {v}\r\n" for k, v in fields)
        + f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    for raw in (head + body, head + other, head + body, head[:-1]):  # miss, hits, incomplete
        assert http1.quick_response_memo(raw) == http1.quick_response(raw)
    request = req("GET /p HTTP/1.1", "Host: h.test", *[f"{k}: {v}" for k, v in fields])
    for raw in (request, request, request + b"x", request[:-2]):
        assert _as_tuple(http1.quick_request_head(raw)) == http1.quick_request(raw)


def test_memos_stay_bounded() -> None:
    for i in range(3 * http1.MEMO_SIZE):
        head = f"GET /{i} HTTP/1.1\r\nHost: h\r\n\r\n".encode()
        assert _as_tuple(http1.quick_request_head(head)) == (b"GET", f"/{i}".encode(), b"h")
        resp = f"HTTP/1.1 200 OK\r\nX-N: {i}\r\nContent-Length: 0\r\n\r\n".encode()
        assert http1.quick_response_memo(resp) == http1.quick_response(resp)
    assert len(http1.REQUEST_MEMO) <= http1.MEMO_SIZE
    assert len(http1.RESPONSE_MEMO) <= http1.MEMO_SIZE


def _as_tuple(req: http1.RequestHead | None) -> tuple[bytes, bytes, bytes | None] | None:
    return None if req is None else (req.method, req.target, req.host)


def test_a_memoized_head_reads_as_the_general_reader_would() -> None:
    raw = req("GET /p?q=1 HTTP/1.1", "Host: h.test", "Accept: */*")
    quick = http1.quick_request_head(raw)
    full = http1.parse_request_head(raw, 65536)
    assert quick is not None and full is not None
    for name in http1.RequestHead.__slots__:
        assert getattr(quick, name) == getattr(full, name), name


def test_forwarded_fields_are_kept_only_from_a_trusted_proxy() -> None:
    head = req(
        "GET / HTTP/1.1",
        "Host: a.test",
        "X-Forwarded-For: 10.0.0.9",
        "Forwarded: for=10.0.0.9;proto=https",
        "X-Forwarded-Host: admin.internal",
        "X-Forwarded-Proto: https",
    )
    r = http1.parse_request_head(head)
    assert r is not None
    for trusted, xff, fwd, host, proto in (
        (False, b"X-Forwarded-For: 127.0.0.1", None, b"a.test", b"http"),
        (
            True,
            b"X-Forwarded-For: 10.0.0.9, 127.0.0.1",
            b"Forwarded: for=10.0.0.9;proto=https",
            # A TLS-terminating balancer in front: its client's host and scheme reach the app.
            b"admin.internal",
            b"https",
        ),
    ):
        fields = http1.request_forwarded_fields(r, b"127.0.0.1", b"id", trusted)
        lines = http1.edit_request_head(head, r, fields).split(b"\r\n")
        names = [line.split(b":")[0].lower() for line in lines[1:] if line]
        assert xff in lines and names.count(b"x-forwarded-for") == 1
        assert names.count(b"forwarded") == (1 if fwd else 0)
        assert fwd is None or fwd in lines
        assert lines.count(b"X-Forwarded-Host: " + host) == 1
        assert names.count(b"x-forwarded-host") == 1
        assert lines.count(b"X-Forwarded-Proto: " + proto) == 1
        assert names.count(b"x-forwarded-proto") == 1
    # A scheme that is not one is not kept, even from a trusted proxy.
    bad = http1.parse_request_head(
        req("GET / HTTP/1.1", "Host: a", "X-Forwarded-Proto: https, http")
    )
    assert bad is not None
    assert b"Proto: http\r\n" in http1.request_forwarded_fields(bad, b"127.0.0.1", b"i", True)


def test_the_fast_lane_leaves_forwarded_and_unnormalised_targets_to_the_reader() -> None:
    assert http1.quick_request(b"GET / HTTP/1.1\r\nHost: a\r\nForwarded: for=x\r\n\r\n") is None
    for target in (b"/p/../x", b"/p/%2e%2e/x", b"//x", b"http://a/", b"/p/./x"):
        assert http1.quick_request(b"GET " + target + b" HTTP/1.1\r\nHost: a\r\n\r\n") is None
    assert http1.quick_request(b"GET /p/x?a=../b HTTP/1.1\r\nHost: a\r\n\r\n") is not None


def test_an_absolute_form_target_wins_over_host_and_is_forwarded_in_origin_form() -> None:
    head = req("GET http://Admin.Internal:8080/a/../b?q=1 HTTP/1.1", "Host: public", "Accept: */*")
    r = http1.parse_request_head(head)
    assert r is not None
    assert r.host == b"Admin.Internal:8080" and r.target == b"/b?q=1"
    fields = http1.request_forwarded_fields(r, b"127.0.0.1", b"id")
    lines = http1.edit_request_head(head, r, fields).split(b"\r\n")
    assert lines[0] == b"GET /b?q=1 HTTP/1.1"
    hosts = [line for line in lines if line.lower().startswith(b"host:")]
    assert hosts == [b"Host: Admin.Internal:8080"]
    assert b"Accept: */*" in lines
    # HTTP/1.0 needs no Host: the authority is sent as one.
    r0 = http1.parse_request_head(b"GET http://a.test HTTP/1.0\r\n\r\n")
    assert r0 is not None and r0.target == b"/" and r0.host == b"a.test"
    out = http1.edit_request_head(b"GET http://a.test HTTP/1.0\r\n\r\n", r0, b"")
    assert out == b"GET / HTTP/1.0\r\nHost: a.test\r\n\r\n"


def test_bad_targets_and_paths_that_climb_above_the_root_get_400() -> None:
    for target in (
        b"/../x",
        b"/a/../../x",
        b"/%2e%2e/x",
        b"/a/%zz",
        b"http://u@a/",
        b"ftp://a/",
        b"http:///x",
        b"a/b",
        b"*",
    ):
        with pytest.raises(http1.ProtocolError) as e:
            http1.parse_request_head(b"GET " + target + b" HTTP/1.1\r\nHost: a\r\n\r\n")
        assert e.value.status == 400, target
    r = http1.parse_request_head(b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n")
    assert r is not None and r.target == b"*"


def test_a_normalised_path_is_what_is_forwarded() -> None:
    head = req("GET /p/%2E%2e/x/./y//z HTTP/1.1", "Host: a")
    r = http1.parse_request_head(head)
    assert r is not None and r.target == b"/x/y/z" and r.host == b"a"
    out = http1.edit_request_head(head, r, b"")
    assert out == b"GET /x/y/z HTTP/1.1\r\nHost: a\r\n\r\n"


def test_other_forwarding_claims_are_sent_on_only_from_a_trusted_proxy() -> None:
    claims = (
        "X-Real-IP: 10.0.0.9",
        "X-Forwarded-Port: 443",
        "x-forwarded-prefix: /admin",
        "X_Forwarded_For: 10.0.0.9",
        "X_Real_Ip: 10.0.0.9",
    )
    head = req("GET / HTTP/1.1", "Host: a.test", *claims, "X-Other: kept")
    assert http1.quick_request(head) is None
    r = http1.parse_request_head(head)
    assert r is not None
    for trusted in (False, True):
        fields = http1.request_forwarded_fields(r, b"127.0.0.1", b"id", trusted)
        lines = http1.edit_request_head(head, r, fields).split(b"\r\n")
        assert b"X-Other: kept" in lines
        for claim in claims:
            assert lines.count(claim.encode()) == (1 if trusted else 0), (trusted, claim)


@pytest.mark.parametrize("field", [b"Content-Length", b"Transfer-Encoding", b"Host"])
def test_connection_never_names_the_framing_or_host_away(field: bytes) -> None:
    """Cut as hop-by-hop while the body goes on, the next hop would read the body as the next
    request (smuggled)."""
    framing = (
        b"Transfer-Encoding: chunked" if field == b"Transfer-Encoding" else b"Content-Length: 5"
    )
    head = b"POST / HTTP/1.1\r\nHost: a\r\nConnection: " + field + b", X-Gone\r\n"
    head += framing + b"\r\nX-Gone: 1\r\n\r\n"
    r = http1.parse_request_head(head)
    assert r is not None and r.connection_tokens == [b"x-gone"]
    out = http1.edit_request_head(head, r, b"")
    assert framing in out and b"Host: a\r\n" in out and b"X-Gone" not in out
    resp = b"HTTP/1.1 200 OK\r\nConnection: " + field + b"\r\n" + framing + b"\r\n\r\n"
    rh = http1.parse_response_head(resp)
    assert rh is not None and rh.connection_tokens is None
    assert framing in http1.edit_response_head(resp, rh, b"")


@pytest.mark.parametrize("upgrade", [b"h2c", b"H2C", b"websocket, h2c"])
def test_an_upgrade_to_h2c_goes_on_as_a_plain_request(upgrade: bytes) -> None:
    head = b"GET /p/x HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\n"
    head += b"Upgrade: " + upgrade + b"\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n"
    r = http1.parse_request_head(head)
    assert r is not None and r.upgrade is None
    out = http1.edit_request_head(head, r, b"").lower()
    assert b"upgrade" not in out and b"http2-settings" not in out


@pytest.mark.parametrize(
    ("fields", "canonical"),
    [
        (["Transfer-Encoding:\tCHUNKED"], b"Transfer-Encoding: chunked"),
        (["transfer-encoding:  chunked  "], b"Transfer-Encoding: chunked"),
        (["Content-Length: 0005"], b"Content-Length: 5"),
        (["Content-Length: 5", "content-length:5"], b"Content-Length: 5"),
    ],
)
def test_the_framing_goes_on_in_one_canonical_line(fields: list[str], canonical: bytes) -> None:
    """What this reader accepts (RFC 9112 allows it) the next hop might not: it would frame
    the body otherwise (TE.TE smuggling with a tab, a duplicate Content-Length)."""
    head = req("POST / HTTP/1.1", "Host: a", *fields, "X-After: 1")
    r = http1.parse_request_head(head)
    assert r is not None
    lines = http1.edit_request_head(head, r, b"").split(b"\r\n")
    framing = [x for x in lines if x.lower().startswith((b"transfer-encoding", b"content-length"))]
    assert framing == [canonical] and b"X-After: 1" in lines


def test_transfer_encoding_in_an_http10_request_is_refused() -> None:
    with pytest.raises(ProtocolError, match=r"HTTP/1\.0"):
        http1.parse_request_head(req("POST / HTTP/1.0", "Transfer-Encoding: chunked"))
