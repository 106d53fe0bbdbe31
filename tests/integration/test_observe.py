"""Counters, flows, the report and the agent's metrics on real containers."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import cleanup, dockmesh, free_subnets, run_toolbox

pytestmark = pytest.mark.xdist_group("observe")  # one worker makes the pair once
SERVE = [
    "sh",
    "-c",
    "mkdir -p /tmp/w && echo ok > /tmp/w/health && exec httpd -f -p 8080 -h /tmp/w",
]


def pid_of(api: Any, name: str) -> int:
    return int(api.inspect_container(name)["State"]["Pid"])


def ip_of(api: Any, name: str, network: str) -> str:
    return str(api.inspect_container(name)["NetworkSettings"]["Networks"][network]["IPAddress"])


def get_from(api: Any, src: str, address: str, times: int = 5) -> None:
    """HTTP GETs from `src`'s namespace with the host's curl (the container has no curl)."""
    for _ in range(times):
        subprocess.run(
            [
                "nsenter",
                "-n",
                "-t",
                str(pid_of(api, src)),
                "curl",
                "-s",
                "-o",
                "/dev/null",
                "--max-time",
                "2",
                f"http://{address}:8080/health",
            ],
            check=True,
        )


@pytest.fixture(scope="module")
def pair(api: Any, toolbox: str) -> Iterator[tuple[str, str, str, str]]:
    """Two toolbox containers on one network and a third on two networks, made once for the
    module: its tests only read them (each measures its own traffic as a difference)."""
    prefix = f"dmt{secrets.token_hex(3)}"
    try:
        yield make_pair(api, prefix)
    finally:
        cleanup(api, prefix)


def make_pair(api: Any, prefix: str) -> tuple[str, str, str, str]:
    net, net2 = f"{prefix}-a", f"{prefix}-b"
    s1, s2 = free_subnets(api, 2)
    api.create_network(net, ipam={"Config": [{"Subnet": s1}]})
    api.create_network(net2, ipam={"Config": [{"Subnet": s2}]})
    run_toolbox(api, f"{prefix}-gateway", net, command=SERVE)
    run_toolbox(api, f"{prefix}-api", net, command=SERVE)
    cid = run_toolbox(api, f"{prefix}-multi", net2, command=SERVE)
    api.stop(cid, timeout=0)
    api.connect_container_to_network(cid, net)
    api.start(cid)
    return net, net2, f"{prefix}-gateway", f"{prefix}-api"


def test_stats_counts_traffic_per_interface_and_network(api: Any, pair: tuple[str, ...]) -> None:
    net, net2, gw, svc = pair
    before = json.loads(dockmesh("stats", gw, svc, "--json", check=True).stdout)
    get_from(api, gw, ip_of(api, svc, net), times=5)
    after = json.loads(dockmesh("stats", "--json", check=True).stdout)
    assert after["elapsed_s"] >= 0  # how small: benchmarks/observe.py (goal < 50 ms)
    by_name = {c["name"]: c for c in after["containers"]}
    (iface,) = by_name[svc]["interfaces"]
    assert iface["name"] == "eth0" and iface["network"] == net
    (old,) = next(c for c in before["containers"] if c["name"] == svc)["interfaces"]
    assert iface["rx_bytes"] > old["rx_bytes"] and iface["tx_packets"] > old["tx_packets"]
    multi = {i["network"] for i in by_name[pair[2].rsplit("-", 1)[0] + "-multi"]["interfaces"]}
    assert multi == {net, net2}


def test_flows_show_the_edge_with_bytes(api: Any, pair: tuple[str, ...]) -> None:
    net, _, gw, svc = pair
    dockmesh("flows", "--json", check=True)  # turns accounting on before the traffic
    get_from(api, gw, ip_of(api, svc, net), times=3)
    doc = json.loads(dockmesh("flows", "--json", check=True).stdout)
    assert doc["accounting"] == "on"
    edge = next(e for e in doc["edges"] if e["src"] == gw and e["dst"] == svc)
    assert edge["port"] == 8080 and edge["connections"] >= 3 and edge["bytes"] > 0
    dot = dockmesh("topology", "--dot", "--flows", check=True).stdout
    assert any("dashed" in line and "8080/tcp" in line for line in dot.splitlines())


def test_report_has_traffic_and_connectivity(api: Any, pair: tuple[str, ...]) -> None:
    net, _, _, svc = pair
    doc = json.loads(dockmesh("report", "--duration", "0.5", "--json", check=True).stdout)
    assert {"timestamp", "topology", "traffic", "connectivity"} <= set(doc)
    mine = [c for c in doc["connectivity"] if c["network"] == net]
    assert mine and all(c["reachable"] for c in mine)
    assert any(t["container"] == svc for t in doc["traffic"])


def test_top_refreshes_and_exits(pair: tuple[str, ...]) -> None:
    proc = dockmesh("top", "--interval", "0.2", "--iterations", "2", check=True)
    assert "dockmesh top" in proc.stdout


def test_agent_exports_container_network_counters(
    api: Any, pair: tuple[str, ...], tmp_path: Any
) -> None:
    import socket
    import urllib.request

    def free() -> int:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return int(s.getsockname()[1])

    port = free()
    agent = subprocess.Popen(
        [
            sys.executable,  # not whatever `python` PATH finds first
            "-m",
            "dockmesh",
            "agent",
            "--api",
            f"127.0.0.1:{port}",
            "--dns",
            "off",
            "--state",
            "",
            "--no-gateway-dns",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        text = ""
        deadline = time.monotonic() + 60  # a guard against hanging, on a busy machine
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                    text = r.read().decode()
                if pair[3] in text:
                    break
            except OSError:
                pass
            time.sleep(0.3)
        lines = [
            x
            for x in text.splitlines()
            if x.startswith("container_network_receive_bytes_total{")
            and f'container="{pair[3]}"' in x
        ]
        assert lines, f"no counters of {pair[3]} after 60 s:\n{text[-2000:]}"
        line = lines[0]
        assert f'network="{pair[0]}"' in line and 'interface="eth0"' in line
        assert "container_network_transmit_packets_dropped_total" in text
        # The whole `stats --json` through the agent's topology (the fast path; its speed is
        # benchmarks/observe.py's measure).
        out = subprocess.run(
            [str(Path(sys.executable).parent / "dockmesh"), "stats", "--json"],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "DOCKMESH_AGENT": f"http://127.0.0.1:{port}"},
        )
        assert any(c["name"] == pair[3] for c in json.loads(out.stdout)["containers"])
    finally:
        agent.terminate()
        agent.wait(timeout=20)


REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def netns() -> Iterator[str]:
    """A network namespace of the test's own (so a conntrack table of its own: nothing is
    added to the host's), deleted after the test, on failure too."""
    name = f"dmt{secrets.token_hex(3)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def test_flows_reads_a_table_of_tens_of_thousands_of_entries(
    api: Any, pair: tuple[str, ...], netns: str
) -> None:
    """20,000 entries (what `conntrack -I` inserts, batched by the benchmark's filler) from
    one of the pair to the other, and a tenth of loopback chatter that names no container:
    every entry is counted on the one edge, the chatter on none."""
    net, _, gw, svc = pair
    server, client = ip_of(api, svc, net), ip_of(api, gw, net)
    fill = [sys.executable, "-m", "benchmarks.flows", "--inside", "fill", "20000", server, client]
    subprocess.run(["ip", "netns", "exec", netns, *fill], check=True, cwd=REPO)
    proc = subprocess.run(
        ["ip", "netns", "exec", netns, sys.executable, "-m", "dockmesh", "flows", "--json"],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "DOCKMESH_AGENT": "http://127.0.0.1:9"},
    )
    doc = json.loads(proc.stdout)
    assert doc["accounting"] == "on"  # the namespace's own switch, turned on by the filler
    (edge,) = [e for e in doc["edges"] if (e["src"], e["dst"]) == (gw, svc)]
    assert (edge["port"], edge["proto"], edge["connections"]) == (8080, "tcp", 18000)
    assert sum(e["connections"] for e in doc["edges"]) == 18000, doc["edges"]
    assert doc["elapsed_s"] >= 0  # how fast: benchmarks/flows.py (goal < 1 s for 50,000)


