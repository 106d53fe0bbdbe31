"""IPAM maths against an oracle written with plain integers."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dockmesh.model.ipam import (
    IpamError,
    first_free,
    host_problem,
    is_host_address,
    overlaps,
    parse_address,
    parse_subnet,
    pick_free_subnets,
)

prefixes = st.integers(min_value=8, max_value=32)
ints = st.integers(min_value=0, max_value=2**32 - 1)


def oracle_net(base: int, prefix: int) -> tuple[int, int]:
    mask = (2**32 - 1) ^ (2 ** (32 - prefix) - 1)
    start = base & mask
    return start, start + 2 ** (32 - prefix) - 1


@given(ints, prefixes, ints)
def test_host_address_matches_integer_oracle(base: int, prefix: int, addr: int) -> None:
    start, end = oracle_net(base, prefix)
    net = ipaddress.ip_network(f"{ipaddress.IPv4Address(start)}/{prefix}")
    a = ipaddress.IPv4Address(addr)
    inside = start <= addr <= end
    special = prefix < 31 and addr in (start, end)
    assert is_host_address(a, net) == (inside and not special)
    assert (host_problem(a, net, "x") is None) == (inside and not special)


@given(ints, prefixes, ints, prefixes)
def test_overlap_matches_integer_oracle(b1: int, p1: int, b2: int, p2: int) -> None:
    s1, e1 = oracle_net(b1, p1)
    s2, e2 = oracle_net(b2, p2)
    n1 = ipaddress.ip_network(f"{ipaddress.IPv4Address(s1)}/{p1}")
    n2 = ipaddress.ip_network(f"{ipaddress.IPv4Address(s2)}/{p2}")
    assert overlaps(n1, n2) == (s1 <= e2 and s2 <= e1)


@given(ints, st.integers(min_value=0, max_value=32))
def test_parse_subnet_rejects_host_bits_and_names_the_fix(base: int, prefix: int) -> None:
    text = f"{ipaddress.IPv4Address(base)}/{prefix}"
    start, _ = oracle_net(base, prefix) if prefix else (0, 0)
    if base == start:
        assert parse_subnet(text).prefixlen == prefix
    else:
        with pytest.raises(IpamError, match=r"host bits set \(did you mean"):
            parse_subnet(text)


def test_parse_errors_are_specific() -> None:
    with pytest.raises(IpamError, match="not a CIDR"):
        parse_subnet("10.0.0.0")
    with pytest.raises(IpamError, match="not a valid CIDR"):
        parse_subnet("10.0.0.300/24")
    with pytest.raises(IpamError, match="not a valid IP"):
        parse_address("10.0.0")


def test_ipv6_and_family_mismatch() -> None:
    net = parse_subnet("fd00:1::/64")
    assert first_free(net, net) == ipaddress.ip_address("fd00:1::1")  # the default gateway
    msg = host_problem(ipaddress.ip_address("10.0.0.1"), net, "gateway")
    assert msg is not None and "IPv4" in msg
    assert not overlaps(parse_subnet("10.0.0.0/8"), net)


@given(st.lists(st.integers(0, 255), max_size=40), st.integers(1, 5), st.randoms())
def test_picked_subnets_are_free(taken_octets: list[int], count: int, rng: Any) -> None:
    taken: list[Any] = [ipaddress.ip_network(f"10.{128 + o // 2}.0.0/16") for o in taken_octets]
    picked = pick_free_subnets(taken, count, rng)
    assert len(picked) == count
    for i, p in enumerate(picked):
        assert p.subnet_of(ipaddress.IPv4Network("10.128.0.0/9"))
        assert not any(p.overlaps(t) for t in taken)
        assert not any(p.overlaps(q) for q in picked[:i])
