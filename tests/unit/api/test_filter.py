"""`?filter=`'s expressions (go-bexpr's language) over the API's row shapes: what each
operator means, selectors checked before evaluation, and any text at all → a predicate or
one 400 line, never an exception, in bounded depth and time."""

from __future__ import annotations

import gc
import os
import time
import tracemalloc
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dockmesh.api import filter as bexpr
from dockmesh.api import shapes
from dockmesh.api.errors import ApiError
from dockmesh.catalog.state import Entry
from dockmesh.model.catalog import CheckSpec, CheckState, Instance

NODE = shapes.NodeInfo()
SHAPES = {k: bexpr.shape_of(v) for k, v in shapes.filter_samples(NODE).items()}


def entry(sid: str, tags: tuple[str, ...], meta: dict[str, str], *statuses: str) -> dict[str, Any]:
    inst = Instance(sid, "web", "10.0.0.1", 8080, tags, meta)
    checks = tuple(
        CheckState(CheckSpec(f"{sid}:{n}", "c", "ttl", service_id=sid), s)  # type: ignore[arg-type]
        for n, s in enumerate(statuses)
    )
    return shapes.health_entry_json(Entry(inst, checks), NODE, 5)


ROWS = [
    entry("a", ("v1", "prod"), {"env": "prod", "team-x": "web-12"}, "passing"),
    entry("b", ("v2",), {"env": "dev"}, "passing", "critical"),
    entry("c", (), {}),
]


def kept(expression: str, rows: list[dict[str, Any]] = ROWS) -> list[str]:
    return [r["Service"]["ID"] for r in bexpr.apply(expression, SHAPES["health_entry"], rows)]


@pytest.mark.parametrize(
    ("expression", "ids"),
    [
        ('Service.Tags contains "v1"', ["a"]),
        ("v1 in Service.Tags", ["a"]),
        ('"v1" not in Service.Tags', ["b", "c"]),
        ("Service.Tags not contains `prod`", ["b", "c"]),
        ("Service.Tags is empty", ["c"]),
        ("Service.Tags is not empty", ["a", "b"]),
        ("Service.Meta.env == prod", ["a"]),
        ('Service.Meta.env != "prod"', ["b", "c"]),  # a missing key is not "prod"
        ('Service.Meta["team-x"] matches "^web-[0-9]+$"', ["a"]),
        ('Service.Meta["team-x"] not matches "^web-[0-9]+$"', ["b", "c"]),
        ("Service.Meta.env is empty", ["c"]),
        ("env in Service.Meta", ["a", "b"]),
        ("Service.Meta is empty", ["c"]),
        ("Service.ID == a or Service.ID == c", ["a", "c"]),
        ("Service.ID != a and not (Service.ID == c)", ["b"]),
        ("not not Service.ID == a", ["a"]),
        ("Service.Port == 8080", ["a", "b", "c"]),
        ("Service.Port != 8080", []),
        ("Service.EnableTagOverride == false", ["a", "b", "c"]),
        ('Service.ID contains "b"', ["b"]),
        ('"b" in Service.ID', ["b"]),
        ("Node.Node == dockmesh", ["a", "b", "c"]),
        # Through the Checks list: any element (serfHealth is one of every row's).
        ("Checks.Status == critical", ["b"]),
        ("Checks.Status != passing", ["b"]),
        ("Checks.CheckID == serfHealth", ["a", "b", "c"]),
        ("Checks is not empty", ["a", "b", "c"]),
        ("(Service.ID == a or Service.ID == b) and Checks.Status == critical", ["b"]),
        ("Service.ID == a or Service.ID == b and Checks.Status == critical", ["a", "b"]),
        ('Service.Meta.env == "pr\\x6fd"', ["a"]),
        ('Service.Service matches "(?i)^WEB$"', ["a", "b", "c"]),
        ("(((Service.ID == a)))", ["a"]),
    ],
)
def test_operators_and_selectors_mean_what_consul_says(expression: str, ids: list[str]) -> None:
    assert kept(expression) == ids


@pytest.mark.parametrize(
    ("expression", "why"),
    [
        ("Service.Foo == 1", 'Selector "Service.Foo" is not valid'),
        ("Service.Meta.a.b == 1", "is not valid"),
        ("Service == x", "is an object"),
        ("Service.Port contains 1", "Invalid match operator 'contains'"),
        ("Service.Tags == v1", "Invalid match operator '=='"),
        ("Service.Port == eighty", 'Failed to coerce value "eighty"'),
        ("Service.EnableTagOverride == maybe", "Failed to coerce"),
        ('Service.ID matches "(a"', "missing )"),
        ('Service.ID matches "\\\\1"', "not supported"),
        ("Service.ID ==", "expected a value"),
        ("Service.ID == a and", "expected a selector or a value"),
        ("(Service.ID == a", "expected ')'"),
        ("Service.ID == a)", "unexpected ')'"),
        ('Service.ID == "a', "unterminated string"),
        ("Service.ID == `a", "unterminated raw string"),
        ('Service.ID == "\\q"', "invalid escape"),
        ("Service.ID is full", "expected 'empty'"),
        ("Service.ID # a", "unexpected '#'"),
        ("", "empty expression"),
        ("   ", "empty expression"),
        ("Service.ID == a" + " or Service.ID == a" * 300, "longer than 4096"),
        ("(" * 65 + "Service.ID == a" + ")" * 65, "nested deeper than 64"),
        ("not " * 65 + "Service.ID == a", "nested deeper than 64"),
    ],
)
def test_a_bad_expression_is_one_400_line_saying_where_and_why(expression: str, why: str) -> None:
    with pytest.raises(ApiError) as e:
        bexpr.compile_filter(expression, SHAPES["health_entry"])
    assert e.value.status == 400
    assert e.value.reason.startswith("Failed to create boolean expression evaluator: 1:")
    assert why in e.value.reason, e.value.reason


