"""The API's one error (dockmesh.api.errors): a status and a reason a client can print on one
line, and a client's value quoted so it can neither break that line nor fill it."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from dockmesh.api.errors import ApiError, bad_request, not_found, shown


def test_a_reason_is_one_line() -> None:
    e = ApiError(400, "bad\n  value\tfor   index\r\n")
    assert (e.status, e.reason, str(e)) == (400, "bad value for index", "bad value for index")
    assert ApiError(400, " \n ").reason == "bad request"
    assert (bad_request("x").status, not_found("y").status) == (400, 404)


@given(st.text(max_size=200) | st.binary(max_size=200) | st.integers())
def test_a_client_s_value_is_quoted_short_and_printable(value: object) -> None:
    text = shown(value)
    assert len(text) <= 60 and "\n" not in text and "\r" not in text
    assert text == repr(value) or (text.endswith("…") and repr(value).startswith(text[:-1]))
