"""Durations as Go, Docker and Compose write them: `2s`, `500ms`, `1m30s`, `1.5s`."""

from __future__ import annotations

import re
from fractions import Fraction

# ASCII digits only: `\d` would take Arabic-Indic or full-width digits, which float() accepts.
_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ns|us|µs|ms|s|m|h)")
_UNIT_NS = {
    "ns": 1,
    "us": 1_000,
    "µs": 1_000,
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60_000_000_000,
    "h": 3_600_000_000_000,
}
# The engine stores durations as Go's time.Duration: a signed 64-bit count of nanoseconds.
MAX_NS = 2**63 - 1
# The longest stop grace period (`stop_grace_period:`, `down -t`): a day. The engine turns its
# StopTimeout (seconds) into a Duration, and the client waits for the stop's answer that long
# plus its own timeout: near MAX_NS either overflows (a `down` failed with "OverflowError:
# timestamp out of range for platform time_t", half of the project stopped).
MAX_GRACE_S = 86_400


def parse_duration_ns(text: str | int | float) -> int:
    """`2s`, `500ms`, `1m30s`, `1.5s` or a number of seconds → nanoseconds. Raises ValueError
    with a message fit for the user when the text is not a duration the engine can hold."""
    if isinstance(text, bool):
        raise ValueError(f"{text!r} is not a duration")
    if isinstance(text, (int, float)):
        if text != text or text < 0:  # NaN or negative
            raise ValueError(f"{text!r} is not a positive duration")
        if text * 1_000_000_000 > MAX_NS:
            raise ValueError(f"{text!r} seconds is longer than the engine can hold")
        return int(text * 1_000_000_000)
    s = text.strip()
    if not s:
        raise ValueError("empty duration")
    if len(s) > 64:
        raise ValueError(f"{s[:20]!r}…: too long for a duration")
    # Exact arithmetic: floats round 9223372036854775807ns (the largest the engine holds) up.
    pos, total = 0, Fraction(0)
    for m in _PART.finditer(s):
        if m.start() != pos:
            break
        total += Fraction(m.group(1)) * _UNIT_NS[m.group(2)]
        pos = m.end()
    if pos != len(s) or pos == 0:
        raise ValueError(f"{text!r} is not a duration (e.g. 2s, 500ms, 1m30s)")
    if total > MAX_NS:
        raise ValueError(f"{text!r} is longer than the engine can hold (about 292 years)")
    return int(total)


def format_duration_ns(ns: int) -> str:
    """The shortest exact text for `ns` that `parse_duration_ns` reads back."""
    for unit in ("h", "m", "s", "ms", "us"):
        size = _UNIT_NS[unit]
        if ns and ns % size == 0:
            return f"{ns // size}{unit}"
    return f"{ns}ns"


def grace_s(text: str | int | float) -> int:
    """A stop grace period in whole seconds, as the engine's StopTimeout holds it: rounded up
    (`1.5s` waits 2 s, never less than was asked)."""
    ns = parse_duration_ns(text)
    return -(-ns // 1_000_000_000)
