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
from typing import Any

from dockmesh.host.netns import NetnsPool
from dockmesh.model.topology import DOCKER_DNS


@dataclass(frozen=True, slots=True)
class Resolved:
    """What Docker's DNS answered for one name's A records (and AAAA, when asked)."""

    name: str
    addresses: tuple[str, ...] | None  # sorted; None: no answer came in time
    rcode: str = ""  # the answer's code (NOERROR, NXDOMAIN, ...); "" when none came


def resolve_in(
    pool: NetnsPool,
    pid: int,
    names: Sequence[str],
    timeout_s: float = 1.0,
    rng: random.Random | None = None,
    types: Sequence[str] = ("A",),
) -> tuple[Resolved, ...]:
    """Asks Docker's DNS, from inside `pid`'s namespace, for each name's records of `types`
    (A; AAAA too for both families): every query sent at once, answers matched by id, one
    `timeout_s` for all. One `Resolved` per name, in order, its addresses those of every type
    (None only when no type was answered). `NetnsError` or `OSError` when no socket can be
    made there."""
    import dns.exception
    import dns.message
    import dns.rcode
    import dns.rdatatype

    if not names:
        return ()
    rng = rng or random.Random()
    wanted = [dns.rdatatype.from_text(t) for t in types]
    got: dict[int, list[tuple[list[str], str]]] = {}
    with pool.socket(pid, socket.AF_INET, socket.SOCK_DGRAM) as sock:
        pending: dict[int, tuple[int, str, Any]] = {}
        for i, name in enumerate(names):
            for rdtype in wanted:
                msg = dns.message.make_query(name, rdtype)
                msg.id = rng.randrange(0, 65536)
                while msg.id in pending:
                    msg.id = (msg.id + 1) % 65536
                pending[msg.id] = (i, name, rdtype)
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
            i, name, rdtype = hit
            addresses = [
                r.address for rrset in reply.answer if rrset.rdtype == rdtype for r in rrset
            ]
            got.setdefault(i, []).append((addresses, dns.rcode.to_text(reply.rcode())))
    out = []
    for i, name in enumerate(names):
        answers = got.get(i)
        if answers is None:
            out.append(Resolved(name, None))
            continue
        addresses = sorted({a for found, _ in answers for a in found})
        # NOERROR when any type answered so (a name with an A and no AAAA is no NXDOMAIN).
        codes = [code for _, code in answers]
        out.append(Resolved(name, tuple(addresses), "NOERROR" if "NOERROR" in codes else codes[0]))
    return tuple(out)
