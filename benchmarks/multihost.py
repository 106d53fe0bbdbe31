"""Cross-host discovery on a real lab: a container started on host2, in host1's DNS — beside
Docker Swarm's own DNS for a service task, same run, same lab.

`dockmesh lab up --hosts N` (default 2; its own name, removed at the end, on failure too):
N Docker engines in network namespaces as a swarm, etcd, an agent per host sharing the
catalog. On the swarm: an attachable overlay network, and a watcher container on host1
attached to it. Then, `--starts` times, alternating which goes first:

  - dockmesh: a container labelled `dockmesh.service=S` created and started on host2's engine
    (on the overlay, as the swarm's task is); host1's agent is asked `S.service.dockmesh A`
    (UDP, from inside host1's network namespace, every 2 ms) until it answers an address. Then
    the container is removed (`rm -f`) and every host's agent is asked until none has it.
  - Docker Swarm: a service (`--replicas 0`, `--constraint node.hostname==host2`, the same
    image and network) scaled to 1 (the engine API's service update, as `docker service
    scale` sends it); Docker's embedded DNS is asked `tasks.S A` at 127.0.0.11
    from inside the watcher container on host1 (every 2 ms) until it answers an address, the
    name Swarm gives a service's tasks on a network. Then scaled to 0 and asked until it
    answers none.

Measured, each in ms, median / p99 / max over the starts:
  - from the container's start, as its engine records it (`State.StartedAt`, the same
    machine's clock), to the first answer: the same point for both, past Swarm's scheduling;
  - from the call (dockmesh: `create` + `start` on host2's engine; Swarm: `service scale` on
    the manager) to the first answer: what a user waits for;
  - dockmesh only: from `start` returning;
  - stopped: from the container's end as its engine records it (`State.FinishedAt`), and
    from the call (`kill`, scale to 0), to the first question that got no address
    back (dockmesh: a negative answer, from every host; Swarm: Docker's DNS does not hold the
    name any more and forwards it upstream, where nothing answers in the lab, so no answer
    within 50 ms counts — the question's send time is taken, not the 50 ms).
The questions are sent every 2 ms without waiting for answers (one socket per server, an ID
per question), so a slow "no" never delays the next question.
The goals (dockmesh, from the container's start): ≤ 50 ms median, ≤ 250 ms p99; stopped:
gone from every host within 1 s of its end (the slowest of the starts). The ratios are
Swarm's median over dockmesh's. Swarm takes a task's name away when it shuts the task down,
before its container ends (a stop grace period), so only "from the call" is shown for it.

Run: .venv/bin/python -m benchmarks.multihost [--starts 100 --hosts 2 --json]
(root, a Docker engine, `dockmesh/toolbox` built, etcd: scripts/setup.sh installs them).
`--lab NAME` uses a lab that is up (nothing of it is removed but what the run made).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import secrets
import select
import socket
import statistics
import sys
import time
from collections.abc import Iterator
from typing import Any

import dns.exception
import dns.message
import dns.rdatatype
import docker
import docker.errors

from dockmesh.testing.lab import LabClient

TOOLBOX = "dockmesh/toolbox:latest"
POLL_S = 0.002
LIMIT_S = 30.0
GRACE_S = 0.05  # no answer this long: the name is not held (Docker forwards it)


def wall_of(mono: float) -> float:
    return time.time() - (time.monotonic() - mono)


def finished_at(api: Any, cid: str) -> float:
    return started_at(api, cid, "FinishedAt")


def started_at(api: Any, cid: str, field: str = "StartedAt") -> float:
    """The engine's `State.StartedAt` as a Unix time (its nanoseconds cut to microseconds)."""
    raw = str(api.inspect_container(cid)["State"][field])
    head, _, frac = raw.rstrip("Z").partition(".")
    t = datetime.datetime.fromisoformat(head).replace(tzinfo=datetime.UTC).timestamp()
    return t + float(f"0.{frac or '0'}")


