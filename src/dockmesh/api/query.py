"""Query strings as Consul reads them. Pure: text in, values or an `ApiError` out.

The raw query string is parsed here rather than by the HTTP framework so that the rules are
Consul's (Go's `url.ParseQuery` and `strconv.ParseUint`) and a bad byte is a 400 with a
reason, whatever the framework would have made of it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import parse_qsl

from dockmesh.api.errors import bad_request, shown
from dockmesh.model.durations import parse_duration_ns

MAX_WAIT_S = 600.0  # Consul caps a blocking query at 10 minutes
DEFAULT_WAIT_S = 300.0  # and waits 5 minutes when the client names an index but no wait
MAX_FIELDS = 256  # no client sends more; a query string of thousands is an attack
UINT64_MAX = 2**64 - 1

Pairs = Sequence[tuple[str, str]]


def parse_query_string(raw: str) -> list[tuple[str, str]]:
    """`a=1&b&c=%2F` → [("a", "1"), ("b", ""), ("c", "/")]: blanks kept (`?recurse` is a
    flag), `+` a space, percent escapes decoded as strict UTF-8."""
    try:
        return parse_qsl(
            raw,
            keep_blank_values=True,
            encoding="utf-8",
            errors="strict",
            max_num_fields=MAX_FIELDS,
        )
    except UnicodeDecodeError:
        raise bad_request("the query string is not valid UTF-8") from None
    except ValueError:
        raise bad_request(f"more than {MAX_FIELDS} query parameters") from None


def has(pairs: Pairs, name: str) -> bool:
    """Whether `?name` is present at all: Consul's flags (`recurse`, `keys`, `raw`, `stale`)
    count by presence, whatever their value."""
    return any(k == name for k, _ in pairs)


def get(pairs: Pairs, name: str) -> str | None:
    """The first value of `name` (Go's `Query().Get`), None when absent."""
    for k, v in pairs:
        if k == name:
            return v
    return None


def get_all(pairs: Pairs, name: str) -> list[str]:
    return [v for k, v in pairs if k == name]


def parse_uint(text: str, what: str) -> int:
    """Go's `strconv.ParseUint(text, 10, 64)`: ASCII digits only, no sign, at most 2^64-1."""
    if not text or len(text) > 20 or not (text.isascii() and text.isdigit()):
        raise bad_request(f"Invalid {what}: {shown(text)} is not an unsigned integer")
    value = int(text)
    if value > UINT64_MAX:
        raise bad_request(f"Invalid {what}: {shown(text)} is larger than 2^64-1")
    return value


def uint_param(pairs: Pairs, name: str) -> int | None:
    """`?cas=`, `?flags=`: None when absent; present but not a uint64 is a 400."""
    if not has(pairs, name):
        return None
    return parse_uint(get(pairs, name) or "", name)


def bool_param(pairs: Pairs, name: str) -> bool:
    """Consul's boolean query parameters (`?passing`): present and empty is true, Go's
    `strconv.ParseBool` spellings otherwise."""
    if not has(pairs, name):
        return False
    value = get(pairs, name) or ""
    if value in ("", "1", "t", "T", "true", "TRUE", "True"):
        return True
    if value in ("0", "f", "F", "false", "FALSE", "False"):
        return False
    raise bad_request(f"Invalid value for ?{name}: {shown(value)}")


def parse_wait(text: str) -> float:
    """`10s`, `5m`, `1m30s` (Go durations) → seconds, capped at ten minutes."""
    if text == "0":
        return 0.0
    try:
        ns = parse_duration_ns(text)
    except ValueError:
        raise bad_request(f"Invalid wait time: {shown(text)}") from None
    return min(ns / 1e9, MAX_WAIT_S)


@dataclass(frozen=True, slots=True)
class Blocking:
    """A blocking query's parameters: return when the result's index passes `index`, or
    after `wait_s`. `index` 0 is an ordinary read."""

    index: int = 0
    wait_s: float = 0.0


def parse_blocking(pairs: Pairs) -> Blocking:
    index_text = get(pairs, "index")
    if not index_text:  # Consul ignores `?index=` without a value
        return Blocking()
    index = parse_uint(index_text, "index")
    wait_text = get(pairs, "wait")
    wait_s = parse_wait(wait_text) if wait_text else DEFAULT_WAIT_S
    return Blocking(index, wait_s)


def refuse_unsupported(pairs: Pairs) -> None:
    """A parameter that would filter the answer and that dockmesh does not implement is
    refused rather than ignored: ignoring it would answer a different question. Those that
    change nothing for one agent that is its own leader (`dc`, `stale`, `consistent`,
    `cached`, `token`, `near`, `ns`, `partition`) are ignored, like any unknown one."""
    for name in ("node-meta",):
        if has(pairs, name):
            raise bad_request(f"?{name} is not supported by dockmesh")
