"""HTTP/2's pure side: a stream's header list read as the HTTP/1.1 head every request meets,
an HTTP/1.1 response head as a header list, chunked bodies decoded, the reset budget."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dockmesh.proxy import h2rules, http1

BASE = [
    (b":method", b"GET"),
    (b":scheme", b"http"),
    (b":authority", b"api.test"),
    (b":path", b"/a"),
]

names = st.from_regex(rb"\A[a-z][a-z0-9\-]{0,12}\Z").filter(
    lambda n: (
        n not in (b"host", b"cookie", b"te", b"content-length")
        and n not in h2rules._CONNECTION_SPECIFIC
        and n not in http1.HOP_BY_HOP
    )
)
values = st.from_regex(rb"\A[\x21-\x7e]([\x20-\x7e]{0,20}[\x21-\x7e])?\Z")


def test_a_request_becomes_the_head_the_http1_reader_reads() -> None:
    head, trailers = h2rules.request_head(
        [*BASE, (b"cookie", b"a=1"), (b"cookie", b"b=2"), (b"te", b"trailers"), (b"x-y", b"z")],
        end_stream=True,
    )
    assert trailers
    assert head == b"GET /a HTTP/1.1\r\nHost: api.test\r\nCookie: a=1; b=2\r\nx-y: z\r\n\r\n"
    req = http1.parse_request_head(head)
    assert req is not None and req.host == b"api.test" and not req.has_body


def test_a_body_without_a_length_is_sent_chunked() -> None:
    head, _ = h2rules.request_head([*BASE[:3], (b":path", b"/p")], end_stream=False)
    req = http1.parse_request_head(head)
    assert req is not None and req.chunked and req.has_body
    head, _ = h2rules.request_head([*BASE, (b"content-length", b"5")], end_stream=False)
    req = http1.parse_request_head(head)
    assert req is not None and req.content_length == 5 and not req.chunked


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ([(b":method", b"GET")], 400),
        ([*BASE, (b"connection", b"close")], 400),
        ([*BASE, (b"transfer-encoding", b"chunked")], 400),
        ([*BASE, (b"x", b"a\r\nInjected: 1")], 400),
        ([*BASE, (b":bogus", b"1")], 400),
        ([(b":method", b"CONNECT"), (b":authority", b"a:1"), (b":path", b"/")], 501),
    ],
)
def test_what_cannot_be_carried_is_refused(headers: list[tuple[bytes, bytes]], status: int) -> None:
    with pytest.raises(h2rules.StreamRefused) as e:
        h2rules.request_head(headers, end_stream=True)
    assert e.value.status == status


def test_dot_segments_meet_the_same_reader() -> None:
    head, _ = h2rules.request_head([*BASE[:3], (b":path", b"/p/%2e%2e/x")], end_stream=True)
    req = http1.parse_request_head(head)
    assert req is not None and req.target == b"/x"


@given(st.lists(st.tuples(names, values), max_size=8), st.booleans())
def test_fields_survive_the_way_to_an_h2_upstream(
    fields: list[tuple[bytes, bytes]], trailers: bool
) -> None:
    """request header list → HTTP/1.1 head → edited (forwarded fields) → header list: the
    client's fields and pseudo-headers arrive, none connection-specific."""
    head, _ = h2rules.request_head([*BASE, *fields], end_stream=False)
    req = http1.parse_request_head(head)
    assert req is not None
    out = http1.edit_request_head(
        head, req, http1.request_forwarded_fields(req, b"10.2.3.4", b"id")
    )
    got = h2rules.upstream_h2_headers(out, trailers)
    assert got[:4] == [
        (b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"api.test"), (b":path", b"/a"),
    ]  # fmt: skip
    rest = got[4:]
    for f in fields:
        if f[0] not in (b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host",
                        b"x-request-id", b"forwarded"):  # fmt: skip
            assert f in rest
    assert (b"x-forwarded-for", b"10.2.3.4") in rest
    assert all(n not in h2rules._CONNECTION_SPECIFIC for n, _ in rest if n != b"te")
    assert ((b"te", b"trailers") in rest) == trailers


def test_a_response_head_as_a_header_list() -> None:
    head = (
        b"HTTP/1.1 201 Created\r\nContent-Type: text/plain\r\nConnection: keep-alive, X-Hop\r\n"
        b"X-Hop: 1\r\nTransfer-Encoding: chunked\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\n\r\n"
    )
    assert h2rules.response_headers(head) == [
        (b":status", b"201"),
        (b"content-type", b"text/plain"),
        (b"set-cookie", b"a=1"),
        (b"set-cookie", b"b=2"),
    ]


@given(
    st.lists(st.binary(min_size=1, max_size=40), max_size=8),
    st.lists(st.integers(1, 30), min_size=1, max_size=30),
    st.binary(max_size=10),
)
def test_a_chunked_body_is_decoded_however_it_is_split(
    pieces: list[bytes], cuts: list[int], after: bytes
) -> None:
    wire = b"".join(h2rules.chunked(p) for p in pieces) + h2rules.LAST_CHUNK + after
    dec = h2rules.ChunkDecoder()
    out = b""
    pos = 0
    i = 0
    while pos < len(wire) and not dec.done:
        n = cuts[i % len(cuts)]
        out += dec.feed(wire[pos : pos + n])
        pos += n
        i += 1
    assert dec.done and out == b"".join(pieces)
    assert dec.rest + wire[pos:] == after


def test_bad_chunk_framing_raises() -> None:
    with pytest.raises(http1.ProtocolError):
        h2rules.ChunkDecoder().feed(b"zz\r\nab\r\n")


@given(st.lists(st.floats(0, 0.01), min_size=1, max_size=400))
def test_the_reset_budget_allows_its_burst_and_its_rate_never_more(gaps: list[float]) -> None:
    b = h2rules.ResetBudget(burst=20, per_s=100, now=0.0)
    now = 0.0
    allowed = 0
    for g in gaps:
        now += g
        allowed += b.spend(now)
    assert allowed <= 20 + now * 100 + 1e-6
    # Resets no faster than the rate are always allowed.
    b = h2rules.ResetBudget(burst=20, per_s=100, now=0.0)
    assert all(b.spend(i * 0.01) for i in range(1000))


def test_a_client_that_spent_its_budget_gets_it_back_at_the_rate() -> None:
    b = h2rules.ResetBudget(burst=3, per_s=1, now=0.0)
    assert [b.spend(0.0) for _ in range(4)] == [True, True, True, False]
    assert not b.spend(0.5)
    assert b.spend(3.0)


@given(st.integers(0, 10**12), st.lists(st.tuples(st.sampled_from([b"a", b"x-b"]), st.binary())))
def test_content_length_is_what_the_list_declares(
    n: int, others: list[tuple[bytes, bytes]]
) -> None:
    assert h2rules.content_length(others) is None
    assert h2rules.content_length([*others, (b"content-length", b"%d" % n)]) == n
    assert h2rules.content_length([(b"content-length", b"-1"), *others]) is None


@pytest.mark.parametrize("path", [b"http://a.test/", b"a/b", b"", b"*x"])
def test_a_path_not_in_origin_form_is_refused(path: bytes) -> None:
    fields = [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"x"), (b":path", path)]
    with pytest.raises(h2rules.StreamRefused, match="bad request target"):
        h2rules.request_head(fields, True)
