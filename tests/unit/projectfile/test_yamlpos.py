from __future__ import annotations

import codecs
import math
import re
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from dockmesh.errors import SpecError
from dockmesh.projectfile import yamlpos
from dockmesh.projectfile.load import MAX_REPORTED, load_spec
from dockmesh.projectfile.problems import Problem, format_problem, line_of, visible
from dockmesh.projectfile.yamlpos import (
    MAX_DEPTH,
    MAX_FILE_BYTES,
    MAX_NODES,
    Located,
    load_located,
    load_located_bytes,
)

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


# --- bad input: every class ends in problems with a line, never an exception ---------------


def formatted(loc: Located) -> list[str]:
    return [format_problem("f", p, loc.lines) for p in loc.problems]


def test_non_utf8_bytes_name_the_encoding_and_the_line() -> None:
    loc = load_located_bytes(b"a: 1\nb: 2\nc: caf\xe9\n")
    assert loc.data is None
    assert formatted(loc) == [
        "f:3: (file): the file is not UTF-8: byte 0xe9 in column 7 cannot be decoded; "
        "save the file as UTF-8"
    ]


def test_a_utf8_bom_is_fine() -> None:
    loc = load_located_bytes(b"\xef\xbb\xbfa: 1\n")
    assert (loc.data, loc.problems) == ({"a": 1}, [])


@pytest.mark.parametrize(
    ("encoding", "name"),
    [("utf-16", "UTF-16"), ("utf-16-be", "UTF-16"), ("utf-32", "UTF-32")],
)
def test_utf16_and_utf32_say_the_file_must_be_utf8(encoding: str, name: str) -> None:
    raw = "a: 1\n".encode(encoding)
    if encoding == "utf-16-be":
        raw = codecs.BOM_UTF16_BE + raw
    loc = load_located_bytes(raw)
    assert formatted(loc) == [f"f:1: (file): the file is {name}; it must be UTF-8"]


def test_utf16_without_a_bom_is_recognised() -> None:
    loc = load_located_bytes("project: p\n".encode("utf-16-le"))
    assert formatted(loc) == ["f:1: (file): the file looks like UTF-16 (no BOM); it must be UTF-8"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a: 1\nb: x\x00y\n", "f:2: (file): NUL byte (U+0000) in column 5 is not allowed in YAML"),
        (
            "a: 1\r\nb: 2\r\nc: \x1b[31m\n",
            "f:3: (file): control character (U+001B) in column 4 is not allowed in YAML",
        ),
        ("a: \ufffe\n", "f:1: (file): character (U+FFFE) in column 4 is not allowed in YAML"),
    ],
)
def test_characters_yaml_refuses_have_their_line(text: str, expected: str) -> None:
    loc = load_located_bytes(text.encode())
    assert loc.data is None
    assert formatted(loc) == [expected]


def test_files_larger_than_the_limit_are_refused() -> None:
    loc = load_located_bytes(b"#" * (MAX_FILE_BYTES + 1))
    assert formatted(loc) == ["f:1: (file): the file is larger than 1 MiB"]


@pytest.mark.parametrize(
    ("value", "tag"),
    [
        ("!!python/object:os.system {}", "!!python/object:os.system"),
        ("!!python/object/apply:os.system [echo hi]", "!!python/object/apply:os.system"),
        ("!!python/name:os.system ''", "!!python/name:os.system"),
        ("!foo bar", "!foo"),
        ("!foo {a: 1}", "!foo"),
        ("!<tag:example.com,2000:x> y", "tag:example.com,2000:x"),
        ("!!binary aGVsbG8=", "!!binary"),
        ("!!set {a, b}", "!!set"),
        ("!!omap [a: 1, b: 2]", "!!omap"),
        ("!!pairs [a: 1]", "!!pairs"),
        ("!!timestamp 2001-12-14", "!!timestamp"),
        ("!!value =", "!!value"),
    ],
)
def test_tags_other_than_the_core_ones_are_problems_on_their_line(value: str, tag: str) -> None:
    loc = load_located(f"a: 1\nb: {value}\n")
    [p] = loc.problems
    assert format_problem("f", p, loc.lines).startswith(f"f:2: b: tag {tag} is not supported")
    assert loc.data is not None  # the rest of the file is still checked


