"""Policy against an adversary who knows the kernel, on the real engine: frames the bridge
table must not let past (a VLAN tag around an IP packet), replies forged into an established
flow, and addresses stolen with ARP. Each test has its own networks, containers and tables
(named from its prefix) and applies network-level defaults only."""

from __future__ import annotations

import json
import socket
import struct
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from dockmesh.host.netns import NetnsPool
from tests.integration import test_policy
from tests.integration.conftest import dockmesh, free_subnets
from tests.integration.test_agent import AgentProc
from tests.integration.test_policy import WANT, Seg, nft_table, verdicts
from tests.integration.test_policy_tamper import RESTORED_WITHIN_S, metric, nft, steady, until
from tests.integration.test_policy_trust import (
    a_to_b_only,
    addresses,
    connects,
    dual_stack,
    pid_of,
    received,
    run,
    spoofed_udp,
    write_policy,
)

ETH_P_ALL = 0x0003

seg = test_policy.seg  # a network with three containers, a policy file, a table of its own


def mac_of(api: Any, cid: str, net: str) -> bytes:
    text = api.inspect_container(cid)["NetworkSettings"]["Networks"][net]["MacAddress"]
    return bytes.fromhex(text.replace(":", ""))


def send_frame(netns: NetnsPool, pid: int, frame: bytes) -> None:
    def go() -> None:
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        try:
            s.bind(("eth0", 0))
            s.send(frame)
        finally:
            s.close()

    netns.run(pid, go)


def vlan0_udp(src_mac: bytes, dst_mac: bytes, src: str, dst: str, port: int, data: bytes) -> bytes:
    """An IPv4 UDP packet in an 802.1Q frame with VLAN id 0 (a priority tag): Linux takes such
    a frame off the wire as if it carried no tag."""
    tag = struct.pack("!HH", 0x8100, 0)
    return dst_mac + src_mac + tag + struct.pack("!H", 0x0800) + spoofed_udp(src, dst, port, data)


def test_an_ip_packet_in_a_vlan_tag_is_judged_as_the_packet_itself(
    api: Any, pool: NetnsPool, prefix: str, toolbox: str, policy_env: str, tmp_path: Path
) -> None:
    (subnet,) = free_subnets(api, 1)
    net = f"{prefix}vl"
    api.create_network(net, ipam={"Config": [{"Subnet": subnet}]})
    a, b, m = (run(api, toolbox, f"{prefix}-{k}", net) for k in ("a", "b", "m"))
    a4, b4, m4 = (addresses(api, x, net)[0] for x in (a, b, m))
    policy = a_to_b_only(tmp_path, net, prefix, ["9999/udp"])
    dockmesh("policy", "apply", str(policy), check=True)
    listener = pool.socket(pid_of(api, b), socket.AF_INET, socket.SOCK_DGRAM)
    try:
        listener.bind(("0.0.0.0", 9999))
        listener.setblocking(False)
        pm = pid_of(api, m)
        bm, mm = mac_of(api, b, net), mac_of(api, m, net)
        # m is denied to b: neither its own address nor a's gets through in a VLAN tag.
        send_frame(pool, pm, vlan0_udp(mm, bm, m4, b4, 9999, b"own"))
        send_frame(pool, pm, vlan0_udp(mm, bm, a4, b4, 9999, b"forged"))
        assert received(listener) == []
    finally:
        listener.close()


