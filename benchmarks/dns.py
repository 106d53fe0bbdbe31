"""DNS throughput: dockmesh's server beside Docker's embedded DNS and dnsmasq, same run.

All three answer one name with the same three addresses, asked the same way by dnsperf
(Debian's `dnsperf`: `-c 4 -l 5 -Q 1000000`, a file of one query):

  - Docker's embedded DNS (127.0.0.11, Go, inside dockerd): `api A` from inside a client
    container's network namespace (`nsenter -n -t PID dnsperf -s 127.0.0.11`), where `api` is
    the network alias of three containers on the benchmark's network;
  - dnsmasq (C): `api.service.dockmesh A` on loopback, the three addresses in an addn-hosts
    file (`dnsmasq -k -p PORT --listen-address=127.0.0.1 --bind-interfaces --no-resolv
    --no-hosts --addn-hosts=FILE`);
  - dockmesh (`DnsServer`): the same query on loopback, served by this file's `serve` command
    in its own process on uvloop, its catalog holding the three containers as instances.

Each server is first warmed up (one short dnsperf run, not counted: caches, the first
namespace entry, uvloop's first allocations). Rounds then alternate the servers, each round
starting with the next one (Docker, dockmesh, dnsmasq; dockmesh, dnsmasq, Docker; ...), so a
busy moment of the machine and the place in the round fall on all of them; the ratios are of
the medians over the rounds. A dnsperf that exits non-zero or prints no result is an error,
never a figure. The goals: dockmesh
at least 1.5x Docker's queries/s and at least 0.9x dnsmasq's, with no lost queries. The
server CPU time per query (from /proc) is shown for the two servers that are processes of
their own: on a shared machine it tells the server's cost apart from the contention.

Run: .venv/bin/python -m benchmarks.dns [--seconds 5 --clients 4 --rounds 3 --warmup 1]
(root, a Docker engine, dnsperf and dnsmasq: scripts/setup.sh installs them). Everything it
creates is named dmb<hex>… and removed at the end, on failure too.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TOOLBOX = "dockmesh/toolbox:latest"
NAME = "api.service.dockmesh"


# --- the dockmesh server, standalone ------------------------------------------------------------


def serve(port: int, addresses: list[str]) -> int:
    """The server as the agent runs it (uvloop, LiveCatalog), with `addresses` as instances of
    `api`; prints `ready <port>` once it answers."""
    import uvloop

    from dockmesh.catalog.live import LiveCatalog
    from dockmesh.dns.server import DnsServer
    from dockmesh.model.catalog import Instance

    async def run() -> None:
        live = LiveCatalog()
        for i, address in enumerate(addresses):
            live.register(Instance(f"api-{i}", "api", address, 8080), [])
        server = DnsServer(live, lambda: None)
        _, bound = await server.start("127.0.0.1", port)
        print(f"ready {bound}", flush=True)
        await asyncio.Event().wait()

    with contextlib.suppress(KeyboardInterrupt):
        uvloop.run(run())
    return 0


# --- measuring ----------------------------------------------------------------------------------


@dataclass
class Result:
    qps: float
    lost: int
    cpu_us: float | None  # the server process's CPU per answered query


def cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def dnsperf(
    cmd_prefix: list[str],
    server: str,
    port: int,
    queries: Path,
    seconds: int,
    clients: int,
    pid: int | None,
) -> Result:
    cmd = [*cmd_prefix, "dnsperf", "-s", server, "-p", str(port), "-d", str(queries)]
    cmd += ["-l", str(seconds), "-c", str(clients), "-Q", "1000000"]
    before = cpu_ticks(pid) if pid else 0
    done_ = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60)
    after = cpu_ticks(pid) if pid else 0
    out = done_.stdout
    if done_.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {done_.returncode}:\n{out}{done_.stderr}")
    qps = re.search(r"Queries per second:\s+([\d.]+)", out)
    lost = re.search(r"Queries lost:\s+(\d+)", out)
    done = re.search(r"Queries completed:\s+(\d+)", out)
    if not (qps and lost and done):
        raise RuntimeError(f"dnsperf said:\n{out}")
    answered = int(done.group(1))
    hz = os.sysconf("SC_CLK_TCK")
    cpu = (after - before) / hz * 1e6 / answered if pid and answered else None
    return Result(float(qps.group(1)), int(lost.group(1)), cpu)


def wait_answers(port: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = subprocess.run(
            ["dig", "@127.0.0.1", "-p", str(port), "+short", "+time=1", "+tries=1", NAME],
            capture_output=True,
            text=True,
        ).stdout
        if len(out.split()) == 3:
            return
        time.sleep(0.1)
    raise RuntimeError(f"nothing answers {NAME} on port {port}")


def free_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u, socket.socket() as t:
        for _ in range(50):
            u.bind(("127.0.0.1", 0))
            port = int(u.getsockname()[1])
            try:
                t.bind(("127.0.0.1", port))
            except OSError:
                u.close()
                u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                continue
            return port
    raise RuntimeError("no free port")


# --- the run --------------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = ap.add_subparsers(dest="command")
    sp = sub.add_parser("serve", help="(internal) run dockmesh's DNS server standalone")
    sp.add_argument("--port", type=int, required=True)
    sp.add_argument("--addresses", required=True, help="comma-separated")
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=3, help="each starts with the next server")
    ap.add_argument("--warmup", type=int, default=1, help="seconds of dnsperf, not counted")
    args = ap.parse_args()
    if args.command == "serve":
        return serve(args.port, args.addresses.split(","))
    for tool in ("dnsperf", "dnsmasq", "dig", "nsenter"):
        if shutil.which(tool) is None:
            print(f"{tool} is missing (scripts/setup.sh installs it)", file=sys.stderr)
            return 2

    import docker
    from rich.console import Console
    from rich.table import Table

    console = Console()
    api: Any = docker.APIClient(version="auto", timeout=120)
    prefix = f"dmb{secrets.token_hex(3)}"
    procs: list[subprocess.Popen[Any]] = []
    scratch = Path(tempfile.mkdtemp(prefix=f"{prefix}-"))
    scratch.chmod(0o755)  # dnsmasq reads its hosts file after dropping root
    net = f"{prefix}net"
    try:
        api.create_network(net, driver="bridge")
        addresses = []
        for i in range(3):
            cid = api.create_container(
                TOOLBOX,
                name=f"{prefix}api{i}",
                command=["sleep", "3600"],
                host_config=api.create_host_config(network_mode=net),
                networking_config=api.create_networking_config(
                    {net: api.create_endpoint_config(aliases=["api"])}
                ),
            )["Id"]
            api.start(cid)
            addresses.append(
                api.inspect_container(cid)["NetworkSettings"]["Networks"][net]["IPAddress"]
            )
        client = api.create_container(
            TOOLBOX,
            name=f"{prefix}client",
            command=["sleep", "3600"],
            host_config=api.create_host_config(network_mode=net),
        )["Id"]
        api.start(client)
        client_pid = int(api.inspect_container(client)["State"]["Pid"])

        hosts = scratch / "hosts"
        hosts.write_text("".join(f"{a} {NAME}\n" for a in addresses))
        (scratch / "q-docker").write_text("api A\n")
        (scratch / "q-dm").write_text(f"{NAME} A\n")

        mq_port = free_port()
        mq = subprocess.Popen(
            [
                "dnsmasq",
                "-k",
                "-p",
                str(mq_port),
                "--listen-address=127.0.0.1",
                "--bind-interfaces",
                "--no-resolv",
                "--no-hosts",
                f"--addn-hosts={hosts}",
                f"--pid-file={scratch / 'dnsmasq.pid'}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        procs.append(mq)
        dm_port = free_port()
        dm = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "benchmarks.dns",
                "serve",
                "--port",
                str(dm_port),
                "--addresses",
                ",".join(addresses),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        procs.append(dm)
        assert dm.stdout is not None
        if not dm.stdout.readline().startswith("ready"):
            raise RuntimeError("the dockmesh DNS server did not start")
        wait_answers(dm_port)
        wait_answers(mq_port)

        results: dict[str, list[Result]] = {"docker": [], "dockmesh": [], "dnsmasq": []}
        nsenter = ["nsenter", "-n", "-t", str(client_pid)]
        # (label, command prefix, server, port, query file, server pid for its CPU time)
        targets: list[tuple[str, list[str], str, int, Path, int | None]] = [
            ("docker", nsenter, "127.0.0.11", 53, scratch / "q-docker", None),
            ("dockmesh", [], "127.0.0.1", dm_port, scratch / "q-dm", dm.pid),
            ("dnsmasq", [], "127.0.0.1", mq_port, scratch / "q-dm", mq.pid),
        ]
        for label, pre, server, port, queries, pid in targets:
            if args.warmup > 0:
                w = dnsperf(pre, server, port, queries, args.warmup, args.clients, pid)
                console.print(f"warm-up  {label:9} {w.qps:>10,.0f} q/s (not counted)")
        for round_ in range(1, args.rounds + 1):
            k = (round_ - 1) % len(targets)
            for label, pre, server, port, queries, pid in targets[k:] + targets[:k]:
                r = dnsperf(pre, server, port, queries, args.seconds, args.clients, pid)
                results[label].append(r)
                cpu = f", {r.cpu_us:.1f} µs CPU/query" if r.cpu_us is not None else ""
                console.print(f"round {round_} {label:9} {r.qps:>10,.0f} q/s, lost {r.lost}{cpu}")

        table = Table(
            title=f"DNS: dnsperf -c {args.clients} -l {args.seconds}, {args.rounds} rounds, "
            "one name with 3 addresses"
        )
        table.add_column("server")
        table.add_column("queries/s (median)", justify="right")
        table.add_column("per round", justify="right")
        table.add_column("lost", justify="right")
        table.add_column("server CPU µs/query", justify="right")
        med = {k: statistics.median(r.qps for r in v) for k, v in results.items()}
        for label, rs in results.items():
            cpus = [r.cpu_us for r in rs if r.cpu_us is not None]
            table.add_row(
                label,
                f"{med[label]:,.0f}",
                " ".join(f"{r.qps:,.0f}" for r in rs),
                str(sum(r.lost for r in rs)),
                f"{statistics.median(cpus):.1f}" if cpus else "(in dockerd)",
            )
        console.print(table)
        vs_docker = med["dockmesh"] / med["docker"]
        vs_dnsmasq = med["dockmesh"] / med["dnsmasq"]
        lost = sum(r.lost for r in results["dockmesh"])
        ok = vs_docker >= 1.5 and vs_dnsmasq >= 0.9 and lost == 0
        console.print(
            f"dockmesh/Docker {vs_docker:.2f}x (goal >= 1.5), dockmesh/dnsmasq {vs_dnsmasq:.2f}x "
            f"(goal >= 0.9), dockmesh lost {lost}: {'OK' if ok else 'BELOW GOAL'}"
        )
        return 0 if ok else 1
    finally:
        for p in procs:
            p.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(5)
            if p.poll() is None:
                p.kill()
        for c in api.containers(all=True, filters={"name": prefix}):
            if any(n.lstrip("/").startswith(prefix) for n in c.get("Names") or []):
                with contextlib.suppress(docker.errors.NotFound):
                    api.remove_container(c["Id"], force=True)
        for n in api.networks(names=[net]):
            if n["Name"] == net:
                with contextlib.suppress(docker.errors.NotFound):
                    api.remove_network(n["Id"])
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
