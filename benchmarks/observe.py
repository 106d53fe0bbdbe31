"""Observability at scale: counters of 200 running containers, and bandwidth between two.

Measures, in one run, against the real engine:
  - one `stats` sample of every container (reading and mapping each one's
    /proc/<pid>/net/dev, given the live topology: `elapsed_s`), median of --runs, beside the
    chapter's `container.stats(stream=False)` timed on 5 of them (ratio printed);
  - the whole `dockmesh stats --json` command (process start included) with an agent
    running (its fast path), median of --runs;
  - `dockmesh bench bandwidth` beside iperf3 between the same two namespaces, alternating.

Containers: the acceptance checks' `accscale-*` fixture when it has enough running ones
(left as it is), else dmb<hex>-* toolbox containers made here and removed at the end, on
failure too. The agent runs on a free loopback port with DNS off, and is stopped at the end.

Run: .venv/bin/python -m benchmarks.observe [--containers 200 --runs 7 --seconds 3]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import docker
from rich.console import Console
from rich.table import Table

from dockmesh.engine.backend import EngineRef, default_url
from dockmesh.engine.docker import DockerBackend
from dockmesh.model.topology import build_topology
from dockmesh.observe.sample import sample, targets

console = Console(width=120)
DM = str(Path(sys.executable).parent / "dockmesh")
SERVE = "mkdir -p /tmp/w && echo ok > /tmp/w/health && exec httpd -f -p 8080 -h /tmp/w"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_json(cmd: list[str], env: dict[str, str] | None = None) -> Any:
    """A command's JSON; without `env`, its agent pinned where nothing listens (the engine's
    path), so an agent running on the machine cannot change what is measured."""
    env = env or {**os.environ, "DOCKMESH_AGENT": "http://127.0.0.1:9"}
    proc = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env)
    return json.loads(proc.stdout)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--containers", type=int, default=200)
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--bandwidth-rounds", type=int, default=3)
    args = ap.parse_args()

    client = docker.from_env()
    prefix = f"dmb{secrets.token_hex(3)}"
    made: list[str] = []
    networks: list[Any] = []
    agent: subprocess.Popen[bytes] | None = None
    try:
        scale = [c for c in client.containers.list() if c.name.startswith("accscale-c")]
        if len(scale) >= args.containers:
            names = [c.name for c in scale[: args.containers]]
            console.print(f"using the accscale fixture ({len(scale)} running)")
        else:
            net = client.networks.create(f"{prefix}-net")
            networks.append(net)

            def make(i: int) -> str:
                c = client.containers.run(
                    "dockmesh/toolbox",
                    ["sleep", "86400"],
                    name=f"{prefix}-c{i}",
                    network=net.name,
                    detach=True,
                )
                return str(c.name)

            with ThreadPoolExecutor(4) as pool:
                names = list(pool.map(make, range(args.containers)))
            made.extend(names)

        backend = DockerBackend(EngineRef("local", default_url(os.environ.get("DOCKER_HOST"))))
        topo = build_topology([backend.snapshot()], 1)
        chosen = targets(topo, names)
        elapsed = [sample(chosen).elapsed_s for _ in range(args.runs)]
        last = sample(chosen)
        read = sum(1 for c in last.containers if c.interfaces)

        seeds = [client.containers.get(n) for n in names[:5]]
        t0 = time.perf_counter()
        for c in seeds:
            c.stats(stream=False)
        per_stats = (time.perf_counter() - t0) / len(seeds)

        api_port = free_port()
        agent = subprocess.Popen(
            [
                DM,
                "agent",
                "--api",
                f"127.0.0.1:{api_port}",
                "--dns",
                "off",
                "--state",
                "",
                "--no-gateway-dns",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        env = {**os.environ, "DOCKMESH_AGENT": f"http://127.0.0.1:{api_port}"}
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError, ValueError):
                url = f"http://127.0.0.1:{api_port}/v1/dockmesh/topology"
                with urllib.request.urlopen(url, timeout=5) as r:
                    if len(json.loads(r.read())["containers"]) >= len(names):
                        break
            time.sleep(0.3)
        whole: list[float] = []
        for _ in range(args.runs):
            t0 = time.perf_counter()
            doc = run_json([DM, "stats", "--json"], env)
            whole.append(time.perf_counter() - t0)
        assert len(doc["containers"]) >= len(names)

        # Bandwidth: two toolbox containers of our own on one network.
        bnet = client.networks.create(f"{prefix}-bw")
        networks.append(bnet)
        for n in ("a", "b"):
            client.containers.run(
                "dockmesh/toolbox",
                ["sh", "-c", SERVE],
                name=f"{prefix}-{n}",
                network=bnet.name,
                detach=True,
            )
            made.append(f"{prefix}-{n}")
        ours: list[float] = []
        theirs: list[float] = []
        for _ in range(args.bandwidth_rounds):
            for tool, into in (("dockmesh", ours), ("iperf3", theirs)):
                d = run_json(
                    [
                        DM,
                        "bench",
                        "bandwidth",
                        f"{prefix}-a",
                        f"{prefix}-b",
                        "--seconds",
                        str(args.seconds),
                        "--tool",
                        tool,
                        "--json",
                    ]
                )
                into.append(float(d["bits_per_second"]))

        med = statistics.median(elapsed)
        table = Table(title=f"observability, {read} containers read", title_justify="left")
        table.add_column("measure")
        table.add_column("median", justify="right")
        table.add_column("goal / peer", justify="right")
        table.add_row(
            f"stats sample (elapsed_s, {args.runs} runs)", f"{med * 1000:.1f} ms", "< 50 ms"
        )
        table.add_row(
            "chapter: container.stats(stream=False), per container",
            f"{per_stats:.2f} s",
            f"x{len(names)} = {per_stats * len(names):.0f} s; "
            f"ratio {per_stats * len(names) / med:,.0f}x",
        )
        table.add_row(
            f"dockmesh stats --json with an agent ({args.runs} runs)",
            f"{statistics.median(whole) * 1000:.0f} ms",
            "< 500 ms",
        )
        mo, mt = statistics.median(ours), statistics.median(theirs)
        table.add_row("bench bandwidth (dockmesh stream)", f"{mo / 1e9:.2f} Gbit/s", "")
        table.add_row(
            "iperf3, same namespaces", f"{mt / 1e9:.2f} Gbit/s", f"ratio {mo / mt:.2f} (0.5-2)"
        )
        console.print(table)
        ok = med < 0.05 and statistics.median(whole) < 0.5 and 0.5 <= mo / mt <= 2.0
        console.print("OK" if ok else "FAIL", style="green" if ok else "red")
        return 0 if ok else 1
    finally:
        if agent is not None:
            agent.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                agent.wait(timeout=20)
        for name in made:
            with contextlib.suppress(docker.errors.APIError):
                client.containers.get(name).remove(force=True)
        for net in networks:
            with contextlib.suppress(docker.errors.APIError):
                net.remove()


if __name__ == "__main__":
    sys.exit(main())
