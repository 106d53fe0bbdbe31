"""How Docker's default IPAM hands out the addresses of one subnet, as measured on the 20.10
engine, so that validation can say beforehand what the engine would refuse at apply time.

Theory of operation (libnetwork's bitmask allocator):
- The subnet's network address is never handed out, nor, in IPv4, its broadcast address:
  a /31 or /32 has nothing left, not even for the gateway, and the engine refuses it.
- The gateway is reserved first: the one the file names (anywhere in the subnet), else the
  lowest free address of the dynamic pool, which is `ip_range` when given, else the subnet.
  Every driver reserves one (bridge, macvlan, overlay). Auxiliary addresses come next.
- A container with a static address may take any free address of the subnet, inside the
  pool or not; the others take the lowest free address of the pool, in the order they start.
  Every address of `ip_range` is in the pool, its first and last too, unless it is the
  subnet's network or broadcast address.

The rules the topology needs too (which addresses are never handed out, the first one that
is: where the gateway goes) are `dockmesh.model.ipam`'s `never_handed_out` and `first_free`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from dockmesh.model.ipam import IPAddress, IPNetwork


@dataclass(frozen=True, slots=True)
class Room:
    """What one pool holds: how many addresses it has, and which of them are taken before
    the first container that draws from it starts."""

    pool: IPNetwork
    size: int  # addresses in the pool
    taken: tuple[tuple[IPAddress, str], ...]  # (address, what holds it) inside the pool

    @property
    def free(self) -> int:
        return self.size - len(self.taken)


def room(
    subnet: IPNetwork, ip_range: IPNetwork | None, held: Iterable[tuple[IPAddress, str]]
) -> Room:
    """The room left in the dynamic pool of `subnet` once the engine's own addresses and
    those in `held` (gateway, auxiliary and static addresses, whatever holds them) are
    taken."""
    pool = ip_range if ip_range is not None else subnet
    seen: dict[IPAddress, str] = {subnet.network_address: "the network address"}
    if subnet.version == 4:
        seen[subnet.broadcast_address] = "the broadcast address"
    for addr, what in held:
        seen.setdefault(addr, what)
    taken = tuple(sorted((a, w) for a, w in seen.items() if a in pool))
    return Room(pool, pool.num_addresses, taken)
