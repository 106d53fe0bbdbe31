"""Parsers for the text the kernel shows under `/proc/<pid>/net/`.

Pure: text in, values out. `/proc/<pid>/net/*` shows the network namespace of `<pid>`, so the
shells read a container's files from the host without entering anything; these functions
turn what they read into values. Every parser skips lines it cannot read rather than
failing: a kernel that adds a column, or a line cut short, must not hide the rest.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class IfaceCounters:
    """One interface's line of `/proc/net/dev` (the columns dockmesh reports)."""

    name: str
    rx_bytes: int
    rx_packets: int
    rx_errors: int
    rx_dropped: int
    tx_bytes: int
    tx_packets: int
    tx_errors: int
    tx_dropped: int

    def to_json(self) -> dict[str, int]:
        return {
            "rx_bytes": self.rx_bytes,
            "tx_bytes": self.tx_bytes,
            "rx_packets": self.rx_packets,
            "tx_packets": self.tx_packets,
            "rx_errors": self.rx_errors,
            "tx_errors": self.tx_errors,
            "rx_dropped": self.rx_dropped,
            "tx_dropped": self.tx_dropped,
        }


def parse_net_dev(text: str) -> tuple[IfaceCounters, ...]:
    """`/proc/net/dev`: two header lines, then `name: 16 numbers` per interface (receive:
    bytes packets errs drop fifo frame compressed multicast; transmit: bytes packets errs drop
    fifo colls carrier compressed). Interface names cannot hold ':' (the kernel refuses
    them), so the first ':' ends the name even when a wide number follows it unspaced."""
    out: list[IfaceCounters] = []
    for line in text.splitlines():
        name, sep, rest = line.partition(":")
        if not sep:
            continue
        name = name.strip()
        fields = rest.split()
        if not name or len(fields) < 16 or " " in name:
            continue
        try:
            n = [int(f) for f in fields[:16]]
        except ValueError:
            continue
        out.append(IfaceCounters(name, n[0], n[1], n[2], n[3], n[8], n[9], n[10], n[11]))
    return tuple(out)


@dataclass(frozen=True, slots=True)
class Route:
    """A route of the main table; IPv4 from `/proc/net/route`, IPv6 from
    `/proc/net/ipv6_route`, or any family from netlink."""

    destination: str  # CIDR; 0.0.0.0/0 or ::/0 is the default route
    gateway: str | None
    iface: str
    metric: int = 0

    @property
    def is_default(self) -> bool:
        return self.destination in ("0.0.0.0/0", "::/0")

    def to_json(self) -> dict[str, object]:
        return {
            "destination": "default" if self.is_default else self.destination,
            "gateway": self.gateway,
            "interface": self.iface,
            "metric": self.metric,
        }


def _le32_ipv4(hex8: str) -> ipaddress.IPv4Address:
    # The kernel prints the address in host byte order: on the little-endian machines this
    # runs on, 0101F00A is 10.240.1.1.
    return ipaddress.IPv4Address(int(hex8, 16).to_bytes(4, "little"))


_RTF_UP, _RTF_GATEWAY = 0x1, 0x2


def parse_net_route(text: str) -> tuple[Route, ...]:
    """`/proc/net/route` (IPv4, main table): Iface Destination Gateway Flags RefCnt Use Metric
    Mask ..., addresses as 8 hex digits in host byte order. Routes that are not up are left
    out."""
    out: list[Route] = []
    for line in text.splitlines()[1:]:
        f = line.split()
        if len(f) < 8:
            continue
        try:
            dest, gw, flags = _le32_ipv4(f[1]), _le32_ipv4(f[2]), int(f[3], 16)
            mask, metric = _le32_ipv4(f[7]), int(f[6])
            net = ipaddress.IPv4Network(f"{dest}/{mask}", strict=False)
        except ValueError:
            continue
        if not flags & _RTF_UP:
            continue
        gateway = str(gw) if flags & _RTF_GATEWAY else None
        out.append(Route(str(net), gateway, f[0], metric))
    return tuple(out)


@dataclass(frozen=True, slots=True)
class Listener:
    """A listening TCP socket, or a UDP socket bound but not connected."""

    proto: str  # "tcp" | "udp"
    address: str
    port: int
    # TCP listeners: connections waiting in the accept queue (rx_queue of a LISTEN socket;
    # the queue's limit is not in /proc, only over inet_diag as `ss` reads it).
    queued: int = field(default=0, compare=False)

    @property
    def loopback_only(self) -> bool:
        return ipaddress.ip_address(self.address).is_loopback

    @property
    def wildcard(self) -> bool:
        return ipaddress.ip_address(self.address).is_unspecified

    def to_json(self) -> dict[str, object]:
        return {"proto": self.proto, "address": self.address, "port": self.port}


_TCP_LISTEN, _UDP_UNCONNECTED = "0A", "07"


def _proc_address(text: str) -> str:
    """`0100007F` (IPv4) or 32 hex digits (IPv6: four 32-bit words, each in host order)."""
    if len(text) == 8:
        return str(_le32_ipv4(text))
    if len(text) == 32:
        raw = b"".join(int(text[i : i + 8], 16).to_bytes(4, "little") for i in range(0, 32, 8))
        v6 = ipaddress.IPv6Address(raw)
        return str(v6.ipv4_mapped or v6)
    raise ValueError(f"not an address: {text!r}")


def parse_net_sockets(text: str, proto: str) -> tuple[Listener, ...]:
    """`/proc/net/tcp`, `tcp6`, `udp`, `udp6`: `sl local_address rem_address st ...` with
    `ADDR:PORT` in hex. TCP sockets in LISTEN; UDP sockets unconnected (remote port 0).
    Each (address, port) once, in the file's order."""
    want = _TCP_LISTEN if proto == "tcp" else _UDP_UNCONNECTED
    seen: dict[tuple[str, int], Listener] = {}
    for line in text.splitlines()[1:]:
        f = line.split()
        if len(f) < 4 or f[3] != want:
            continue
        try:
            addr, _, port = f[1].partition(":")
            _, _, rport = f[2].partition(":")
            if proto == "udp" and int(rport, 16) != 0:
                continue
            key = (_proc_address(addr), int(port, 16))
            _, _, rx = f[4].partition(":") if len(f) > 4 else ("0", "", "0")
            queued = int(rx or "0", 16)
        except ValueError:
            continue
        seen.setdefault(key, Listener(proto, key[0], key[1], queued))
    return tuple(seen.values())
