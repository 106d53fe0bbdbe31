"""Discovery under churn: containers started steadily from several creators, and how soon each
is in the catalog as passing.

In one run, against the real engine:
  - creator threads (6 by default) each run `docker run -d` (the CLI, as a user does) in turn,
    at a total of about 2 starts a second, for `--seconds` (60 by default); each container is
    labelled as an instance of the benchmark's own service, on the benchmark's own network,
    and sleeps 30 s (so containers also die and are removed while others start);
  - the measure: from `docker run` returning to the instance in
    `/v1/health/service/<service>?passing` on an agent this benchmark starts itself (its own
    API and DNS ports, its state in memory), seen by a blocking query kept parked on it;
  - the peer, in the same run: a plain `docker events` + inspect loop (docker-py, one thread:
    on each `start` event of the service's containers, inspect the container); from `docker
    run` returning to that inspect's result.

Either may be there before `docker run` returns (the engine announces the start before it
answers): that counts as 0 ms. Goal: the agent's p50 ≤ 20 ms, p95 ≤ 100 ms, and its p95 no
worse than the plain loop's.

`$DOCKMESH_AGENT` plays no part: the benchmark talks to its own agent by address.

Run: .venv/bin/python -m benchmarks.churn [--seconds 60 --creators 6 --rate 2 --json]
Everything it creates is named dmc<hex>… (containers, the network) and removed at the end,
on failure too.

`--memory` needs no engine: the same creators and watchers around a real agent in this
process, over an in-memory engine that locks a container through its start as Docker does
(the `connect` announced first, then 0.3-1.5 s of set-up; inspects wait for the lock). It
shows the watcher's part alone; the figures to quote are the real engine's.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import docker.errors
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from dockmesh.engine.backend import EngineRef, default_url
from dockmesh.engine.docker import DockerBackend
from dockmesh.engine.memory import MemoryEngine
from dockmesh.model.ipam import pick_free_subnets
from dockmesh.model.labels import LABEL_DISCOVERY_PORT, LABEL_DISCOVERY_SERVICE
from dockmesh.model.topology import Container, Network, build_topology
from dockmesh.ops.context import taken_subnets

console = Console(stderr=True)
DM = str(Path(sys.executable).parent / "dockmesh")
IMAGE = "dockmesh/toolbox"
LIFETIME_S = 30  # each container sleeps this long, then exits and is removed (--rm)
MISSED_S = 15.0  # an instance not seen this long after its `docker run` returned: missed


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process so far (Linux)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Seen:
    """First time (perf_counter) each container name was seen, and when its run returned."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.returned: dict[str, float] = {}
        self.passing: dict[str, float] = {}
        self.inspected: dict[str, float] = {}

    def mark(self, into: dict[str, float], name: str, at: float) -> None:
        with self.lock:
            into.setdefault(name, at)

    def latencies_ms(self, into: dict[str, float]) -> tuple[list[float], int]:
        """Latencies of the containers seen, and how many were never seen."""
        with self.lock:
            out: list[float] = []
            missed = 0
            for name, t0 in self.returned.items():
                t = into.get(name)
                if t is None:
                    missed += 1
                else:
                    out.append(max(0.0, (t - t0) * 1000))
            return out, missed


def watch_passing(base: str, service: str, seen: Seen, stop: threading.Event) -> None:
    """A blocking query parked on the service's passing instances; marks each new one."""
    index = "0"
    while not stop.is_set():
        url = f"{base}/v1/health/service/{service}?passing&index={index}&wait=2s"
        try:
            with urllib.request.urlopen(url, timeout=10) as r:
                body = json.loads(r.read() or b"[]")
                index = r.headers.get("X-Consul-Index") or index
        except (OSError, ValueError):
            time.sleep(0.05)
            continue
        now = time.perf_counter()
        for entry in body:
            meta = (entry.get("Service") or {}).get("Meta") or {}
            name = meta.get("container") or (entry.get("Service") or {}).get("ID")
            if name:
                seen.mark(seen.passing, str(name), now)


