"""IPAM maths on top of `ipaddress`: the checks Docker would make, made before Docker is asked,
with messages that say what is wrong."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import Protocol

IPNetwork = IPv4Network | IPv6Network
IPAddress = IPv4Address | IPv6Address


class IpamError(ValueError):
    pass


class Rng(Protocol):
    """What `pick_free_subnets` draws from (a `random.Random`): randomness is given, so that
    the model imports no source of it."""

    def randrange(self, stop: int, /) -> int: ...


def parse_subnet(text: str) -> IPNetwork:
    """A CIDR whose host bits are zero. `10.0.0.5/24` is refused with the fix named."""
    if "/" not in text:
        raise IpamError(f"{text!r} is not a CIDR (expected address/prefix, e.g. 10.0.0.0/24)")
    try:
        return ipaddress.ip_network(text, strict=True)
    except ValueError as e:
        try:
            loose = ipaddress.ip_network(text, strict=False)
        except ValueError:
            raise IpamError(f"{text!r} is not a valid CIDR: {e}") from None
        raise IpamError(f"{text!r} has host bits set (did you mean {loose}?)") from None


def parse_address(text: str) -> IPAddress:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        raise IpamError(f"{text!r} is not a valid IP address") from None


def is_host_address(addr: IPAddress, net: IPNetwork) -> bool:
    """Can a host (gateway, container) take `addr` in `net`? IPv4's network and broadcast
    addresses cannot, except in /31 and /32 where there are none."""
    if addr.version != net.version or addr not in net:
        return False
    if net.version == 4 and net.prefixlen < 31:
        return addr not in (net.network_address, net.broadcast_address)
    if net.version == 6 and net.prefixlen < 127:
        return addr != net.network_address
    return True


def host_problem(addr: IPAddress, net: IPNetwork, what: str) -> str | None:
    """Why `addr` cannot be a host address in `net`, or None when it can."""
    if addr.version != net.version:
        return f"{what} {addr} is IPv{addr.version} but the subnet {net} is IPv{net.version}"
    if addr not in net:
        return f"{what} {addr} is outside the subnet {net}"
    if not is_host_address(addr, net):
        kind = "network" if addr == net.network_address else "broadcast"
        return f"{what} {addr} is the {kind} address of {net}"
    return None


def never_handed_out(subnet: IPNetwork) -> frozenset[IPAddress]:
    """The addresses of `subnet` Docker's default IPAM keeps for itself: the network address,
    and in IPv4 the broadcast address (a /31 or /32 has none left to hand out)."""
    if subnet.version == 4:
        return frozenset({subnet.network_address, subnet.broadcast_address})
    return frozenset({subnet.network_address})


def first_free(
    subnet: IPNetwork, pool: IPNetwork, taken: Iterable[IPAddress] = ()
) -> IPAddress | None:
    """The lowest address of `pool` (the `ip_range`, else the subnet itself) the engine would
    hand out, or None when there is none. With nothing taken yet, where Docker puts a
    network's gateway when none was asked for (`projectfile.pools` has the whole story)."""
    skip = {int(a) for a in never_handed_out(subnet) | set(taken)}
    first, last = int(pool.network_address), int(pool.broadcast_address)
    n = first
    while n <= last and n in skip:  # at most len(skip) steps
        n += 1
    return pool.network_address + (n - first) if n <= last else None


def overlaps(a: IPNetwork, b: IPNetwork) -> bool:
    return a.version == b.version and a.overlaps(b)


def pick_free_subnets(
    taken: list[IPNetwork],
    count: int,
    rng: Rng,
    pool: IPv4Network = IPv4Network("10.128.0.0/9"),
    prefix: int = 24,
) -> list[IPv4Network]:
    """`count` random subnets of `pool` that overlap nothing in `taken` nor each other.
    Raises IpamError when the pool runs out."""
    size = 2 ** (prefix - pool.prefixlen)
    out: list[IPv4Network] = []
    used = list(taken)
    for _ in range(size * 4):
        if len(out) == count:
            return out
        start = int(pool.network_address) + rng.randrange(size) * 2 ** (32 - prefix)
        net = IPv4Network((start, prefix))
        if not any(overlaps(net, t) for t in used):
            used.append(net)
            out.append(net)
    if len(out) < count:
        raise IpamError(f"no {count} free /{prefix} subnets left in {pool}")
    return out
