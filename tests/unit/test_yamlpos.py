from __future__ import annotations

from dockmesh.spec.problems import Problem, format_problem, line_of
from dockmesh.spec.yamlpos import load_located

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
