"""Resync after the engine comes back, at scale: 500 running containers (goal: under 1 s).

Measures, against the real engine:
  - `DockerBackend.snapshot()`: a fresh backend's (every container inspected), a second one
    (only what the containers' list shows changed is inspected), beside every inspect made
    through docker-py (what a snapshot did before);
  - a watcher's whole resync after its engine came back: the watcher follows the engine
    through a relay (`dockmesh.testing.relay`) that is cut — the stream ends, the watcher
    backs off — then restored; timed from the restore (its back-off wait released at that
    moment) to the watcher's link saying connected again (stream reopened, snapshot read,
    the new topology frozen and delivered).

The snapshot reads every container on the engine, the ones this benchmark made and any
others; the count is printed.

Run: .venv/bin/python -m benchmarks.resync [--containers 500 --runs 5]
Everything it creates is named dmb<hex>… and removed at the end, on failure too.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import docker

from dockmesh.engine.backend import EngineRef, default_url
from dockmesh.engine.docker import DockerBackend
from dockmesh.engine.watch import TopologyWatcher
from dockmesh.testing.relay import CuttableRelay

IMAGE = "dockmesh/toolbox:latest"


def summary(xs: list[float]) -> str:
    return (
        f"median {statistics.median(xs) * 1000:.0f} ms, min {min(xs) * 1000:.0f}, "
        f"max {max(xs) * 1000:.0f} (n={len(xs)})"
    )


def make_containers(api: Any, prefix: str, n: int) -> list[str]:
    def make(i: int) -> str:
        cid = api.create_container(
            IMAGE,
            name=f"{prefix}-{i}",
            command=["sleep", "3600"],
            labels={"dockmesh.service": f"{prefix}svc", "dockmesh.port": "8080"},
            host_config=api.create_host_config(network_mode="bridge"),
        )["Id"]
        api.start(cid)
        return str(cid)

    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(make, range(n)))


def remove_prefixed(api: Any, prefix: str) -> None:
    ids = [
        c["Id"]
        for c in api.containers(all=True)
        if any(name.lstrip("/").startswith(prefix) for name in c.get("Names") or [])
    ]

    def rm(cid: str) -> None:
        with contextlib.suppress(docker.errors.NotFound):
            api.remove_container(cid, force=True)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(rm, ids))


def snapshots(url: str, runs: int) -> tuple[int, list[float], list[float], list[float]]:
    """(containers, a fresh backend's snapshot: every container inspected, a second
    snapshot of one backend: only what the list shows changed, docker-py's inspects)."""
    full, again, old = [], [], []
    count = 0
    for _ in range(runs):
        backend = DockerBackend(EngineRef("local", url))
        backend.info()  # connected, the version asked: not what is measured
        t = time.perf_counter()
        count = len(backend.snapshot().containers)
        full.append(time.perf_counter() - t)
        t = time.perf_counter()
        backend.snapshot()
        again.append(time.perf_counter() - t)
        t = time.perf_counter()
        ids = [c["Id"] for c in backend._api.containers(all=True)]
        api = backend._api  # docker-py's own inspect, the way every read went before
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(api.inspect_container, ids))
        old.append(time.perf_counter() - t)
        backend.close()
    return count, full, again, old


def resyncs(engine_socket: str, runs: int) -> list[float]:
    out: list[float] = []
    with tempfile.TemporaryDirectory(prefix="dmb") as tmp:
        relay = CuttableRelay(Path(tmp) / "docker.sock", engine_socket)
        relay.restore()
        gate = threading.Event()

        def wait_for_gate(_: float) -> None:
            gate.wait(60)

        watcher = TopologyWatcher([EngineRef("local", f"unix://{relay.path}")], sleep=wait_for_gate)
        watcher.start()
        try:
            for _ in range(runs):
                gate.clear()
                relay.cut()
                deadline = time.monotonic() + 30
                while watcher.links()[0].connected:
                    assert time.monotonic() < deadline, "the cut was not noticed"
                    time.sleep(0.005)
                time.sleep(0.2)  # the reader waits on the gate now
                relay.restore()
                t0 = time.perf_counter()
                gate.set()
                while not watcher.links()[0].connected:
                    assert time.monotonic() < deadline + 30, "no resync"
                    time.sleep(0.001)
                out.append(time.perf_counter() - t0)
        finally:
            gate.set()
            watcher.stop()
            relay.cut()
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--containers", type=int, default=500)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    url = default_url(os.environ.get("DOCKER_HOST"))
    if not url.startswith("unix://"):
        print("the relay stands in for a unix socket engine", file=sys.stderr)
        return 2
    api = docker.APIClient(base_url=url, version="auto")
    prefix = f"dmb{secrets.token_hex(3)}"
    try:
        t = time.monotonic()
        make_containers(api, prefix, args.containers)
        print(f"{args.containers} containers {prefix}-* started in {time.monotonic() - t:.0f} s")
        count, full, again, old = snapshots(url, args.runs)
        print(f"snapshot of {count} containers, each inspected: {summary(full)}")
        print(f"  again, the list showing no change: {summary(again)}")
        print(f"  every inspect through docker-py (as before): {summary(old)}")
        print(f"resync after the engine came back: {summary(resyncs(url[7:], args.runs))}")
    finally:
        remove_prefixed(api, prefix)
    return 0


if __name__ == "__main__":
    sys.exit(main())
