"""Per-client limits as decisions: which address a connection counts against, whether one
more connection from it is admitted, whether a request body keeps its minimum rate, and which
connections to close when the bytes held for clients near the budget. Pure: numbers in,
answers out; the server (`server.Proxy`) measures and carries the answers out.

- **One client, one address**: an IPv4 address, or an IPv6 address's /64 (a host gets a
  whole /64 and picks addresses in it at will; an IPv4-mapped IPv6 address is its IPv4).
- **Connections per client**: at most `limit` at once (0: no limit); the one past it is
  refused (503), not queued.
- **A body's minimum rate**: each `step` bytes of a request body (or all of a smaller one)
  must come within `window` seconds of the last step: a body trickled in (a byte a second)
  ends with 408 instead of holding its connection, or its upstream's, for as long as it likes.
- **The memory budget** (`shed`): what is held for clients (what they sent ahead, bodies
  being buffered, responses not taken yet, plus `CONN_COST` per connection) is summed by the
  sweep. Near the budget (`NEAR` of it) idle keep-alives are closed first, longest idle first:
  they cost their client only a reconnect. Only while that is not enough to come back under
  the budget itself are busy connections closed, those holding the most first, until under
  `NEAR` again: a client that does not read its responses pays, not the others.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

# What an open client connection costs besides the bytes it holds: its protocol object, its
# transport, their buffers' bookkeeping (about 2.5 KiB measured per idle connection, rounded up).
CONN_COST = 4096
# Shedding begins past this share of the budget, and stops once back under it.
NEAR = 0.9


def client_key(ip: bytes) -> bytes:
    """The address a connection from `ip` counts against: an IPv4 address as it is, an IPv6
    address's /64 (an IPv4-mapped one as its IPv4); anything else as it is."""
    if b":" not in ip:
        return ip
    try:
        addr = ipaddress.IPv6Address(ip.decode("ascii"))
    except ValueError:
        return ip
    if addr.ipv4_mapped is not None:
        return str(addr.ipv4_mapped).encode()
    net = ipaddress.IPv6Network((int(addr) >> 64 << 64, 64))
    return str(net).encode()


class ClientCounts:
    """Open connections per client address (`client_key`)."""

    __slots__ = ("counts", "refused")

    def __init__(self) -> None:
        self.counts: dict[bytes, int] = {}
        self.refused = 0

    def add(self, key: bytes, limit: int) -> bool:
        """Counts a new connection from `key`; False (and not counted) when `key` already has
        `limit` open (0: no limit)."""
        n = self.counts.get(key, 0)
        if limit and n >= limit:
            self.refused += 1
            return False
        self.counts[key] = n + 1
        return True

    def remove(self, key: bytes) -> None:
        n = self.counts.get(key, 0) - 1
        if n > 0:
            self.counts[key] = n
        else:
            self.counts.pop(key, None)


def body_progress(
    now: float, mark_t: float, mark_n: int, got: int, step: int, window: float
) -> tuple[float, int] | None:
    """A body's rate check: the mark (when, and how many bytes had come then) after `got`
    bytes at `now`; None when `window` passed since the mark without `step` more bytes."""
    if got - mark_n >= step:
        return now, got
    if now - mark_t > window:
        return None
    return mark_t, mark_n


def shed(conns: Sequence[tuple[bool, int, float]], budget: int) -> tuple[list[int], list[int]]:
    """Which connections to close, by index, as (idle keep-alives, busy ones): `conns` are
    (whether it is an idle keep-alive, the bytes it holds with `CONN_COST`, since when it is
    idle or was last active). Nothing while the total is within `NEAR` of `budget`; past it,
    idle ones, longest idle first, until within it; then, only if the total is still over
    `budget` itself, the busy ones holding the most, until within `NEAR` again."""
    total = sum(c[1] for c in conns)
    near = budget * NEAR
    if total <= near:
        return [], []
    idle = sorted((i for i, c in enumerate(conns) if c[0]), key=lambda i: conns[i][2])
    idle_out: list[int] = []
    for i in idle:
        if total <= near:
            break
        idle_out.append(i)
        total -= conns[i][1]
    busy_out: list[int] = []
    if total > budget:
        busy = sorted((i for i, c in enumerate(conns) if not c[0]), key=lambda i: -conns[i][1])
        for i in busy:
            if total <= near:
                break
            busy_out.append(i)
            total -= conns[i][1]
    return idle_out, busy_out