class DnsWatch:
    """Asks each target (a UDP socket made in some namespace, and its server) for `qname A`
    every POLL_S, without waiting for the answers: one socket per target, a new query ID per
    question, so a server that is slow to say "no" (Docker's embedded DNS forwards a name it
    does not hold upstream, where nothing answers in the lab) never delays the next question."""

    def __init__(self, targets: list[tuple[socket.socket, str, int]], qname: str) -> None:
        self.targets, self.qname = targets, qname

    def _ask(self, i: int, sent: dict[tuple[int, int], float]) -> None:
        sock, server, port = self.targets[i]
        q = dns.message.make_query(self.qname, "A")
        sent[(i, q.id)] = time.monotonic()
        with contextlib.suppress(OSError):
            sock.sendto(q.to_wire(), (server, port))

    def _answers(self, ready: list[Any], sent: dict[tuple[int, int], float]) -> Iterator[Any]:
        for sock in ready:
            i = [t[0] for t in self.targets].index(sock)
            while True:
                try:
                    wire = sock.recv(65535)
                except (BlockingIOError, OSError):
                    break
                try:
                    msg = dns.message.from_wire(wire)
                except dns.exception.DNSException:
                    continue
                t_sent = sent.pop((i, msg.id), None)
                if t_sent is None:
                    continue
                addrs = [
                    item.to_text()
                    for rrset in msg.answer
                    if rrset.rdtype == dns.rdatatype.A
                    for item in rrset
                ]
                yield i, t_sent, addrs

    def appeared(self) -> tuple[float, float]:
        """(monotonic, wall) time of the first answer with an address, from any target."""
        sent: dict[tuple[int, int], float] = {}
        deadline = time.monotonic() + LIMIT_S
        next_ask = 0.0
        socks = [t[0] for t in self.targets]
        while time.monotonic() < deadline:
            now = time.monotonic()
            if now >= next_ask:
                for i in range(len(self.targets)):
                    self._ask(i, sent)
                next_ask = now + POLL_S
            ready, _, _ = select.select(socks, [], [], max(0.0, next_ask - time.monotonic()))
            for _, _, addrs in self._answers(ready, sent):
                if addrs:
                    return time.monotonic(), time.time()
        raise RuntimeError(f"{self.qname}: no address within {LIMIT_S:.0f} s")

    def gone(self) -> list[float]:
        """For each target, the time a question was sent that got no address back: a
        negative answer, or none within GRACE_S."""
        sent: dict[tuple[int, int], float] = {}
        gone: dict[int, float] = {}
        deadline = time.monotonic() + LIMIT_S
        next_ask = 0.0
        socks = [t[0] for t in self.targets]
        while time.monotonic() < deadline and len(gone) < len(self.targets):
            now = time.monotonic()
            if now >= next_ask:
                for i in range(len(self.targets)):
                    if i not in gone:
                        self._ask(i, sent)
                next_ask = now + POLL_S
            ready, _, _ = select.select(socks, [], [], max(0.0, next_ask - time.monotonic()))
            for i, t_sent, addrs in self._answers(ready, sent):
                if not addrs and i not in gone:
                    gone[i] = t_sent
                elif addrs:
                    # Still there when this was asked: no earlier question counts as gone.
                    for key in [k for k, t in sent.items() if k[0] == i and t < t_sent]:
                        sent.pop(key)
            now = time.monotonic()
            for (i, _), t_sent in sorted(sent.items(), key=lambda kv: kv[1]):
                if i not in gone and now - t_sent > GRACE_S:
                    gone[i] = t_sent
        if len(gone) < len(self.targets):
            raise RuntimeError(f"{self.qname}: still answered after {LIMIT_S:.0f} s")
        return [gone[i] for i in range(len(self.targets))]


def stats(xs: list[float]) -> dict[str, float]:
    s = sorted(xs)
    p99 = s[min(len(s) - 1, round(0.99 * (len(s) - 1)))]
    return {
        "median": round(statistics.median(s), 1),
        "p99": round(p99, 1),
        "max": round(s[-1], 1),
        "n": len(s),
    }


def show(d: dict[str, float]) -> str:
    return f"median {d['median']:7.1f}  p99 {d['p99']:7.1f}  max {d['max']:7.1f}"


