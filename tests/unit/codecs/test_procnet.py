"""The /proc/net parsers: real kernel text, and hypothesis-made files they must read back."""

from __future__ import annotations

import ipaddress

from hypothesis import given
from hypothesis import strategies as st

from dockmesh.codecs.procnet import (
    IfaceCounters,
    parse_net_dev,
    parse_net_route,
    parse_net_sockets,
)

NET_DEV = """Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:       0       0    0    0    0     0          0         0        0       0    0    0    0     0       0          0
  eth0:12345678901   21    1    2    0     0          0         0     1500      19    3    4    0     0       0          0
"""

ROUTE = """Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT
eth0\t00000000\t0101F00A\t0003\t0\t0\t0\t00000000\t0\t0\t0
eth0\t0001F00A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0
eth1\t0000A8C0\t00000000\t0000\t0\t0\t0\t00FFFFFF\t0\t0\t0
"""

TCP = """  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:2328 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0000000000000000 100 0 0 10 0
   1: 00000000:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2 1 0000000000000000 100 0 0 10 0
   2: 0B01F00A:1F90 0C01F00A:A000 01 00000000:00000000 00:00000000 00000000     0        0 3 1 0000000000000000 100 0 0 10 0
"""

TCP6 = """  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000001000000:0050 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0000000000000000 100 0 0 10 0
   1: 0000000000000000FFFF00000100007F:0051 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0000000000000000 100 0 0 10 0
"""


def test_net_dev_reads_the_reported_columns_even_unspaced() -> None:
    lo, eth0 = parse_net_dev(NET_DEV)
    assert lo.name == "lo" and lo.rx_bytes == 0
    assert eth0 == IfaceCounters("eth0", 12345678901, 21, 1, 2, 1500, 19, 3, 4)


def test_route_reads_default_and_connected_and_skips_down_routes() -> None:
    routes = parse_net_route(ROUTE)
    assert [(r.destination, r.gateway, r.iface) for r in routes] == [
        ("0.0.0.0/0", "10.240.1.1", "eth0"),
        ("10.240.1.0/24", None, "eth0"),
    ]
    assert routes[0].is_default and not routes[1].is_default


def test_tcp_listeners_only_and_ipv6_mapped() -> None:
    assert [(x.address, x.port) for x in parse_net_sockets(TCP, "tcp")] == [
        ("127.0.0.1", 9000),
        ("0.0.0.0", 8080),
    ]
    v6 = parse_net_sockets(TCP6, "tcp")
    assert [(x.address, x.port) for x in v6] == [("::1", 80), ("127.0.0.1", 81)]
    assert v6[0].loopback_only and v6[1].loopback_only


u64 = st.integers(min_value=0, max_value=2**64 - 1)
names = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_.@", min_size=1, max_size=15)


@given(st.lists(st.tuples(names, st.lists(u64, min_size=16, max_size=16)), max_size=8))
def test_net_dev_reads_back_what_the_kernel_format_writes(
    rows: list[tuple[str, list[int]]],
) -> None:
    text = "Inter-|   Receive |  Transmit\n face |bytes packets|bytes packets\n"
    text += "".join(f"{n:>6}:" + " ".join(str(v) for v in vals) + "\n" for n, vals in rows)
    got = parse_net_dev(text)
    assert [(c.name, c.rx_bytes, c.tx_dropped) for c in got] == [(n, v[0], v[11]) for n, v in rows]


@given(st.text(max_size=400))
def test_parsers_never_raise_on_any_text(text: str) -> None:
    parse_net_dev(text)
    parse_net_route(text)
    parse_net_sockets(text, "tcp")
    parse_net_sockets(text, "udp")


@given(st.ip_addresses(v=4), st.integers(0, 65535))
def test_tcp_addresses_read_back(address: ipaddress.IPv4Address, port: int) -> None:
    hexaddr = int.from_bytes(address.packed, "little").to_bytes(4, "big").hex().upper()
    line = f"   0: {hexaddr}:{port:04X} 00000000:0000 0A 0:0 0:0 0 0 0 1"
    (x,) = parse_net_sockets("header\n" + line, "tcp")
    assert (x.address, x.port) == (str(address), port)
