"""The pure rules for names: a client's SNI made canonical, a wildcard covers exactly one
label, the choice of certificate never mints for a name the routes do not allow, renewal
before the end, and a cache that never grows past its bound."""

from __future__ import annotations

from hypothesis import assume, given
from hypothesis import strategies as st

from dockmesh.pki.names import (
    INTERNAL,
    BoundedCache,
    canonical_name,
    canonical_pattern,
    choose,
    is_address,
    matches,
    renewal_due,
)

label = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?", fullmatch=True)
host = (
    st.lists(label, min_size=1, max_size=4)
    .map(".".join)
    .filter(lambda h: canonical_name(h) is not None)
)
any_text = st.text(max_size=300)


@given(host)
def test_a_host_name_is_its_own_canonical_form_in_any_case_and_with_a_final_dot(h: str) -> None:
    assert canonical_name(h) == h
    assert canonical_name(h.upper()) == h
    assert canonical_name(h + ".") == h


@given(any_text)
def test_any_text_is_either_refused_or_canonical_and_stable(text: str) -> None:
    name = canonical_name(text)
    if name is not None:
        assert canonical_name(name) == name
        assert name == name.lower() and not name.endswith(".")
        assert all(c.isalnum() or c in ".-" for c in name) and name.isascii()
        assert ".." not in name and len(name) <= 253


def test_what_is_not_a_host_name() -> None:
    for bad in ("", ".", "a..b", "-a.test", "a-.test", "a_b.test", "10.0.0.1", "::1", "[::1]",
                "a b", "bücher.test", "x" * 64 + ".test", "*.test", "a/../b"):  # fmt: skip
        assert canonical_name(bad) is None, bad
    assert canonical_name("xn--bcher-kva.test") == "xn--bcher-kva.test"


@given(label, host)
def test_a_wildcard_covers_one_label_only(first: str, rest: str) -> None:
    assume("." in rest)
    pattern = "*." + rest
    assert canonical_pattern(pattern.upper()) == pattern
    assert matches(pattern, f"{first}.{rest}")
    assert not matches(pattern, rest)
    assert not matches(pattern, f"{first}.{first}.{rest}")
    assert not matches(pattern, f"{first}{rest}")


def test_a_wildcard_needs_two_labels_under_it() -> None:
    assert canonical_pattern("*.test") is None
    assert canonical_pattern("*.a.test") == "*.a.test"
    assert canonical_pattern("a.*.test") is None


@given(host, st.lists(st.lists(host, max_size=3), max_size=4), st.sets(host, max_size=4))
def test_a_name_is_served_only_by_what_names_it(
    name: str, files: list[list[str]], internal: set[str]
) -> None:
    got = choose(name, files, internal)
    if got is None:
        assert name not in internal and not any(name in f for f in files)
    elif got == INTERNAL:
        # The CA mints only for names the routes allow, and only when no file serves them.
        assert name in internal and not any(name in f for f in files)
    else:
        assert name in files[got]
        assert not any(name in f for f in files[:got])


def test_an_exact_name_beats_an_earlier_wildcard_and_a_wildcard_beats_the_ca() -> None:
    files = [["*.a.test"], ["x.a.test"]]
    assert choose("x.a.test", files, set()) == 1
    assert choose("y.a.test", files, {"y.a.test"}) == 0
    assert choose("a.test", files, {"a.test"}) == INTERNAL
    assert choose("evil.test", files, {"a.test"}) is None


@given(st.floats(0, 1e9), st.floats(1, 1e8), st.floats(-1e8, 2e8))
def test_a_leaf_is_renewed_before_its_end_and_kept_before_two_thirds(
    start: float, life: float, offset: float
) -> None:
    now = start + offset
    due = renewal_due(start, start + life, now)
    if now < start or now >= start + life:
        assert due
    elif now < start + life * 0.66:
        assert not due
    elif now >= start + life * 0.67:
        assert due


@given(st.integers(1, 20), st.lists(st.integers(0, 50), max_size=200))
def test_the_cache_never_holds_more_than_its_bound_and_drops_the_least_recently_used(
    bound: int, keys: list[int]
) -> None:
    cache: BoundedCache[int, str] = BoundedCache(bound)
    recent: list[int] = []  # a model: least recently used first
    for k in keys:
        if k % 3 == 0 and cache.get(k) is not None:
            recent.remove(k)
            recent.append(k)
            continue
        dropped = cache.put(k, str(k))
        if k in recent:
            recent.remove(k)
        recent.append(k)
        expected = recent[: max(0, len(recent) - bound)]
        assert dropped == expected
        del recent[: len(expected)]
        assert len(cache) <= bound
    assert cache.keys() == recent
    assert all(cache.get(k) == str(k) for k in recent)


def test_an_address_is_told_from_a_name() -> None:
    for address in ("127.0.0.1", "::1", "[::1]", "fe80::1"):
        assert is_address(address) and canonical_name(address) is None
    for other in ("app.test", "1.2.3", "localhost", ""):
        assert not is_address(other)


@given(any_text)
def test_no_text_is_both_an_address_and_a_name(text: str) -> None:
    assert not (is_address(text) and canonical_name(text) is not None)
