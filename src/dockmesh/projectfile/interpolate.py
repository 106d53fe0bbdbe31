"""Variables in a topology file, as Docker Compose substitutes them. Pure: the environment is
handed in (the process's, over the `.env` file beside the topology file, as Compose reads them).

- `$VAR` and `${VAR}`: the variable's value; unset, an empty value and a warning (Compose's
  "variable is not set. Defaulting to a blank string");
- `${VAR:-default}`: the default when VAR is unset or empty; `${VAR-default}`: when unset;
- `${VAR:?message}`: a problem when VAR is unset or empty; `${VAR?message}`: when unset;
- `${VAR:+other}`: `other` when VAR is set and not empty; `${VAR+other}`: when set;
- `$$`: a literal `$` (how a command keeps a `$` for the container's shell).

Defaults and messages may hold variables themselves (`${A:-${B:-x}}`). Values are
substituted, never keys, and what a substitution yields is not read again. A `$` followed by
anything else is left as written, as Compose leaves it.
"""

from __future__ import annotations

import re
from collections import ChainMap
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from dockmesh.projectfile.problems import Path, Problem

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_OPERATORS = (":-", ":?", ":+", "-", "?", "+")
MAX_NESTING = 16  # `${A:-${B:-…}}`: defaults inside defaults, at most this deep
# What substitution may make: a file of `$A$A$A…` with a long A (from .env, or the process's
# environment) took gigabytes. A value, and all of a document's values together.
MAX_VALUE_CHARS = 1 << 20
MAX_DOCUMENT_CHARS = 16 << 20


class InterpolationError(ValueError):
    """A `${…}` that is malformed, or a required variable that is missing."""


@dataclass(frozen=True, slots=True)
class Substituted:
    text: str
    unset: tuple[str, ...]  # variables used without a value or a default, in order, each once


class _Budget:
    """Characters substitution may still make (MAX_VALUE_CHARS)."""

    def __init__(self, chars: int, what: str) -> None:
        self.left = chars
        self.what = what

    def spend(self, text: str) -> str:
        self.left -= len(text)
        if self.left < 0:
            raise InterpolationError(f"substituted, {self.what}")
        return text


def substitute_variables(
    text: str, env: Mapping[str, str], limit: int = MAX_VALUE_CHARS
) -> Substituted:
    """`text` with its variables replaced from `env`. Raises InterpolationError, also when the
    result would be longer than `limit` characters."""
    unset: list[str] = []
    if limit < MAX_VALUE_CHARS:
        budget = _Budget(
            limit, f"the file's values would be longer than {_mib(MAX_DOCUMENT_CHARS)}"
        )
    else:
        budget = _Budget(MAX_VALUE_CHARS, f"the value would be longer than {_mib(MAX_VALUE_CHARS)}")
    out = _expand(text, env, unset, budget)
    return Substituted(out, tuple(dict.fromkeys(unset)))


def _expand(text: str, env: Mapping[str, str], unset: list[str], budget: _Budget) -> str:
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        j = text.find("$", i)
        if j < 0:
            out.append(text[i:])
            break
        out.append(text[i:j])
        nxt = text[j + 1 : j + 2]
        if nxt == "$":
            out.append("$")
            i = j + 2
        elif nxt == "{":
            end = _closing(text, j + 2)
            if end < 0:
                raise InterpolationError(
                    f"{_clip(text[j:])}: '${{' is never closed by '}}' (write $$ for a literal $)"
                )
            out.append(_braced(text[j + 2 : end], env, unset, budget))
            i = end + 1
        else:
            m = _NAME.match(text, j + 1)
            if m is None:
                out.append("$")  # `$` before anything else stays, as Compose leaves it
                i = j + 1
            else:
                out.append(budget.spend(_value(m.group(), env, unset)))
                i = m.end()
    return "".join(out)


def _closing(text: str, start: int) -> int:
    """The index of the `}` closing a `${` whose body starts at `start`, or -1. Nested `${`
    (in a default) count; `$$` is an escape, not the start of one."""
    depth, i = 1, start
    while i < len(text):
        if text.startswith("$$", i):
            i += 2
            continue
        if text.startswith("${", i):
            depth += 1
            if depth > MAX_NESTING:
                # Each level is read again by the one inside it, and recursion has its limit:
                # a file of nested defaults took minutes, then failed with a traceback.
                raise InterpolationError(
                    f"{_clip(text[start - 2 :])}: '${{' nested more than {MAX_NESTING} deep"
                )
            i += 2
            continue
        if text[i] == "}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    return -1


