"""Policy against someone who tries to walk around it, on the real kernel and engine: IPv6 as
well as IPv4 (with neighbour discovery from a flushed cache), a forged source sent from a raw
socket, a new container on a removed container's address while no agent runs, IPv6 between
networks (Docker 20.10 writes no ip6tables rules), and a deny rule against a published port.

Each test has its own networks, containers and tables (named from its prefix) and applies
network-level defaults only, so that tests running beside it are not denied anything."""

from __future__ import annotations

import contextlib
import ipaddress
import json
import socket
import struct
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dockmesh.host.netns import NetnsPool
from tests.integration.conftest import dockmesh, free_subnets, own_differences

V6_PREFIX = "fd7a:{:x}::/64"


@dataclass
class Net:
    prefix: str
    name: str
    table: str
    ids: dict[str, str]
    tmp: Path


def dual_stack(api: Any, prefix: str, name: str, index: int) -> tuple[str, str]:
    (subnet,) = free_subnets(api, 1)
    v6 = V6_PREFIX.format(int(prefix[3:7], 16) + index)
    api.create_network(
        f"{prefix}{name}",
        enable_ipv6=True,
        ipam={"Config": [{"Subnet": subnet}, {"Subnet": v6}]},
    )
    return subnet, v6


def run(api: Any, toolbox: str, name: str, net: str, labels: dict[str, str] | None = None,
        **endpoint: str) -> str:  # fmt: skip
    config = None
    if endpoint:
        config = api.create_networking_config({net: api.create_endpoint_config(**endpoint)})
    cid = api.create_container(
        toolbox,
        name=name,
        hostname=name,
        labels=labels or {},
        host_config=api.create_host_config(network_mode=net),
        networking_config=config,
    )["Id"]
    api.start(cid)
    return str(cid)


def addresses(api: Any, cid: str, net: str) -> tuple[str, str]:
    n = api.inspect_container(cid)["NetworkSettings"]["Networks"][net]
    return str(n["IPAddress"]), str(n["GlobalIPv6Address"])


def pid_of(api: Any, cid: str) -> int:
    return int(api.inspect_container(cid)["State"]["Pid"])


def connects(
    pool: NetnsPool, pid: int, address: str, port: int = 8080, timeout: float = 1.0
) -> bool:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = pool.socket(pid, family)
    try:
        sock.setblocking(True)
        sock.settimeout(timeout)
        sock.connect((address, port))
        return True
    except OSError:
        return False
    finally:
        sock.close()


def write_policy(tmp: Path, doc: dict[str, Any]) -> Path:
    path = tmp / "policy.json"
    path.write_text(json.dumps({"policy": doc}))
    return path


def a_to_b_only(tmp: Path, net: str, prefix: str, ports: list[str] | None = None) -> Path:
    """The policy most tests here need: `net` denied by default, `<prefix>-a` may reach
    `<prefix>-b` (on `ports`, else on every port)."""
    rule: dict[str, Any] = {
        "from": {"container": f"{prefix}-a"},
        "to": {"container": f"{prefix}-b"},
    }
    if ports:
        rule["ports"] = ports
    return write_policy(tmp, {"networks": {net: {"default": "deny"}}, "rules": [rule]})


def flush_neighbours(pid: int) -> None:
    subprocess.run(
        ["nsenter", "-t", str(pid), "-n", "ip", "-6", "neigh", "flush", "all"],
        check=False,
        capture_output=True,
    )


def test_a_dual_stack_network_under_deny_allows_one_pair_over_both_families(
    api: Any, pool: NetnsPool, prefix: str, toolbox: str, policy_env: str, tmp_path: Path
) -> None:
    dual_stack(api, prefix, "ds", 0)
    net = f"{prefix}ds"
    a, b, c = (run(api, toolbox, f"{prefix}-{k}", net) for k in ("a", "b", "c"))
    (a4, a6), (b4, b6), (_c4, c6) = (addresses(api, x, net) for x in (a, b, c))
    assert a6 and b6 and c6
    policy = a_to_b_only(tmp_path, net, prefix)
    dockmesh("policy", "apply", str(policy), check=True)
    for pid in (pid_of(api, x) for x in (a, b, c)):
        flush_neighbours(pid)
    pa, pb, pc = (pid_of(api, x) for x in (a, b, c))
    # The allowed pair, over IPv4 and over IPv6 after neighbour discovery from scratch.
    assert connects(pool, pa, b4) and connects(pool, pa, b6)
    # Every other pair is dropped over both families.
    for pid, target in ((pb, a4), (pb, a6), (pc, b4), (pc, b6), (pc, a4), (pc, a6)):
        assert not connects(pool, pid, target, timeout=0.5), (pid, target)


def spoofed_udp(src: str, dst: str, port: int, payload: bytes) -> bytes:
    def checksum(data: bytes) -> int:
        if len(data) % 2:
            data += b"\0"
        total = int(sum(struct.unpack(f"!{len(data) // 2}H", data)))
        total = (total >> 16) + (total & 0xFFFF)
        total += total >> 16
        return ~total & 0xFFFF

    udp = struct.pack("!HHHH", 40000, port, 8 + len(payload), 0) + payload
    head = struct.pack(
        "!BBHHHBBH4s4s",
        0x45, 0, 20 + len(udp), 1, 0, 64, socket.IPPROTO_UDP, 0,
        socket.inet_aton(src), socket.inet_aton(dst),
    )  # fmt: skip
    head = head[:10] + struct.pack("!H", checksum(head)) + head[12:]
    return head + udp


def received(sock: socket.socket, wait: float = 0.7) -> list[bytes]:
    got: list[bytes] = []
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        try:
            got.append(sock.recv(2048))
        except (BlockingIOError, TimeoutError):
            time.sleep(0.02)
    return got


