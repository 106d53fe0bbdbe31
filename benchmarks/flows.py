"""`dockmesh flows` at the size of a busy host: a conntrack table of 50,000 entries.

The table is a network namespace's own (conntrack is per namespace), made here and deleted at
the end, so nothing is added to the host's table and nothing the benchmark inserts can match
a real packet. It is filled over ctnetlink (what `conntrack -I` sends, batched) with TCP
entries from client containers to a server container (toolbox containers on a network of
their own, `sleep` only: their addresses are what the topology names), and a share of the
host's own loopback chatter that names no container. Accounting is on in that namespace, so
the entries carry counters as on a host where `flows` has run.

Measured, each command run inside that namespace (the engine's socket is a file, reached
from any namespace; DOCKMESH_AGENT is pinned where nothing listens, so the engine is read):
  - `dockmesh flows --json`: the whole command (process start included), and its
    `elapsed_s` (dump, decode and aggregation), median of --runs;
  - the new reader alone: dump and decode (`observe.conntrack.dump`), median of --runs;
  - the old reader: pyroute2's NFCTSocket dump and `flows.parse_conntrack_message`, on the
    whole table (or the first --old-limit entries, extrapolated);
  - the kernel's own filter: a dump filtered by a mark no entry carries (the kernel walks
    the table, nothing is decoded): what filtering in the kernel could save at best;
  - the peer: `conntrack -L` (conntrack-tools, C) writing the table as text to /dev/null.

Goal: `elapsed_s` under 1 s for 50,000 entries. Exits 1 when it is missed, naming it.

Run: .venv/bin/python -m benchmarks.flows [--entries 50000 --clients 5 --runs 5]
Everything it creates is named dmb<hex>… (containers, network, namespace) and removed at the
end, on failure too.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import docker
from rich.console import Console
from rich.table import Table

console = Console(width=120)
DM = str(Path(sys.executable).parent / "dockmesh")
SERVER_PORT = 8080
LOOPBACK_SHARE = 0.1  # of the entries: the host's own chatter, naming no container


def in_ns(
    ns: str, cmd: list[str], agent: str = "http://127.0.0.1:9", **kw: Any
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DOCKMESH_AGENT": agent}
    return subprocess.run(
        ["ip", "netns", "exec", ns, *cmd], capture_output=True, text=True, env=env, **kw
    )


def start_agent(ns: str, port: int, containers: int) -> subprocess.Popen[bytes]:
    """An agent inside the namespace (its API on the namespace's loopback, DNS off), once
    it serves a topology with at least `containers` containers."""
    agent = subprocess.Popen(
        ["ip", "netns", "exec", ns, DM, "agent", "--api", f"127.0.0.1:{port}", "--dns", "off",
         "--state", "", "--no-gateway-dns"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    probe = (
        "import json,sys,urllib.request;"
        f"d=json.load(urllib.request.urlopen('http://127.0.0.1:{port}/v1/dockmesh/topology',"
        "timeout=5));"
        f"sys.exit(0 if len(d['containers'])>={containers} else 1)"
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if in_ns(ns, [sys.executable, "-c", probe]).returncode == 0:
            return agent
        time.sleep(0.5)
    agent.terminate()
    raise SystemExit("the agent in the namespace did not serve the topology within 60 s")


def child(ns: str, *args: str) -> Any:
    """This module's inside half (`--inside ...`), run in the namespace: its JSON."""
    proc = in_ns(ns, [sys.executable, "-m", "benchmarks.flows", "--inside", *args], check=True)
    return json.loads(proc.stdout)


# The inside half: runs in the benchmark's namespace ---------------------------------------


def fill(clients: list[str], server: str, entries: int) -> dict[str, Any]:
    """Inserts `entries` entries into this namespace's table, in batches of requests (each
    one answered only on an error)."""
    from dockmesh.codecs.ctnetlink import ConntrackFlow, DumpDecoder, Tuple5, entry_message

    with open("/proc/sys/net/netfilter/nf_conntrack_acct", "w") as f:
        f.write("1\n")
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 12)
    sock.bind((0, 0))
    started = time.perf_counter()
    loopback = int(entries * LOOPBACK_SHARE)
    batch: list[bytes] = []
    errors = 0

    def flush() -> None:
        nonlocal errors
        sock.send(b"".join(batch))
        batch.clear()
        sock.setblocking(False)
        try:
            while True:
                try:
                    DumpDecoder().feed(sock.recv(1 << 16))
                except ValueError:
                    errors += 1
        except BlockingIOError:
            pass
        finally:
            sock.setblocking(True)

    for i in range(entries):
        if i < loopback:
            a, b, port = f"127.0.{1 + i // 64000}.1", "127.0.0.1", 6379
            sport = 1024 + i % 64000
        else:
            j = i - loopback
            a, b, port = clients[j % len(clients)], server, SERVER_PORT
            sport = 1024 + (j // len(clients)) % 64000
            if j // len(clients) >= 64000:
                raise SystemExit("too many entries per client: give more --clients")
        flow = ConntrackFlow(6, Tuple5(a, b, sport, port), Tuple5(b, a, port, sport))
        batch.append(entry_message(flow, seq=i, timeout_s=3600))
        if len(batch) == 200:
            flush()
    if batch:
        flush()
    sock.close()
    return {"seconds": time.perf_counter() - started, "errors": errors}


def new_reader(runs: int) -> dict[str, Any]:
    from dockmesh.observe.conntrack import dump

    times, count = [], 0
    for _ in range(runs):
        t0 = time.perf_counter()
        count = sum(1 for _ in dump())
        times.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    matched = sum(1 for _ in dump(mark=(0x5EED, 0xFFFFFFFF)))
    filtered = time.perf_counter() - t0
    return {"times": times, "count": count, "filtered": filtered, "matched": matched}


def old_reader(limit: int) -> dict[str, Any]:
    from pyroute2.netlink.nfnetlink.nfctsocket import NFCTSocket

    from dockmesh.observe.flows import parse_conntrack_message

    n = 0
    t0 = time.perf_counter()
    with NFCTSocket() as sock:
        for msg in sock.dump():
            if parse_conntrack_message(msg.dump()) is not None:
                n += 1
            if limit and n >= limit:
                break
    return {"seconds": time.perf_counter() - t0, "count": n}


def inside(args: list[str]) -> int:
    what = args[0]
    if what == "fill":
        doc = fill(args[3].split(","), args[2], int(args[1]))
    elif what == "new":
        doc = new_reader(int(args[1]))
    else:
        doc = old_reader(int(args[1]))
    print(json.dumps(doc))
    return 0


# The outside half ----------------------------------------------------------------------------


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--inside":
        return inside(sys.argv[2:])
    ap = argparse.ArgumentParser()
    ap.add_argument("--entries", type=int, default=50_000)
    ap.add_argument("--clients", type=int, default=5)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument(
        "--old-limit",
        type=int,
        default=0,
        help="Time pyroute2 on this many entries and extrapolate (0: the whole table).",
    )
    args = ap.parse_args()
    if shutil.which("conntrack") is None:
        console.print("conntrack (conntrack-tools) is not installed: scripts/setup.sh installs it")
        return 2

    client = docker.from_env()
    prefix = f"dmb{secrets.token_hex(3)}"
    ns = prefix
    made: list[str] = []
    network: Any = None
    ns_made = False
    agent: subprocess.Popen[bytes] | None = None
    try:
        network = client.networks.create(f"{prefix}-net")
        for i in range(args.clients + 1):
            name = f"{prefix}-{'server' if i == 0 else f'client{i}'}"
            client.containers.run(
                "dockmesh/toolbox", ["sleep", "86400"], name=name, network=network.name, detach=True
            )
            made.append(name)

        def address(name: str) -> str:
            c = client.containers.get(name)
            return str(c.attrs["NetworkSettings"]["Networks"][network.name]["IPAddress"])

        engine_containers = len(client.containers.list())
        server = address(made[0])
        clients = [address(n) for n in made[1:]]
        subprocess.run(["ip", "netns", "add", ns], check=True)
        ns_made = True
        in_ns(ns, ["ip", "link", "set", "lo", "up"], check=True)
        filled = child(ns, "fill", str(args.entries), server, ",".join(clients))
        count = int(in_ns(ns, ["conntrack", "-C"], check=True).stdout.strip())

        whole: list[float] = []
        elapsed: list[float] = []
        doc: dict[str, Any] = {}
        for _ in range(args.runs):
            t0 = time.perf_counter()
            proc = in_ns(ns, [DM, "flows", "--json"], check=True)
            whole.append(time.perf_counter() - t0)
            doc = json.loads(proc.stdout)
            elapsed.append(float(doc["elapsed_s"]))
        ours = {e["src"] for e in doc["edges"] if e["dst"] == made[0] and e["port"] == SERVER_PORT}
        counted = sum(e["connections"] for e in doc["edges"] if e["dst"] == made[0])
        expected = args.entries - int(args.entries * LOOPBACK_SHARE)
        assert ours == set(made[1:]), f"edges from {sorted(ours)}, not every client"
        assert counted == expected, f"{counted} connections counted, {expected} inserted"

        port = 18500 + secrets.randbelow(1000)
        agent = start_agent(ns, port, len(made))
        with_agent: list[float] = []
        for _ in range(args.runs):
            t0 = time.perf_counter()
            in_ns(ns, [DM, "flows", "--json"], agent=f"http://127.0.0.1:{port}", check=True)
            with_agent.append(time.perf_counter() - t0)

        new = child(ns, "new", str(args.runs))
        old = child(ns, "old", str(args.old_limit))
        old_total = old["seconds"] * count / max(1, old["count"])
        peer: list[float] = []
        for _ in range(args.runs):
            t0 = time.perf_counter()
            in_ns(ns, ["sh", "-c", "conntrack -L -o extended >/dev/null 2>&1"], check=True)
            peer.append(time.perf_counter() - t0)

        med_elapsed = statistics.median(elapsed)
        table = Table(
            title=f"flows over a {count:,}-entry conntrack table "
            f"(filled in {filled['seconds']:.1f} s, {filled['errors']} refused)",
            title_justify="left",
        )
        table.add_column("measure")
        table.add_column("median", justify="right")
        table.add_column("goal / note", justify="right")
        table.add_row(
            f"dockmesh flows --json: elapsed_s ({args.runs} runs)",
            f"{med_elapsed * 1000:.0f} ms",
            "< 1000 ms",
        )
        table.add_row(
            "dockmesh flows --json: whole command",
            f"{statistics.median(whole) * 1000:.0f} ms",
            f"{len(doc['edges'])} edges, {counted:,} connections; "
            f"topology read from the engine ({engine_containers} containers)",
        )
        table.add_row(
            "dockmesh flows --json: whole command, with an agent",
            f"{statistics.median(with_agent) * 1000:.0f} ms",
            "topology from the agent",
        )
        new_med = statistics.median(new["times"])
        table.add_row("new reader: dump + decode", f"{new_med * 1000:.0f} ms", f"{new['count']:,}")
        table.add_row(
            "old reader: pyroute2 dump + parse",
            f"{old_total:.1f} s",
            f"{old['seconds'] * 1000 / max(1, old['count']):.2f} ms an entry"
            + ("" if not args.old_limit else f", {old['count']:,} timed, extrapolated"),
        )
        table.add_row(
            "kernel-filtered dump (a mark no entry has)",
            f"{new['filtered'] * 1000:.0f} ms",
            f"{new['matched']} matched: the kernel's walk alone",
        )
        table.add_row(
            "peer: conntrack -L -o extended (C, text)",
            f"{statistics.median(peer) * 1000:.0f} ms",
            f"ratio new/peer {new_med / statistics.median(peer):.2f}",
        )
        console.print(table)
        ok = med_elapsed < 1.0
        console.print("OK" if ok else "FAIL: elapsed_s over 1 s", style="green" if ok else "red")
        return 0 if ok else 1
    finally:
        if agent is not None:
            agent.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                agent.wait(timeout=20)
        if ns_made:
            subprocess.run(["ip", "netns", "del", ns], check=False)
        for name in made:
            with contextlib.suppress(docker.errors.APIError):
                client.containers.get(name).remove(force=True)
        if network is not None:
            with contextlib.suppress(docker.errors.APIError):
                network.remove()


if __name__ == "__main__":
    sys.exit(main())