def test_a_tag_on_a_key_is_a_problem() -> None:
    loc = load_located("!foo a: 1\n")
    assert formatted(loc)[0].startswith("f:1: (document): tag !foo is not supported")
    assert loc.data == {"a": 1}


def test_core_tags_are_values() -> None:
    loc = load_located(
        "a: !!str 12\nb: !!int '12'\nc: !!float '1.5'\nd: !!bool 'yes'\ne: !!null ''\n"
        "f: !!map {x: 1}\ng: !!seq [1]\n"
    )
    assert loc.problems == []
    assert loc.data == {
        "a": "12",
        "b": 12,
        "c": 1.5,
        "d": True,
        "e": None,
        "f": {"x": 1},
        "g": [1],
    }


def test_plain_scalars_pyyaml_would_turn_into_surprises_stay_text() -> None:
    # Dates, base-60 numbers (`80:80` would be 4880), `=` and `<<` as values.
    loc = load_located(
        "a: 2001-12-14\nb: 2001-12-14 21:59:43.10 -5\nc: 80:80\nd: 1:20.5\ne: =\nf: <<\n"
    )
    assert loc.problems == []
    assert loc.data == {
        "a": "2001-12-14",
        "b": "2001-12-14 21:59:43.10 -5",
        "c": "80:80",
        "d": "1:20.5",
        "e": "=",
        "f": "<<",
    }


def test_numbers_keep_yaml_11_meaning_and_odd_ones_stay_text() -> None:
    huge = "9" * 5000
    loc = load_located(
        f"a: 0x1F\nb: 0b101\nc: 017\nd: -1_000\ne: .inf\nf: 1.5e+3\ng: 0b_\nh: {huge}\ni: !!int x\n"
    )
    assert loc.problems == []
    assert loc.data == {
        "a": 31,
        "b": 5,
        "c": 15,
        "d": -1000,
        "e": math.inf,
        "f": 1500.0,
        "g": "0b_",
        "h": huge,  # wider than 64 bits: Python could not even print it as a number
        "i": "x",
    }


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a: &x [*x]\n", "f:1: a.0: an alias (*name) refers to a mapping or list that contains it"),
        (
            "a: &x {b: *x}\n",
            "f:1: a.b: an alias (*name) refers to a mapping or list that contains it",
        ),
        (
            "a: &x\n  b:\n    c: [1, *x]\n",
            "f:3: a.b.c.1: an alias (*name) refers to a mapping or list that contains it",
        ),
        ("a: &x {<<: *x}\n", "f:1: a: a merge (<<) refers to a mapping that contains it"),
    ],
)
def test_recursive_aliases_are_problems(text: str, expected: str) -> None:
    loc = load_located(text)
    assert loc.data is None
    assert formatted(loc) == [expected]


def laughs(levels: int, width: int) -> str:
    out = ["l0: &l0 [lol]"]
    for i in range(1, levels + 1):
        out.append(f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * width) + "]")
    return "\n".join(out) + "\n"


def test_billion_laughs_stop_at_the_value_limit() -> None:
    loc = load_located(laughs(9, 9))
    assert loc.data is None
    [p] = loc.problems
    assert p.message == f"aliases (*name) expand to more than {MAX_NODES} values"
    # said where the expansion starts, not inside the innermost anchor
    assert format_problem("f", p, loc.lines).startswith("f:6: l5.")


def test_merges_of_merges_are_bounded_too() -> None:
    # Each level merges the one below twice, through two different mappings.
    out = ["m0: &m0 {k: v}"]
    for i in range(1, 40):
        out.append(f"a{i}: &a{i} {{<<: *m{i - 1}}}")
        out.append(f"b{i}: &b{i} {{<<: *m{i - 1}}}")
        out.append(f"m{i}: &m{i} {{<<: [*a{i}, *b{i}]}}")
    loc = load_located("\n".join(out) + "\n")
    assert loc.data is None
    assert loc.problems[-1].message.startswith("aliases (*name) expand to more than")