@pytest.fixture
def ring(api: Any, toolbox: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Any]:
    """Eight idle containers on one network of their own, a policy table and state folder
    of the test's own; everything removed after it, on failure too."""
    prefix = f"dmt{secrets.token_hex(3)}"
    table = f"{prefix}pol"
    monkeypatch.setenv("DOCKMESH_AGENT", "http://127.0.0.1:9")
    monkeypatch.setenv("DOCKMESH_POLICY_TABLE", table)
    monkeypatch.setenv("DOCKMESH_POLICY_DIR", str(tmp_path / "policy"))
    try:
        net = f"{prefix}-net"
        (subnet,) = free_subnets(api, 1)
        api.create_network(net, ipam={"Config": [{"Subnet": subnet}]})
        names = [f"{prefix}-c{i}" for i in range(8)]
        for name in names:
            run_toolbox(api, name, net, command=["sleep", "3600"])
        yield net, names, tmp_path
    finally:
        dockmesh("policy", "remove")
        for family in ("inet", "bridge"):
            subprocess.run(["nft", "delete", "table", family, table], capture_output=True)
        cleanup(api, prefix)


def test_report_names_the_rule_that_denies_and_waits_once_for_all(ring: Any) -> None:
    net, names, tmp = ring
    policy = tmp / "p.yaml"
    policy.write_text(
        f"policy:\n  networks: {{{net}: {{default: deny}}}}\n  rules:\n"
        f"    - {{from: {{container: {names[0]}}}, to: {{container: {names[1]}}}}}\n"
    )
    dockmesh("policy", "apply", str(policy), check=True)
    proc = dockmesh("report", "--duration", "0", "--timeout", "2", "--json", check=True)
    doc = json.loads(proc.stdout)
    mine = {(c["src"], c["dst"]): c for c in doc["connectivity"] if c["network"] == net}
    assert len(mine) == 8  # the ring: each probes the next
    allowed = mine.pop((names[0], names[1]))
    assert allowed["status"] == "reachable" and allowed["reachable"] is True
    assert "rule 1" in allowed["reason"] and allowed["expected"] is True
    for c in mine.values():
        assert (c["status"], c["reachable"], c["expected"]) == ("denied", False, False), c
        assert net in c["reason"] and "denies" in c["reason"], c["reason"]
    # Seven denied pairs: one after another they would cost 7 x 2 s; at once, one timeout
    # (and a second pass, 4 s, only for probes that disagree with the analysis).
    assert doc["summary"]["connectivity_s"] < 7 * 2
    assert doc["summary"]["pairs_denied"] >= 7
    text = dockmesh("report", "--duration", "0", check=True).stdout
    assert "denied as the policy says" in text
    assert f"{names[1]} → {names[2]} on {net}: denied" in text


