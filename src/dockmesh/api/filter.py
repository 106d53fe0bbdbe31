"""`?filter=`: Consul's boolean expressions (HashiCorp's go-bexpr) over the rows an endpoint
answers with. Pure: text and a schema in, a predicate or an `ApiError` out.

    Service.Tags contains "v1" and not (Checks.Status == critical)
    "prod" in ServiceTags or ServiceMeta["team-x"] matches `^web-[0-9]+$`

Grammar (go-bexpr's): `or` binds loosest, then `and`, then `not`; parentheses group. A match
is `Selector == Value`, `!=`, `[not] contains`, `[not] matches`, `is [not] empty`, or
`Value [not] in Selector`. A selector is the JSON field path of the row (`Service.Meta.env`,
`Meta["a-b"]`); a value is a string in double quotes (Go escapes) or backticks (raw), a
number, or a bare word taken as its text (`Status == passing`).

Selectors are checked against the endpoint's row shape before anything is evaluated, as
Consul checks them against its Go types: an unknown field, or an operator its type does not
have, is a 400 like any syntax error, all worded "Failed to create boolean expression
evaluator: …". Through a list of objects (`Checks.Status`) a match holds when it holds for
any element (a negated operator: for any element, negated). A missing map key is empty.

Bounded whatever the input: at most `MAX_CHARS` characters and `MAX_DEPTH` nested
parentheses or `not`s (the parser recurses only there), and `matches` runs on a linear-time
NFA (`api.regex`), never on a backtracking engine.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Union

from dockmesh.api.errors import ApiError, shown
from dockmesh.api.regex import MAX_STATES, Budget, BudgetExceeded, RegexError, compile_regex

MAX_CHARS = 4096
MAX_DEPTH = 64
PREFIX = "Failed to create boolean expression evaluator"

# A row's shape: a leaf kind, an object (field → shape), a map of strings, or a list of
# objects (`("list", shape)`).
Shape = Union[str, "Object", tuple[str, "Object"]]
Object = Mapping[str, Shape]
STR, INT, BOOL, STRLIST, MAP = "str", "int", "bool", "strlist", "map"
# Fields whose keys are data, not field names (Go maps): any key is a valid selector.
MAP_FIELDS = frozenset({"Meta", "NodeMeta", "ServiceMeta", "TaggedAddresses"})

Row = Mapping[str, Any]
Predicate = Callable[[Row], bool]


def shape_of(sample: Mapping[str, Any]) -> dict[str, Shape]:
    """The shape of a sample row (every list in it holding one element, so its element type
    shows; an empty object has no fields to select)."""
    out: dict[str, Shape] = {}
    for key, value in sample.items():
        if key in MAP_FIELDS:
            out[key] = MAP
        elif isinstance(value, bool):
            out[key] = BOOL
        elif isinstance(value, int):
            out[key] = INT
        elif isinstance(value, str):
            out[key] = STR
        elif isinstance(value, dict):
            out[key] = shape_of(value)
        elif isinstance(value, list):
            if value and isinstance(value[0], dict):
                out[key] = ("list", shape_of(value[0]))
            else:
                out[key] = STRLIST
    return out


class _Error(Exception):
    def __init__(self, pos: int, why: str) -> None:
        super().__init__(why)
        self.pos, self.why = pos, why


@dataclass(frozen=True, slots=True)
class _Tok:
    kind: str  # "(", ")", "op" (== !=), "word", "str", "num", "[", "]", ".", "end"
    text: str
    pos: int


_WORD_START = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_")
_WORD_CHARS = _WORD_START | frozenset("0123456789/-")  # bare values like web-1 too
_ESCAPES = {"a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v"}
_ESCAPES.update({"\\": "\\", '"': '"', "'": "'"})


def _tokens(text: str) -> list[_Tok]:
    out: list[_Tok] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c in " \t\r\n":
            i += 1
        elif c in "()[].":
            out.append(_Tok(c, c, i))
            i += 1
        elif text.startswith(("==", "!="), i):
            out.append(_Tok("op", text[i : i + 2], i))
            i += 2
        elif c == "`":
            end = text.find("`", i + 1)
            if end < 0:
                raise _Error(i, "unterminated raw string")
            out.append(_Tok("str", text[i + 1 : end], i))
            i = end + 1
        elif c == '"':
            value, i2 = _quoted(text, i)
            out.append(_Tok("str", value, i))
            i = i2
        elif c.isascii() and (c.isdigit() or (c == "-" and text[i + 1 : i + 2].isdigit())):
            j = i + 1
            while j < n and text[j].isascii() and (text[j].isdigit() or text[j] == "."):
                j += 1
            number = text[i:j]
            if number.count(".") > 1 or number.endswith("."):
                raise _Error(i, f"invalid number {shown(number)}")
            out.append(_Tok("num", number, i))
            i = j
        elif c in _WORD_START:
            j = i + 1
            while j < n and text[j] in _WORD_CHARS:
                j += 1
            out.append(_Tok("word", text[i:j], i))
            i = j
        else:
            raise _Error(i, f"unexpected {shown(c)}")
    out.append(_Tok("end", "", n))
    return out


def _quoted(text: str, start: int) -> tuple[str, int]:
    """A Go interpreted string literal at `start` → (its value, the offset after it)."""
    out: list[str] = []
    i, n = start + 1, len(text)
    while i < n:
        c = text[i]
        if c == '"':
            return "".join(out), i + 1
        if c == "\n":
            break
        if c != "\\":
            out.append(c)
            i += 1
            continue
        e = text[i + 1 : i + 2]
        if e in _ESCAPES:
            out.append(_ESCAPES[e])
            i += 2
            continue
        digits = {"x": 2, "u": 4, "U": 8}.get(e)
        if digits is not None:
            hexa = text[i + 2 : i + 2 + digits]
            if len(hexa) != digits or not all(h in "0123456789abcdefABCDEF" for h in hexa):
                raise _Error(i, "invalid escape in string")
            code = int(hexa, 16)
            if code > 0x10FFFF or 0xD800 <= code <= 0xDFFF:
                raise _Error(i, "invalid escape in string")
            out.append(chr(code))
            i += 2 + digits
            continue
        octal = text[i + 1 : i + 4]
        if len(octal) == 3 and all(o in "01234567" for o in octal) and int(octal, 8) < 256:
            out.append(chr(int(octal, 8)))
            i += 4
            continue
        raise _Error(i, "invalid escape in string")
    raise _Error(start, "unterminated string")


# --- the tree ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Match:
    path: tuple[str, ...]
    op: str  # == != contains matches empty in (each possibly negated by `negate`)
    negate: bool
    value: Any  # str, int, bool, a Regex, or None (is empty)
    kind: str  # the selector's shape (STR, INT, ...; "list" for a list of objects)


@dataclass(frozen=True, slots=True)
class _Not:
    inner: _Node


@dataclass(frozen=True, slots=True)
class _Bool:
    op: str  # and, or
    items: tuple[_Node, ...]


_Node = _Match | _Not | _Bool

_ALLOWED = {
    STR: {"==", "!=", "contains", "matches", "empty", "in"},
    INT: {"==", "!="},
    BOOL: {"==", "!="},
    STRLIST: {"contains", "empty", "in"},
    MAP: {"contains", "empty", "in"},
    "list": {"empty"},
}


class _Parser:
    def __init__(self, toks: list[_Tok], schema: Object) -> None:
        self.toks, self.k, self.schema = toks, 0, schema
        self.states_left = MAX_STATES  # shared by the expression's patterns

    def peek(self, ahead: int = 0) -> _Tok:
        return self.toks[min(self.k + ahead, len(self.toks) - 1)]

    def word(self, *words: str, ahead: int = 0) -> bool:
        t = self.peek(ahead)
        return t.kind == "word" and t.text in words

    def take(self) -> _Tok:
        t = self.peek()
        self.k += 1
        return t

    def expect_word(self, word: str) -> None:
        t = self.take()
        if t.kind != "word" or t.text != word:
            raise _Error(t.pos, f"expected {word!r}, found {_seen(t)}")

    def parse(self) -> _Node:
        node = self.or_(0)
        t = self.peek()
        if t.kind != "end":
            raise _Error(t.pos, f"unexpected {_seen(t)}")
        return node

    def or_(self, depth: int) -> _Node:
        items = [self.and_(depth)]
        while self.word("or"):
            self.k += 1
            items.append(self.and_(depth))
        return items[0] if len(items) == 1 else _Bool("or", tuple(items))

    def and_(self, depth: int) -> _Node:
        items = [self.not_(depth)]
        while self.word("and"):
            self.k += 1
            items.append(self.not_(depth))
        return items[0] if len(items) == 1 else _Bool("and", tuple(items))

    def not_(self, depth: int) -> _Node:
        t = self.peek()
        if depth >= MAX_DEPTH:
            raise _Error(t.pos, f"expression nested deeper than {MAX_DEPTH}")
        if self.word("not") and not self.word("in", ahead=1):
            self.k += 1
            return _Not(self.not_(depth + 1))
        if t.kind == "(":
            self.k += 1
            inner = self.or_(depth + 1)
            close = self.take()
            if close.kind != ")":
                raise _Error(close.pos, f"expected ')', found {_seen(close)}")
            return inner
        return self.match()

    def match(self) -> _Node:
        t = self.peek()
        if t.kind in ("str", "num"):
            self.k += 1
            return self.value_in(t.text, t)
        if t.kind != "word":
            raise _Error(t.pos, f"expected a selector or a value, found {_seen(t)}")
        path, raw = self.selector()
        if self.word("in") or (self.word("not") and self.word("in", ahead=1)):
            return self.value_in(raw, t)  # a bare word is a value: `v1 in Service.Tags`
        op_tok = self.take()
        negate = False
        if op_tok.kind == "op":
            op = op_tok.text
            negate, op = op == "!=", "=="
            value: Any = self.value()
        elif op_tok.kind == "word" and op_tok.text == "is":
            if self.word("not"):
                self.k += 1
                negate = True
            self.expect_word("empty")
            op, value = "empty", None
        elif op_tok.kind == "word" and op_tok.text in ("not", "contains", "matches"):
            if op_tok.text == "not":
                nxt = self.take()
                if nxt.kind != "word" or nxt.text not in ("contains", "matches"):
                    raise _Error(nxt.pos, f"expected contains or matches, found {_seen(nxt)}")
                negate, op = True, nxt.text
            else:
                op = op_tok.text
            value = self.value()
        else:
            raise _Error(op_tok.pos, f"expected an operator, found {_seen(op_tok)}")
        return self.checked(path, op, negate, value, t.pos)

    def value_in(self, value: str, start: _Tok) -> _Node:
        negate = self.word("not")
        if negate:
            self.k += 1
        self.expect_word("in")
        sel = self.peek()
        if sel.kind != "word":
            raise _Error(sel.pos, f"expected a selector after 'in', found {_seen(sel)}")
        path, _ = self.selector()
        return self.checked(path, "in", negate, value, start.pos)

    def value(self) -> str:
        t = self.peek()
        if t.kind in ("str", "num"):
            self.k += 1
            return t.text
        if t.kind == "word":
            return self.selector()[1]
        raise _Error(t.pos, f"expected a value, found {_seen(t)}")

    def selector(self) -> tuple[tuple[str, ...], str]:
        first = self.take()
        path = [first.text]
        raw = first.text
        while True:
            t = self.peek()
            if t.kind == "." and self.peek(1).kind == "word":
                self.k += 2
                path.append(self.toks[self.k - 1].text)
                raw += "." + path[-1]
            elif t.kind == "[":
                key, close = self.peek(1), self.peek(2)
                if key.kind != "str" or close.kind != "]":
                    raise _Error(t.pos, 'expected ["key"] in the selector')
                self.k += 3
                path.append(key.text)
                raw += f'["{key.text}"]'
            elif t.kind == ".":
                raise _Error(t.pos, "expected a field name after '.'")
            else:
                return tuple(path), raw

    def checked(self, path: tuple[str, ...], op: str, negate: bool, value: Any, pos: int) -> _Match:
        """The match, once its selector is known to exist and to take `op`."""
        shape: Shape = self.schema
        name = ".".join(path)
        for i, part in enumerate(path):
            if isinstance(shape, tuple):
                shape = shape[1]
            if shape == MAP and i == len(path) - 1:
                shape = STR
                break
            if not isinstance(shape, Mapping) or part not in shape:
                raise _Error(pos, f"Selector {_q(name)} is not valid")
            shape = shape[part]
        kind = shape[0] if isinstance(shape, tuple) else shape
        if not isinstance(kind, str):
            raise _Error(pos, f"Selector {_q(name)} is an object: select one of its fields")
        if op not in _ALLOWED[kind]:
            word = {"==": "!=" if negate else "=="}.get(op, op)
            raise _Error(pos, f"Invalid match operator {word!r} for selector {_q(name)}")
        if kind == INT and op == "==":
            digits = value[1:] if value.startswith("-") else value
            if not (digits.isascii() and digits.isdigit() and len(digits) <= 20):
                raise _Error(pos, f"Failed to coerce value {_q(value)} for {_q(name)}")
            value = int(value)
        elif kind == BOOL:
            truth = _GO_BOOL.get(value)
            if truth is None:
                raise _Error(pos, f"Failed to coerce value {_q(value)} for {_q(name)}")
            value = truth
        elif op == "matches":
            try:
                value = compile_regex(value, self.states_left)
            except RegexError as e:
                raise _Error(pos, str(e)) from None
            self.states_left -= value.size
        return _Match(path, op, negate, value, kind)


_GO_BOOL = {
    **dict.fromkeys(("1", "t", "T", "true", "TRUE", "True"), True),
    **dict.fromkeys(("0", "f", "F", "false", "FALSE", "False"), False),
}


def _q(name: str) -> str:
    """A selector or value quoted as Go's %q would (bexpr's messages), cut short."""
    text = json.dumps(name, ensure_ascii=False)
    return text if len(text) <= 60 else text[:59] + "…"


def _seen(t: _Tok) -> str:
    return "the end" if t.kind == "end" else shown(t.text)


# --- evaluation ------------------------------------------------------------------------------

_MISSING = object()


def _values(row: Any, path: tuple[str, ...]) -> list[Any]:
    """The values `path` selects in `row`: one, or one per element of a list of objects it
    goes through (`_MISSING` for a map key that is not there)."""
    current = [row]
    for part in path:
        nxt: list[Any] = []
        for value in current:
            if isinstance(value, list):
                nxt += [v.get(part, _MISSING) for v in value if isinstance(v, dict)]
            elif isinstance(value, dict):
                nxt.append(value.get(part, _MISSING))
        current = nxt
    return current


def _test(m: _Match, value: Any, budget: Budget) -> bool:
    if value is _MISSING or value is None:
        return m.op == "empty"
    if m.op == "empty":
        return not value
    if m.op == "==":
        return bool(value == m.value)
    if m.op == "matches":
        return isinstance(value, str) and bool(m.value.search(value, budget))
    # contains and in: a substring of a string, a member of a list, a key of a map.
    return m.value in value if isinstance(value, (str, list, dict)) else False


def _evaluate(node: _Node, row: Row, budget: Budget) -> bool:
    if isinstance(node, _Match):
        if node.kind == "list" and node.op == "empty":
            lists = _values(row, node.path)
            return any((not v) != node.negate for v in lists if v is not _MISSING)
        return any(_test(node, v, budget) != node.negate for v in _values(row, node.path))
    if isinstance(node, _Not):
        return not _evaluate(node.inner, row, budget)
    if node.op == "and":
        return all(_evaluate(x, row, budget) for x in node.items)
    return any(_evaluate(x, row, budget) for x in node.items)


# Patterns' states up to which a filter keeps its tree from the check to the rows.
_KEPT_STATES = 200


class _Filter:
    """The predicate: the expression's tree, or (patterns of more than `_KEPT_STATES`
    states) its text, the tree built again at the first row. A blocking query holds its
    filter while it waits, maybe minutes, and a tree's patterns may be hundreds of kB. The
    searches of all the rows share one `Budget` (one request's share of the event loop);
    when it runs out, the request is a 400."""

    __slots__ = ("_budget", "_expression", "_schema", "_tree")

    def __init__(self, expression: str, schema: Object, tree: _Node | None) -> None:
        self._expression, self._schema = expression, schema
        self._tree = tree
        self._budget = Budget()

    def __call__(self, row: Row) -> bool:
        if self._tree is None:
            self._tree, _ = _parse(self._expression, self._schema)
        try:
            return _evaluate(self._tree, row, self._budget)
        except BudgetExceeded as e:
            raise ApiError(
                400, f"Failed to evaluate filter: {e} over these rows (simplify the pattern)"
            ) from None


def compile_filter(expression: str, schema: Object) -> Predicate:
    """`?filter=`'s expression as a predicate over rows of `schema`'s shape, or a 400 (also
    raised by the predicate, when the expression's patterns cost too much over the rows)."""
    tree, states = _parse(expression, schema)
    return _Filter(expression, schema, tree if states <= _KEPT_STATES else None)


def _parse(expression: str, schema: Object) -> tuple[_Node, int]:
    """The tree, and how many states its patterns took."""
    try:
        if len(expression) > MAX_CHARS:
            raise _Error(0, f"expression longer than {MAX_CHARS} characters")
        if not expression.strip():
            raise _Error(0, "empty expression")
        parser = _Parser(_tokens(expression), schema)
        return parser.parse(), MAX_STATES - parser.states_left
    except _Error as e:
        line = expression.count("\n", 0, e.pos) + 1
        col = e.pos - (expression.rfind("\n", 0, e.pos) + 1) + 1
        raise ApiError(400, f"{PREFIX}: {line}:{col} ({e.pos}): {e.why}") from None


def apply(expression: str | None, schema: Object, rows: list[Any]) -> list[Any]:
    """The rows the expression keeps (all of them without one)."""
    if expression is None:
        return rows
    keep = compile_filter(expression, schema)
    return [r for r in rows if keep(r)]