def test_a_forged_source_from_a_raw_socket_is_dropped(
    api: Any, pool: NetnsPool, prefix: str, toolbox: str, policy_env: str, tmp_path: Path
) -> None:
    (subnet,) = free_subnets(api, 1)
    net = f"{prefix}sp"
    api.create_network(net, ipam={"Config": [{"Subnet": subnet}]})
    a, b, m = (run(api, toolbox, f"{prefix}-{k}", net) for k in ("a", "b", "m"))
    a4, b4 = addresses(api, a, net)[0], addresses(api, b, net)[0]
    policy = a_to_b_only(tmp_path, net, prefix, ["9999/udp"])
    dockmesh("policy", "apply", str(policy), check=True)
    listener = pool.socket(pid_of(api, b), socket.AF_INET, socket.SOCK_DGRAM)
    try:
        listener.bind(("0.0.0.0", 9999))
        # The mallory container (Docker's default capabilities include NET_RAW) sends as a.
        raw = pool.socket(pid_of(api, m), socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
        try:
            raw.sendto(spoofed_udp(a4, b4, 9999, b"forged"), (b4, 0))
        finally:
            raw.close()
        assert received(listener) == []
        # a itself is heard.
        real = pool.socket(pid_of(api, a), socket.AF_INET, socket.SOCK_DGRAM)
        try:
            real.sendto(b"real", (b4, 9999))
        finally:
            real.close()
        assert received(listener) == [b"real"]
        show = json.loads(dockmesh("policy", "show", "--json", check=True).stdout)
        marked = [r for r in show["rules"] if r["comment"].startswith("unconfirmed source")]
        assert sum(r["packets"] for r in marked) >= 1
    finally:
        listener.close()


def test_a_new_container_on_a_removed_ones_address_inherits_nothing_without_an_agent(
    api: Any, pool: NetnsPool, prefix: str, toolbox: str, policy_env: str, tmp_path: Path
) -> None:
    (subnet,) = free_subnets(api, 1)
    net = f"{prefix}re"
    api.create_network(net, ipam={"Config": [{"Subnet": subnet}]})
    a = run(api, toolbox, f"{prefix}-a", net)
    b = run(api, toolbox, f"{prefix}-b", net)
    a4, b4 = addresses(api, a, net)[0], addresses(api, b, net)[0]
    policy = a_to_b_only(tmp_path, net, prefix)
    dockmesh("policy", "apply", str(policy), check=True)
    assert connects(pool, pid_of(api, a), b4)
    api.remove_container(a, force=True)  # no agent runs: a's address stays in the sets
    squat = run(api, toolbox, f"{prefix}-squat", net, ipv4_address=a4)
    assert addresses(api, squat, net)[0] == a4
    assert not connects(pool, pid_of(api, squat), b4, timeout=0.5)


def test_ipv6_between_networks_is_isolated_as_docker_isolates_ipv4(
    api: Any, pool: NetnsPool, prefix: str, toolbox: str, policy_env: str, tmp_path: Path
) -> None:
    dual_stack(api, prefix, "x1", 1)
    dual_stack(api, prefix, "x2", 2)
    a = run(api, toolbox, f"{prefix}-a", f"{prefix}x1")
    b = run(api, toolbox, f"{prefix}-b", f"{prefix}x2")
    b4, b6 = addresses(api, b, f"{prefix}x2")
    pa = pid_of(api, a)
    assert not connects(pool, pa, b4, timeout=0.5)  # Docker's own IPv4 isolation
    # A policy that allows everything still brings Docker's isolation to IPv6.
    policy = write_policy(tmp_path, {"default": "allow"})
    dockmesh("policy", "apply", str(policy), check=True)
    assert not connects(pool, pa, b6, timeout=0.5)
    show = json.loads(dockmesh("policy", "show", "--json", check=True).stdout)
    assert own_differences(show) == []


def test_a_deny_rule_holds_for_a_published_port(
    api: Any, pool: NetnsPool, prefix: str, toolbox: str, policy_env: str, tmp_path: Path
) -> None:
    (subnet,) = free_subnets(api, 1)
    net = f"{prefix}pp"
    api.create_network(net, ipam={"Config": [{"Subnet": subnet}]})
    host_port = 20000 + int(prefix[3:7], 16) % 20000
    web = api.create_container(
        toolbox,
        name=f"{prefix}-web",
        ports=[8080],
        host_config=api.create_host_config(
            network_mode=net, port_bindings={8080: ("0.0.0.0", host_port)}
        ),
    )["Id"]
    api.start(web)
    # The client is on another network; it reaches the published port at the host's address
    # on its own bridge (DNAT to web across the bridges).
    (other,) = free_subnets(api, 1)
    api.create_network(f"{prefix}cl", ipam={"Config": [{"Subnet": other}]})
    client = run(api, toolbox, f"{prefix}-client", f"{prefix}cl")
    gateway = str(next(ipaddress.ip_network(other).hosts()))  # Docker's default gateway
    pc = pid_of(api, client)
    # Docker lets it through (its proxy connects to web from the host).
    assert connects(pool, pc, gateway, host_port)
    policy = write_policy(
        tmp_path,
        {
            "rules": [
                {
                    "action": "deny",
                    "from": {"container": f"{prefix}-client"},
                    "to": {"container": f"{prefix}-web"},
                }
            ]
        },
    )
    dockmesh("policy", "apply", str(policy), check=True)
    assert not connects(pool, pc, gateway, host_port, timeout=0.5)
    with contextlib.suppress(Exception):
        api.remove_container(web, force=True)
