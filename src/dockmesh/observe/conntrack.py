"""The host's conntrack table over netlink (pyroute2), and its byte accounting switch.

One dump of the whole table, parsed by `flows.parse_conntrack_message`. The host's table is
the one that matters: bridged container traffic passes the host's netfilter hooks
(br_netfilter), and published ports are DNATed there.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

from dockmesh.observe.flows import ConntrackFlow, parse_conntrack_message

log = logging.getLogger(__name__)

ACCT = "/proc/sys/net/netfilter/nf_conntrack_acct"


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


def dump() -> Iterator[ConntrackFlow]:
    """Every entry of the host's conntrack table (IPv4 and IPv6)."""
    from pyroute2.netlink.nfnetlink.nfctsocket import NFCTSocket  # slow import: here only

    with NFCTSocket() as sock:
        for msg in sock.dump():
            # dump(): the message as plain lists and dicts (pyroute2 0.9 keeps attributes in
            # slot objects that do not unpack like the pairs the parser reads).
            flow = parse_conntrack_message(msg.dump())
            if flow is not None:
                yield flow
