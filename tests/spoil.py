"""Valid documents with one part spoiled: what a fuzz test needs beside pure garbage, so that
most of its examples get past the first check and reach the parser's accepting branch (see
tests/outcomes.py)."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

any_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=5), c, max_size=3),
    max_leaves=10,
)


def paths(doc: Any, at: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """The path of every value inside a JSON document (not the document itself)."""
    inner: list[tuple[Any, ...]] = []
    if isinstance(doc, dict):
        for k, v in doc.items():
            inner += paths(v, (*at, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            inner += paths(v, (*at, i))
    return [at, *inner] if at else inner


def changed(doc: Any, path: tuple[Any, ...], value: Any, remove: bool = False) -> Any:
    """A copy of `doc` with the value at `path` replaced by `value` (or removed)."""
    if not path:
        return value
    head, rest = path[0], path[1:]
    if isinstance(doc, dict):
        out = {k: v for k, v in doc.items() if not (remove and k == head and not rest)}
        if head in out:
            out[head] = changed(doc[head], rest, value, remove)
        return out
    items = [v for i, v in enumerate(doc) if not (remove and i == head and not rest)]
    if not (remove and not rest):
        items[head] = changed(doc[head], rest, value, remove)
    return items


@st.composite
def spoiled(
    draw: st.DrawFn, docs: st.SearchStrategy[Any], values: st.SearchStrategy[Any] = any_json
) -> Any:
    """A document of `docs` with one value replaced by one of `values`, or removed."""
    doc = draw(docs)
    where = paths(doc)
    if not where:
        return draw(values)
    path = draw(st.sampled_from(where))
    if draw(st.booleans()):
        return changed(doc, path, None, remove=True)
    return changed(doc, path, draw(values))
