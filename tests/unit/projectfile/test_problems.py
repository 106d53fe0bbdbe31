"""A problem in a topology file (dockmesh.projectfile.problems): its line, from the deepest part
of its path the document has, and one line of visible text whatever the file's keys hold.
(With lines from real YAML: tests/unit/projectfile/test_yamlpos.py.)"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from dockmesh.projectfile.problems import Problem, format_problem, line_of, visible

LINES = {(): 1, ("services",): 2, ("services", "web"): 3, ("services", "web", "ports", 0): 5}


def test_the_line_of_a_path_or_of_its_nearest_parent() -> None:
    assert line_of(("services", "web", "ports", 0), LINES) == 5
    assert line_of(("services", "web", "image"), LINES) == 3
    assert line_of(("networks", "a"), LINES) == 1
    assert line_of(("x",), {}) == 1


def test_a_problem_on_its_line_with_its_dotted_path() -> None:
    p = Problem(("services", "web", "ports", 0), "not a port")
    assert p.dotted() == "services.web.ports.0"
    assert format_problem("f.yaml", p, LINES) == "f.yaml:5: services.web.ports.0: not a port"
    assert format_problem("f", Problem((), "empty"), {}) == "f:1: (document): empty"
    # A line given (a duplicate key's second place) wins over the path's.
    assert format_problem("f", Problem(("services",), "twice", line=9), LINES).startswith("f:9:")


@given(
    st.text(max_size=30),
    st.text(max_size=10),
    st.lists(st.text(max_size=8) | st.integers(0, 9), max_size=3),
)
def test_any_text_is_reported_on_one_visible_line(
    message: str, filename: str, path: list[str | int]
) -> None:
    line = format_problem(filename, Problem(tuple(path), message), {})
    assert line.isprintable() and "\n" not in line
    assert visible(line) == line
    if message.isprintable():
        assert line.endswith(message)