def test_the_value_limit_counts_the_file_itself(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(yamlpos, "MAX_NODES", 50)
    loc = load_located("a: [" + ", ".join(["1"] * 60) + "]\n")
    assert formatted(loc) == ["f:1: (yaml): more than 50 values in the file"]


def test_a_long_alias_chain_is_a_nesting_problem() -> None:
    out = ["a0: &a0 [x]"] + [f"a{i}: &a{i} [*a{i - 1}]" for i in range(1, 150)]
    loc = load_located("\n".join(out) + "\n")
    assert loc.data is None
    assert loc.problems[-1].message == f"nesting too deep (more than {MAX_DEPTH} levels)"


@pytest.mark.parametrize(
    "text",
    [
        "[" * 100_000 + "]" * 100_000,
        "{a: " * 100_000 + "1" + "}" * 100_000,
        "".join(" " * i + "a:\n" for i in range(2000)),
        "".join(" " * i + "- \n" for i in range(0, 4000, 2)),
        "[" * 100_000,  # never closed: the depth limit comes before the syntax error
    ],
)
def test_deep_nesting_is_a_problem_not_a_recursion_error(text: str) -> None:
    loc = load_located(text)
    assert loc.data is None
    [p] = loc.problems
    assert p.message == f"nesting too deep (more than {MAX_DEPTH} levels)"
    assert p.line is not None


def test_nesting_up_to_the_limit_is_fine() -> None:
    depth = MAX_DEPTH - 1
    loc = load_located("[" * depth + "]" * depth)
    assert loc.problems == []


def test_recursion_error_from_anywhere_is_a_problem(monkeypatch: pytest.MonkeyPatch) -> None:
    # The limits keep PyYAML and the builder far from Python's stack limit; a caller already
    # deep in its own stack must still get a problem, not the exception.
    def deep(*_args: Any) -> Any:
        raise RecursionError

    monkeypatch.setattr(yamlpos._Builder, "build", deep)
    loc = load_located("a: 1\n")
    assert formatted(loc) == ["f:1: (yaml): nesting too deep"]


MERGES = """\
base: &base
  image: x
  replicas: 2
  environment: {A: "1"}
other: &other
  image: y
  command: run
svc:
  <<: [*base, *other]
  replicas: 3
"""


def test_merge_keys_as_in_compose_files() -> None:
    loc = load_located(MERGES)
    assert loc.problems == []
    # explicit keys win, then the earlier merge in the list
    assert loc.data["svc"] == {
        "replicas": 3,
        "image": "x",
        "environment": {"A": "1"},
        "command": "run",
    }
    # a merged value is found where it is written
    assert loc.lines[("svc", "image")] == 2
    assert loc.lines[("svc", "environment", "A")] == 4
    assert loc.lines[("svc", "replicas")] == 10


def test_a_single_merge_before_or_after_explicit_keys() -> None:
    before = load_located("b: &b {image: x, replicas: 2}\ns:\n  <<: *b\n  replicas: 3\n")
    after = load_located("b: &b {image: x, replicas: 2}\ns:\n  replicas: 3\n  <<: *b\n")
    for loc in (before, after):
        assert loc.problems == []
        assert loc.data["s"] == {"replicas": 3, "image": "x"}


def test_merges_of_merges() -> None:
    loc = load_located("a: &a {x: 1, y: 1}\nb: &b {<<: *a, y: 2}\nc: {<<: *b, z: 3}\n")
    assert loc.problems == []
    assert loc.data["c"] == {"z": 3, "y": 2, "x": 1}


@pytest.mark.parametrize("value", ["3", "[1, 2]", "[*b, 3]", "null"])
def test_merging_what_is_not_a_mapping_is_a_problem(value: str) -> None:
    loc = load_located(f"b: &b {{x: 1}}\ns:\n  <<: {value}\n  y: 2\n")
    assert formatted(loc)[0] == "f:3: s: a merge (<<) takes a mapping or a list of mappings"
    assert loc.data["s"]["y"] == 2


def test_duplicate_keys_still_count_beside_a_merge() -> None:
    loc = load_located("b: &b {x: 1}\ns:\n  <<: *b\n  y: 1\n  y: 2\n")
    assert formatted(loc) == ["f:5: s.y: duplicate key 'y' (first on line 4)"]


def test_keys_are_the_text_written() -> None:
    loc = load_located("1: a\n010: b\ntrue: c\nnull: d\n~: e\n1.5: f\n? \n: g\n")
    assert loc.problems == []
    assert loc.data == {
        "1": "a",
        "010": "b",
        "true": "c",
        "null": "d",
        "~": "e",
        "1.5": "f",
        "": "g",
    }


def test_mapping_and_list_keys_are_problems() -> None:
    loc = load_located("? [1, 2]\n: a\n? {b: 1}\n: c\nd: {[x]: 1, e: 2}\n")
    assert formatted(loc) == [
        "f:1: (document): a key must be plain text or a number, not a list",
        "f:3: (document): a key must be plain text or a number, not a mapping",
        "f:5: d: a key must be plain text or a number, not a list",
    ]
    assert loc.data == {"d": {"e": 2}}


def test_problems_print_on_one_visible_line() -> None:
    loc = load_located('services:\n  "a\\nb\\e[31m\\u202e": 1\n  "a\\nb\\e[31m\\u202e": 2\n')
    [line] = formatted(loc)
    assert line == (
        "f:3: services.a\\nb\\x1b[31m\\u202e: duplicate key 'a\\nb\\x1b[31m\\u202e' "
        "(first on line 2)"
    )
    assert visible("plain é 漢") == "plain é 漢"


def test_syntax_errors_in_any_form_have_a_line() -> None:
    for text in (
        "a: 1\n---\nb: 2\n",
        "a: *nothing\n",
        "a: &x 1\nb: &x 2\nc: [&x 3, *x]\n",
        "%YAML 9.9\n--- 1\n",
        "a: 'x\n",
        "\tb: 1\n",
    ):
        loc = load_located(text)
        for line in formatted(loc):
            assert re.fullmatch(r"f:\d+: \(yaml\): malformed YAML: .+", line), line


def test_a_bad_byte_after_a_bom_is_placed_in_the_text() -> None:
    loc = load_located_bytes(b"\xef\xbb\xbfa: 1\nb: \x80\n")
    assert formatted(loc)[0].startswith("f:2: (file): the file is not UTF-8: byte 0x80 in column 4")


@pytest.mark.parametrize("text", ["", "# nothing\n", "null\n", "~\n", "--- \n...\n"])
def test_a_document_with_nothing_in_it_is_an_empty_mapping(text: str) -> None:
    loc = load_located(text)
    assert (loc.data, loc.problems) == ({}, [])


def test_load_spec_refuses_yaml_problems_before_anything_else(tmp_path: Any) -> None:
    path = tmp_path / "dockmesh.yaml"
    path.write_text("services:\n  a: {image: !foo x, replicas: many}\n  a: {image: y}\n")
    with pytest.raises(SpecError) as e:
        load_spec(str(path))
    f = str(path)
    # the tag is the one mistake of `image`, the shape of the rest is still said
    image, replicas, duplicate = e.value.lines
    assert image == (
        f"{f}:2: services.a.image: tag !foo is not supported "
        "(only text, numbers, true/false, null, mappings and lists)"
    )
    assert replicas.startswith(f"{f}:2: services.a.replicas: ")
    assert duplicate == f"{f}:3: services.a: duplicate key 'a' (first on line 2)"


def test_load_spec_reports_at_most_a_hundred_problems(tmp_path: Any) -> None:
    path = tmp_path / "dockmesh.yaml"
    path.write_text("".join(f"k{i}: 1\n" for i in range(3)) * 60)
    with pytest.raises(SpecError) as e:
        load_spec(str(path))
    assert len(e.value.lines) == MAX_REPORTED + 1
    assert e.value.lines[-1] == f"{path}:103: (file): 77 more problems not shown"


def test_compose_extension_fields_carry_anchors() -> None:
    """`x-…` keys, as Compose files use them for shared anchors, are left out of the spec."""
    from dockmesh.projectfile.schema import parse_spec_partial
    from dockmesh.projectfile.yamlpos import load_located

    text = (
        "x-base: &base {image: dockmesh/toolbox, networks: [a]}\n"
        "networks: {a: {}}\n"
        "services:\n"
        "  one: {<<: *base, x-note: hello}\n"
    )
    loc = load_located(text)
    spec, problems, _ = parse_spec_partial(loc.data)
    assert problems == [] and spec is not None
    assert spec.services["one"].image == "dockmesh/toolbox"
