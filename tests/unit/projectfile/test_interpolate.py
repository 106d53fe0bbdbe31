"""`${VAR}` interpolation and the `.env` file, as Compose does them."""

from __future__ import annotations

import contextlib
import os
import re
import tempfile

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dockmesh.errors import SpecError
from dockmesh.projectfile.context import EngineContext
from dockmesh.projectfile.interpolate import (
    MAX_NESTING,
    MAX_VALUE_CHARS,
    InterpolationError,
    _env_value,
    interpolate_document,
    parse_dotenv,
    substitute_variables,
)
from dockmesh.projectfile.load import load_spec

NAMES = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,8}", fullmatch=True)
VALUES = st.text(st.characters(exclude_categories=["Cs"]), max_size=12)
ENVS = st.dictionaries(NAMES, VALUES, max_size=5)
PLAIN = st.text(st.characters(exclude_characters="$", exclude_categories=["Cs"]), max_size=20)


def sub(text: str, **env: str) -> str:
    return substitute_variables(text, env).text


def test_the_forms() -> None:
    env = {"A": "a", "E": ""}
    assert sub("${A}-$A-${A:-x}-${A-x}", **env) == "a-a-a-a"
    assert sub("${E:-x}|${E-x}|${U:-x}|${U-x}", **env) == "x||x|x"
    assert sub("${A:+y}|${E:+y}|${E+y}|${U+y}", **env) == "y||y|"
    assert sub("$$A $${A} $$", **env) == "$A ${A} $"
    assert sub("${U:-${A:-z}}/${U:-${V:-z}}", **env) == "a/z"
    assert sub("cost: 5$ and $1 and $-", **env) == "cost: 5$ and $1 and $-"


def test_required() -> None:
    with pytest.raises(InterpolationError, match="variable DB is not set: give DB"):
        sub("${DB:?give DB}")
    with pytest.raises(InterpolationError, match="variable DB is empty"):
        sub("${DB:?}", DB="")
    assert sub("${DB?x}", DB="") == ""


@pytest.mark.parametrize("text", ["${A", "${}", "${1A}", "${A*x}", "x ${A:-${B}"])
def test_malformed(text: str) -> None:
    with pytest.raises(InterpolationError):
        sub(text, A="a")


def test_unset_is_empty_and_named() -> None:
    done = substitute_variables("$X ${Y} ${X}", {})
    assert done.text == "  "
    assert done.unset == ("X", "Y")


@given(PLAIN, ENVS)
def test_text_without_dollar_is_kept(text: str, env: dict[str, str]) -> None:
    assert substitute_variables(text, env).text == text


@given(PLAIN, ENVS)
def test_dollar_dollar_is_a_dollar(text: str, env: dict[str, str]) -> None:
    escaped = text.replace("x", "$$")
    assert substitute_variables(escaped, env).text == text.replace("x", "$")


@given(NAMES, VALUES, PLAIN, PLAIN)
def test_a_set_variable_is_its_value(name: str, value: str, before: str, after: str) -> None:
    env = {name: value}
    for form in (f"${{{name}}}", f"${{{name}-d}}", f"${{{name}?e}}"):
        assert sub(before + form + after, **env) == before + value + after
    # A value is never read again: its own `$` stays.
    assert sub(f"${{{name}}}", **{name: "$" + name}) == "$" + name


@given(NAMES, VALUES, ENVS)
def test_defaults(name: str, default: str, env: dict[str, str]) -> None:
    env.pop(name, None)
    default = default.replace("$", "").replace("}", "")
    assert sub(f"${{{name}:-{default}}}", **env) == default
    assert sub(f"${{{name}-{default}}}", **env) == default
    assert sub(f"${{{name}:-{default}}}", **{**env, name: ""}) == default
    assert sub(f"${{{name}-{default}}}", **{**env, name: ""}) == ""


@given(st.text(max_size=30), ENVS)
def test_any_text_substitutes_or_says_why(text: str, env: dict[str, str]) -> None:
    try:
        substitute_variables(text, env)
    except InterpolationError as e:
        message = str(e)
    else:
        return
    assert message


