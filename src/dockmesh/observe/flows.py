"""Connections between containers from conntrack entries, aggregated to edges (pure).

Theory of operation
-------------------
- A conntrack entry has two tuples. The original one is what the client sent (its source, the
  address it dialled); the reply one is what the server answers from. With a published port
  the client dials the host and DNAT rewrites it, so the *reply source* is the real server;
  with masquerading the *reply destination* is what the server saw. So an edge runs from the
  original source to the reply source, on the reply source port.
- Addresses become names through the topology: a container (or its service), a network's
  gateway (the host, as the bridge's containers see it), else the bare address. An entry that
  touches no container at all (the host's own loopback chatter) is not a container flow and
  is left out.
- Counters exist only when the kernel's conntrack accounting is on; an entry without them
  counts a connection with zero packets and bytes.
- Bridged traffic between two containers reaches the host's conntrack table through
  br_netfilter, so one table sees every container-to-container connection on the machine.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from dockmesh.codecs.ctnetlink import ConntrackFlow, Tuple5
from dockmesh.model.labels import service_of
from dockmesh.model.topology import Topology

# The entry types live with their decoder; named here too, where callers have found them.
__all__ = ["ConntrackFlow", "Edge", "Tuple5", "aggregate", "flows_json", "parse_conntrack_message"]

PROTOCOLS = {1: "icmp", 6: "tcp", 17: "udp", 58: "icmpv6", 132: "sctp"}


def _attrs(nla: Any) -> Mapping[str, Any]:
    """The attributes of one netlink attribute set, first occurrence of each name kept.
    pyroute2's messages index like dicts with an 'attrs' list of (name, value, ...) items;
    plain dicts of that shape work the same (the tests build those)."""
    out: dict[str, Any] = {}
    try:
        items = nla["attrs"]
    except (KeyError, TypeError, IndexError):
        return out
    for item in items or ():
        if isinstance(item, (tuple, list)) and len(item) >= 2 and isinstance(item[0], str):
            out.setdefault(item[0], item[1])
    return out


def _tuple(nla: Any) -> tuple[int, Tuple5] | None:
    t = _attrs(nla)
    ip, proto = _attrs(t.get("CTA_TUPLE_IP")), _attrs(t.get("CTA_TUPLE_PROTO"))
    src = ip.get("CTA_IP_V4_SRC") or ip.get("CTA_IP_V6_SRC")
    dst = ip.get("CTA_IP_V4_DST") or ip.get("CTA_IP_V6_DST")
    num = proto.get("CTA_PROTO_NUM")
    if not isinstance(src, str) or not isinstance(dst, str) or not isinstance(num, int):
        return None
    try:
        src = str(ipaddress.ip_address(src))
        dst = str(ipaddress.ip_address(dst))
    except ValueError:
        return None
    sport, dport = proto.get("CTA_PROTO_SRC_PORT", 0), proto.get("CTA_PROTO_DST_PORT", 0)
    if not isinstance(sport, int) or not isinstance(dport, int):
        sport = dport = 0
    return num, Tuple5(src, dst, sport, dport)


def _counters(nla: Any) -> tuple[int, int]:
    c = _attrs(nla)
    packets = c.get("CTA_COUNTERS_PACKETS", c.get("CTA_COUNTERS32_PACKETS", 0))
    nbytes = c.get("CTA_COUNTERS_BYTES", c.get("CTA_COUNTERS32_BYTES", 0))
    ok = isinstance(packets, int) and isinstance(nbytes, int) and packets >= 0 and nbytes >= 0
    return (packets, nbytes) if ok else (0, 0)


def parse_conntrack_message(msg: Any) -> ConntrackFlow | None:
    """A conntrack message as pyroute2 shows it (nested dicts with 'attrs' lists of (name,
    value) pairs) → a flow; None for a message without both tuples or with tuples of
    different protocols. The commands read the table with `dockmesh.codecs.ctnetlink`; this
    stays for what hands over pyroute2's messages (and the benchmark's comparison)."""
    a = _attrs(msg)
    orig, reply = _tuple(a.get("CTA_TUPLE_ORIG")), _tuple(a.get("CTA_TUPLE_REPLY"))
    if orig is None or reply is None or orig[0] != reply[0]:
        return None
    op, ob = _counters(a.get("CTA_COUNTERS_ORIG"))
    rp, rb = _counters(a.get("CTA_COUNTERS_REPLY"))
    return ConntrackFlow(orig[0], orig[1], reply[1], op, ob, rp, rb)


@dataclass(slots=True)
class Edge:
    src: str
    dst: str
    proto: str
    port: int  # the server's port (0 for protocols without ports)
    connections: int = 0
    packets: int = 0
    bytes_forward: int = 0  # client → server
    bytes_reply: int = 0  # server → client
    src_kind: str = "container"  # container | service | gateway | address
    dst_kind: str = "container"

    @property
    def bytes(self) -> int:
        return self.bytes_forward + self.bytes_reply

    def to_json(self) -> dict[str, object]:
        return {
            "src": self.src,
            "dst": self.dst,
            "src_kind": self.src_kind,
            "dst_kind": self.dst_kind,
            "proto": self.proto,
            "port": self.port,
            "connections": self.connections,
            "packets": self.packets,
            "bytes": self.bytes,
            "bytes_forward": self.bytes_forward,
            "bytes_reply": self.bytes_reply,
        }


def gateways(topo: Topology) -> dict[str, str]:
    """Gateway address → network name, for every network's pools (reported, or where the
    engine put it: `IpamPool.effective_gateway`)."""
    out: dict[str, str] = {}
    for n in topo.networks:
        for pool in n.ipam:
            gw = pool.effective_gateway()
            if gw is not None:
                out.setdefault(gw, n.name)
    return out


class _Namer:
    def __init__(self, topo: Topology, by: str) -> None:
        self._topo = topo
        self._by = by
        self._gateways = gateways(topo)
        # A busy table repeats few addresses many times (50,000 entries, a few hundred
        # addresses): each is looked up once.
        self._known: dict[str, tuple[str, str] | None] = {}

    def __call__(self, address: str) -> tuple[str, str] | None:
        """(name, kind) of an address; None for one that names nothing in the topology."""
        try:
            return self._known[address]
        except KeyError:
            got = self._known[address] = self._lookup(address)
            return got

    def _lookup(self, address: str) -> tuple[str, str] | None:
        c = self._topo.container_by_ip(address)
        if c is not None:
            return (
                (service_of(c.labels) or c.name, "service")
                if self._by == "service"
                else (c.name, "container")
            )
        net = self._gateways.get(address)
        if net is not None:
            return f"gateway:{net}", "gateway"
        return None


_PORTED = frozenset(n for n, name in PROTOCOLS.items() if name in ("tcp", "udp", "sctp"))


def aggregate(flows: Iterable[ConntrackFlow], topo: Topology, by: str = "container") -> list[Edge]:
    """Edges (client → server, protocol, server port) with their connections, packets and
    bytes; at least one end is a container. Sorted by bytes, most first, then by name."""
    # Summed by addresses first (a tuple key and four additions an entry: a busy table has
    # tens of thousands of entries and a few hundred address pairs), then named.
    sums: dict[tuple[str, str, int, int], list[int]] = {}
    for f in flows:
        reply = f.reply
        key = (f.orig.src, reply.src, f.proto, reply.sport if f.proto in _PORTED else 0)
        s = sums.get(key)
        if s is None:
            sums[key] = [1, f.orig_packets + f.reply_packets, f.orig_bytes, f.reply_bytes]
        else:
            s[0] += 1
            s[1] += f.orig_packets + f.reply_packets
            s[2] += f.orig_bytes
            s[3] += f.reply_bytes
    name = _Namer(topo, by)
    edges: dict[tuple[str, str, str, int], Edge] = {}
    for (client, server, number, port), (connections, packets, forward, back) in sums.items():
        a, b = name(client), name(server)
        if (a is None or a[1] == "gateway") and (b is None or b[1] == "gateway"):
            continue
        a = a or (client, "address")
        b = b or (server, "address")
        proto = PROTOCOLS.get(number, str(number))
        edge_key = (a[0], b[0], proto, port)
        e = edges.get(edge_key)
        if e is None:
            e = edges[edge_key] = Edge(a[0], b[0], proto, port, src_kind=a[1], dst_kind=b[1])
        e.connections += connections
        e.packets += packets
        e.bytes_forward += forward
        e.bytes_reply += back
    return sorted(edges.values(), key=lambda e: (-e.bytes, e.src, e.dst, e.proto, e.port))


def flows_json(edges: Sequence[Edge], accounting: str, elapsed_s: float) -> dict[str, object]:
    return {
        "edges": [e.to_json() for e in edges],
        # "on"; or "enabled": it was off until now, so older connections count no bytes.
        "accounting": accounting,
        "elapsed_s": round(elapsed_s, 6),
    }
