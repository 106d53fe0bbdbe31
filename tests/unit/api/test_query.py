"""Query strings as Consul reads them: flags by presence, Go's uint and bool rules, blocking
parameters, and no query string that ends in anything but values or a one-line 400."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dockmesh.api import query
from dockmesh.api.errors import ApiError
from dockmesh.api.query import Blocking


def pairs(raw: str) -> list[tuple[str, str]]:
    return query.parse_query_string(raw)


def test_flags_count_by_presence_and_values_decode() -> None:
    p = pairs("recurse&keys=&separator=%2F&tag=a&tag=b+c&dc=dc1")
    assert query.has(p, "recurse") and query.has(p, "keys") and not query.has(p, "raw")
    assert query.get(p, "separator") == "/"
    assert query.get_all(p, "tag") == ["a", "b c"]


def test_blocking_parameters() -> None:
    assert query.parse_blocking(pairs("")) == Blocking(0, 0.0)
    assert query.parse_blocking(pairs("index=")) == Blocking(0, 0.0)
    assert query.parse_blocking(pairs("index=12&wait=10s")) == Blocking(12, 10.0)
    assert query.parse_blocking(pairs("index=12&wait=1m30s")) == Blocking(12, 90.0)
    # Consul's default wait is five minutes and its cap ten.
    assert query.parse_blocking(pairs("index=12")) == Blocking(12, 300.0)
    assert query.parse_blocking(pairs("index=12&wait=2h")) == Blocking(12, 600.0)
    assert query.parse_blocking(pairs("index=12&wait=0")) == Blocking(12, 0.0)
    assert query.parse_blocking(pairs(f"index={2**64 - 1}")).index == 2**64 - 1


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("index=-1", "Invalid index"),
        ("index=%2B5", "Invalid index"),
        ("index=1.5", "Invalid index"),
        (f"index={2**64}", "larger than 2^64-1"),
        ("index=%D9%A3", "Invalid index"),  # an Arabic-Indic digit is not a digit to Go
        ("index=1&wait=10", "Invalid wait time"),
        ("index=1&wait=-5s", "Invalid wait time"),
        ("index=1&wait=soon", "Invalid wait time"),
    ],
)
def test_bad_blocking_parameters_are_400(raw: str, reason: str) -> None:
    with pytest.raises(ApiError) as e:
        query.parse_blocking(pairs(raw))
    assert e.value.status == 400 and reason in e.value.reason


def test_uint_and_bool_parameters() -> None:
    assert query.uint_param(pairs("cas=0"), "cas") == 0
    assert query.uint_param(pairs(""), "cas") is None
    with pytest.raises(ApiError, match="Invalid flags"):
        query.uint_param(pairs("flags=x"), "flags")
    with pytest.raises(ApiError, match="Invalid cas"):
        query.uint_param(pairs("cas"), "cas")
    assert query.bool_param(pairs("passing"), "passing")
    assert query.bool_param(pairs("passing=1"), "passing")
    assert query.bool_param(pairs("passing=true"), "passing")
    assert not query.bool_param(pairs("passing=false"), "passing")
    assert not query.bool_param(pairs(""), "passing")
    with pytest.raises(ApiError, match=r"\?passing"):
        query.bool_param(pairs("passing=maybe"), "passing")


def test_bad_bytes_and_floods_are_400() -> None:
    with pytest.raises(ApiError, match="not valid UTF-8"):
        pairs("key=%FF")
    with pytest.raises(ApiError, match="more than 256"):
        pairs("&".join(["a=1"] * 300))


def test_filters_dockmesh_does_not_implement_are_refused() -> None:
    query.refuse_unsupported(pairs("dc=dc1&stale&token=x&near=_agent"))
    # ?filter is Consul's expression language (`api.filter`); ?node-meta is not implemented.
    query.refuse_unsupported(pairs("filter=Service%20%3D%3D%20web"))
    with pytest.raises(ApiError, match=r"\?node-meta is not supported"):
        query.refuse_unsupported(pairs("node-meta=a:b"))


def _is_one_line_400(e: ApiError) -> None:
    assert e.status == 400 and "\n" not in e.reason


@settings(max_examples=500)
@given(st.text(max_size=80) | st.from_regex(r"(index=[-+0-9%a-f.]{0,25}&wait=[0-9a-zµ.%]{0,8})"))
def test_any_query_string_parses_or_is_refused_cleanly(raw: str) -> None:
    try:
        p = pairs(raw)
        b = query.parse_blocking(p)
        query.bool_param(p, "passing")
        query.uint_param(p, "cas")
    except ApiError as e:
        _is_one_line_400(e)
    else:
        assert 0 <= b.index <= 2**64 - 1
        assert 0 <= b.wait_s <= query.MAX_WAIT_S