class Run:
    def __init__(self, lab: LabClient, prefix: str, network: str, hosts: list[str]) -> None:
        self.lab, self.prefix, self.network, self.hosts = lab, prefix, network, hosts
        self.h1 = docker.APIClient(base_url=lab.engine_url("host1"), version="auto")
        self.h2 = docker.APIClient(base_url=lab.engine_url("host2"), version="auto")
        self.swarm = docker.DockerClient(base_url=lab.engine_url("host1"), version="auto")
        self.dm: dict[str, list[float]] = {"started": [], "call": [], "start_returned": []}
        self.dm_gone: list[float] = []
        self.sw: dict[str, list[float]] = {"started": [], "call": []}
        self.sw_gone: list[float] = []
        self.dm_gone_finished: list[float] = []
        self.start_retries: list[str] = []
        self.watcher_pid = 0
        self.service = f"{prefix}sw"
        self.dm_service = f"{prefix}dm"

    def setup(self) -> None:
        self.h1.create_network(self.network, driver="overlay", attachable=True)
        w = self.h1.create_container(
            TOOLBOX,
            name=f"{self.prefix}watch",
            command=["sleep", "86400"],
            host_config=self.h1.create_host_config(network_mode=self.network),
        )
        self.h1.start(w["Id"])
        self.watcher_pid = int(self.h1.inspect_container(w["Id"])["State"]["Pid"])
        self.lab.docker(
            "host1", "service", "create", "--detach", "--no-resolve-image", "--quiet",
            "--name", self.service, "--replicas", "0", "--network", self.network,
            "--constraint", "node.hostname==host2", TOOLBOX, "sleep", "86400",
        )  # fmt: skip

    def dns_watch(self, qname: str, hosts: list[str]) -> DnsWatch:
        """The agents of `hosts`, or (no hosts) Docker's embedded DNS in the watcher."""
        if hosts:
            targets = [(self.lab.udp_socket(h), "127.0.0.1", 53) for h in hosts]
        else:
            sock = self.lab.udp_socket("host1", pid=self.watcher_pid)
            targets = [(sock, "127.0.0.11", 53)]
        return DnsWatch(targets, qname)

    def dockmesh_once(self, i: int) -> None:
        name = f"{self.dm_service}.service.dockmesh"
        on_host1 = self.dns_watch(name, ["host1"])
        everywhere = self.dns_watch(name, self.hosts)
        try:
            for attempt in range(3):
                t0 = time.monotonic()
                cid = self.h2.create_container(
                    TOOLBOX,
                    name=f"{self.prefix}d{i}",
                    command=["sleep", "86400"],
                    labels={"dockmesh.service": self.dm_service, "dockmesh.port": "8080"},
                    host_config=self.h2.create_host_config(network_mode=self.network),
                )["Id"]
                try:
                    self.h2.start(cid)
                    break
                except docker.errors.NotFound as e:
                    # A worker's attachment to an attachable overlay, left when its last
                    # container went, can race the next start ("network … not found"):
                    # Docker's, counted and retried (the attempt is not timed).
                    self.h2.remove_container(cid, force=True)
                    self.start_retries.append(str(e.explanation))
                    if attempt == 2:
                        raise
            t1 = time.monotonic()
            seen, wall = on_host1.appeared()
            self.dm["call"].append((seen - t0) * 1000)
            self.dm["start_returned"].append((seen - t1) * 1000)
            self.dm["started"].append((wall - started_at(self.h2, cid)) * 1000)
            t2 = time.monotonic()
            self.h2.kill(cid)
            gone = max(everywhere.gone())
            self.dm_gone.append((gone - t2) * 1000)
            self.dm_gone_finished.append((wall_of(gone) - finished_at(self.h2, cid)) * 1000)
            self.h2.remove_container(cid, force=True)
        finally:
            for w in (on_host1, everywhere):
                for sock, _, _ in w.targets:
                    sock.close()

    def swarm_once(self) -> None:
        watch = self.dns_watch(f"tasks.{self.service}", [])
        try:
            svc = self.swarm.services.get(self.service)
            t0 = time.monotonic()
            svc.scale(1)
            seen, wall = watch.appeared()
            self.sw["call"].append((seen - t0) * 1000)
            [task] = [
                t
                for t in self.h1.tasks(
                    filters={"service": self.service, "desired-state": "running"}
                )
                if (t.get("Status") or {}).get("ContainerStatus", {}).get("ContainerID")
            ] or [None]
            if task is not None:
                cid = task["Status"]["ContainerStatus"]["ContainerID"]
                self.sw["started"].append((wall - started_at(self.h2, cid)) * 1000)
            svc = self.swarm.services.get(self.service)
            t2 = time.monotonic()
            svc.scale(0)
            [gone] = watch.gone()
            self.sw_gone.append((gone - t2) * 1000)
        finally:
            watch.targets[0][0].close()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.lab.docker("host1", "service", "rm", self.service)
        for api in (self.h1, self.h2):
            for c in api.containers(all=True, filters={"name": self.prefix}):
                with contextlib.suppress(docker.errors.APIError):
                    api.remove_container(c["Id"], force=True)
        with contextlib.suppress(docker.errors.APIError):
            self.h1.remove_network(self.network)
        self.h1.close()
        self.h2.close()
        self.swarm.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--starts", type=int, default=100)
    ap.add_argument("--hosts", type=int, default=2, help="lab hosts (2-5)")
    ap.add_argument("--lab", default="", help="a lab that is up (default: one of its own)")
    ap.add_argument("--json", action="store_true", help="one JSON document on stdout")
    args = ap.parse_args()
    if args.starts < 1 or not 2 <= args.hosts <= 5:
        print("--starts ≥ 1 and --hosts 2-5", file=sys.stderr)
        return 2
    out = sys.stderr if args.json else sys.stdout
    prefix = f"dmb{secrets.token_hex(3)}"
    lab = LabClient(args.lab or prefix)
    run: Run | None = None
    try:
        if not args.lab:
            t0 = time.monotonic()
            lab.cli("lab", "up", "--hosts", str(args.hosts), "--image", TOOLBOX)
            print(f"lab {lab.name} up in {time.monotonic() - t0:.1f} s", file=out)
        hosts = [h["name"] for h in lab.status()["hosts"]]
        run = Run(lab, prefix, f"{prefix}net", hosts)
        run.setup()
        # One of each first, not counted: the overlay's first attachment on host2, the
        # watcher's first query.
        run.dockmesh_once(-1)
        run.swarm_once()
        for k in ("started", "call", "start_returned"):
            run.dm[k].clear()
        for k in ("started", "call"):
            run.sw[k].clear()
        run.dm_gone.clear()
        run.sw_gone.clear()
        for i in range(args.starts):
            if i % 2:
                run.swarm_once()
                run.dockmesh_once(i)
            else:
                run.dockmesh_once(i)
                run.swarm_once()
            if not args.json and (i + 1) % 10 == 0:
                print(f"  {i + 1}/{args.starts} starts", file=out, flush=True)
        doc = report(run, args.starts, len(hosts))
        if args.json:
            print(json.dumps(doc, indent=2))
        else:
            print_report(doc)
        return 0 if doc["ok"] else 1
    finally:
        if run is not None:
            run.close()
        if not args.lab:
            lab.cli("lab", "down", check=False)
        lab.close()