def watch_events(service: str, seen: Seen, ready: threading.Event, stop: threading.Event) -> Any:
    """The peer: `docker events` + inspect, in one thread. Returns the event stream (closed to
    stop it), open."""
    api = docker.APIClient(version="auto", timeout=30)
    stream = api.events(
        decode=True,
        filters={
            "type": ["container"],
            "event": ["start"],
            "label": [f"{LABEL_DISCOVERY_SERVICE}={service}"],
        },
    )

    def loop() -> None:
        ready.set()
        with contextlib.suppress(Exception):  # closing the stream ends the iteration
            for event in stream:
                if stop.is_set():
                    break
                cid = (event.get("Actor") or {}).get("ID") or event.get("id")
                try:
                    raw = api.inspect_container(cid)
                except docker.errors.NotFound:
                    continue
                if (raw.get("State") or {}).get("Running"):
                    seen.mark(seen.inspected, str(raw["Name"]).lstrip("/"), time.perf_counter())

    threading.Thread(target=loop, name="peer-events", daemon=True).start()
    return stream


def creator(
    k: int,
    args: argparse.Namespace,
    run_one: Callable[[str], str | None],
    prefix: str,
    t0: float,
    seen: Seen,
    stop: threading.Event,
    errors: list[str],
    progress: Callable[[], object],
) -> None:
    """Creator k: a container every `creators / rate` seconds, the creators spread evenly;
    `run_one(name)` starts one and returns None, or an error."""
    period = args.creators / args.rate  # each creator's own interval
    i = 0
    while not stop.is_set():
        due = t0 + k * (1 / args.rate) + i * period
        if due - t0 >= args.seconds:
            return
        wait = due - time.perf_counter()
        if wait > 0 and stop.wait(wait):
            return
        name = f"{prefix}-{k}-{i:03d}"
        error = run_one(name)
        done = time.perf_counter()
        if error is not None:
            errors.append(f"{name}: {error}")
        else:
            with seen.lock:
                seen.returned[name] = done
        progress()
        i += 1


