"""The host's conntrack table over netlink, and its byte accounting switch.

One dump of the whole table on a plain netlink socket, each datagram decoded by
`dockmesh.codecs.ctnetlink` (a decoder that builds no object per attribute: 50,000 entries in
a fraction of a second, where pyroute2's took 20-30 s). The host's table is the one that
matters: bridged container traffic passes the host's netfilter hooks (br_netfilter), and
published ports are DNATed there.

The kernel can filter a dump by mark, zone or one exact tuple, but not by subnet; Docker's
container traffic carries no mark and no zone, so the table is read whole and what touches
no container is dropped by the aggregation (`flows.aggregate`).
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Iterator

from dockmesh.codecs.ctnetlink import ConntrackFlow, CtnetlinkError, DumpDecoder, dump_request

log = logging.getLogger(__name__)

ACCT = "/proc/sys/net/netfilter/nf_conntrack_acct"
NETLINK_NETFILTER = 12
# A dump's datagrams are at most 32 KiB (the kernel's cap for one dump step); room to spare.
RECV_BYTES = 1 << 16
RCVBUF_BYTES = 1 << 20


class ConntrackError(OSError):
    """The table could not be read (no conntrack in this kernel, no right to read it, or an
    answer that could not be decoded)."""


def ensure_accounting() -> str:
    """Turns conntrack's per-connection byte and packet counters on for this (the host's)
    network namespace: "on" when they already were, "enabled" when this call turned them
    on (connections opened before have none), "off" when that was not possible (not root,
    or no conntrack)."""
    try:
        with open(ACCT) as f:
            if f.read().strip() == "1":
                return "on"
        with open(ACCT, "w") as f:
            f.write("1\n")
    except OSError as e:
        log.warning("conntrack accounting is off and cannot be turned on: %s", e)
        return "off"
    log.info("turned conntrack accounting on (%s)", ACCT)
    return "enabled"


def dump(mark: tuple[int, int] | None = None, zone: int | None = None) -> Iterator[ConntrackFlow]:
    """Every entry of this network namespace's conntrack table (IPv4 and IPv6); with `mark`
    (value, mask) or `zone`, only those the kernel finds matching."""
    try:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
    except OSError as e:
        raise ConntrackError(f"conntrack: cannot open a netfilter netlink socket: {e}") from e
    with sock:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF_BYTES)
            sock.bind((0, 0))
            seq = os.getpid() & 0xFFFF
            sock.send(dump_request(seq, mark=mark, zone=zone))
            decoder = DumpDecoder(seq)
            while not decoder.done:
                data = sock.recv(RECV_BYTES)
                if not data:
                    raise ConntrackError("conntrack: the dump ended without its last message")
                yield from decoder.feed(data)
        except CtnetlinkError as e:
            if e.errno:
                refused = ConntrackError(
                    f"conntrack: the kernel refused the dump: {os.strerror(e.errno)}"
                )
                refused.errno = e.errno
                raise refused from e
            raise ConntrackError(f"conntrack: {e}") from e
        except ConntrackError:
            raise
        except OSError as e:
            raise ConntrackError(f"conntrack: {e}") from e
    if decoder.interrupted:
        log.info("the conntrack table changed during the dump: an entry may be missing")