def report(run: Run, starts: int, hosts: int) -> dict[str, Any]:
    dm = {k: stats(v) for k, v in run.dm.items()} | {
        "gone_everywhere": stats(run.dm_gone),
        "gone_everywhere_from_finished": stats(run.dm_gone_finished),
    }
    sw = {k: stats(v) for k, v in run.sw.items() if v} | {"gone": stats(run.sw_gone)}
    goals = {
        "median_ms": 50,
        "p99_ms": 250,
        "gone_ms": 1000,
    }
    ok = (
        dm["started"]["median"] <= goals["median_ms"]
        and dm["started"]["p99"] <= goals["p99_ms"]
        and dm["gone_everywhere_from_finished"]["max"] <= goals["gone_ms"]
    )
    ratios = {
        k: round(sw[k]["median"] / max(dm[k]["median"], 0.1), 1)
        for k in ("started", "call")
        if k in sw
    }
    return {
        "starts": starts,
        "hosts": hosts,
        "measured": {
            "dockmesh": "a labelled container created+started on host2 (overlay) until "
            "host1's agent answers S.service.dockmesh A; killed until every host's "
            "agent answers no address",
            "swarm": "a service (constraint host2, same image and overlay) scaled 0→1 until "
            "Docker's embedded DNS (127.0.0.11 in a container on host1) answers tasks.S A; "
            "scaled to 0 until it no longer holds the name (no answer within 50 ms)",
        },
        "dockmesh_ms": dm,
        "swarm_ms": sw,
        "swarm_over_dockmesh": ratios,
        "goals": goals,
        "docker_start_retries": len(run.start_retries),
        "ok": ok,
    }


def print_report(doc: dict[str, Any]) -> None:
    dm, sw = doc["dockmesh_ms"], doc["swarm_ms"]
    print(f"\nhost2 → host1's DNS, {doc['starts']} starts, lab of {doc['hosts']} hosts (ms):")
    print(f"  dockmesh:     {doc['measured']['dockmesh']}")
    print(f"  Docker Swarm: {doc['measured']['swarm']}")
    rows = [
        ("from the container's StartedAt", "started"),
        ("from the call (create+start | scale)", "call"),
    ]
    for label, k in rows:
        print(f"  {label}")
        print(f"    dockmesh      {show(dm[k])}")
        if k in sw:
            print(f"    Docker Swarm  {show(sw[k])}   ({doc['swarm_over_dockmesh'][k]}x dockmesh)")
    print(f"  dockmesh from start returning: {show(dm['start_returned'])}")
    print("  stopped: from the container's FinishedAt until no answer")
    print(f"    dockmesh (every host)  {show(dm['gone_everywhere_from_finished'])}")
    print("  stopped: from the call (kill | scale 0) until no answer")
    print(f"    dockmesh (every host)  {show(dm['gone_everywhere'])}")
    print(f"    Docker Swarm (host1)   {show(sw['gone'])}")
    if doc["docker_start_retries"]:
        print(f"  (Docker's start on host2 refused and retried {doc['docker_start_retries']}x)")
    g = doc["goals"]
    print(
        f"goals (dockmesh from StartedAt): median ≤ {g['median_ms']} ms, p99 ≤ {g['p99_ms']} ms; "
        f"gone everywhere ≤ {g['gone_ms']} ms after FinishedAt: {'OK' if doc['ok'] else 'FAIL'}"
    )


if __name__ == "__main__":
    sys.exit(main())