def docker_run(network: str, service: str) -> Callable[[str], str | None]:
    docker_cli = shutil.which("docker") or "docker"

    def run_one(name: str) -> str | None:
        cmd = [
            docker_cli,
            "run",
            "-d",
            "--rm",
            "--name",
            name,
            "--network",
            network,
            "--label",
            f"{LABEL_DISCOVERY_SERVICE}={service}",
            "--label",
            f"{LABEL_DISCOVERY_PORT}=80",
            IMAGE,
            "sleep",
            str(LIFETIME_S),
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        return None if proc.returncode == 0 else " ".join(proc.stderr.split())

    return run_one


def start_agent(logfile: Any) -> tuple[subprocess.Popen[bytes], str]:
    api_port, dns_port = free_port(), free_port()
    agent = subprocess.Popen(
        [
            DM,
            "agent",
            "--api",
            f"127.0.0.1:{api_port}",
            "--dns",
            f"127.0.0.1:{dns_port}",
            "--state",
            "",
            "--no-gateway-dns",
        ],
        stdout=subprocess.DEVNULL,
        stderr=logfile,
    )
    base = f"http://127.0.0.1:{api_port}"
    deadline = time.monotonic() + 60
    while True:
        with (
            contextlib.suppress(OSError, ValueError),
            urllib.request.urlopen(f"{base}/v1/dockmesh/topology", timeout=5) as r,
        ):
            if json.loads(r.read()).get("engines"):
                return agent, base
        if time.monotonic() > deadline or agent.poll() is not None:
            raise RuntimeError("the benchmark's agent did not serve the topology in 60 s")
        time.sleep(0.2)


@dataclass
class Run:
    seen: Seen = field(default_factory=Seen)
    errors: list[str] = field(default_factory=list)
    elapsed: float = 0.0
    agent_cpu_s: float | None = None


def churn(
    args: argparse.Namespace, run_one: Callable[[str], str | None], prefix: str, run: Run
) -> None:
    """The creators, to the end, then up to MISSED_S for both watchers to see every one."""
    seen = run.seen
    stop = threading.Event()
    total = int(args.seconds * args.rate)
    t_start = time.perf_counter()
    creators: list[threading.Thread] = []
    try:
        with Progress(console=console, transient=True) as progress:
            task = progress.add_task(
                f"starting containers: {args.creators} creators, {args.rate:g}/s", total=total
            )
            lock = threading.Lock()

            def advance() -> None:
                with lock:
                    progress.advance(task)

            t0 = time.perf_counter() + 0.2
            creators = [
                threading.Thread(
                    target=creator,
                    args=(k, args, run_one, prefix, t0, seen, stop, run.errors, advance),
                    name=f"creator-{k}",
                )
                for k in range(args.creators)
            ]
            for c in creators:
                c.start()
            for c in creators:
                c.join()
    finally:
        stop.set()
        for c in creators:  # a start under way finishes before anyone cleans up
            c.join(timeout=60)
    run.elapsed = time.perf_counter() - t_start
    deadline = time.perf_counter() + MISSED_S
    while time.perf_counter() < deadline:
        with seen.lock:
            names = set(seen.returned)
            if names <= set(seen.passing) and names <= set(seen.inspected):
                break
        time.sleep(0.1)


def engine_run(args: argparse.Namespace) -> Run:
    """Against the real engine, with an agent process of the benchmark's own."""
    api = docker.APIClient(version="auto", timeout=120)
    prefix = f"dmc{secrets.token_hex(3)}"
    network = f"{prefix}-net"
    service = f"{prefix}-svc"
    agent: subprocess.Popen[bytes] | None = None
    stop = threading.Event()
    peer_stream: Any = None
    network_made = False
    fd, log_path = tempfile.mkstemp(prefix=f"{prefix}-agent-", suffix=".log")
    log = os.fdopen(fd, "wb")
    run = Run()
    try:
        engine_url = default_url(os.environ.get("DOCKER_HOST"))
        backend = DockerBackend(EngineRef("local", engine_url))
        [subnet] = pick_free_subnets(
            taken_subnets(build_topology([backend.snapshot()], 1)), 1, random.Random()
        )
        backend.close()
        api.create_network(network, ipam={"Config": [{"Subnet": str(subnet)}]})
        network_made = True

        agent, base = start_agent(log)
        cpu0 = cpu_seconds(agent.pid)
        threading.Thread(
            target=watch_passing, args=(base, service, run.seen, stop), name="passing", daemon=True
        ).start()
        ready = threading.Event()
        peer_stream = watch_events(service, run.seen, ready, stop)
        ready.wait(10)
        churn(args, docker_run(network, service), prefix, run)
        cpu1 = cpu_seconds(agent.pid)
        if cpu0 is not None and cpu1 is not None:
            run.agent_cpu_s = cpu1 - cpu0
        return run
    finally:
        stop.set()
        if peer_stream is not None:
            with contextlib.suppress(Exception):
                peer_stream.close()
        if agent is not None:
            agent.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                agent.wait(timeout=20)
            if agent.poll() is None:
                agent.kill()
                agent.wait()
        log.close()
        _clean(api, prefix, network if network_made else None)
        if agent is not None and agent.returncode not in (0, -15):
            console.print(f"the agent exited {agent.returncode}; its log: {log_path}")
        else:
            with contextlib.suppress(OSError):
                os.unlink(log_path)


def memory_run(args: argparse.Namespace) -> Run:
    """No engine: `DockerLike`, in memory, behind a real agent in this process (its watcher,
    catalog and HTTP API); the peer follows the same in-memory engine's events."""
    from dockmesh.agent import Agent, AgentConfig, AgentDeps
    from dockmesh.catalog.store import MemoryStore
    from dockmesh.engine.watch import TopologyWatcher
    from dockmesh.model.config import ContainerConfig, EndpointConfig
    from dockmesh.model.labels import Discovery, encode_discovery
    from dockmesh.policy.enforce import Enforcer
    from dockmesh.policy.store import PolicyStore
    from dockmesh.testing.nft import MemoryNft

    engine = DockerLike()
    engine.create_network("mesh", subnet="10.66.0.0/16")
    labels = encode_discovery(Discovery("svc", 80))
    run = Run()
    stop = threading.Event()
    peer_stream = engine.events()

    def run_one(name: str) -> str | None:
        config = ContainerConfig(
            name, IMAGE, networks=(EndpointConfig("mesh"),), labels=dict(labels)
        )
        engine.start(engine.create_container(config))
        return None

    def peer() -> None:
        for event in peer_stream:
            if event.get("Type") == "container" and event.get("Action") == "start":
                c = engine.container(str(event["Actor"]["ID"]))
                if c is not None and c.running:
                    run.seen.mark(run.seen.inspected, c.name, time.perf_counter())

    async def serve() -> None:
        with tempfile.TemporaryDirectory() as policy_dir:
            enforcer = Enforcer(PolicyStore("dmc", Path(policy_dir)), nft=MemoryNft())
            deps = AgentDeps(
                store=MemoryStore(), topology=TopologyWatcher([engine]), enforcer=enforcer
            )
            config = AgentConfig(
                engines=[engine.ref],
                api=("127.0.0.1", 0),
                dns=None,
                state=None,
                dns_on_gateways=False,
            )
            agent = Agent(config, deps)
            await agent.start()
            try:
                while agent.topology.current() is None:
                    await asyncio.sleep(0.02)
                assert agent.api_address is not None
                host, port = agent.api_address
                base = f"http://{host}:{port}"
                threading.Thread(
                    target=watch_passing, args=(base, "svc", run.seen, stop), daemon=True
                ).start()
                threading.Thread(target=peer, daemon=True).start()
                await asyncio.to_thread(churn, args, run_one, "c", run)
            finally:
                stop.set()
                peer_stream.close()
                await agent.shutdown()

    asyncio.run(serve())
    return run


class DockerLike(MemoryEngine):
    """An in-memory engine that holds a container's lock through its start as Docker does
    (announcing the network `connect` early, then setting up for 0.3-1.5 s: `docker run`'s
    time on a loaded host), inspects waiting for that lock and taking 5 ms each."""

    def __init__(self) -> None:
        super().__init__("local")
        self._held: dict[str, threading.Lock] = {}
        self._rng = random.Random(15)
        self._rng_lock = threading.Lock()

    def _lock_of(self, cid: str) -> threading.Lock:
        with self._rng_lock:
            return self._held.setdefault(cid, threading.Lock())

    def container(self, container_id: str) -> Container | None:
        with self._lock_of(container_id):
            time.sleep(0.005)
            return super().container(container_id)

    def network(self, network_id: str) -> Network | None:
        time.sleep(0.005)
        return super().network(network_id)

    def start(self, container: str) -> None:
        with self._lock_of(container):
            with self._rng_lock:
                setup = self._rng.uniform(0.3, 1.5)
            view = super().container(container)
            for a in view.attachments if view is not None else ():
                self._emit("network", "connect", a.network_id, container=container)
            time.sleep(setup)
            super().start(container)


def row(values: list[float]) -> list[str]:
    if not values:
        return ["-"] * 3
    return [f"{pct(values, 50):.1f} ms", f"{pct(values, 95):.1f} ms", f"{max(values):.1f} ms"]


def report(args: argparse.Namespace, run: Run) -> int:
    seen = run.seen
    ours, ours_missed = seen.latencies_ms(seen.passing)
    peer_ms, peer_missed = seen.latencies_ms(seen.inspected)
    started = len(seen.returned)
    result: dict[str, Any] = {
        "engine": "memory" if args.memory else "docker",
        "seconds": round(run.elapsed, 1),
        "creators": args.creators,
        "rate": args.rate,
        "started": started,
        "run_errors": len(run.errors),
        "agent": _stats(ours, ours_missed),
        "events_inspect": _stats(peer_ms, peer_missed),
        "agent_cpu_s": None if run.agent_cpu_s is None else round(run.agent_cpu_s, 2),
    }
    ratio: dict[str, float | None] = {}
    for p in ("p50", "p95"):
        a, b = result["agent"][p], result["events_inspect"][p]
        ratio[p] = None if a is None or not b else round(a / b, 2)
    result["ratio"] = ratio
    ok = (
        bool(ours)
        and ours_missed == 0
        and pct(ours, 50) <= 20
        and pct(ours, 95) <= 100
        and (not peer_ms or pct(ours, 95) <= pct(peer_ms, 95))
    )
    result["goal_met"] = ok

    where = "an in-memory Docker-like engine" if args.memory else "the engine"
    table = Table(
        title=f"start returned → seen: {started} containers in {run.elapsed:.0f} s on {where} "
        f"({args.creators} creators, {args.rate:g} starts/s)"
    )
    for col in ("path", "p50", "p95", "max", "missed"):
        table.add_column(col, justify="left" if col == "path" else "right")
    table.add_row("agent: instance in /v1/health/service/<s>?passing", *row(ours), str(ours_missed))
    table.add_row("plain events + inspect loop", *row(peer_ms), str(peer_missed))
    console.print(table)
    cpu = "" if result["agent_cpu_s"] is None else f"; agent CPU {result['agent_cpu_s']} s"

    def shown(p: str) -> str:
        a, b = result["agent"][p], result["events_inspect"][p]
        if a is None or b is None:
            return "n/a"
        # A loop in this process often sees a start before `docker run` returns (0 ms): the
        # ratio is then undefined, the difference is not.
        times = "" if ratio[p] is None else f"{ratio[p]}x, "
        return f"{times}+{a - b:.1f} ms"

    console.print(
        f"agent / plain loop: p50 {shown('p50')}, p95 {shown('p95')}{cpu}; "
        f"failed starts {len(run.errors)}"
    )
    for e in run.errors[:5]:
        console.print(f"  {e}")
    console.print(
        "goal (p50 ≤ 20 ms, p95 ≤ 100 ms and ≤ the plain loop's): " + ("met" if ok else "NOT met")
    )
    if args.json:
        print(json.dumps(result))
    return 0 if ok else 1


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=60.0, help="how long containers start")
    ap.add_argument("--creators", type=int, default=6, help="threads starting containers")
    ap.add_argument("--rate", type=float, default=2.0, help="container starts a second, in all")
    ap.add_argument("--json", action="store_true", help="the results as JSON on stdout")
    ap.add_argument(
        "--memory",
        action="store_true",
        help="no engine: a Docker-like in-memory one, the agent in this process",
    )
    args = ap.parse_args()
    if args.seconds <= 0 or args.creators < 1 or args.rate <= 0:
        print(
            "churn: --seconds and --rate must be positive, --creators at least 1", file=sys.stderr
        )
        return 2
    if not args.memory and shutil.which("docker") is None:
        print("churn: the docker CLI is not installed", file=sys.stderr)
        return 2
    run = memory_run(args) if args.memory else engine_run(args)
    return report(args, run)


