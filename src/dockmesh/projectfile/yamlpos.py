"""YAML → plain data plus the line of every key and item, and no silent surprises.

Theory of operation. The file is untrusted: whatever its bytes, reading it ends, soon and in
bounded memory, with plain data (dicts with `str` keys, lists, str, int, float, bool, None)
and/or problems that name a line. So:

- bytes are decoded here (UTF-8, an optional UTF-8 BOM), so that a wrong encoding is named,
  with the line of the first bad byte, instead of surfacing as a decoding traceback;
- characters YAML refuses are found before parsing, for the same reason;
- PyYAML composes the node graph, with its nesting depth and node count bounded: its composer
  recurses once per level and keeps every node with two marks, so neither is left to Python's
  stack or the machine's memory;
- we build the data ourselves instead of PyYAML's constructor: only the core tags become values
  (no arbitrary objects, no ConstructorError), anchors may be shared but not recursive, and the
  number of values after alias expansion is bounded (a "billion laughs" file is 81 aliases);
- merge keys (`<<`) work as in Docker Compose files;
- duplicate keys, which PyYAML quietly resolves to the last one, are problems.

A problem that leaves the data incomplete (encoding, syntax, limits, recursive aliases) makes
`data` None; the others (duplicate keys, tags, keys that are not plain values) leave usable
data beside them, so that the shape of the rest can be checked in the same run.
"""

from __future__ import annotations

import codecs
import re
from typing import Any, cast

import yaml
from yaml.error import Mark
from yaml.events import AliasEvent
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
from yaml.reader import Reader

from dockmesh.projectfile.problems import Path, Problem

MAX_FILE_BYTES = 1024 * 1024  # a topology file is a few kilobytes; PyYAML reads ~1 MB/s
MAX_DEPTH = 100  # mappings and lists inside each other, aliases included
MAX_NODES = 100_000  # values in the file, and again after expanding aliases

_CORE = "tag:yaml.org,2002:"
_STR, _INT, _FLOAT, _BOOL, _NULL = (_CORE + t for t in ("str", "int", "float", "bool", "null"))
_MAP, _SEQ, _MERGE = (_CORE + t for t in ("map", "seq", "merge"))

_FILE: Path = ("(file)",)
_YAML: Path = ("(yaml)",)

