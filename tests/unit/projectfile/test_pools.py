"""The room in a pool (dockmesh.projectfile.pools), as Docker's default IPAM hands addresses
out: the subnet's network address and, in IPv4, its broadcast address are never handed out;
what the file holds (gateway, aux and static addresses) is taken only where it lies in the
pool; a range's own first and last addresses are in it."""

from __future__ import annotations

import ipaddress

from hypothesis import given
from hypothesis import strategies as st

from dockmesh.projectfile.pools import room


def net(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    return ipaddress.ip_network(text)


def test_a_subnet_without_a_range() -> None:
    r = room(net("10.0.0.0/29"), None, [(ipaddress.ip_address("10.0.0.1"), "the gateway")])
    assert r.size == 8 and r.free == 5
    assert [w for _, w in r.taken] == [
        "the network address",
        "the gateway",
        "the broadcast address",
    ]


def test_a_range_holds_its_own_first_and_last_addresses() -> None:
    held = [
        (ipaddress.ip_address("10.0.0.1"), "the gateway"),  # outside the range
        (ipaddress.ip_address("10.0.0.9"), "aux x"),
    ]
    r = room(net("10.0.0.0/24"), net("10.0.0.8/29"), held)
    assert r.pool == net("10.0.0.8/29") and r.size == 8
    assert [(str(a), w) for a, w in r.taken] == [("10.0.0.9", "aux x")]
    edge = room(net("10.0.0.0/24"), net("10.0.0.248/29"), [])
    assert [w for _, w in edge.taken] == ["the broadcast address"]


def test_ipv6_keeps_no_broadcast_address() -> None:
    r = room(net("fd00::/126"), None, [])
    assert r.size == 4 and r.free == 3


def test_an_address_held_twice_is_taken_once_under_its_first_name() -> None:
    a = ipaddress.ip_address("10.0.0.5")
    r = room(net("10.0.0.0/24"), None, [(a, "the gateway"), (a, "container web")])
    assert (a, "the gateway") in r.taken and r.free == 256 - 3


@given(
    st.integers(20, 30),
    st.data(),
)
def test_free_is_the_pool_less_what_is_taken_inside_it(prefix: int, data: st.DataObject) -> None:
    subnet = ipaddress.IPv4Network(f"10.0.0.0/{prefix}")
    sub = data.draw(st.integers(prefix, 32))
    ranges = list(subnet.subnets(new_prefix=sub))[:64]
    ip_range: ipaddress.IPv4Network | None = data.draw(st.none() | st.sampled_from(ranges))
    held = [
        (subnet.network_address + data.draw(st.integers(0, subnet.num_addresses - 1)), f"h{i}")
        for i in range(data.draw(st.integers(0, 6)))
    ]
    r = room(subnet, ip_range, held)
    pool = ip_range or subnet
    inside = {a for a, _ in held if a in pool}
    inside |= {a for a in (subnet.network_address, subnet.broadcast_address) if a in pool}
    assert r.free == pool.num_addresses - len(inside)
    assert [a for a, _ in r.taken] == sorted(inside)
