"""Load-balancing decisions: which of the eligible upstreams takes the next request. Pure; the
randomness is injected (a seeded `random.Random`).

Every balancer is told the whole set of targets with their weights (`update`), and on each
pick is given the targets that may take a request *now* (healthy, not ejected, breaker
admitting): a sequence of names, in any order, a subset of the targets. It returns one of
them, or None when the sequence is empty. `started`/`finished` report a request's life so
least-request and P2C can count requests in flight and learn latencies; the others ignore them.

- `RoundRobin`: each eligible target in turn; weights ignored.
- `SmoothWeighted`: nginx's smooth weighted round robin. Each pick adds every eligible
  target's weight to its `current`, picks the largest `current` (earliest in target order on a
  tie) and takes the sum of the weights off it. Over any run of `sum(weights)` picks with the
  same eligible set, each target is picked exactly `weight` times, spread out rather than
  bunched (5,1,1 gives a a b a c a a, not a a a a a b c).
- `LeastRequest`: the fewest requests in flight; ties broken at random.
- `PowerOfTwo`: two distinct eligible targets at random; the cheaper by
  `ewma_latency * (in_flight + 1)` wins (Finagle's P2C with an EWMA of latency). A target
  with no latency yet costs the smallest known EWMA, so a new target is tried soon.
- `ConsistentHash`: a ring of `replicas * weight` points per target (a 64-bit BLAKE2 hash);
  a key goes to the first point clockwise whose target is eligible, so removing a target
  moves only its own keys. No key: round robin.
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Mapping, Sequence
from typing import Protocol, TypeVar

T = TypeVar("T")


class Rng(Protocol):
    """What a balancer needs of its randomness: `random.Random` has it (seed it in tests)."""

    def choice(self, seq: Sequence[T], /) -> T: ...

    def sample(self, population: Sequence[T], k: int) -> list[T]: ...


class Balancer(Protocol):
    # False when started/finished do nothing: a hot path may skip calling them.
    tracks: bool

    def update(self, weights: Mapping[str, int]) -> None: ...

    def pick(self, eligible: Sequence[str], key: bytes | None = None) -> str | None: ...

    def started(self, target: str) -> None: ...

    def finished(self, target: str, latency_s: float | None) -> None: ...


class _Base:
    """Targets and weights, and no interest in requests' lives."""

    tracks = False

    def __init__(self) -> None:
        self.weights: dict[str, int] = {}

    def update(self, weights: Mapping[str, int]) -> None:
        self.weights = {t: max(1, int(w)) for t, w in weights.items()}

    def started(self, target: str) -> None:
        return None

    def finished(self, target: str, latency_s: float | None) -> None:
        return None


class RoundRobin(_Base):
    def __init__(self) -> None:
        super().__init__()
        self._next = 0

    def pick(self, eligible: Sequence[str], key: bytes | None = None) -> str | None:
        n = len(eligible)
        if not n:
            return None
        i = self._next % n
        self._next = i + 1
        return eligible[i]


class SmoothWeighted(_Base):
    def __init__(self) -> None:
        super().__init__()
        self.current: dict[str, int] = {}
        self._order: dict[str, int] = {}

    def update(self, weights: Mapping[str, int]) -> None:
        super().update(weights)
        self.current = {t: self.current.get(t, 0) for t in self.weights}
        self._order = {t: i for i, t in enumerate(self.weights)}

    def pick(self, eligible: Sequence[str], key: bytes | None = None) -> str | None:
        if len(eligible) == 1:
            return eligible[0]
        weights, current, order = self.weights, self.current, self._order
        best: str | None = None
        best_cur = 0
        total = 0
        # Target order, not the caller's, decides ties: the sequence stays the same whatever
        # order the eligible names come in.
        for t in sorted(eligible, key=lambda t: order.get(t, 1 << 30)):
            w = weights.get(t, 1)
            c = current.get(t, 0) + w
            current[t] = c
            total += w
            if best is None or c > best_cur:
                best, best_cur = t, c
        if best is not None:
            current[best] = best_cur - total
        return best


