"""The filter's regular expressions: the same yes/no as Python's `re` (RE2's semantics,
where they agree) on a common subset, RE2's refusals, and time linear in the text."""

from __future__ import annotations

import re
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dockmesh.api.regex import Budget, BudgetExceeded, RegexError, compile_regex

PATTERNS = [
    "a", "^a$", "a*b", "(foo|bar)+$", "[a-z]+[0-9]{2,3}", "x{0}y", "^x{0}y", "a.c", "\\d+", "[^abc]",
    "a{2}", "a{2,}", "a?b?c?", "colou?r", "^(ab|cd)*e$", "[\\w-]+", "a|", "\\.", "{", "a{b",
    "x{1,2}?", "", "(?:ab)+", "(?P<n>a)b", "[]a]", "[a-]", "\\s\\S", "^", "$", "a+?",
]  # fmt: skip


@pytest.mark.parametrize("pattern", PATTERNS)
def test_the_same_answers_as_pythons_re(pattern: str) -> None:
    ours, theirs = compile_regex(pattern), re.compile(pattern)
    for text in ["", "a", "ab", "aab", "foobar", "web12", "web1234", "y", "a.c", "abc", "{",
                 "a{b", "x", "xy", "color", "colour", "abcde", "cde", "e", "d-e", " x", "]", "-"]:  # fmt: skip
        assert ours.search(text) == bool(theirs.search(text)), (pattern, text)


@settings(max_examples=1000, deadline=None)
@given(
    st.from_regex(r"[ab.]{0,3}([*+?]|\{1,2\})?(\|[ab]{1,2})?", fullmatch=True),
    st.text(alphabet="abc", max_size=8),
)
def test_generated_patterns_agree_with_re(pattern: str, text: str) -> None:
    try:
        theirs = re.compile(pattern)
    except re.error:
        return
    assert compile_regex(pattern).search(text) == bool(theirs.search(text))


@pytest.mark.parametrize(
    "pattern",
    ["(a", "a)", "a**", "*a", "\\1", "(?=a)", "(?!a)", "(?<=a)", "[a", "a{3,1}", "\\",
     "a{1001}", "[[:alpha:]]", "\\p{L}"],
)  # fmt: skip
def test_what_re2_refuses_is_refused_with_a_reason(pattern: str) -> None:
    with pytest.raises(RegexError) as e:
        compile_regex(pattern)
    assert str(e.value) and "\n" not in str(e.value)


def test_huge_repetitions_are_refused_not_built() -> None:
    with pytest.raises(RegexError, match="too large"):
        compile_regex("(a{1000}){1000}")


def test_time_is_linear_where_backtracking_is_exponential() -> None:
    started = time.perf_counter()
    assert not compile_regex("a*" * 40 + "b").search("a" * 512)
    assert compile_regex("^(a|aa)+$").search("a" * 512)
    assert time.perf_counter() - started < 5


@settings(max_examples=1000, deadline=None)
@given(st.text(max_size=40))
def test_any_pattern_compiles_or_is_refused(pattern: str) -> None:
    try:
        r = compile_regex(pattern)
    except RegexError:
        return
    r.search("some text 123")


def _patterns() -> st.SearchStrategy[str]:
    atoms = st.sampled_from(["a", "b", "c", ".", "[ab]", "[^a]", "[a-c]", "\\w", "\\d", "^", "$"])

    def wrap(inner: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
        quantified = st.tuples(
            inner, st.sampled_from(["", "*", "+", "?", "{2}", "{0,2}", "{1,}", "*?"])
        ).map(lambda t: f"(?:{t[0]}){t[1]}" if t[1] else t[0])
        return st.one_of(
            quantified,
            st.lists(inner, min_size=2, max_size=3).map("".join),
            st.lists(inner, min_size=2, max_size=3).map(lambda xs: "(" + "|".join(xs) + ")"),
        )

    return st.recursive(atoms, wrap, max_leaves=8)


@settings(max_examples=2000, deadline=None)
@given(_patterns(), st.text(alphabet="abc1", max_size=10))
def test_composed_patterns_agree_with_re(pattern: str, text: str) -> None:
    """Python's `re` and RE2 agree on this subset for texts without a newline."""
    assert compile_regex(pattern).search(text) == bool(re.search(pattern, text)), pattern


@settings(max_examples=500, deadline=None)
@given(_patterns(), st.lists(st.text(alphabet="abc1", max_size=8), min_size=2, max_size=8))
def test_one_compiled_pattern_answers_many_texts_as_re(pattern: str, texts: list[str]) -> None:
    """A compiled pattern remembers the transitions it built: what one text taught it (at
    the start, in the middle, at the end) never changes the next text's answer."""
    ours = compile_regex(pattern)
    assert [ours.search(t) for t in texts] == [bool(re.search(pattern, t)) for t in texts]


def test_a_pattern_whose_state_sets_keep_growing_runs_out_of_budget_not_time() -> None:
    # Every character read makes a new, larger set of states (up to 1800 of them).
    pattern = compile_regex("(.|.|.|.|.|.|.){140}z")
    started = time.process_time()
    with pytest.raises(BudgetExceeded, match="steps"):
        pattern.search("a" * 2048, Budget())
    assert time.process_time() - started < 0.5  # unbounded: 1.1 s for this one text


def test_a_pattern_of_the_largest_size_whose_sets_settle_costs_little() -> None:
    # `.?` may skip: every state is reached at once, one set that steps to itself.
    budget = Budget()
    assert not compile_regex("(.?.?.?.?){240}z").search("a" * 4096, budget)
    assert budget.left > budget.steps // 2


def test_common_patterns_over_ten_thousand_texts_fit_in_one_budget() -> None:
    budget = Budget()
    for pattern in ["^web-[0-9]+$", "(?i)API.*v[0-9]", "(foo|bar)+$", "[a-z]+-[0-9]{1,4}"]:
        compiled = compile_regex(pattern)
        assert sum(compiled.search(f"web-{i}-api-v2", budget) for i in range(10_000)) >= 0
    assert budget.left > 0
