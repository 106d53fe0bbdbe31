"""Questions to Docker's embedded DNS as a container asks them: from a UDP socket made in
its network namespace (the resolver at 127.0.0.11 answers nowhere else), so the answers are
the ones that container gets, for the networks it is on."""

from __future__ import annotations

import random
import select
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass

from dockmesh.host.netns import NetnsPool
from dockmesh.model.topology import DOCKER_DNS


@dataclass(frozen=True, slots=True)
class Resolved:
    """What Docker's DNS answered for one name's A records."""

    name: str
    addresses: tuple[str, ...] | None  # sorted; None: no answer came in time
    rcode: str = ""  # the answer's code (NOERROR, NXDOMAIN, ...); "" when none came


def resolve_in(
    pool: NetnsPool,
    pid: int,
    names: Sequence[str],
    timeout_s: float = 1.0,
    rng: random.Random | None = None,
) -> tuple[Resolved, ...]:
    """Asks Docker's DNS, from inside `pid`'s namespace, for each name's A records: every
    query sent at once, answers matched by id, one `timeout_s` for all. One `Resolved` per
    name, in order. `NetnsError` or `OSError` when no socket can be made there."""
    import dns.exception
    import dns.message
    import dns.rcode
    import dns.rdatatype

    if not names:
        return ()
    rng = rng or random.Random()
    got: dict[int, Resolved] = {}
    with pool.socket(pid, socket.AF_INET, socket.SOCK_DGRAM) as sock:
        pending: dict[int, tuple[int, str]] = {}
        for i, name in enumerate(names):
            msg = dns.message.make_query(name, dns.rdatatype.A)
            msg.id = rng.randrange(0, 65536)
            while msg.id in pending:
                msg.id = (msg.id + 1) % 65536
            pending[msg.id] = (i, name)
            try:
                sock.sendto(msg.to_wire(), (DOCKER_DNS, 53))
            except OSError:
                continue
        deadline = time.monotonic() + timeout_s
        while pending:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([sock], [], [], left)[0]:
                break
            try:
                reply = dns.message.from_wire(sock.recv(4096))
            except (OSError, dns.exception.DNSException):
                continue
            hit = pending.pop(reply.id, None)
            if hit is None:
                continue
            i, name = hit
            addresses = sorted(
                {
                    r.address
                    for rrset in reply.answer
                    if rrset.rdtype == dns.rdatatype.A
                    for r in rrset
                }
            )
            got[i] = Resolved(name, tuple(addresses), dns.rcode.to_text(reply.rcode()))
    return tuple(got.get(i, Resolved(name, None)) for i, name in enumerate(names))