def test_document_values_not_keys_and_typed_fields() -> None:
    data = {"services": {"$K": {"image": "img:${TAG}", "replicas": "${N}", "labels": {"v": "$N"}}}}
    out, problems, warnings = interpolate_document(data, {"TAG": "1", "N": "3"})
    assert out == {"services": {"$K": {"image": "img:1", "replicas": 3, "labels": {"v": "3"}}}}
    assert problems == warnings == []
    _, problems, warnings = interpolate_document({"a": ["${X:?set X}", "$Y"]}, {})
    assert [(p.path, p.message) for p in problems] == [(("a", 0), "variable X is not set: set X")]
    assert [w.path for w in warnings] == [("a", 1)]


def test_dotenv() -> None:
    text = "\n".join(
        [
            "# a comment",
            "",
            "A=1",
            "export B = two words  # a comment",
            "C='single $X # kept'",
            'D="line\\nnext \\"q\\""',
            "E=",
            "F",
            "G=a#b",
            "bad line here",
            "H='open",
        ]
    )
    values, problems = parse_dotenv(text)
    assert values == {
        "A": "1",
        "B": "two words",
        "C": "single $X # kept",
        "D": 'line\nnext "q"',
        "E": "",
        "G": "a#b",
    }
    assert [n for n, _ in problems] == [10, 11]


@given(st.dictionaries(NAMES, st.from_regex(r"[A-Za-z0-9_./:-]{0,10}", fullmatch=True)))
def test_dotenv_reads_what_it_is_written(env: dict[str, str]) -> None:
    text = "".join(f"{k}={v}\n" for k, v in env.items())
    assert parse_dotenv(text) == (env, [])


def _write(folder: str, body: str, dotenv: str | None = None) -> str:
    path = os.path.join(folder, "dockmesh.yaml")
    with open(path, "w") as f:
        f.write(body)
    if dotenv is not None:
        with open(os.path.join(folder, ".env"), "w") as f:
            f.write(dotenv)
    return path


def test_file_with_dotenv_and_environment() -> None:
    body = (
        "version: '3.8'\n"
        "project: ${PROJECT:-shop}\n"
        "services:\n"
        "  web:\n"
        "    image: dockmesh/toolbox:${TAG}\n"
        "    command: sh -c 'echo $$HOME ${MISSING}'\n"
        "    replicas: ${N:-1}\n"
    )
    with tempfile.TemporaryDirectory(prefix="dockmesh-env-") as d:
        path = _write(d, body, "TAG=v1\nN=2\n")
        loaded = load_spec(path, env={"N": "3"})  # the environment wins over .env
        svc = loaded.spec.services["web"]
        assert (loaded.project, svc.image, svc.replicas) == ("shop", "dockmesh/toolbox:v1", 3)
        assert svc.command == "sh -c 'echo $HOME '"
        assert loaded.warnings == (f"{path}:6: services.web.command: variable MISSING is not set: "
                                   "substituted an empty string",)  # fmt: skip


def test_file_problems_are_located() -> None:
    body = "services:\n  web:\n    image: ${IMAGE:?name an image}\n    command: ${oops\n"
    with tempfile.TemporaryDirectory(prefix="dockmesh-env-") as d:
        path = _write(d, body)
        with pytest.raises(SpecError) as e:
            load_spec(path, env={}).check(EngineContext())
        assert e.value.lines[0] == (
            f"{path}:3: services.web.image: variable IMAGE is not set: name an image"
        )
        assert re.fullmatch(re.escape(path) + r":4: services.web.command: .*never closed.*",
                            e.value.lines[1])  # fmt: skip
        assert len(e.value.lines) == 2


def test_bad_dotenv_is_located() -> None:
    with tempfile.TemporaryDirectory(prefix="dockmesh-env-") as d:
        path = _write(d, "services: {}\n", "A=1\nB='x\n")
        with pytest.raises(SpecError) as e:
            load_spec(path, env={})
        assert e.value.lines == [
            f"{os.path.join(d, '.env')}:2: (env): B: the ' quote is never closed"
        ]


@given(st.text(st.sampled_from(list("${}:-?+AB_ \n")), max_size=40), ENVS)
def test_text_made_of_the_syntax_substitutes_or_says_why(text: str, env: dict[str, str]) -> None:
    # Any text shows `${` rarely; this one is made of little else. No other exception.
    with contextlib.suppress(InterpolationError):
        substitute_variables(text, {**env, "A": "${B}", "B": "$$"})