def _value(name: str, env: Mapping[str, str], unset: list[str]) -> str:
    if name in env:
        return env[name]
    unset.append(name)
    return ""


def _braced(body: str, env: Mapping[str, str], unset: list[str], budget: _Budget) -> str:
    m = _NAME.match(body)
    if m is None:
        raise InterpolationError(
            f"'${{{_clip(body)}}}': a variable name is letters, digits and '_', "
            "not starting with a digit"
        )
    name, rest = m.group(), body[m.end() :]
    if not rest:
        return budget.spend(_value(name, env, unset))
    op = next((o for o in _OPERATORS if rest.startswith(o)), None)
    if op is None:
        raise InterpolationError(
            f"'${{{_clip(body)}}}': after the name comes '}}', ':-', '-', ':?', '?', ':+' or '+'"
        )
    arg = rest[len(op) :]
    value = env.get(name)
    present = value is not None and (value != "" or ":" not in op)
    # A variable's value is counted where it is taken; a default (or `+` text) is not counted
    # again: its variables were counted inside it and its text is the file's own. Counted at
    # each level, `${A:-${B:-…}}` with a 100 KiB default 11 deep was "longer than 1 Mi".
    if op in (":-", "-"):
        if present and value is not None:
            return budget.spend(value)
        return _expand(arg, env, unset, budget)
    if op in (":+", "+"):
        return _expand(arg, env, unset, budget) if present else ""
    if present and value is not None:
        return budget.spend(value)
    said = _expand(arg, env, unset, budget)
    why = "is not set" if value is None else "is empty"
    raise InterpolationError(f"variable {name} {why}" + (f": {said}" if said else ""))


def _mib(chars: int) -> str:
    return f"{chars >> 20} Mi characters"


def _clip(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def interpolate_document(
    data: Any, env: Mapping[str, str]
) -> tuple[Any, list[Problem], list[Problem]]:
    """Every string value of a loaded document substituted: (data, problems, warnings), each
    problem and warning at the value's path. Keys stay as written, as in Compose; `x-…`
    extension fields are substituted too (anchors merged into services were copied already)."""
    problems: list[Problem] = []
    warnings: list[Problem] = []
    left = [MAX_DOCUMENT_CHARS]

    def walk(node: Any, path: Path) -> Any:
        if isinstance(node, str):
            if "$" not in node:
                return node
            try:
                if left[0] <= 0:
                    raise InterpolationError(
                        f"substituted, the file's values would be longer than "
                        f"{_mib(MAX_DOCUMENT_CHARS)}"
                    )
                done = substitute_variables(node, env, left[0])
            except InterpolationError as e:
                problems.append(Problem(path, str(e)))
                return node
            left[0] -= len(done.text)
            for name in done.unset:
                warnings.append(
                    Problem(path, f"variable {name} is not set: substituted an empty string")
                )
            return _typed(path, done.text)
        if isinstance(node, dict):
            return {k: walk(v, (*path, k)) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v, (*path, i)) for i, v in enumerate(node)]
        return node

    return walk(data, ()), problems, warnings


# Fields that hold a number or a boolean: a substituted value there is read as one, as
# Compose reads `replicas: ${N}`. Elsewhere it stays text (a label `v: ${VERSION}` is "2").
_NUMBERS = frozenset({"replicas", "retries", "port", "weight", "cpus", "pids_limit"})
_BOOLEANS = frozenset({"internal", "attachable", "enable_ipv6", "tcp", "init", "read_only"})


def _typed(path: Path, text: str) -> Any:
    key = path[-1] if path else None
    if key in _NUMBERS:
        if re.fullmatch(r"[0-9]+", text):
            return int(text)
        if key == "cpus" and re.fullmatch(r"[0-9]*\.[0-9]+", text):
            return float(text)
    if key in _BOOLEANS and text.lower() in ("true", "false"):
        return text.lower() == "true"
    return text


# --- the .env file --------------------------------------------------------------------------

# The part before `=`, stripped. Not the whole line in one pattern: its `\s*` around an
# optional `=value` split a run of blanks every way, and a line `export` + a million spaces
# took minutes (a .env file may be 1 MiB).
_ENV_NAME = re.compile(r"(?:export\s+)?([A-Za-z_][A-Za-z0-9_.-]*)")