# YAML 1.1 numbers as PyYAML resolves them, without the base-60 forms: `80:80` in a port list
# is meant as text (Docker Compose reads it so), never as the number 4880.
_INT_RE = re.compile(
    r"""^(?:[-+]?0b[0-1_]+
    |[-+]?0[0-7_]+
    |[-+]?(?:0|[1-9][0-9_]*)
    |[-+]?0x[0-9a-fA-F_]+)$""",
    re.X,
)
_FLOAT_RE = re.compile(
    r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+][0-9]+)?
    |\.[0-9][0-9_]*(?:[eE][-+][0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""",
    re.X,
)


def _implicit_resolvers() -> dict[Any, list[tuple[str, re.Pattern[str]]]]:
    # Dropped: timestamps (a plain `2001-12-14` stays the text the schema wants) and `=`
    # (the "value" tag, which SafeLoader cannot even construct).
    out: dict[Any, list[tuple[str, re.Pattern[str]]]] = {}
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items():
        kept = []
        for tag, regexp in resolvers:
            if tag in (_CORE + "timestamp", _CORE + "value"):
                continue
            kept.append((tag, {_INT: _INT_RE, _FLOAT: _FLOAT_RE}.get(tag, regexp)))
        if kept:
            out[first] = kept
    return out


class _Stop(Exception):
    """A problem after which the document cannot be read further."""

    def __init__(self, problem: Problem) -> None:
        super().__init__(problem.message)
        self.problem = problem


class _Loader(yaml.SafeLoader):
    """SafeLoader's scanner, parser and composer with the depth and size of the graph bounded;
    its constructor is never used."""

    yaml_implicit_resolvers = _implicit_resolvers()

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0
        self._nodes = 0

    def compose_node(self, parent: Node | None, index: int) -> Node | None:
        event = self.peek_event()  # type: ignore[no-untyped-call]  # untyped in types-PyYAML
        self._nodes += 1
        if self._nodes > MAX_NODES:
            msg = f"more than {MAX_NODES} values in the file"
            raise _Stop(Problem(_YAML, msg, line=event.start_mark.line + 1))
        if self._depth >= MAX_DEPTH:
            msg = f"nesting too deep (more than {MAX_DEPTH} levels)"
            raise _Stop(Problem(_YAML, msg, line=event.start_mark.line + 1))
        self._depth += 1
        try:
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        if isinstance(event, AliasEvent) and node is not None:
            return _Alias(node, event)
        return node


class _Alias(Node):
    """An alias where it is written. PyYAML hands back the anchored node itself, which would
    put every problem about an alias on its anchor's line instead."""

    def __init__(self, target: Node, event: AliasEvent) -> None:
        # The pure-Python reader (the only one used here) makes yaml.error.Mark.
        marks = cast(Mark, event.start_mark), cast(Mark, event.end_mark)
        super().__init__(target.tag, target.value, *marks)
        self.target = target


def _target(node: Node) -> Node:
    return node.target if isinstance(node, _Alias) else node


class Located:
    """A document's data with `lines[path]` = 1-based line of that key or item. `data` is None
    when the problems leave nothing to check further."""

    def __init__(self, data: Any, lines: dict[Path, int], problems: list[Problem]) -> None:
        self.data = data
        self.lines = lines
        self.problems = problems


def load_located_bytes(raw: bytes) -> Located:
    """The file's bytes (at most MAX_FILE_BYTES + 1 of them are needed) → located data."""
    text_or_problem = decode(raw)
    if isinstance(text_or_problem, Problem):
        return Located(None, {(): 1}, [text_or_problem])
    return load_located(text_or_problem)


def decode(raw: bytes) -> str | Problem:
    """UTF-8 text, or the problem that says why the bytes are not that."""
    if len(raw) > MAX_FILE_BYTES:
        return Problem(_FILE, f"the file is larger than {MAX_FILE_BYTES >> 20} MiB", line=1)
    # UTF-32's little-endian BOM starts with UTF-16's: test the longer ones first.
    for bom, name in (
        (codecs.BOM_UTF32_LE, "UTF-32"),
        (codecs.BOM_UTF32_BE, "UTF-32"),
        (codecs.BOM_UTF16_LE, "UTF-16"),
        (codecs.BOM_UTF16_BE, "UTF-16"),
    ):
        if raw.startswith(bom):
            return Problem(_FILE, f"the file is {name}; it must be UTF-8", line=1)
    if _looks_utf16(raw):
        return Problem(_FILE, "the file looks like UTF-16 (no BOM); it must be UTF-8", line=1)
    body = raw.removeprefix(codecs.BOM_UTF8)
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError as e:
        before = body[: e.start].decode("utf-8")
        line, column = _position(before, len(before))
        return Problem(
            _FILE,
            f"the file is not UTF-8: byte 0x{body[e.start]:02x} in column {column} "
            "cannot be decoded; save the file as UTF-8",
            line=line,
        )


def _looks_utf16(raw: bytes) -> bool:
    # UTF-16 without a BOM: ASCII text with a NUL beside every character. One stray NUL in
    # UTF-8 text does not qualify; it is reported as a character YAML refuses.
    head = raw[: min(64, len(raw) // 2 * 2)]
    if len(head) < 4:
        return False
    evens, odds = head[0::2], head[1::2]
    return (not any(odds) and all(evens)) or (not any(evens) and all(odds))


_BREAK = re.compile("\r\n|[\n\r\x85\u2028\u2029]")


def _position(text: str, index: int) -> tuple[int, int]:
    """1-based line and column of `text[index]`, counting line breaks as YAML does."""
    line, start = 1, 0
    for m in _BREAK.finditer(text, 0, index):
        line, start = line + 1, m.end()
    return line, index - start + 1


def load_located(text: str) -> Located:
    lines: dict[Path, int] = {(): 1}
    bad = Reader.NON_PRINTABLE.search(text)
    if bad is not None:
        line, column = _position(text, bad.start())
        code = ord(bad.group())
        what = "NUL byte" if code == 0 else "control character" if code < 0xA0 else "character"
        msg = f"{what} (U+{code:04X}) in column {column} is not allowed in YAML"
        return Located(None, lines, [Problem(_FILE, msg, line=line)])
    builder = _Builder(lines)
    try:
        loader = _Loader(text)
        try:
            node = loader.get_single_node()
        finally:
            loader.dispose()
        data = None if node is None else builder.build(node, (), 0)
        if data is None:  # an empty document, or one that says `null`: nothing in it
            data = {}
    except _Stop as e:
        return Located(None, lines, [*builder.problems, e.problem])
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        msg = " ".join(x for x in (e.context, e.problem) if x)
        problem = Problem(_YAML, f"malformed YAML: {msg}", line=mark.line + 1 if mark else 1)
        return Located(None, lines, [*builder.problems, problem])
    except yaml.YAMLError as e:  # no mark: not expected after the checks above, but possible
        problem = Problem(_YAML, f"malformed YAML: {e}", line=1)
        return Located(None, lines, [*builder.problems, problem])
    except RecursionError:  # the depth limits make this unlikely; a deep caller's stack could
        problem = Problem(_YAML, "nesting too deep", line=builder.last_line)
        return Located(None, lines, [*builder.problems, problem])
    except MemoryError:
        problem = Problem(_YAML, "the file needs too much memory to read", line=builder.last_line)
        return Located(None, lines, [*builder.problems, problem])
    return Located(data, lines, builder.problems)


def _short_tag(tag: str) -> str:
    return "!!" + tag.removeprefix(_CORE) if tag.startswith(_CORE) else tag


def _unsupported(tag: str) -> str:
    return (
        f"tag {_short_tag(tag)} is not supported "
        "(only text, numbers, true/false, null, mappings and lists)"
    )


class _Builder:
    """Node graph → plain data, one problem per thing wrong, bounded however aliases nest."""

    def __init__(self, lines: dict[Path, int]) -> None:
        self.lines = lines
        self.problems: list[Problem] = []
        self.last_line = 1
        self._built = 0
        self._open: set[int] = set()  # collections being built: reaching one again is a loop
        self._via: tuple[Path, int] | None = None  # the outermost alias being expanded

    def build(self, node: Node, path: Path, depth: int) -> Any:
        line = node.start_mark.line + 1
        if not isinstance(node, _Alias):
            return self._build(node, path, depth, line)
        if self._via is not None:
            return self._build(node.target, path, depth, line)
        self._via = (path, line)
        try:
            return self._build(node.target, path, depth, line)
        finally:
            self._via = None

    def _build(self, node: Node, path: Path, depth: int, line: int) -> Any:
        self._tick(path, line)
        self.lines.setdefault(path, line)
        if isinstance(node, ScalarNode):
            return self._scalar(node, path, line)
        if depth >= MAX_DEPTH:
            raise _Stop(Problem(path, f"nesting too deep (more than {MAX_DEPTH} levels)", line))
        if id(node) in self._open:
            msg = "an alias (*name) refers to a mapping or list that contains it"
            raise _Stop(Problem(path, msg, line))
        self._open.add(id(node))
        try:
            if isinstance(node, MappingNode):
                return self._mapping(node, path, depth, line)
            assert isinstance(node, SequenceNode)
            if node.tag != _SEQ:
                self.problems.append(Problem(path, _unsupported(node.tag), line))
            return [self.build(v, (*path, i), depth + 1) for i, v in enumerate(node.value)]
        finally:
            self._open.discard(id(node))

    def _tick(self, path: Path, line: int, cost: int = 1) -> None:
        self.last_line = line
        self._built += cost
        if self._built > MAX_NODES:
            # Said where the expansion starts: the innermost value is some anchor's content.
            where, at = self._via or (path, line)
            msg = f"aliases (*name) expand to more than {MAX_NODES} values"
            raise _Stop(Problem(where, msg, at))

    def _mapping(self, node: MappingNode, path: Path, depth: int, line: int) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for knode, vnode, explicit in self._entries(node, path, depth, line):
            key, kline = self._key(knode, path)
            if key is None:
                continue
            kpath = (*path, key)
            if key in out:
                # Entries come explicit first, then merged ones by priority: a repeated key is
                # a mistake only among the explicit ones; otherwise the earlier one wins.
                if explicit:
                    first = self.lines[kpath]
                    msg = f"duplicate key {key!r} (first on line {first})"
                    self.problems.append(Problem(kpath, msg, kline))
                continue
            self.lines[kpath] = kline
            out[key] = self.build(vnode, kpath, depth + 1)
        return out

    def _entries(
        self, node: MappingNode, path: Path, depth: int, line: int
    ) -> list[tuple[Node, Node, bool]]:
        """The mapping's own pairs, then those its merge keys (`<<`) bring in, in the order
        that gives each key its value: explicit keys win, then earlier merges over later."""
        if node.tag != _MAP:
            self.problems.append(Problem(path, _unsupported(node.tag), line))
        own: list[tuple[Node, Node, bool]] = []
        merged: list[tuple[Node, Node, bool]] = []
        seen: set[int] = {id(node)}
        for knode, vnode in node.value:
            if _target(knode).tag != _MERGE:
                own.append((knode, vnode, True))
                continue
            value = _target(vnode)
            for ref in value.value if isinstance(value, SequenceNode) else [vnode]:
                source, at = _target(ref), ref.start_mark.line + 1
                if not isinstance(source, MappingNode):
                    msg = "a merge (<<) takes a mapping or a list of mappings"
                    self.problems.append(Problem(path, msg, at))
                    continue
                if id(source) in self._open:
                    msg = "a merge (<<) refers to a mapping that contains it"
                    raise _Stop(Problem(path, msg, at))
                if id(source) in seen:  # already merged: an earlier copy wins anyway
                    continue
                seen.add(id(source))
                self._tick(path, at)
                if depth >= MAX_DEPTH:
                    msg = f"merges (<<) nest too deep (more than {MAX_DEPTH} levels)"
                    raise _Stop(Problem(path, msg, at))
                self._open.add(id(source))
                try:
                    inner = self._entries(source, path, depth + 1, at)
                finally:
                    self._open.discard(id(source))
                # Merges of merges can repeat the same pairs exponentially: pay for each.
                self._tick(path, at, cost=len(inner))
                merged += [(k, v, False) for k, v, _ in inner]
        return own + merged

    def _key(self, knode: Node, path: Path) -> tuple[str | None, int]:
        line = knode.start_mark.line + 1
        node = _target(knode)
        if not isinstance(node, ScalarNode):
            kind = "mapping" if isinstance(node, MappingNode) else "list"
            msg = f"a key must be plain text or a number, not a {kind}"
            self.problems.append(Problem(path, msg, line))
            return None, line
        if node.tag not in (_STR, _INT, _FLOAT, _BOOL, _NULL):
            self.problems.append(Problem(path, _unsupported(node.tag), line))
        # The key as written: `yes`, `010` or `~` mean what they say, not True, 8 or None.
        value: str = node.value
        return value, line

    def _scalar(self, node: ScalarNode, path: Path, line: int) -> Any:
        tag, value = node.tag, node.value
        if tag in (_STR, _MERGE):  # `<<` as a value is just text
            return value
        if tag == _NULL:
            return None
        if tag == _BOOL:
            return yaml.SafeLoader.bool_values.get(value.lower(), value)
        if tag == _INT:
            return _to_int(value)
        if tag == _FLOAT:
            return _to_float(value)
        self.problems.append(Problem(path, _unsupported(tag), line))
        return value


def _to_int(value: str) -> int | str:
    """A YAML 1.1 integer, or the text itself when it is none (an explicit `!!int` on text,
    `0b_`) or wider than 64 bits: no Docker field holds one, and Python refuses to print an
    integer of more than 4300 digits, which would turn a later message into a traceback."""
    if not _INT_RE.fullmatch(value):
        return value
    digits = value.replace("_", "")
    sign = -1 if digits[0] == "-" else 1
    digits = digits.lstrip("+-")
    base = {"0b": 2, "0x": 16}.get(digits[:2], 8 if digits[:1] == "0" else 10)
    try:
        number = sign * int(digits[2:] if base in (2, 16) else digits, base)
    except ValueError:
        return value
    return number if number.bit_length() <= 64 else value


def _to_float(value: str) -> float | str:
    if not _FLOAT_RE.fullmatch(value):
        return value
    digits = value.replace("_", "").lower()
    if digits.endswith(".inf"):
        return float("-inf") if digits.startswith("-") else float("inf")
    if digits.endswith(".nan"):
        return float("nan")
    try:
        return float(digits)
    except ValueError:
        return value