FILTERED_DUMP = """
import json, socket
from dockmesh.codecs.ctnetlink import (
    NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REQUEST, ConntrackFlow, DumpDecoder, Tuple5,
    entry_message,
)
from dockmesh.observe.conntrack import dump

sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 12)
sock.bind((0, 0))
asks = []
for i in range(30):
    a, b = ("10.9.0.1", "10.9.0.2") if i % 2 else ("fd00::1", "fd00::2")
    flow = ConntrackFlow(17, Tuple5(a, b, 1000 + i, 53), Tuple5(b, a, 53, 1000 + i))
    asks.append(entry_message(
        flow, seq=i, mark=7 if i % 3 == 0 else None, zone=5 if i % 5 == 0 else None,
        flags=NLM_F_REQUEST | NLM_F_CREATE | NLM_F_EXCL | NLM_F_ACK,
    ))
sock.sendall(b"".join(asks))
for _ in asks:
    DumpDecoder().feed(sock.recv(65536))  # an acknowledgement each; an error raises
print(json.dumps({
    "all": sorted(f.orig.sport for f in dump()),
    "mark": sorted(f.orig.sport for f in dump(mark=(7, 0xFFFFFFFF))),
    "zone": sorted(f.orig.sport for f in dump(zone=5)),
    "v6": sorted(f.orig.sport for f in dump() if ":" in f.orig.src),
}))
"""


def test_the_kernel_filters_a_dump_by_mark_and_zone(netns: str) -> None:
    """Entries inserted in the test's own namespace with marks and zones, IPv4 and IPv6:
    a dump gives them all, a filtered one only those the kernel finds matching."""
    proc = subprocess.run(
        ["ip", "netns", "exec", netns, sys.executable, "-c", FILTERED_DUMP],
        capture_output=True,
        text=True,
        check=True,
    )
    got = json.loads(proc.stdout)
    ports = range(1000, 1030)
    assert got["all"] == list(ports)
    assert got["mark"] == [p for p in ports if (p - 1000) % 3 == 0]
    assert got["zone"] == [p for p in ports if (p - 1000) % 5 == 0]
    assert got["v6"] == [p for p in ports if (p - 1000) % 2 == 0]


def test_report_bad_input_exits_2_before_measuring() -> None:
    for args in (("--table", "bad name!"), ("--timeout", "0"), ("--duration", "-1")):
        proc = dockmesh("report", "--duration", "30", *args, "--json", timeout=20)
        assert proc.returncode == 2, (args, proc.stderr)
        assert proc.stdout == "" and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
