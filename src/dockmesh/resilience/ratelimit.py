"""Rate limits as token buckets: a bucket per key (a client's address, or one for a route),
holding at most `burst` tokens and refilled at `rate` tokens a second; a request takes one
token or is refused with the time until the next one (its Retry-After). Pure: the time is
given to every call, nothing is read from a clock.

The table of buckets is bounded (`max_keys`): the least recently seen key is forgotten first.
A bucket unseen for `burst / rate` seconds is full again anyway, so forgetting it loses
nothing unless more than `max_keys` keys are active within that time; then a forgotten client
starts again with a full bucket, which errs on the side of serving it. IPv6 clients are keyed
by their /64 (`client_key`): one host is given a /64 and could otherwise rotate through its
addresses, each with a fresh bucket.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict


class TokenBucket:
    """`tokens` left (a fraction counts toward the next) as of `stamp` (seconds)."""

    __slots__ = ("stamp", "tokens")

    def __init__(self, tokens: float, stamp: float) -> None:
        self.tokens = tokens
        self.stamp = stamp

    def take(self, rate: float, burst: float, now: float) -> float:
        """One token taken at `now`: 0.0, or, when none is left, the seconds until one will be
        (and nothing is taken). A clock that goes back refills nothing."""
        if now > self.stamp:
            tokens = self.tokens + (now - self.stamp) * rate
            self.tokens = tokens if tokens < burst else burst
            self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / rate


class RateLimiter:
    """Buckets of `burst` tokens refilled at `rate` a second, one per key, at most `max_keys`
    of them (least recently seen forgotten first)."""

    __slots__ = ("buckets", "burst", "max_keys", "rate")

    def __init__(self, rate: float, burst: int, max_keys: int = 10_000) -> None:
        if rate <= 0 or burst < 1 or max_keys < 1:
            raise ValueError("rate > 0, burst >= 1 and max_keys >= 1 are needed")
        self.rate = rate
        self.burst = float(burst)
        self.max_keys = max_keys
        self.buckets: OrderedDict[bytes, TokenBucket] = OrderedDict()

    def take(self, key: bytes, now: float) -> float:
        """0.0 when the request keyed `key` may go at `now`, else the seconds to wait."""
        buckets = self.buckets
        bucket = buckets.get(key)
        if bucket is None:
            if len(buckets) >= self.max_keys:
                buckets.popitem(last=False)
            bucket = buckets[key] = TokenBucket(self.burst, now)
        else:
            buckets.move_to_end(key)
        return bucket.take(self.rate, self.burst, now)


def retry_after(wait_s: float) -> int:
    """A Retry-After in whole seconds for a wait of `wait_s`: rounded up, at least 1."""
    whole = int(wait_s)
    return max(1, whole if whole == wait_s else whole + 1)


def client_key(ip: bytes) -> bytes:
    """The key a client's address is limited by: an IPv4 address itself (an IPv4-mapped IPv6
    one too), an IPv6 address's /64 network; anything else as it is."""
    try:
        addr = ipaddress.ip_address(ip.decode("ascii").partition("%")[0])
    except (ValueError, UnicodeDecodeError):
        return ip
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is not None:
            return str(addr.ipv4_mapped).encode()
        net = ipaddress.IPv6Network((int(addr) >> 64 << 64, 64))
        return str(net).encode()
    return str(addr).encode()
