"""Host names for certificates, pure: a name a client sent (SNI) made canonical, a
certificate's names matched against it (exact, or a wildcard covering one label, RFC 6125
§6.4.3), which certificate serves a name, when a leaf is due for renewal, and the bounded
cache that holds what was made per name.

Nothing here reads a file, a clock or a socket: names, times and sizes are given.
"""

from __future__ import annotations

import ipaddress
import re
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from typing import Generic, TypeVar

MAX_NAME = 253
_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_NUMERIC = re.compile(r"[0-9.]+")

# `choose`'s answer for a name the dockmesh CA's leaf serves (`tls internal`).
INTERNAL = -1


def canonical_name(name: str) -> str | None:
    """`name` in lower case without a final dot, or None when it is not a DNS host name
    (empty labels, characters outside letters, digits and hyphens, an address literal):
    such a name matches nothing and is never minted a certificate."""
    if not name or len(name) > MAX_NAME + 1 or not name.isascii():
        return None
    name = name.lower()
    if name.endswith("."):
        name = name[:-1]
    if not name or _NUMERIC.fullmatch(name):
        return None  # an IPv4 address (or a number): not a host name
    labels = name.split(".")
    if not all(_LABEL.fullmatch(label) for label in labels):
        return None
    return name


def is_address(name: str) -> bool:
    """Whether `name` is an IP address (some clients, wrk among them, send one as SNI, which
    RFC 6066 forbids: it is taken as no name at all)."""
    try:
        ipaddress.ip_address(name.removeprefix("[").removesuffix("]"))
    except ValueError:
        return False
    return True


def canonical_pattern(pattern: str) -> str | None:
    """A certificate's name (a host name, or `*.` and a host name of two labels or more)
    canonical, or None when it is neither."""
    if pattern.startswith("*."):
        rest = canonical_name(pattern[2:])
        return None if rest is None or "." not in rest else "*." + rest
    return canonical_name(pattern)


def matches(pattern: str, name: str) -> bool:
    """Whether a certificate named `pattern` serves `name` (both canonical): the same name,
    or `*.rest` and `name` is one label more than `rest` (a wildcard never covers `rest`
    itself, nor two labels)."""
    if pattern.startswith("*."):
        head, dot, rest = name.partition(".")
        return bool(head) and dot == "." and rest == pattern[2:]
    return pattern == name


def choose(name: str, files: Sequence[Iterable[str]], internal: Iterable[str]) -> int | None:
    """Which certificate serves the canonical `name`: the index of the first of `files` (each
    a certificate's canonical names) naming it exactly, else of the first whose wildcard
    covers it, else `INTERNAL` when `internal` (the names the routes allow the dockmesh CA
    to issue for) holds it, else None: the name is refused, and nothing is minted for it."""
    wildcard = None
    for i, names in enumerate(files):
        for pattern in names:
            if pattern == name:
                return i
            if wildcard is None and matches(pattern, name):
                wildcard = i
    if wildcard is not None:
        return wildcard
    return INTERNAL if name in internal else None


def renewal_due(not_before: float, not_after: float, now: float) -> bool:
    """Whether a leaf valid from `not_before` to `not_after` (seconds) is renewed at `now`:
    outside its validity, or two thirds of its lifetime gone (as ACME clients do, so a leaf is
    never served in its last days)."""
    if not not_before <= now < not_after:
        return True
    return now >= not_before + (not_after - not_before) * 2 / 3


K = TypeVar("K")
V = TypeVar("V")


class BoundedCache(Generic[K, V]):
    """At most `max_entries` values, the least recently used dropped first: what a listener
    made per name cannot grow past this, whatever names its clients send."""

    def __init__(self, max_entries: int) -> None:
        if max_entries < 1:
            raise ValueError("a cache holds at least one entry")
        self.max_entries = max_entries
        self._items: OrderedDict[K, V] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: object) -> bool:
        return key in self._items

    def get(self, key: K) -> V | None:
        value = self._items.get(key)
        if value is not None:
            self._items.move_to_end(key)
        return value

    def put(self, key: K, value: V) -> list[K]:
        """Keeps `value` under `key`; returns the keys dropped to make room."""
        self._items[key] = value
        self._items.move_to_end(key)
        dropped = []
        while len(self._items) > self.max_entries:
            old, _ = self._items.popitem(last=False)
            dropped.append(old)
        return dropped

    def discard(self, key: K) -> None:
        self._items.pop(key, None)

    def keys(self) -> list[K]:
        """Least recently used first."""
        return list(self._items)