def test_ten_thousand_parentheses_are_refused_at_once() -> None:
    text = "(" * 10_000 + "Service.ID == a" + ")" * 10_000
    with pytest.raises(ApiError, match="longer than"):
        bexpr.compile_filter(text, SHAPES["health_entry"])
    text = "(" * 2000 + "a == b" + ")" * 2000
    with pytest.raises(ApiError, match="nested deeper"):
        bexpr.compile_filter(text, SHAPES["check"])


def test_each_endpoint_kind_has_its_consul_selectors() -> None:
    for kind, expression in [
        ("agent_service", 'Service == web and Tags contains "v1" and Port == 1'),
        ("catalog_service", "ServiceName == web and ServiceMeta.env == x and Node == n"),
        ("check", "Status == passing and ServiceTags contains v1 and CheckID != serfHealth"),
        ("node", "Node == dockmesh and Meta is empty and TaggedAddresses.lan == x"),
        ("service", "Service == web and Weights.Passing == 1"),
    ]:
        bexpr.compile_filter(expression, SHAPES[kind])


def test_a_pathological_regex_runs_in_linear_time() -> None:
    rows = [entry("a" * 200, (), {"k": "a" * 500})]
    started = time.perf_counter()
    assert kept('Service.Meta.k matches "' + "a*" * 30 + 'b"', rows) == []
    assert kept('Service.Meta.k matches "(a|a)*(a+)+$"', rows) == ["a" * 200]
    assert time.perf_counter() - started < 5  # Python's re: minutes; generous on a busy host


def test_a_pattern_costing_seconds_a_row_is_a_400_within_a_second() -> None:
    rows = [entry(f"s{i}", (), {"k": "a" * 2048}) for i in range(3)]
    started = time.process_time()
    with pytest.raises(ApiError) as e:
        kept('Service.Meta.k matches "(.|.|.|.|.|.|.){140}z"', rows)
    assert e.value.status == 400 and "\n" not in e.value.reason, e.value.reason
    assert time.process_time() - started < 0.5  # unbounded: 1.1 s a row, on the event loop


def test_the_patterns_of_one_expression_share_one_size_limit() -> None:
    # 70 patterns of 1800 states each: 0.6 s to compile, 25 MB to hold.
    text = " or ".join(f'Service.ID matches "(.|.|.|.|.|.|.){{140}}z{i}"' for i in range(70))
    assert len(text) <= bexpr.MAX_CHARS
    started = time.process_time()
    with pytest.raises(ApiError, match="too large"):
        bexpr.compile_filter(text, SHAPES["health_entry"])
    assert time.process_time() - started < 0.2


def test_a_waiting_filter_holds_its_text_not_its_compiled_patterns() -> None:
    """A blocking query keeps its filter while it waits: a thousand waiting watchers with
    the largest pattern must not hold gigabytes."""
    tracemalloc.start()
    try:
        keep = bexpr.compile_filter(
            'Service.ID matches "(.|.|.|.|.|.|.){140}z"', SHAPES["health_entry"]
        )
        gc.collect()
        # Only what the filter's own modules allocated and still hold: the process's total
        # also counts whatever the test runner allocated meanwhile (58 kB once in a full run).
        mine = [tracemalloc.Filter(True, f"*{os.sep}dockmesh{os.sep}api{os.sep}*")]
        held = sum(
            s.size for s in tracemalloc.take_snapshot().filter_traces(mine).statistics("filename")
        )
    finally:
        tracemalloc.stop()
    assert held < 50_000, held  # compiled: about 350 kB
    assert keep(ROWS[0]) is False


def compiled(text: str, kind: str) -> bexpr.Predicate | ApiError:
    try:
        return bexpr.compile_filter(text, SHAPES[kind])
    except ApiError as e:
        return e


def one_400_line(e: ApiError) -> bool:
    return e.status == 400 and "\n" not in e.reason and e.reason.startswith(bexpr.PREFIX)


TOKENS = st.sampled_from(
    [
        "Service.Tags", "Service.Meta.env", "Checks.Status", "Service.Port", "Service.ID",
        "Node", "Service.Meta[\"a-b\"]", "==", "!=", "contains", "not", "in", "is", "empty",
        "matches", "and", "or", "(", ")", '"v1"', "`x`", "passing", "8080", "-1", "true",
        '"a\\"b"', "[", "]", ".", '"^a.*b$"', '"(a"',
    ]
)  # fmt: skip


@settings(max_examples=1500, deadline=None)
@given(st.lists(TOKENS, max_size=14))
def test_token_soup_is_a_predicate_or_a_400(tokens: list[str]) -> None:
    keep = compiled(" ".join(tokens), "health_entry")
    if isinstance(keep, ApiError):
        assert one_400_line(keep), keep.reason
    else:
        assert all(keep(row) in (True, False) for row in ROWS)


@settings(max_examples=1500, deadline=None)
@given(st.text(max_size=300))
def test_any_text_is_a_predicate_or_a_400(text: str) -> None:
    keep = compiled(text, "check")
    if isinstance(keep, ApiError):
        assert one_400_line(keep), keep.reason
    else:
        assert keep(shapes.filter_samples(NODE)["check"]) in (True, False)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=200))
def test_any_bytes_decoded_are_a_predicate_or_a_400(data: bytes) -> None:
    keep = compiled(data.decode("utf-8", "replace"), "agent_service")
    assert not isinstance(keep, ApiError) or one_400_line(keep)
