""" "Did you mean": a near name, or none."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from dockmesh.projectfile.suggest import closest, did_you_mean

KEYS = ["healthcheck", "restart", "networks", "environment", "volumes"]


def test_near_names() -> None:
    assert closest("helthcheck", KEYS) == "healthcheck"
    assert closest("Restart", KEYS) == "restart"
    assert closest("zzz", KEYS) is None
    assert did_you_mean("volums", KEYS) == "; did you mean 'volumes'?"
    assert did_you_mean("zzz", KEYS) == ""


@given(st.text(max_size=15), st.lists(st.text(max_size=15), max_size=6))
def test_a_suggestion_is_one_of_the_choices(word: str, choices: list[str]) -> None:
    best = closest(word, choices)
    assert best is None or best in choices