def test_a_forged_packet_is_not_accepted_as_part_of_an_established_flow(
    api: Any, pool: NetnsPool, prefix: str, toolbox: str, policy_env: str, tmp_path: Path
) -> None:
    """a may send to b's UDP port; m may send nothing. Once a's flow exists, m forges
    datagrams into it in both directions (as a to b, and as b's reply to a): conntrack calls
    them established, but they did not arrive on a's or b's port."""
    (subnet,) = free_subnets(api, 1)
    net = f"{prefix}es"
    api.create_network(net, ipam={"Config": [{"Subnet": subnet}]})
    a, b, m = (run(api, toolbox, f"{prefix}-{k}", net) for k in ("a", "b", "m"))
    a4, b4 = (addresses(api, x, net)[0] for x in (a, b))
    policy = a_to_b_only(tmp_path, net, prefix, ["9999/udp"])
    dockmesh("policy", "apply", str(policy), check=True)
    at_b = pool.socket(pid_of(api, b), socket.AF_INET, socket.SOCK_DGRAM)
    at_a = pool.socket(pid_of(api, a), socket.AF_INET, socket.SOCK_DGRAM)
    try:
        at_b.bind(("0.0.0.0", 9999))
        at_b.setblocking(False)
        at_a.bind(("0.0.0.0", 40000))
        at_a.setblocking(False)
        at_a.sendto(b"hello", (b4, 9999))
        assert received(at_b) == [b"hello"]
        at_b.sendto(b"reply", (a4, 40000))
        assert received(at_a) == [b"reply"]
        raw = pool.socket(pid_of(api, m), socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
        try:
            raw.sendto(spoofed_udp(a4, b4, 9999, b"forged as a"), (b4, 0))
            raw.sendto(spoofed_reply(b4, a4, b"forged as b"), (a4, 0))
        finally:
            raw.close()
        assert received(at_b) == []
        assert received(at_a) == []
    finally:
        at_a.close()
        at_b.close()


def spoofed_reply(src: str, dst: str, data: bytes) -> bytes:
    """UDP from src:9999 to dst:40000 (spoofed_udp's ports, the other way round)."""
    packet = bytearray(spoofed_udp(src, dst, 40000, data))
    packet[20:22] = struct.pack("!H", 9999)
    return bytes(packet)


def arp_reply(src_mac: bytes, dst_mac: bytes, claimed: str, target: str) -> bytes:
    """An ARP reply that says `claimed` is at src_mac (to the holder of target)."""
    body = struct.pack("!HHBBH", 1, 0x0800, 6, 4, 2)
    body += src_mac + socket.inet_aton(claimed) + dst_mac + socket.inet_aton(target)
    return dst_mac + src_mac + struct.pack("!H", 0x0806) + body


def test_an_address_stolen_with_arp_receives_nothing_meant_for_its_owner(
    api: Any, pool: NetnsPool, prefix: str, toolbox: str, policy_env: str, tmp_path: Path
) -> None:
    """a may send to b; m tells b (ARP) that a's address is at m's MAC. b's replies to a must
    not reach m: an address bound to a port is delivered to that port only."""
    (subnet,) = free_subnets(api, 1)
    net = f"{prefix}ar"
    api.create_network(net, ipam={"Config": [{"Subnet": subnet}]})
    a, b, m = (run(api, toolbox, f"{prefix}-{k}", net) for k in ("a", "b", "m"))
    a4, b4 = (addresses(api, x, net)[0] for x in (a, b))
    policy = a_to_b_only(tmp_path, net, prefix, ["9999/udp"])
    dockmesh("policy", "apply", str(policy), check=True)
    pm = pid_of(api, m)
    bm, mm = mac_of(api, b, net), mac_of(api, m, net)
    at_b = pool.socket(pid_of(api, b), socket.AF_INET, socket.SOCK_DGRAM)
    at_a = pool.socket(pid_of(api, a), socket.AF_INET, socket.SOCK_DGRAM)
    sniff = pool.socket(pm, socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0800))
    try:
        at_b.bind(("0.0.0.0", 9999))
        at_b.setblocking(False)
        at_a.bind(("0.0.0.0", 40000))
        at_a.setblocking(False)
        sniff.setblocking(False)
        at_a.sendto(b"hello", (b4, 9999))
        assert received(at_b) == [b"hello"]
        time.sleep(1.2)  # past the neighbour entry's locktime: b takes the next update
        for _ in range(3):
            send_frame(pool, pm, arp_reply(mm, bm, a4, b4))
        at_b.sendto(b"secret reply", (a4, 40000))
        stolen = [f for f in received(sniff) if b"secret reply" in f]
        assert stolen == []
    finally:
        for s in (at_a, at_b, sniff):
            s.close()


def test_a_container_restarted_while_no_agent_runs_is_locked_out_and_why_says_so(
    api: Any, pool: NetnsPool, prefix: str, toolbox: str, policy_env: str, tmp_path: Path
) -> None:
    """A restart gives the container a new port; the table binds its address to the old one
    until the agent (or policy apply) sees it: fail closed, and `why` names the reason."""
    (subnet,) = free_subnets(api, 1)
    net = f"{prefix}rs"
    api.create_network(net, ipam={"Config": [{"Subnet": subnet}]})
    a = run(api, toolbox, f"{prefix}-a", net)
    b = run(api, toolbox, f"{prefix}-b", net)
    b4 = addresses(api, b, net)[0]
    policy = a_to_b_only(tmp_path, net, prefix)
    dockmesh("policy", "apply", str(policy), check=True)
    assert connects(pool, pid_of(api, a), b4)
    a4 = addresses(api, a, net)[0]
    api.restart(a, timeout=0)
    if addresses(api, a, net)[0] != a4:
        pytest.skip("the engine gave the restarted container another address")
    assert not connects(pool, pid_of(api, a), b4, timeout=0.5)
    why = dockmesh("why", f"{prefix}-a", f"{prefix}-b", "--port", "8080").stdout
    assert "bound to a port that is not its own" in " ".join(why.split()), why
    dockmesh("policy", "apply", str(policy), check=True)
    assert connects(pool, pid_of(api, a), b4)


