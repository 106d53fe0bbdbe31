"""Token buckets and the bounded table of them, driven by hypothesis with times it chooses."""

from __future__ import annotations

import ipaddress

from hypothesis import given
from hypothesis import strategies as st

from dockmesh.resilience.ratelimit import RateLimiter, TokenBucket, client_key, retry_after

rates = st.floats(min_value=0.1, max_value=1000, allow_nan=False)
bursts = st.integers(min_value=1, max_value=50)
steps = st.lists(st.floats(min_value=0, max_value=5, allow_nan=False), max_size=200)


@given(rates, bursts, steps)
def test_never_more_than_the_burst_plus_what_the_rate_refilled(
    rate: float, burst: int, gaps: list[float]
) -> None:
    b = TokenBucket(burst, 0.0)
    now = 0.0
    admitted = 0
    for gap in gaps:
        now += gap
        wait = b.take(rate, burst, now)
        assert wait >= 0
        admitted += wait == 0
        assert 0 <= b.tokens <= burst
    # Tokens are never made from nothing: at most the burst plus the refill over the time.
    assert admitted <= burst + rate * now + 1e-6


@given(rates, bursts, st.floats(min_value=0, max_value=100, allow_nan=False))
def test_a_refusal_says_how_long_to_wait_and_that_wait_suffices(
    rate: float, burst: int, start: float
) -> None:
    b = TokenBucket(burst, start)
    for _ in range(burst):
        assert b.take(rate, burst, start) == 0.0  # the burst goes at once
    wait = b.take(rate, burst, start)
    assert wait > 0
    assert abs(wait - 1 / rate) < 1e-9
    assert b.take(rate, burst, start + wait + 1e-9) == 0.0


def test_a_clock_going_back_refills_nothing() -> None:
    b = TokenBucket(1, 10.0)
    assert b.take(1.0, 1, 10.0) == 0.0
    assert b.take(1.0, 1, 5.0) > 0
    assert b.take(1.0, 1, 10.5) > 0
    assert b.take(1.0, 1, 11.0) == 0.0


@given(
    st.lists(st.integers(min_value=0, max_value=40), max_size=300),
    st.integers(min_value=1, max_value=10),
)
def test_the_table_is_bounded_and_forgets_the_least_recently_seen(
    keys: list[int], max_keys: int
) -> None:
    lim = RateLimiter(1.0, 2, max_keys=max_keys)
    recent: list[bytes] = []
    for i, k in enumerate(keys):
        key = b"%d" % k
        lim.take(key, float(i))
        assert len(lim.buckets) <= max_keys
        if key in recent:
            recent.remove(key)
        recent.append(key)
    assert list(lim.buckets) == recent[-max_keys:]


def test_per_key_buckets_are_separate() -> None:
    lim = RateLimiter(1.0, 2)
    assert [lim.take(b"a", 0.0) for _ in range(3)] == [0.0, 0.0, 1.0]
    assert lim.take(b"b", 0.0) == 0.0


@given(st.floats(min_value=1e-6, max_value=1e6, allow_nan=False))
def test_retry_after_rounds_up_to_whole_seconds(wait: float) -> None:
    r = retry_after(wait)
    assert r >= 1 and r >= wait and r - wait < 1


@given(
    st.integers(min_value=0, max_value=2**128 - 1), st.integers(min_value=0, max_value=2**64 - 1)
)
def test_ipv6_clients_are_keyed_by_their_64(addr: int, host: int) -> None:
    a = ipaddress.IPv6Address(addr)
    if a.ipv4_mapped is not None:
        return
    same_net = ipaddress.IPv6Address((addr >> 64 << 64) | host)
    assert client_key(str(a).encode()) == client_key(str(same_net).encode())
    other = ipaddress.IPv6Address(addr ^ (1 << 64))
    assert client_key(str(a).encode()) != client_key(str(other).encode())


def test_ipv4_and_mapped_addresses_are_themselves() -> None:
    assert client_key(b"10.1.2.3") == b"10.1.2.3"
    assert client_key(b"::ffff:10.1.2.3") == b"10.1.2.3"
    assert client_key(b"2001:db8:1:2:3:4:5:6") == b"2001:db8:1:2::/64"
    assert client_key(b"unknown") == b"unknown"
