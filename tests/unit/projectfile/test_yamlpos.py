from __future__ import annotations

from typing import Any

import yaml
from hypothesis import given
from hypothesis import strategies as st

from dockmesh.projectfile.problems import Problem, format_problem, line_of
from dockmesh.projectfile.yamlpos import load_located

DOC = """\
project: p
networks:
  a:
    subnet: 10.0.0.0/24
services:
  web:
    image: x
    ports:
      - "80:80"
      - 81
"""


def test_lines_of_keys_and_items() -> None:
    loc = load_located(DOC)
    assert loc.problems == []
    assert loc.lines[("networks", "a", "subnet")] == 4
    assert loc.lines[("services", "web", "ports", 1)] == 10
    assert loc.data["services"]["web"]["ports"] == ["80:80", 81]


def test_missing_path_points_at_nearest_parent() -> None:
    loc = load_located(DOC)
    assert line_of(("services", "web", "healthcheck", "port"), loc.lines) == 6


def test_duplicate_keys_are_problems_at_the_second_line() -> None:
    loc = load_located("networks:\n  a: {}\n  a: {}\n")
    [p] = loc.problems
    assert format_problem("f.yaml", p, loc.lines) == (
        "f.yaml:3: networks.a: duplicate key 'a' (first on line 2)"
    )


def test_malformed_yaml_has_a_line() -> None:
    loc = load_located("a: 1\nb: [1,\n")
    [p] = loc.problems
    assert "malformed YAML" in p.message
    assert format_problem("f", p, loc.lines).startswith("f:3:")


def test_empty_document_is_empty_mapping() -> None:
    assert load_located("").data == {}
    assert format_problem("f", Problem((), "x"), {}) == "f:1: (document): x"


keys = st.text(alphabet="abcdefghij_-", min_size=1, max_size=6)
scalars = st.one_of(
    st.integers(-1000, 1000),
    st.booleans(),
    st.none(),
    st.text(alphabet="xyz 0123./:", min_size=1, max_size=8),
)
documents = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(keys, inner, min_size=1, max_size=4)
    ),
    max_leaves=20,
)


def paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(value, dict):
        for k, v in value.items():
            out += paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += paths(v, (*prefix, i))
    return out


@given(st.dictionaries(keys, documents, min_size=1, max_size=5))
def test_round_trip_and_every_path_has_a_line(doc: dict[str, Any]) -> None:
    text = yaml.safe_dump(doc, sort_keys=False)
    loc = load_located(text)
    assert loc.problems == []
    assert loc.data == doc
    n_lines = len(text.splitlines())
    for p in paths(doc):
        assert 1 <= loc.lines[p] <= n_lines
    # keys appear in file order
    top = [loc.lines[(k,)] for k in doc]
    assert top == sorted(top)
