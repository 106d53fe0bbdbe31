"""Request paths normalised before routing: dot segments, encoded dots, repeated slashes."""

from __future__ import annotations

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from dockmesh.proxy import paths


@pytest.mark.parametrize(
    ("path", "normal"),
    [
        (b"/", b"/"),
        (b"/p/x", b"/p/x"),
        (b"/p/../x", b"/x"),
        (b"/p/%2e%2e/x", b"/x"),
        (b"/p/%2E%2E/x", b"/x"),
        (b"/p/.%2e/x", b"/x"),
        (b"/p/%2e/x", b"/p/x"),
        (b"/p/./x", b"/p/x"),
        (b"/p//x", b"/p/x"),
        (b"/p//../x", b"/x"),  # as an upstream that merges slashes reads it
        (b"/p/x/", b"/p/x/"),
        (b"/p/x/.", b"/p/x/"),
        (b"/p/x/..", b"/p/"),
        (b"/p/..", b"/"),
        (b"/%7Euser/%41", b"/~user/A"),  # unreserved: decoded
        (b"/a%2Fb/%252e%252e", b"/a%2Fb/%252e%252e"),  # reserved and '%': kept
        (b"/p/...%2f/x", b"/p/...%2f/x"),  # one segment, no dot segment hidden in it
        (b"/p/a%2Fb;v=1/%5C", b"/p/a%2Fb;v=1/%5C"),
        (b"/...", b"/..."),
    ],
)
def test_normalise_path(path: bytes, normal: bytes) -> None:
    assert paths.normalise_path(path) == normal


@pytest.mark.parametrize(
    "path", [b"", b"x", b"/..", b"/../", b"/a/../..", b"/%2e%2E", b"/a%", b"/%g0"]
)
def test_refused(path: bytes) -> None:
    assert paths.normalise_path(path) is None


@pytest.mark.parametrize(
    "path",
    [
        b"/p/..%2f/x",  # busybox httpd and nginx serving files decode %2F, then resolve
        b"/p/..%2Fx",
        b"/p/%2e%2e%2Fx",
        b"/p/x%2F..",
        b"/p/..%5Cx",
        b"/p/..\\x",  # IIS and WHATWG URL parsers read a backslash as a slash
        b"/p/x\\..\\..\\admin",
        b"/p/..;/x",  # Tomcat and Jetty drop ;params, then resolve
        b"/p/%2E%2E;a=b/x",
        b"/p/.;/x",
    ],
)
def test_dot_segments_hidden_from_this_reading_are_refused(path: bytes) -> None:
    assert paths.normalise_path(path) is None
    assert not paths.is_normal(path)


@given(
    st.lists(st.sampled_from([b"a", b".", b"..", b"%2e%2E", b"...", b"x;y"]), max_size=5),
    st.sampled_from([b"%2F", b"%2f", b"%5C", b"%5c", b"\\", b";", b";v=1"]),
)
def test_no_dot_segment_survives_any_separator_an_upstream_may_read(
    parts: list[bytes], sep: bytes
) -> None:
    """Whatever the proxy lets through holds no `.` or `..` segment even when `sep` is read
    as a slash (or `;...` is dropped) by the upstream."""
    norm = paths.normalise_path(b"/p/" + sep.join(parts))
    if norm is None:
        return
    for sep_read in (b"%2F", b"%2f", b"%5C", b"%5c", b"\\"):
        norm = norm.replace(sep_read, b"/")
    for seg in norm.split(b"/"):
        assert seg.partition(b";")[0] not in (b".", b"..", b"%2e%2E"), norm


def test_the_query_is_left_alone() -> None:
    assert paths.normalise_target(b"/a/./b?x=/../y&z=%2e") == b"/a/b?x=/../y&z=%2e"
    assert paths.normalise_target(b"/../b?x") is None


_PIECES = st.sampled_from(
    [b"/", b".", b"..", b"%2e", b"%2E", b"%2f", b"%25", b"%", b"a", b"p", b"?", b"~", b"%41"]
)


@given(st.one_of(st.binary(max_size=64), st.lists(_PIECES, max_size=16).map(b"".join)))
@example(b"/p/%2e%2e/%2e%2e")
@example(b"/%2e%2e%2f")
def test_any_bytes_give_a_normal_path_or_none_never_an_exception(data: bytes) -> None:
    out = paths.normalise_target(data)
    if out is None:
        return
    path = out.partition(b"?")[0]
    assert path.startswith(b"/")
    segments = path.split(b"/")[1:]
    # Never a dot segment, an empty segment but the last, or an escaped unreserved byte.
    assert not any(s in (b".", b"..") for s in segments)
    assert b"" not in segments[:-1]
    assert paths.normalise_target(out) == out  # idempotent
    assert paths.is_normal(out)


@given(st.lists(st.sampled_from([b"a", b"b", b".", b"..", b"%2e%2e", b"", b".%2E"]), max_size=12))
def test_never_climbs_above_the_root(segments: list[bytes]) -> None:
    """Below a prefix, a path either stays below it or is refused at the root: it never ends
    somewhere a plain walk of its segments from the root would not."""
    depth = 0
    for s in segments:
        if s in (b"..", b"%2e%2e", b".%2E"):
            depth -= 1
            if depth < 0:
                break
        elif s not in (b"", b"."):
            depth += 1
    out = paths.normalise_path(b"/" + b"/".join(segments))
    assert (out is None) == (depth < 0)


@given(st.binary(max_size=64))
def test_is_normal_agrees_with_normalise(data: bytes) -> None:
    assert paths.is_normal(data) == (paths.normalise_target(data) == data)


@given(
    st.lists(
        st.sampled_from([b"/", b".", b"..", b"%2e", b"%2F", b"%2f", b"a", b"%41", b"//"]),
        max_size=16,
    ).map(b"".join)
)
@example(b"/p/..%2F..%2Fx")
@example(b"/p%2F..%2F..")
def test_an_encoded_slash_is_an_ordinary_character_kept_as_sent(path: bytes) -> None:
    """`%2F` (either case) is never decoded nor read as a separator: normalising the path
    gives what normalising it with a plain letter in its place gives, the letter put back;
    but for a dot segment hidden behind it, which an upstream decoding `%2F` would resolve
    (`/p/..%2F..%2Fx` leaves `/p/` there): refused."""
    path = b"/" + path
    as_letter = path.replace(b"%2F", b"U").replace(b"%2f", b"L")
    out = paths.normalise_path(path)
    plain = paths.normalise_path(as_letter)
    if plain is None:
        assert out is None
    else:
        # A segment of the request (its dots decoded) that `%2F` read as a slash would split
        # into a dot segment.
        hidden = any(
            part in (b".", b"..")
            for seg in as_letter.replace(b"%2e", b".").split(b"/")
            if b"U" in seg or b"L" in seg
            for part in seg.replace(b"L", b"U").split(b"U")
        )
        assert out == (None if hidden else plain.replace(b"U", b"%2F").replace(b"L", b"%2f"))
