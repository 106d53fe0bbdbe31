"""IPAM maths on top of `ipaddress`: the checks Docker would make, made before Docker is asked,
with messages that say what is wrong."""

from __future__ import annotations

import ipaddress
import random
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

IPNetwork = IPv4Network | IPv6Network
IPAddress = IPv4Address | IPv6Address


class IpamError(ValueError):
    pass


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


def default_gateway(net: IPNetwork) -> IPAddress:
    """The address Docker's default IPAM gives the gateway: the first host address."""
    return net.network_address + 1


def overlaps(a: IPNetwork, b: IPNetwork) -> bool:
    return a.version == b.version and a.overlaps(b)


def pick_free_subnets(
    taken: list[IPNetwork],
    count: int,
    rng: random.Random,
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
