"""The host machine itself (dockmesh.host.machine), read on this machine: its main table's
routes but the default ones, each on an interface the machine has, agreeing with what
/proc/net/route shows; the kernel's support answered without raising."""

from __future__ import annotations

import os

from dockmesh.codecs.procnet import parse_net_route
from dockmesh.host.machine import host_routes, ipv6_available, ipvlan_available


def test_the_main_table_s_routes_on_the_machine_s_interfaces() -> None:
    routes, names = host_routes()
    assert "lo" in names
    assert all(r.device in names for r in routes)
    assert all(not r.destination.startswith(("0.0.0.0/", "::/0")) for r in routes)
    # IPv4 routes of the main table with a destination, as the kernel lists them too (other
    # tests' networks come and go meanwhile: compare the ones present before and after).
    with open("/proc/net/route") as f:
        before = {(r.destination, r.iface) for r in parse_net_route(f.read()) if not r.is_default}
    again, _ = host_routes()
    with open("/proc/net/route") as f:
        after = {(r.destination, r.iface) for r in parse_net_route(f.read()) if not r.is_default}
    listed = {(r.destination, r.device) for r in (*routes, *again)}
    assert before & after <= listed


def test_kernel_support_is_a_yes_or_a_no() -> None:
    assert ipv6_available() == os.path.exists("/proc/net/if_inet6")
    assert isinstance(ipvlan_available(), bool)
