"""Topology at scale: 200 containers on 20 networks.

Measures, in one run, against the real engine:
  - `dockmesh topology --json` (the whole command, process start included) beside the peer,
    `docker network inspect` of every network (one CLI call naming all 20, and the seed's
    one call per network);
  - the same command through an agent this benchmark starts itself (its topology, the fast
    path);
  - how long an engine event takes to reach the live model (TopologyWatcher): from the
    event's own timestamp to the moment the model holds the change, and from the API call
    that caused it;
  - how soon a blocking query (`?index=N&wait=60s`, health and KV) returns after the change
    it waits for, on that agent (goal: p99 under 100 ms; no peer runs here: Consul is not a
    Debian package).

`$DOCKMESH_AGENT` is pinned for every command it runs: to an address where nothing listens
for the engine's path, to its own agent for the agent's path, so an agent already running on
the machine (the demo's) can never be what is measured.

Run: .venv/bin/python -m benchmarks.topology [--containers 200 --networks 20 --events 200
    --wakes 50]
Everything it creates is named dmb<hex>… and removed at the end, on failure too.

`--model-only` measures the model alone, in memory, with no engine: freezing a version
(build_topology, run on every watcher change), its first lookup (which builds the indexes),
`to_json`, and lookups on an indexed version.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import random
import secrets
import shutil
import statistics
import subprocess
import sys
import threading
import time
import timeit
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

import docker
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from dockmesh.engine.backend import EngineRef, default_url
from dockmesh.engine.docker import DockerBackend
from dockmesh.engine.watch import TopologyWatcher
from dockmesh.model.ipam import pick_free_subnets
from dockmesh.model.topology import (
    Attachment,
    Container,
    EngineInfo,
    EngineState,
    IpamPool,
    Network,
    build_topology,
)
from dockmesh.ops.context import taken_subnets

console = Console()
DM = str(Path(sys.executable).parent / "dockmesh")
NO_AGENT = "http://127.0.0.1:9"  # nothing listens on the discard port: the engine is read


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))]


def timed(cmd: list[str], runs: int, env: dict[str, str] | None = None) -> list[float]:
    out = []
    for _ in range(runs):
        t = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True, env=env)
        out.append(time.perf_counter() - t)
    return out


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def call(base: str, method: str, path: str, body: bytes | None = None) -> tuple[str, Any]:
    req = urllib.request.Request(base + path, data=body, method=method)
    with urllib.request.urlopen(req, timeout=90) as r:
        return r.headers.get("X-Consul-Index", ""), json.loads(r.read() or b"null")


def wake_after(base: str, query: str, change: Callable[[], object]) -> float:
    """Milliseconds from `change()` to the return of the blocking query on `query` parked
    before it."""
    index, _ = call(base, "GET", query)
    woke: list[float] = []

    def wait() -> None:
        call(base, "GET", f"{query}?index={index}&wait=60s")
        woke.append(time.perf_counter())

    waiter = threading.Thread(target=wait)
    waiter.start()
    time.sleep(0.2)  # the query is parked
    if woke:
        raise RuntimeError(f"{query}: the blocking query returned before any change")
    t0 = time.perf_counter()
    change()
    waiter.join(90)
    if not woke:
        raise RuntimeError(f"{query}: the blocking query did not return")
    return (woke[0] - t0) * 1000


def blocking_wakes(base: str, rounds: int) -> dict[str, list[float]]:
    """Milliseconds from a change to the return of the blocking query waiting for it: a TTL
    check flipped (health) and a key written (KV), `rounds` times each."""
    svc = f"dmbwake{secrets.token_hex(3)}"
    reg = {"Name": svc, "ID": svc, "Port": 80, "Check": {"CheckID": svc, "TTL": "600s"}}
    call(base, "PUT", "/v1/agent/service/register", json.dumps(reg).encode())
    call(base, "PUT", f"/v1/kv/{svc}", b"0")
    out: dict[str, list[float]] = {"health": [], "kv": []}
    try:
        for i in range(rounds):
            flip = f"/v1/agent/check/{'pass' if i % 2 == 0 else 'fail'}/{svc}"
            out["health"].append(
                wake_after(base, f"/v1/health/service/{svc}", partial(call, base, "PUT", flip))
            )
            out["kv"].append(
                wake_after(
                    base, f"/v1/kv/{svc}", partial(call, base, "PUT", f"/v1/kv/{svc}", b"%d" % i)
                )
            )
    finally:
        call(base, "PUT", f"/v1/agent/service/deregister/{svc}")
        call(base, "DELETE", f"/v1/kv/{svc}")
    return out


def model_only(n_containers: int, n_networks: int) -> int:
    def oid(kind: str, i: int) -> str:
        return hashlib.sha256(f"{kind}{i}".encode()).hexdigest()

    state = EngineState(EngineInfo("local", "unix:///bench"))
    nets = [
        Network(oid("n", i), f"net{i:03d}", "local", "bridge", ipam=(IpamPool(f"10.{i}.0.0/16"),))
        for i in range(n_networks)
    ]
    state.networks.update((n.id, n) for n in nets)
    for i in range(n_containers):
        # As the engine run does: one network each, a fifth of them on a second one.
        homes = [i % n_networks] + ([(i + 1) % n_networks] if i % 5 == 0 else [])
        atts = tuple(
            Attachment(nets[k].id, nets[k].name, f"10.{k}.{i // 250}.{i % 250 + 2}", None, None)
            for k in homes
        )
        c = Container(
            oid("c", i),
            f"c{i:04d}",
            "local",
            "dockmesh/toolbox",
            "running",
            hostname=f"c{i:04d}",
            attachments=atts,
            labels={"dockmesh.service": f"svc{i % 10}"},
        )
        state.containers[c.id] = c
    indexed = build_topology([state], 1)
    indexed.container("warm")
    names = [f"c{i:04d}" for i in range(0, n_containers, max(1, n_containers // 200))]

    def first_lookup() -> None:
        build_topology([state], 1).container(names[0])

    def lookups() -> None:
        for name in names:
            indexed.container(name)

    table = Table(title=f"the model alone: {n_containers} containers on {n_networks} networks")
    table.add_column("measure")
    table.add_column("best of 5", justify="right")
    for label, fn in [
        ("build_topology (every watcher change)", lambda: build_topology([state], 1)),
        ("build_topology + first lookup (builds the indexes)", first_lookup),
        ("build_topology + to_json", lambda: build_topology([state], 1).to_json()),
        (f"{len(names)} container(name) on an indexed version", lookups),
    ]:
        best = min(timeit.repeat(fn, number=20, repeat=5)) / 20
        table.add_row(label, f"{best * 1000:.2f} ms")
    console.print(table)
    return 0


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--containers", type=int, default=200)
    ap.add_argument("--networks", type=int, default=20)
    ap.add_argument("--events", type=int, default=200)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--wakes", type=int, default=50, help="blocking queries of each kind")
    ap.add_argument("--model-only", action="store_true", help="no engine: the model alone")
    args = ap.parse_args()
    if args.model_only:
        return model_only(args.containers, args.networks)
    api = docker.APIClient(version="auto", timeout=120)
    engine_url = default_url(os.environ.get("DOCKER_HOST"))
    prefix = f"dmb{secrets.token_hex(3)}"
    nets: list[str] = []
    ctrs: list[str] = []
    agent: subprocess.Popen[bytes] | None = None
    try:
        with Progress(console=console, transient=True) as progress:
            task = progress.add_task("networks", total=args.networks)
            for i, subnet in enumerate(
                pick_free_subnets(
                    taken_subnets(
                        build_topology(
                            [DockerBackend(EngineRef("local", engine_url)).snapshot()], 1
                        )
                    ),
                    args.networks,
                    random.Random(),
                )
            ):
                name = f"{prefix}_n{i:02d}"
                api.create_network(name, ipam={"Config": [{"Subnet": str(subnet)}]})
                nets.append(name)
                progress.advance(task)
            task = progress.add_task("containers", total=args.containers)

            def make(i: int) -> str:
                name = f"{prefix}-c{i:03d}"
                net = nets[i % len(nets)]
                cid = api.create_container(
                    "dockmesh/toolbox",
                    name=name,
                    command=["sleep", "3600"],
                    host_config=api.create_host_config(network_mode=net),
                    networking_config=api.create_networking_config(
                        {net: api.create_endpoint_config(aliases=[f"svc{i % 10}"])}
                    ),
                )["Id"]
                if i % 5 == 0:  # a fifth of them on a second network
                    api.connect_container_to_network(cid, nets[(i + 1) % len(nets)])
                api.start(cid)
                progress.advance(task)
                return str(cid)

            with ThreadPoolExecutor(4) as pool:
                ctrs = list(pool.map(make, range(args.containers)))

        total_ctrs = len(api.containers(all=True))
        total_nets = len(api.networks())
        console.print(
            f"engine holds {total_ctrs} containers, {total_nets} networks "
            f"({args.containers} / {args.networks} made by this run)"
        )

        # The agent's path: an agent of this benchmark's own, on a free port, DNS off.
        api_port = free_port()
        agent_url = f"http://127.0.0.1:{api_port}"
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
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(OSError, ValueError, KeyError):
                if len(call(agent_url, "GET", "/v1/dockmesh/topology")[1]["containers"]) >= len(
                    ctrs
                ):
                    break
            if time.monotonic() > deadline or agent.poll() is not None:
                raise RuntimeError("the benchmark's agent did not serve the topology in 60 s")
            time.sleep(0.3)
        engine_env = {**os.environ, "DOCKMESH_AGENT": NO_AGENT}
        agent_env = {**os.environ, "DOCKMESH_AGENT": agent_url}
        topology_cmd = [sys.executable, "-m", "dockmesh", "topology", "--json"]
        ours: list[float] = []
        via_agent: list[float] = []
        for i in range(args.runs):  # alternating, each path first in turn
            pair = [(ours, engine_env), (via_agent, agent_env)]
            for into, env in pair if i % 2 == 0 else pair[::-1]:
                into += timed(topology_cmd, 1, env)
        wakes = blocking_wakes(agent_url, args.wakes)
        docker_cli = shutil.which("docker")
        peer_all = timed([docker_cli, "network", "inspect", *nets], args.runs) if docker_cli else []
        peer_each: list[float] = []
        if docker_cli:
            for _ in range(args.runs):
                t = time.perf_counter()
                for n in nets:
                    subprocess.run(
                        [docker_cli, "network", "inspect", n], check=True, capture_output=True
                    )
                peer_each.append(time.perf_counter() - t)

        # --- events → model -------------------------------------------------------------
        watcher = TopologyWatcher([EngineRef("local", engine_url)])
        t = time.perf_counter()
        watcher.start()
        snapshot_s = time.perf_counter() - t
        lags_ms: list[float] = []
        e2e_ms: list[float] = []
        lock = threading.Lock()

        def hook(event: dict[str, object], applied_ns: int) -> None:
            stamp = event.get("timeNano")
            if isinstance(stamp, int) and event.get("Type") == "network":
                with lock:
                    lags_ms.append((applied_ns - stamp) / 1e6)

        watcher.event_hook = hook
        with Progress(console=console, transient=True) as progress:
            task = progress.add_task("events", total=args.events)
            for i in range(args.events):
                # Connect a container to a network it is not on, then disconnect it; the
                # next pair works on another container and network.
                k = (i // 2) * 3 % len(ctrs)
                target, net = ctrs[k], nets[(k + 7) % len(nets)]
                connect = i % 2 == 0
                t0 = time.perf_counter()
                if connect:
                    api.connect_container_to_network(target, net)
                else:
                    api.disconnect_container_from_network(target, net)

                def reflected(topo: Any, c: bool = connect, t: str = target, n: str = net) -> bool:
                    ctr = topo.container(t)
                    return ctr is not None and any(a.network == n for a in ctr.attachments) == c

                ok = watcher.wait_for(reflected, 5)
                assert ok is not None, "the model did not follow the engine"
                e2e_ms.append((time.perf_counter() - t0) * 1000)
                progress.advance(task)
        time.sleep(0.2)
        watcher.stop()

        table = Table(title=f"{args.containers} containers on {args.networks} networks")
        table.add_column("measure")
        table.add_column("median", justify="right")
        table.add_column("max", justify="right")
        table.add_column("vs dockmesh", justify="right")
        med = statistics.median(ours)
        rows = [
            ("dockmesh topology --json (whole command, the engine's path)", ours),
            ("dockmesh topology --json through the benchmark's agent", via_agent),
            (f"docker network inspect <{len(nets)} networks>", peer_all),
            (f"docker network inspect, one call per network ({len(nets)})", peer_each),
        ]
        for label, runs in rows:
            if runs:
                m = statistics.median(runs)
                table.add_row(
                    label, f"{m * 1000:.0f} ms", f"{max(runs) * 1000:.0f} ms", f"{m / med:.2f}x"
                )
        table.add_row("watcher: first snapshot (in process)", f"{snapshot_s * 1000:.0f} ms", "", "")
        console.print(table)
        lat = Table(
            title=f"engine event → model ({len(lags_ms)} network events, "
            f"{len(e2e_ms)} connect/disconnect calls)"
        )
        for col in ("measure", "p50", "p95", "p99", "max"):
            lat.add_column(col, justify="right" if col != "measure" else "left")
        for label, vals in (
            ("event timestamp → model", lags_ms),
            ("API call start → model (includes the engine's own work)", e2e_ms),
            ("TTL check flipped → health blocking query returns", wakes["health"]),
            ("key written → KV blocking query returns", wakes["kv"]),
        ):
            if vals:
                lat.add_row(label, *(f"{pct(vals, p):.1f} ms" for p in (50, 95, 99, 100)))
        console.print(lat)
        ok_topo = med < 1.0
        ok_lag = bool(lags_ms) and pct(lags_ms, 99) < 50
        wake_p99 = max(pct(v, 99) for v in wakes.values())
        ok_wake = wake_p99 < 100
        console.print(
            f"topology --json under 1 s: {'yes' if ok_topo else 'NO'}; "
            f"event → model p99 under 50 ms: {'yes' if ok_lag else 'NO'}; "
            f"blocking query wakes p99 under 100 ms: {'yes' if ok_wake else 'NO'}"
        )
        return 0 if ok_topo and ok_lag and ok_wake else 1
    finally:
        if agent is not None:
            agent.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                agent.wait(timeout=20)
            if agent.poll() is None:
                agent.kill()
        with Progress(console=console, transient=True) as progress:
            task = progress.add_task("cleaning up", total=len(ctrs) + len(nets))

            def rm(cid: str) -> None:
                with contextlib.suppress(docker.errors.NotFound):
                    api.remove_container(cid, force=True)
                progress.advance(task)

            with ThreadPoolExecutor(4) as pool:
                list(pool.map(rm, ctrs))
            for n in nets:
                with contextlib.suppress(docker.errors.NotFound):
                    api.remove_network(n)
                progress.advance(task)


if __name__ == "__main__":
    sys.exit(main())
