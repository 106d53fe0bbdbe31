"""The canonical JSON form (dockmesh.model.canonical): one text per value, whatever order its
mappings were built in, and a digest that follows the text."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from dockmesh.model.canonical import canonical_json, digest

values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=6), c, max_size=4),
    max_leaves=20,
)


def reordered(value: Any) -> Any:
    """The same value with every mapping's keys inserted in reverse order."""
    if isinstance(value, dict):
        return {k: reordered(value[k]) for k in reversed(list(value))}
    if isinstance(value, list):
        return [reordered(v) for v in value]
    return value


def test_canonical_json_is_stable() -> None:
    assert canonical_json({"b": 1, "a": [1, "é"]}) == '{"a":[1,"é"],"b":1}'
    assert digest({"a": 1}) == digest({"a": 1}) != digest({"a": 2})


@given(values)
def test_the_text_reads_back_and_does_not_depend_on_key_order(value: Any) -> None:
    text = canonical_json(value)
    assert json.loads(text) == value
    assert canonical_json(reordered(value)) == text
    assert digest(reordered(value)) == digest(value)


@given(values, st.integers(1, 64))
def test_a_digest_is_hex_of_the_length_asked_and_a_prefix_of_the_longer_one(
    value: Any, length: int
) -> None:
    d = digest(value, length)
    assert len(d) == length and all(c in "0123456789abcdef" for c in d)
    assert digest(value, 64).startswith(d)


def test_text_that_is_not_ascii_is_kept_as_utf8_not_escaped() -> None:
    assert canonical_json({"k": "漢"}) == '{"k":"漢"}'
    assert digest({"k": "漢"}) != digest({"k": "\\u6f22"})