def parse_dotenv(
    text: str, env: Mapping[str, str] | None = None
) -> tuple[dict[str, str], list[tuple[int, str]]]:
    """A `.env` file as Compose reads it: `NAME=value` (or `NAME: value`) lines, `#` comments
    and blank lines, an optional `export `, values in single quotes (as written, `\\'`
    escaped) or double quotes (`\\n`, `\\t`, `\\"`, `\\$` and `\\\\` escaped), a quoted
    value spanning lines until its quote closes, an unquoted value ending at ` #`. A line with
    a name alone sets nothing. With `env`, unquoted and double-quoted values are interpolated
    as the topology file is (`${VAR}`, `${VAR:-default}`, `$$`…), from `env` over the
    variables the file set on earlier lines; single-quoted ones are taken literally. Returns
    the variables and the (line, problem) of lines it cannot read."""
    values: dict[str, str] = {}
    problems: list[tuple[int, str]] = []
    lookup = ChainMap(dict(env), values) if env is not None else None
    left = MAX_DOCUMENT_CHARS  # what the file's substitutions may make, all together
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        number, stripped = i + 1, lines[i].strip()
        i += 1
        if not stripped or stripped.startswith("#"):
            continue
        # Compose takes `=` or `:` between the name and the value, whichever comes first.
        cut = min((k for k in (stripped.find("="), stripped.find(":")) if k >= 0), default=-1)
        before = stripped if cut < 0 else stripped[:cut]
        m = _ENV_NAME.fullmatch(before.rstrip())
        if m is None:
            problems.append((number, f"{_clip(stripped)!r} is not NAME=value"))
            continue
        name = m.group(1)
        if cut < 0:
            continue
        raw = stripped[cut + 1 :].strip()
        if raw[:1] in ("'", '"'):
            raw, i = _spanning(raw, lines, i)
            if i < 0:  # never closed: the rest of the file was the value (Compose stops too)
                problems.append((number, f"{name}: the {raw[0]} quote is never closed"))
                break
        try:
            value, literal = _env_value(raw, lookup is not None)
            if lookup is not None and not literal:
                value = substitute_variables(value, lookup, min(left, MAX_VALUE_CHARS)).text
                left -= len(value)
            values[name] = value
        except ValueError as e:  # InterpolationError too
            problems.append((number, f"{name}: {e}"))
    return values, problems


def _spanning(raw: str, lines: list[str], i: int) -> tuple[str, int]:
    """A quoted value whose quote `raw` does not close, with the lines from `i` on up to the
    one that closes it (as Compose reads `KEY='SOME` / `VALUE'`), and the index of the line
    after it; (raw, -1) when no line closes it. Each line is scanned once: an unclosed quote
    on each of 100 000 lines must not read the rest of the file 100 000 times."""
    quote = raw[0]
    if _scan(raw, quote, 1) >= 0:
        return raw, i
    parts = [raw]
    while i < len(lines):
        parts.append(lines[i])
        i += 1
        # A backslash ending the line above escaped its newline, not this line's first
        # character.
        if _scan(lines[i - 1], quote, 0) >= 0:
            return "\n".join(parts), i
    return raw, -1


def _scan(text: str, quote: str, start: int) -> int:
    """Where `quote` closes in `text` from `start` (-1: not there). A backslash escapes a
    quote of either kind, as Compose reads `'Let\\'s go!'`."""
    escaped = False
    for i in range(start, len(text)):
        if escaped:
            escaped = False
        elif text[i] == "\\":
            escaped = True
        elif text[i] == quote:
            return i
    return -1


_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", '"': '"', "\\": "\\", "$": "$"}


def _env_value(raw: str, interpolated: bool = False) -> tuple[str, bool]:
    """The value, and whether it is literal (single-quoted). `interpolated`: a double-quoted
    `\\$` is kept as `$$`, so that substitution leaves it a `$`."""
    if raw[:1] in ("'", '"'):
        quote = raw[0]
        end = _scan(raw, quote, 1)
        if end < 0:
            raise ValueError(f"the {quote} quote is never closed")
        tail = raw[end + 1 :].strip()
        if tail and not tail.startswith("#"):
            raise ValueError(f"text after the closing quote: {_clip(tail)!r}")
        inner = raw[1:end]
        if quote == "'":
            # Only the quote is escaped; `\\t` and the rest stay as written.
            return inner.replace("\\'", "'"), True
        escapes = {**_ESCAPES, "$": "$$"} if interpolated else _ESCAPES
        return re.sub(
            r"\\(.)", lambda m: escapes.get(m.group(1), m.group(0)), inner, flags=re.S
        ), False
    comment = re.search(r"\s#", raw)
    return (raw[: comment.start()] if comment else raw).strip(), False
