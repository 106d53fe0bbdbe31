"""Facts for `dockmesh why` and `matrix`, read from containers' namespaces from the host: the
sockets a container listens on (`/proc/<pid>/net/*`, no namespace entry needed) and what a
container's resolver — Docker's embedded DNS at 127.0.0.11, reachable only from inside its
namespace — answers for a name."""

from __future__ import annotations

import contextlib
import select
import socket

from dockmesh.codecs.procnet import parse_net_sockets
from dockmesh.host.netns import NetnsError, NetnsPool
from dockmesh.policy.reach import Listening

DOCKER_DNS = ("127.0.0.11", 53)


def listening(pid: int) -> list[Listening] | None:
    """TCP listeners and bound UDP sockets in `pid`'s namespace; None when unreadable (the
    container is gone, or no permission)."""
    out: list[Listening] = []
    read_any = False
    for name, proto in (("tcp", "tcp"), ("tcp6", "tcp"), ("udp", "udp"), ("udp6", "udp")):
        try:
            with open(f"/proc/{pid}/net/{name}") as f:
                text = f.read()
        except OSError:
            continue
        read_any = True
        out += [Listening(x.proto, x.address, x.port) for x in parse_net_sockets(text, proto)]
    return out if read_any else None


def resolve(pool: NetnsPool, pid: int, name: str, timeout_s: float = 1.0) -> list[str]:
    """IPv4 addresses `pid`'s resolver (Docker's DNS) gives for `name`; [] for none."""
    import dns.exception
    import dns.message
    import dns.rdatatype

    query = dns.message.make_query(name, dns.rdatatype.A)
    try:
        sock = pool.socket(pid, socket.AF_INET, socket.SOCK_DGRAM)
    except NetnsError:
        return []
    with sock:
        try:
            sock.sendto(query.to_wire(), DOCKER_DNS)
            ready, _, _ = select.select([sock], [], [], timeout_s)
            if not ready:
                return []
            data = sock.recv(4096)
        except OSError:
            return []
    with contextlib.suppress(dns.exception.DNSException):
        answer = dns.message.from_wire(data)
        return sorted(
            {r.address for rrset in answer.answer if rrset.rdtype == dns.rdatatype.A for r in rrset}
        )
    return []
