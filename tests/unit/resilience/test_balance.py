"""Balancers: the distributions their docstrings promise, for any weights and eligible sets."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dockmesh.resilience.balance import (
    ConsistentHash,
    LeastRequest,
    PowerOfTwo,
    RoundRobin,
    SmoothWeighted,
    make_balancer,
)

names = st.lists(
    st.from_regex(r"10\.0\.0\.[0-9]{1,3}:80", fullmatch=True), min_size=1, max_size=8, unique=True
)
weighted = names.flatmap(lambda ns: st.fixed_dictionaries({n: st.integers(1, 10) for n in ns}))


@given(weighted, st.integers(1, 5))
def test_smooth_weighted_matches_the_weights_exactly_over_each_cycle(
    weights: dict[str, int], cycles: int
) -> None:
    b = SmoothWeighted()
    b.update(weights)
    eligible = list(weights)
    total = sum(weights.values())
    for _ in range(cycles):
        got = Counter(b.pick(eligible) for _ in range(total))
        assert got == Counter(weights)


@given(weighted, st.data())
def test_smooth_weighted_over_a_subset_matches_the_subset_weights(
    weights: dict[str, int], data: st.DataObject
) -> None:
    b = SmoothWeighted()
    b.update(weights)
    sub = data.draw(st.lists(st.sampled_from(sorted(weights)), min_size=1, unique=True))
    # The first cycle after the eligible set changes may carry over `current`; afterwards it is exact.
    for _ in range(sum(weights[t] for t in sub) * 3):
        b.pick(sub)
    got = Counter(b.pick(sub) for _ in range(sum(weights[t] for t in sub)))
    assert got == Counter({t: weights[t] for t in sub})


def test_smooth_weighted_spreads_as_nginx_does() -> None:
    b = SmoothWeighted()
    b.update({"a": 5, "b": 1, "c": 1})
    assert [b.pick(["a", "b", "c"]) for _ in range(7)] == list("aabacaa")


@given(names, st.integers(1, 50))
def test_round_robin_gives_each_its_turn(ns: list[str], rounds: int) -> None:
    b = RoundRobin()
    b.update(dict.fromkeys(ns, 1))
    got = Counter(b.pick(ns) for _ in range(len(ns) * rounds))
    assert set(got.values()) == {rounds}


@given(names, st.integers(0, 2**32))
def test_least_request_picks_one_with_the_fewest_in_flight(ns: list[str], seed: int) -> None:
    b = LeastRequest(random.Random(seed))
    b.update(dict.fromkeys(ns, 1))
    for _ in range(len(ns) * 3):
        t = b.pick(ns)
        assert t is not None
        assert b.in_flight.get(t, 0) == min(b.in_flight.get(n, 0) for n in ns)
        b.started(t)
    assert max(b.in_flight.values()) - min(b.in_flight.get(n, 0) for n in ns) <= 1


def test_p2c_prefers_the_faster_of_two() -> None:
    b = PowerOfTwo(random.Random(1))
    b.update({"fast": 1, "slow": 1})
    for _ in range(20):
        b.started("fast")
        b.finished("fast", 0.001)
        b.started("slow")
        b.finished("slow", 0.1)
    assert all(b.pick(["fast", "slow"]) == "fast" for _ in range(100))


@given(names, st.integers(0, 2**32))
def test_p2c_never_picks_outside_the_eligible(ns: list[str], seed: int) -> None:
    b = PowerOfTwo(random.Random(seed))
    b.update(dict.fromkeys(ns, 1))
    sub = ns[: max(1, len(ns) // 2)]
    assert all(b.pick(sub) in sub for _ in range(20))


@given(weighted, st.lists(st.binary(min_size=1, max_size=20), min_size=1, max_size=30))
def test_consistent_hash_moves_only_the_removed_targets_keys(
    weights: dict[str, int], keys: list[bytes]
) -> None:
    b = ConsistentHash(replicas=20)
    b.update(weights)
    everyone = list(weights)
    before = {k: b.pick(everyone, k) for k in keys}
    assert before == {k: b.pick(list(reversed(everyone)), k) for k in keys}  # order does not matter
    gone = everyone[0]
    rest = everyone[1:]
    if not rest:
        return
    for k, t in before.items():
        after = b.pick(rest, k)
        assert after in rest
        if t != gone:
            assert after == t


def test_consistent_hash_without_a_key_round_robins() -> None:
    b = ConsistentHash()
    b.update({"a": 1, "b": 1})
    assert Counter(b.pick(["a", "b"]) for _ in range(10)) == {"a": 5, "b": 5}


@pytest.mark.parametrize("name", ["round_robin", "weighted", "least_request", "p2c", "hash:x-user"])
def test_every_balancer_returns_none_with_nothing_eligible(name: str) -> None:
    b = make_balancer(name, random.Random(0))
    b.update({"a": 1})
    assert b.pick([]) is None
    assert b.pick(["a"], b"k") == "a"


def test_an_unknown_balancer_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown balancer"):
        make_balancer("fastest", random.Random(0))