class LeastRequest(_Base):
    tracks = True

    def __init__(self, rng: Rng) -> None:
        super().__init__()
        self.rng = rng
        self.in_flight: dict[str, int] = {}

    def pick(self, eligible: Sequence[str], key: bytes | None = None) -> str | None:
        if not eligible:
            return None
        in_flight = self.in_flight
        low = min(in_flight.get(t, 0) for t in eligible)
        ties = [t for t in eligible if in_flight.get(t, 0) == low]
        return ties[0] if len(ties) == 1 else self.rng.choice(ties)

    def started(self, target: str) -> None:
        self.in_flight[target] = self.in_flight.get(target, 0) + 1

    def finished(self, target: str, latency_s: float | None) -> None:
        n = self.in_flight.get(target, 0)
        if n > 0:
            self.in_flight[target] = n - 1


class PowerOfTwo(LeastRequest):
    def __init__(self, rng: Rng, alpha: float = 0.3) -> None:
        super().__init__(rng)
        self.alpha = alpha
        self.ewma: dict[str, float] = {}

    def cost(self, target: str) -> float:
        lat = self.ewma.get(target)
        if lat is None:
            lat = min(self.ewma.values(), default=0.0)
        # +1e-6: a target with no latency yet still prefers fewer requests in flight.
        return (lat + 1e-6) * (self.in_flight.get(target, 0) + 1)

    def pick(self, eligible: Sequence[str], key: bytes | None = None) -> str | None:
        n = len(eligible)
        if n < 2:
            return eligible[0] if n else None
        a, b = self.rng.sample(range(n), 2)
        ta, tb = eligible[a], eligible[b]
        return ta if self.cost(ta) <= self.cost(tb) else tb

    def finished(self, target: str, latency_s: float | None) -> None:
        super().finished(target, latency_s)
        if latency_s is not None and target in self.weights:
            old = self.ewma.get(target)
            self.ewma[target] = latency_s if old is None else old + self.alpha * (latency_s - old)

    def update(self, weights: Mapping[str, int]) -> None:
        super().update(weights)
        self.ewma = {t: v for t, v in self.ewma.items() if t in self.weights}


def ring_hash(data: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


class ConsistentHash(_Base):
    def __init__(self, replicas: int = 100) -> None:
        super().__init__()
        self.replicas = replicas
        self._points: list[int] = []
        self._owners: list[str] = []
        self._rr = RoundRobin()

    def update(self, weights: Mapping[str, int]) -> None:
        super().update(weights)
        ring = sorted(
            (ring_hash(f"{t}#{i}".encode()), t)
            for t, w in self.weights.items()
            for i in range(self.replicas * w)
        )
        self._points = [p for p, _ in ring]
        self._owners = [t for _, t in ring]

    def pick(self, eligible: Sequence[str], key: bytes | None = None) -> str | None:
        if not eligible:
            return None
        if key is None or not self._points:
            return self._rr.pick(eligible)
        allowed = set(eligible)
        n = len(self._points)
        i = bisect.bisect_left(self._points, ring_hash(key))
        for step in range(n):
            owner = self._owners[(i + step) % n]
            if owner in allowed:
                return owner
        # Eligible names the ring does not hold (not in `update`): stay deterministic.
        return sorted(eligible)[ring_hash(key) % len(eligible)]


BALANCERS = ("round_robin", "weighted", "least_request", "p2c")


def make_balancer(name: str, rng: Rng) -> Balancer:
    """`round_robin`, `weighted`, `least_request`, `p2c`, or `hash:<anything>`."""
    if name == "round_robin":
        return RoundRobin()
    if name == "weighted":
        return SmoothWeighted()
    if name == "least_request":
        return LeastRequest(rng)
    if name == "p2c":
        return PowerOfTwo(rng)
    if name.startswith("hash:") and len(name) > 5:
        return ConsistentHash()
    raise ValueError(
        f"unknown balancer {name!r}: expected one of {', '.join(BALANCERS)} or hash:<header>"
    )