def _stats(values: list[float], missed: int) -> dict[str, Any]:
    if not values:
        return {"n": 0, "missed": missed, "p50": None, "p95": None, "max": None}
    return {
        "n": len(values),
        "missed": missed,
        "p50": round(pct(values, 50), 1),
        "p95": round(pct(values, 95), 1),
        "max": round(max(values), 1),
    }


def _clean(api: Any, prefix: str, network: str | None) -> None:
    """Removes every container named after the prefix (running or not), then the network."""
    with Progress(console=console, transient=True) as progress:
        ours = [
            c["Id"]
            for c in api.containers(all=True, filters={"name": prefix})
            if any(n.lstrip("/").startswith(prefix) for n in c.get("Names") or ())
        ]
        task = progress.add_task("cleaning up", total=len(ours) + 1)
        for cid in ours:
            with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
                api.remove_container(cid, force=True)
            progress.advance(task)
        if network is not None:
            # `--rm` removals the engine was still making may hold an endpoint a moment.
            for attempt in range(20):
                try:
                    api.remove_network(network)
                    break
                except docker.errors.NotFound:
                    break
                except docker.errors.APIError:
                    if attempt == 19:
                        raise
                    time.sleep(0.5)
        progress.advance(task)


if __name__ == "__main__":
    sys.exit(main())