def test_a_value_is_never_read_again() -> None:
    env = {"A": "${B}", "B": "no", "C": "$$ $B ${B:-x}"}
    assert sub("${A}|$A|${U:-${A}}|${C}", **env) == "${B}|${B}|${B}|$$ $B ${B:-x}"


def test_nesting_is_bounded_and_linear() -> None:
    # Nested defaults each re-read the rest: 50 000 levels took 32 s and 470 MB, and 2 000
    # ended in a RecursionError traceback.
    ok = "${A:-" * MAX_NESTING + "x" + "}" * MAX_NESTING
    assert sub(ok) == "x"
    for n in (MAX_NESTING + 1, 2000, 200_000):
        with pytest.raises(InterpolationError, match=f"nested more than {MAX_NESTING} deep"):
            sub("${A:-" * n + "x" + "}" * n)


def test_what_substitution_makes_is_bounded() -> None:
    # `$A` 30 000 times with a 100 kB A took 3 GB before it was stopped.
    big = "x" * (MAX_VALUE_CHARS // 8)
    assert sub("$A" * 8, A=big) == big * 8
    with pytest.raises(InterpolationError, match="the value would be longer than 1 Mi"):
        sub("$A" * 9, A=big)
    with pytest.raises(InterpolationError, match="the value would be longer than 1 Mi"):
        sub("${U:-" + "$A" * 9 + "}", A=big)
    doc = {"c": ["$A" * 8] * 20}
    data, problems, _ = interpolate_document(doc, {"A": big})
    assert data["c"][:16] == [big * 8] * 16
    assert [p.path for p in problems] == [("c", i) for i in range(16, 20)]
    assert "the file's values would be longer than 16 Mi" in problems[0].message


@given(st.integers(1, MAX_NESTING), st.booleans())
def test_a_nested_default_is_counted_once(depth: int, from_env: bool) -> None:
    # Counted again at each level it was handed up, a 100 KiB default 11 deep was "longer
    # than 1 Mi"; the value is 100 KiB.
    big = "x" * (MAX_VALUE_CHARS // 10)
    inner = "$B" if from_env else big
    text = "${A:-" * depth + inner + "}" * depth
    assert sub(text, B=big) == big
    assert sub("${A:+" * depth + inner + "}" * depth, A="a", B=big) == big


@pytest.mark.parametrize(
    "line", ["export" + " " * 200_000 + "!", "A" + " " * 200_000 + "!", " " * 200_000 + "A=1 "]
)
def test_a_long_run_of_blanks_in_dotenv_reads_at_once(line: str) -> None:
    # One pattern for the whole line split a run of blanks between its two `\s*` every way:
    # `export` and a million spaces took minutes.
    values, problems = parse_dotenv(line)
    assert (values, [n for n, _ in problems]) in (({}, [1]), ({"A": "1"}, []))


@given(st.lists(st.sampled_from([*"AB_=# '\"\\\t.-x", "export "]), max_size=20).map("".join))
def test_dotenv_lines_read_as_the_one_pattern_read_them(line: str) -> None:
    old = re.compile(r"\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_.-]*)\s*(?:=(.*))?\s*")
    values, problems = parse_dotenv(line)
    m = old.fullmatch(line)
    if not line.strip() or line.strip().startswith("#"):
        assert (values, problems) == ({}, [])
    elif m is None:
        assert values == {} and [n for n, _ in problems] == [1]
    elif m.group(2) is None:
        assert (values, problems) == ({}, [])
    else:
        try:
            expected: tuple[dict[str, str], list[int]] = (
                {m.group(1): _env_value(m.group(2).strip())[0]},
                [],
            )
        except ValueError:
            expected = ({}, [1])
        assert (values, [n for n, _ in problems]) == expected


def test_dotenv_values_are_interpolated_as_compose_does() -> None:
    """Unquoted and double-quoted values take `${…}` from the environment over the file's
    earlier lines; single-quoted ones, and `\\$` and `$$`, keep a `$`."""
    text = "\n".join(
        [
            "A=1",
            "B=${A}-x",
            'C="${A} \\$A $$A"',
            "D='${A}'",
            "E=${UNSET:-dflt}${UNSET}",
            "F=${HOST}",
            "G=$B",
            "H=${NEEDED:?set NEEDED}",
            "I=${A",
        ]
    )
    values, problems = parse_dotenv(text, {"HOST": "h"})
    assert values == {
        "A": "1",
        "B": "1-x",
        "C": "1 $A $A",
        "D": "${A}",
        "E": "dflt",
        "F": "h",
        "G": "1-x",  # what a line made is not read again
    }
    assert [n for n, _ in problems] == [8, 9]
    assert "set NEEDED" in problems[0][1]
    # The environment wins over the file's own lines, as it does over the file.
    assert parse_dotenv("A=1\nB=$A\n", {"A": "env"})[0] == {"A": "1", "B": "env"}
    # Without an environment (an env_file): as written.
    assert parse_dotenv("B=${A}\n")[0] == {"B": "${A}"}


def test_dotenv_reads_compose_s_documented_examples() -> None:
    # Compose's "env file syntax": each of these was refused ("not NAME=value", "text after
    # the closing quote", "never closed") and stopped `up`.
    text = (
        "A='Let\\'s go!'\n"
        "B: VAL\n"
        "C = VAL  \n"
        'D="{\\"hello\\": \\"json\\"}"\n'
        "E='some\\tvalue'\n"
        "F=some\\tvalue\n"
        "KEY='SOME\n"
        "VALUE'\n"
        'G="x\n'
        "  $A # kept\n"
        '" # comment\n'
        "H=$KEY\n"
    )
    values, problems = parse_dotenv(text, {})
    assert problems == []
    assert values == {
        "A": "Let's go!",
        "B": "VAL",
        "C": "VAL",
        "D": '{"hello": "json"}',
        "E": "some\\tvalue",
        "F": "some\\tvalue",
        "KEY": "SOME\nVALUE",
        "G": "x\n  Let's go! # kept\n",
        "H": "SOME\nVALUE",
    }


@given(st.text(st.characters(exclude_categories=["Cs"], exclude_characters="'\\"), max_size=30))
def test_a_single_quoted_value_spans_lines_as_written(value: str) -> None:
    lines = value.splitlines()
    if len(lines) < 2 or "\r\n" in value or value != "\n".join(lines):
        return  # what splitlines splits on and "\n" joins differ: not this property
    values, problems = parse_dotenv(f"A='{value}'\nB=1\n", {})
    assert (values, problems) == ({"A": value, "B": "1"}, [])


def test_an_unclosed_quote_ends_the_file_and_reads_it_once() -> None:
    # The rest of the file was the value (Compose stops there too), said at its first line;
    # looking for the closing quote from each of 200 000 lines was quadratic.
    values, problems = parse_dotenv("A=1\nB='x\n" + 'C="\n' * 200_000, {})
    assert (values, problems) == ({"A": "1"}, [(2, "B: the ' quote is never closed")])
    values, problems = parse_dotenv("A='\n" * 200_001, {})
    assert values == {"A": "\nA="} and [n for n, _ in problems] == [200_001]


def test_dotenv_substitution_is_bounded_for_the_whole_file() -> None:
    # Each line doubles the last: 1 KiB, then 2, 4 … past 16 MiB in all.
    lines = ["A0=" + "x" * 1024] + [f"A{i}=$A{i - 1}$A{i - 1}" for i in range(1, 30)]
    values, problems = parse_dotenv("\n".join(lines), {})
    assert problems and all("longer than" in msg for _, msg in problems)
    assert sum(len(v) for v in values.values()) <= 17 << 20


def test_file_takes_dotenv_values_that_refer_to_each_other() -> None:
    with tempfile.TemporaryDirectory(prefix="dockmesh-env-") as d:
        path = _write(
            d,
            "services:\n  web:\n    image: ${IMAGE}\n",
            "REPO=dockmesh\nIMAGE=${REPO}/toolbox:${TAG:-latest}\n",
        )
        assert load_spec(path, env={}).spec.services["web"].image == "dockmesh/toolbox:latest"
        got = load_spec(path, env={"TAG": "v2"}).spec.services["web"].image
        assert got == "dockmesh/toolbox:v2"


@given(
    st.lists(st.sampled_from([*"AB_=$#{}:-?+ '\"\\\n", "${A}", "$$", "export "]), max_size=40).map(
        "".join
    )
)
def test_any_dotenv_with_an_environment_reads_or_names_its_lines(text: str) -> None:
    values, problems = parse_dotenv(text, {"A": "a"})
    lines = text.count("\n") + 1
    assert all(isinstance(v, str) for v in values.values())
    assert all(1 <= n <= lines and msg for n, msg in problems)