def test_another_table_that_writes_the_packet_mark_is_named_by_policy_show(
    prefix: str, policy_env: str, tmp_path: Path
) -> None:
    """Root can clear the unconfirmed bit from a table of its own (no table of ours runs
    after it to undo that): policy show says so instead of 'in sync' alone."""
    policy = write_policy(tmp_path, {"default": "allow"})
    dockmesh("policy", "apply", str(policy), check=True)
    evil = f"{prefix}evil"
    # Marks nothing real: loopback addresses are never forwarded.
    script = (
        f"table inet {evil} {{\n chain p {{\n type filter hook prerouting priority -200;\n"
        " ip saddr 127.0.0.2 ip daddr 127.0.0.3 meta mark set 0\n }\n}\n"
    )
    subprocess.run(["nft", "-f", "-"], input=script, text=True, check=True)
    try:
        show = json.loads(dockmesh("policy", "show", "--json", check=True).stdout)
        assert any(f"table inet {evil} chain p" in w for w in show["warnings"]), show["warnings"]
        assert "warning: table inet" in dockmesh("policy", "show", check=True).stdout
    finally:
        subprocess.run(["nft", "delete", "table", "inet", evil], check=False)


def test_a_cidr_rule_is_not_walked_through_with_a_containers_forged_address(
    api: Any, pool: NetnsPool, prefix: str, toolbox: str, policy_env: str, tmp_path: Path
) -> None:
    """A rule from a CIDR is about addresses; but an address bound to another container's
    port, sent from m's port, is a forgery whatever rule would take it."""
    (subnet,) = free_subnets(api, 1)
    net = f"{prefix}cd"
    api.create_network(net, ipam={"Config": [{"Subnet": subnet}]})
    a, b, m = (run(api, toolbox, f"{prefix}-{k}", net) for k in ("a", "b", "m"))
    a4, b4 = (addresses(api, x, net)[0] for x in (a, b))
    policy = write_policy(
        tmp_path,
        {
            "networks": {net: {"default": "deny"}},
            "rules": [
                {"from": {"container": f"{prefix}-a"}, "to": {"container": f"{prefix}-b"},
                 "ports": ["8080/tcp"]},
                {"from": {"cidr": f"{a4}/32"}, "to": {"container": f"{prefix}-b"},
                 "ports": ["9999/udp"]},
            ],
        },
    )  # fmt: skip
    dockmesh("policy", "apply", str(policy), check=True)
    listener = pool.socket(pid_of(api, b), socket.AF_INET, socket.SOCK_DGRAM)
    try:
        listener.bind(("0.0.0.0", 9999))
        listener.setblocking(False)
        raw = pool.socket(pid_of(api, m), socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
        try:
            raw.sendto(spoofed_udp(a4, b4, 9999, b"forged"), (b4, 0))
        finally:
            raw.close()
        assert received(listener) == []
        real = pool.socket(pid_of(api, a), socket.AF_INET, socket.SOCK_DGRAM)
        try:
            real.sendto(b"real", (b4, 9999))
        finally:
            real.close()
        assert received(listener) == [b"real"]
    finally:
        listener.close()


def spoofed_udp6(src: str, dst: str, port: int, data: bytes) -> bytes:
    """An IPv6 UDP datagram from src:40000 (the checksum is mandatory in IPv6)."""
    s, d = socket.inet_pton(socket.AF_INET6, src), socket.inet_pton(socket.AF_INET6, dst)
    length = 8 + len(data)
    pseudo = s + d + struct.pack("!I3xB", length, socket.IPPROTO_UDP)
    udp = struct.pack("!HHHH", 40000, port, length, 0) + data
    blob = pseudo + udp + (b"\0" if len(udp) % 2 else b"")
    total = sum(struct.unpack(f"!{len(blob) // 2}H", blob))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    udp = udp[:6] + struct.pack("!H", ~total & 0xFFFF or 0xFFFF) + udp[8:]
    head = struct.pack("!IHBB", 6 << 28, length, socket.IPPROTO_UDP, 64) + s + d
    return head + udp


def test_a_forged_ipv6_source_is_dropped_and_its_owner_heard(
    api: Any, pool: NetnsPool, prefix: str, toolbox: str, policy_env: str, tmp_path: Path
) -> None:
    dual_stack(api, prefix, "v6", 3)
    net = f"{prefix}v6"
    a, b, m = (run(api, toolbox, f"{prefix}-{k}", net) for k in ("a", "b", "m"))
    a6, b6 = (addresses(api, x, net)[1] for x in (a, b))
    policy = a_to_b_only(tmp_path, net, prefix, ["9999/udp"])
    dockmesh("policy", "apply", str(policy), check=True)
    listener = pool.socket(pid_of(api, b), socket.AF_INET6, socket.SOCK_DGRAM)
    try:
        listener.bind(("::", 9999))
        listener.setblocking(False)
        raw = pool.socket(pid_of(api, m), socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_RAW)
        try:
            raw.sendto(spoofed_udp6(a6, b6, 9999, b"forged"), (b6, 0))
            # m's own address is checked by the same packet builder: denied by the network.
            m6 = addresses(api, m, net)[1]
            raw.sendto(spoofed_udp6(m6, b6, 9999, b"own"), (b6, 0))
        finally:
            raw.close()
        assert received(listener) == []
        real = pool.socket(pid_of(api, a), socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_RAW)
        try:
            real.sendto(spoofed_udp6(a6, b6, 9999, b"real"), (b6, 0))
        finally:
            real.close()
        assert received(listener) == [b"real"]
    finally:
        listener.close()


def bridge_tamperings(s: Seg) -> dict[str, Any]:
    t = s.table

    def handle(chain: str, comment: str) -> str:
        doc = nft_table(t)
        assert doc is not None
        return str(
            next(
                i["rule"]["handle"]
                for i in doc["nftables"]
                if "rule" in i
                and i["rule"]["family"] == "bridge"
                and i["rule"]["chain"] == chain
                and i["rule"].get("comment", "").startswith(comment)
            )
        )

    return {
        "flush the bridge table": lambda: nft("flush", "table", "bridge", t),
        "delete the bridge table": lambda: nft("delete", "table", "bridge", t),
        "empty the bound ports": lambda: nft("flush", "set", "bridge", t, "port_4"),
        "make the mark rule accept": lambda: nft(
            "replace",
            "rule",
            "bridge",
            t,
            "prerouting",
            "handle",
            handle("prerouting", "unconfirmed source (IPv4)"),
            "ip",
            "saddr",
            "@claimed_4",
            "accept",
        ),
        "delete the VLAN rule": lambda: nft(
            "delete",
            "rule",
            "bridge",
            t,
            "prerouting",
            "handle",
            handle("prerouting", "VLAN-tagged"),
        ),
        "delete the delivery rule": lambda: nft(
            "delete",
            "rule",
            "bridge",
            t,
            "postrouting",
            "handle",
            handle("postrouting", "bound address on another port (IPv4)"),
        ),
    }


def test_a_running_agent_restores_the_bridge_table_within_a_second(
    api: Any, pool: NetnsPool, seg: Seg, tmp_path: Path
) -> None:
    agent = AgentProc(tmp_path)
    agent.start()
    try:
        dockmesh("policy", "apply", str(seg.policy_file), check=True)
        until(lambda: metric(agent, "dockmesh_policy_watch_up") == 1.0, 30)
        good = steady(seg.table)
        assert good is not None
        # As the inet tamper test: the verdicts first, and by then the agent has taken the
        # applied policy over (a tampering before that is undone by its first sync, uncounted).
        assert verdicts(api, pool, seg) == WANT
        taken: dict[str, float] = {}
        for n, (what, tamper) in enumerate(bridge_tamperings(seg).items(), 1):
            tamper()  # the agent may have repaired it before we look: its count says
            t0 = time.monotonic()
            until(lambda: steady(seg.table) == good, 30)
            taken[what] = time.monotonic() - t0
            until(lambda n=n: metric(agent, "dockmesh_policy_repairs_total") == n, 10)
        print("restored in", {k: round(v, 3) for k, v in taken.items()})
        assert all(v < RESTORED_WITHIN_S for v in taken.values()), taken
        assert verdicts(api, pool, seg) == WANT
    finally:
        agent.stop()
