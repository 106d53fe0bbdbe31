"""`dockmesh report` on a network whose policy denies most pairs.

--containers toolbox containers (idle) on a network of their own, under a policy of the
benchmark's own (its own nftables table and state folder) that denies everything on that
network but one pair: the report's ring then holds one allowed pair and the rest denied (at
most 50 a network). Measured, median of --runs:
  - `dockmesh report --duration 0 --json`: the whole command (process start, the topology
    of every container on the engine, the counters, the conntrack table, every network's
    ring) and its `connectivity_s` (the probes of every network, at once);
  - the previous way, for comparison: a ping round per source, one after another, each
    waiting its 1 s timeout when nothing answers (`diagnose.latency.ping_many` per source,
    what `report` did), over the same ring of this network only.

Goal: `connectivity_s` under 5 s, whatever the number of denied pairs: one 1 s timeout, and
a second pass (2.5 s) when any probe on the engine disagrees with the analysis (another
network's containers coming and going, another policy table the analysis does not read),
and the sending on a busy machine. Exits 1 when it is missed.

Run: .venv/bin/python -m benchmarks.report [--containers 52 --runs 3]
Everything it creates is named dmb<hex>… (containers, network, nft table, a temporary state
folder) and removed at the end, on failure too.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import docker
from rich.console import Console
from rich.table import Table

from dockmesh.diagnose.latency import ping_many
from dockmesh.host.netns import NetnsPool

console = Console(width=120)
DM = str(Path(sys.executable).parent / "dockmesh")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--containers", type=int, default=52)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()

    client = docker.from_env()
    prefix = f"dmb{secrets.token_hex(3)}"
    table_name = f"{prefix}pol"
    state = tempfile.mkdtemp(prefix=f"{prefix}-")
    env = {
        **os.environ,
        "DOCKMESH_AGENT": "http://127.0.0.1:9",
        "DOCKMESH_POLICY_TABLE": table_name,
        "DOCKMESH_POLICY_DIR": str(Path(state) / "policy"),
    }
    made: list[str] = []
    network: Any = None
    applied = False
    try:
        network = client.networks.create(f"{prefix}-net")
        names = [f"{prefix}-c{i:02d}" for i in range(args.containers)]

        def make(name: str) -> str:
            client.containers.run(
                "dockmesh/toolbox", ["sleep", "86400"], name=name, network=network.name, detach=True
            )
            return name

        with ThreadPoolExecutor(4) as workers:
            made.extend(workers.map(make, names))
        policy = Path(state) / "policy.yaml"
        policy.write_text(
            f"policy:\n  networks: {{{network.name}: {{default: deny}}}}\n  rules:\n"
            f"    - {{from: {{container: {names[0]}}}, to: {{container: {names[1]}}}}}\n"
        )
        subprocess.run(
            [DM, "policy", "apply", str(policy)], env=env, check=True, capture_output=True
        )
        applied = True

        whole: list[float] = []
        probing: list[float] = []
        doc: dict[str, Any] = {}
        for _ in range(args.runs):
            t0 = time.perf_counter()
            proc = subprocess.run(
                [DM, "report", "--duration", "0", "--json"],
                env=env,
                check=True,
                capture_output=True,
                text=True,
            )
            whole.append(time.perf_counter() - t0)
            doc = json.loads(proc.stdout)
            probing.append(float(doc["summary"]["connectivity_s"]))
        mine = [c for c in doc["connectivity"] if c["network"] == network.name]
        denied = [c for c in mine if c["status"] == "denied"]
        wrong = [c for c in mine if c["status"] in ("unreachable", "unexpected")]
        assert not wrong, wrong
        assert len(denied) == len(mine) - 1, [c["status"] for c in mine]

        # The previous way over this network's ring: one source after another.
        pids = {
            c.name: int(c.attrs["State"]["Pid"]) for c in (client.containers.get(n) for n in names)
        }
        serial: list[float] = []
        with NetnsPool(threads=2) as pool:
            for _ in range(args.runs):
                t0 = time.perf_counter()
                for c in mine:
                    ping_many(pool, pids[c["src"]], [c["address"]], timeout_s=1.0)
                serial.append(time.perf_counter() - t0)

        retried = [
            c for c in doc["connectivity"] if c["detail"].endswith(("second try)", "twice)"))
        ]
        med = statistics.median(probing)
        out = Table(
            title=f"report: {len(mine)} pairs on one network, {len(denied)} denied by its policy "
            f"({doc['summary']['pairs_probed']} pairs probed on the engine's "
            f"{doc['summary']['networks']} networks)",
            title_justify="left",
        )
        out.add_column("measure")
        out.add_column("median", justify="right")
        out.add_column("goal / note", justify="right")
        out.add_row(
            f"report --json: connectivity_s ({args.runs} runs)",
            f"{med:.2f} s",
            f"< 5 s, all networks; last run: {len(retried)} probed twice "
            f"(on {len({c['network'] for c in retried})} networks)",
        )
        out.add_row(
            "report --json: whole command", f"{statistics.median(whole):.2f} s", "--duration 0"
        )
        out.add_row(
            "previous way: a ping round per source, in turn",
            f"{statistics.median(serial):.2f} s",
            f"this network only; ratio {statistics.median(serial) / med:.0f}x",
        )
        console.print(out)
        for c in retried:
            console.print(f"probed twice: {c['src']} → {c['dst']} on {c['network']}: {c['detail']}")
        example = denied[0]
        console.print(
            f"{example['src']} → {example['dst']}: {example['status']}: {example['reason']}"
        )
        ok = med < 5.0
        console.print(
            "OK" if ok else "FAIL: connectivity_s over 5 s", style="green" if ok else "red"
        )
        return 0 if ok else 1
    finally:
        if applied:
            subprocess.run([DM, "policy", "remove"], env=env, check=False, capture_output=True)
        for family in ("inet", "bridge"):
            subprocess.run(
                ["nft", "delete", "table", family, table_name], check=False, capture_output=True
            )
        for name in made:
            with contextlib.suppress(docker.errors.APIError):
                client.containers.get(name).remove(force=True)
        if network is not None:
            with contextlib.suppress(docker.errors.APIError):
                network.remove()
        shutil.rmtree(state, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
