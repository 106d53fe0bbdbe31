"""Policy at scale, and the reachability matrix beside the chapter's way.

Measures, in one run:
  1. compile + apply for 1,000 containers on 20 networks: the policy compiled against a
     synthetic topology (pure), then applied to the real kernel in one `nft -j -f -`
     transaction (a table of the benchmark's own), and a set element update (one container
     restarted with a new address), as the agent sends it;
  2. `dockmesh matrix` over 30 real containers on one network (870 pairs), the whole command
     (process start included): with no policy (all reachable), and with a policy that denies
     most pairs (every unreachable pair costs the one bounded timeout, run in parallel);
  3. the chapter's way, `docker exec SRC ping -c 3 DST` per pair, timed on a sample of pairs
     and extrapolated to 870.

  4. 3,000 rules: a policy of 3,000 rules between 1,000 services (synthetic topology)
     compiled and applied in one transaction; one container more made true by the enforcer
     as the agent does on a container start (compile, element delta, one transaction); and
     the kernel's cost of a new connection through it: connections per second between two
     real containers (an allowed pair) under 5 rules and under 3,000 rules (the 3,000 with
     the synthetic containers' addresses in the sets), in the same run.

Goals: compile + render + apply under 1 s; the whole `dockmesh matrix` (no policy) under 2 s;
3,000 rules applied under 1 s; a container start made true under 50 ms; a new connection
through 3,000 rules costs less than twice one through 5 rules. It exits 1 when one is missed,
naming it.

Run: .venv/bin/python -m benchmarks.policy [--containers 1000 --networks 20 --matrix 30]
     [--rules 3000] [--connections 3000]
Everything it creates is named dmb<hex>… (containers, network, nft table) and removed at the
end, on failure too.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import secrets
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import docker
from rich.console import Console
from rich.table import Table

from dockmesh.engine.backend import EngineRef, default_url
from dockmesh.engine.docker import DockerBackend
from dockmesh.model.ipam import pick_free_subnets
from dockmesh.model.policy import Policy, PortRange, Rule, Selector, Verdict
from dockmesh.model.topology import (
    Attachment,
    Container,
    EngineInfo,
    EngineState,
    IpamPool,
    Network,
    Topology,
    build_topology,
)
from dockmesh.ops.context import taken_subnets
from dockmesh.policy.compile import (
    compile_policy,
    element_delta,
    full_transaction,
    remove_transaction,
)
from dockmesh.policy.nft import Nft

out = Console()
DM = [sys.executable, "-m", "dockmesh"]
# (what, measured seconds, goal in seconds): the run fails when a measure is over its goal.
Goal = tuple[str, float, float]
NO_AGENT = "http://127.0.0.1:9"  # nothing listens on the discard port: the engine is read


def _id(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def synthetic(containers: int, networks: int, services: int = 50, shift: int = 0) -> Topology:
    """`containers` running containers spread over `networks` /22s, labelled with one of
    `services` services; `shift` moves container 0 to another address (a restart)."""
    st = EngineState(EngineInfo("local", "unix:///x"))
    for n in range(networks):
        st.upsert_network(
            Network(
                _id(f"n{n}"),
                f"dmbnet{n}",
                "local",
                "bridge",
                ipam=(IpamPool(f"10.{200 + n // 64}.{(n % 64) * 4}.0/22"),),
            )
        )
    for i in range(containers):
        n = i % networks
        host = i // networks + 2 + (shift if i == 0 else 0)
        base = (n % 64) * 4 + host // 256
        ip = f"10.{200 + n // 64}.{base}.{host % 256}"
        st.upsert_container(
            Container(
                _id(f"c{i}"),
                f"dmbc{i}",
                "local",
                "img",
                "running",
                pid=1000 + i,
                attachments=(Attachment(_id(f"n{n}"), f"dmbnet{n}", ipv4=ip),),
                labels={"dockmesh.service": f"svc{i % services}", "tier": f"t{i % 3}"},
            )
        )
    return build_topology([st], 1)


def scale_policy(networks: int, services: int = 50) -> Policy:
    """A ring of services (each may call the next on 8080/tcp and 53/udp), one label rule,
    and every other network closed by default."""
    ports = (PortRange("tcp", 8080, 8080), PortRange("udp", 53, 53))
    rules = [
        Rule((Selector(service=f"svc{k}"),), (Selector(service=f"svc{(k + 1) % services}"),), ports)
        for k in range(services)
    ]
    rules.append(Rule((Selector(labels=(("tier", "t0"),)),), (Selector(network="dmbnet0"),)))
    deny: Verdict = "deny"
    nets = tuple(sorted((f"dmbnet{n}", deny) for n in range(0, networks, 2)))
    return Policy("allow", nets, tuple(rules))


def timed(fn: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    """The median of `repeat` runs in seconds, and the last result."""
    times, result = [], None
    for _ in range(repeat):
        t = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), result


def bench_compile_apply(
    args: argparse.Namespace, table: str, rows: list[tuple[str, str]], goals: list[Goal]
) -> None:
    topo = synthetic(args.containers, args.networks)
    moved = synthetic(args.containers, args.networks, shift=900)
    policy = scale_policy(args.networks)
    nft = Nft()
    t_compile, rs = timed(lambda: compile_policy(policy, topo, "enforce", table), 5)
    t_render, cmds = timed(lambda: full_transaction(rs), 5)
    t_apply, _ = timed(lambda: nft.run(cmds), 5)
    t_total, _ = timed(
        lambda: nft.run(full_transaction(compile_policy(policy, topo, "enforce", table))), 5
    )
    rs2 = compile_policy(policy, moved, "enforce", table)
    goals.append(("compile + render + apply", t_total, 1.0))
    delta = element_delta(rs.elements(), rs2)
    assert delta is not None
    t_delta, _ = timed(lambda: nft.run(delta), 1)
    addresses = sum(len(s.elements) for s in rs.sets if not s.interval)
    rows += [
        (
            f"compile ({args.containers} containers, {args.networks} networks, "
            f"{len(policy.rules)} rules → {len(rs.rules)} nft rules, {addresses} set elements)",
            f"{t_compile * 1000:.1f} ms",
        ),
        ("render nft JSON", f"{t_render * 1000:.1f} ms"),
        ("apply: one nft -j -f - transaction (whole table)", f"{t_apply * 1000:.1f} ms"),
        ("compile + render + apply (goal < 1 s)", f"{t_total * 1000:.1f} ms"),
        (
            f"one container restarted with a new IP: set update ({len(delta)} commands)",
            f"{t_delta * 1000:.1f} ms",
        ),
    ]


def bench_matrix(
    args: argparse.Namespace, prefix: str, rows: list[tuple[str, str]], goals: list[Goal]
) -> None:
    client = docker.APIClient(base_url=default_url(os.environ.get("DOCKER_HOST")), version="auto")
    backend = DockerBackend(EngineRef("local", default_url(os.environ.get("DOCKER_HOST"))))
    taken = taken_subnets(build_topology([backend.snapshot()], 1))
    import random

    (subnet,) = pick_free_subnets(taken, 1, random.Random())
    net = f"{prefix}mx"
    client.create_network(net, ipam={"Config": [{"Subnet": str(subnet)}]})
    label = f"dmb.case={prefix}"

    def start(i: int) -> str:
        cid = client.create_container(
            "dockmesh/toolbox",
            name=f"{prefix}m{i}",
            command=["sleep", "3600"],
            labels={"dmb.case": prefix, "dockmesh.service": f"{prefix}{'a' if i < 3 else 'z'}"},
            host_config=client.create_host_config(network_mode=net),
        )["Id"]
        client.start(cid)
        return str(cid)

    with ThreadPoolExecutor(4) as ex:
        list(ex.map(start, range(1, args.matrix + 1)))
    n = args.matrix
    # The engine's path, whatever agent runs on the machine (an agent's topology is another
    # path, and one of someone else's would change what is measured).
    env = {**os.environ, "DOCKMESH_POLICY_TABLE": f"{prefix}pol", "DOCKMESH_AGENT": NO_AGENT}

    def matrix() -> dict[str, Any]:
        proc = subprocess.run(
            [*DM, "matrix", "--select", f"label={label}", "--json"],
            capture_output=True,
            text=True,
            env=env,
        )
        return dict(json.loads(proc.stdout))

    t_open, m = timed(matrix, args.repeat)
    goals.append((f"dockmesh matrix, {n} containers, whole command", t_open, 2.0))
    reach = sum(1 for p in m["pairs"] if p["observed"])
    rows.append(
        (
            f"dockmesh matrix, {n} containers ({len(m['pairs'])} pairs, {reach} reachable, "
            f"{m['mismatches']} mismatches), whole command (goal < 2 s)",
            f"{t_open:.2f} s",
        )
    )
    # Most pairs denied: only the 3 'a' containers may reach each other.
    state = tempfile.mkdtemp(prefix=f"{prefix}-")
    env["DOCKMESH_POLICY_DIR"] = state
    policy_file = os.path.join(state, "policy.yaml")
    with open(policy_file, "w") as f:
        f.write(
            f"policy:\n  networks: {{{net}: {{default: deny}}}}\n  rules:\n"
            f"    - {{from: {{service: {prefix}a}}, to: {{service: {prefix}a}}}}\n"
        )
    try:
        subprocess.run(
            [*DM, "policy", "apply", policy_file], env=env, check=True, capture_output=True
        )
        t_deny, m2 = timed(matrix, args.repeat)
        reach2 = sum(1 for p in m2["pairs"] if p["observed"])
        rows.append(
            (
                f"dockmesh matrix under a deny policy ({reach2} reachable, "
                f"{len(m2['pairs']) - reach2} dropped, {m2['mismatches']} mismatches; "
                "timeout 1 s)",
                f"{t_deny:.2f} s",
            )
        )
    finally:
        subprocess.run([*DM, "policy", "remove"], env=env, capture_output=True)
        shutil.rmtree(state, ignore_errors=True)
    sample = [(1, j) for j in range(2, 2 + args.sample)]
    t0 = time.perf_counter()
    for i, j in sample:
        subprocess.run(
            ["docker", "exec", f"{prefix}m{i}", "ping", "-c", "3", f"{prefix}m{j}"],
            capture_output=True,
        )
    per_pair = (time.perf_counter() - t0) / len(sample)
    pairs = n * (n - 1)
    rows.append(
        (
            f"the chapter's docker exec ping -c 3, per pair (sample of {len(sample)})",
            f"{per_pair:.2f} s",
        )
    )
    rows.append((f"… extrapolated to {pairs} pairs", f"{per_pair * pairs / 60:.0f} min"))
    rows.append(("speed-up of dockmesh matrix", f"{per_pair * pairs / t_open:.0f} times"))


def many_rules(count: int, services: int) -> list[Rule]:
    """`count` distinct rules between `services` services, each on one TCP port."""
    rules = []
    for k in range(count):
        a, b = k % services, (k * 7 + k // services + 1) % services
        port = PortRange("tcp", 8000 + k % 50, 8000 + k % 50)
        rules.append(Rule((Selector(service=f"svc{a}"),), (Selector(service=f"svc{b}"),), (port,)))
    return rules


def merged(a: Topology, b: Topology) -> Topology:
    states: list[EngineState] = []
    for t in (a, b):
        st = EngineState(EngineInfo(f"e{len(states)}", "unix:///x"))
        for n in t.networks:
            st.upsert_network(n)
        for c in t.containers:
            st.upsert_container(c)
        states.append(st)
    return build_topology(states, 1)


def bench_rules(
    args: argparse.Namespace, prefix: str, rows: list[tuple[str, str]], goals: list[Goal]
) -> None:
    from dockmesh.host.netns import NetnsPool
    from dockmesh.host.ports import PortFinder
    from dockmesh.policy.enforce import Enforcer
    from dockmesh.policy.store import Applied, PolicyStore

    table = f"{prefix}r"
    synth = synthetic(args.containers, args.networks, services=args.containers)
    rules = many_rules(args.rules, args.containers)
    big = Policy("allow", (), tuple(rules))
    nft = Nft()
    t_apply, rs = timed(
        lambda: nft.run(full_transaction(compile_policy(big, synth, "enforce", table))), 3
    )
    elements = sum(len(x.elements) for x in compile_policy(big, synth, "enforce", table).sets)
    goals.append((f"{args.rules} rules: compile + render + apply", t_apply, 1.0))
    rows.append(
        (
            f"{args.rules} rules over {args.containers} containers ({elements} set elements): "
            "compile + render + apply (goal < 1 s)",
            f"{t_apply * 1000:.1f} ms",
        )
    )
    # A container start, as the agent makes it true: the enforcer's sync of the new topology.
    state = tempfile.mkdtemp(prefix=f"{prefix}-")
    try:
        store = PolicyStore(table, Path(state))
        enforcer = Enforcer(store, nft, ports=lambda t: {})
        enforcer.apply(Applied(table, "enforce", big), synth)
        grown = synthetic(args.containers + 1, args.networks, services=args.containers)
        t0 = time.perf_counter()
        enforcer.sync(grown)
        t_start = time.perf_counter() - t0
        goals.append(("a container start made true (3,000 rules)", t_start, 0.05))
        rows.append(
            (
                f"one container started under {args.rules} rules: compile + element delta + "
                "one transaction (goal < 50 ms)",
                f"{t_start * 1000:.1f} ms",
            )
        )
    finally:
        shutil.rmtree(state, ignore_errors=True)
        nft.run(remove_transaction(table))

    # The kernel's cost of a new connection: two real containers, an allowed pair.
    client = docker.APIClient(base_url=default_url(os.environ.get("DOCKER_HOST")), version="auto")
    backend = DockerBackend(EngineRef("local", default_url(os.environ.get("DOCKER_HOST"))))
    import random

    taken = taken_subnets(build_topology([backend.snapshot()], 1))
    (subnet,) = pick_free_subnets(taken, 1, random.Random())
    net = f"{prefix}cc"
    client.create_network(net, ipam={"Config": [{"Subnet": str(subnet)}]})
    ids = []
    for role in ("a", "b"):
        cid = client.create_container(
            "dockmesh/toolbox",
            name=f"{prefix}{role}",
            labels={"dockmesh.service": f"{prefix}{role}"},
            host_config=client.create_host_config(network_mode=net),
        )["Id"]
        client.start(cid)
        ids.append(cid)
    real = build_topology([backend.snapshot()], 1)
    b_ip = client.inspect_container(ids[1])["NetworkSettings"]["Networks"][net]["IPAddress"]
    a_pid = int(client.inspect_container(ids[0])["State"]["Pid"])
    b_pid = int(client.inspect_container(ids[1])["State"]["Pid"])
    pair = Rule((Selector(service=f"{prefix}a"),), (Selector(service=f"{prefix}b"),))
    ports = PortFinder()(real)
    few = Policy("allow", ((net, "deny"),), (*rules[:4], pair))
    many = Policy("allow", ((net, "deny"),), (*rules, pair))
    both = merged(real, synth)
    results: dict[str, float] = {}
    with NetnsPool(threads=1) as pool:
        # A listener of the benchmark's own in b (busybox httpd forks per connection and
        # would be what is measured), emptied by a thread.
        listener = pool.socket(b_pid)
        listener.setblocking(True)
        listener.bind(("0.0.0.0", 9100))
        listener.listen(4096)
        stop = threading.Event()

        def drain() -> None:
            listener.settimeout(0.2)
            while not stop.is_set():
                with contextlib.suppress(OSError):
                    conn, _ = listener.accept()
                    conn.close()

        drainer = threading.Thread(target=drain, daemon=True)
        drainer.start()

        def connections() -> float:
            t0 = time.perf_counter()
            for _ in range(args.connections):
                sock = pool.socket(a_pid)
                sock.setblocking(True)
                sock.settimeout(2)
                sock.connect((b_ip, 9100))
                # Closed by a reset: no TIME_WAIT, so the ephemeral ports last the run.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                sock.close()
            return float(args.connections / (time.perf_counter() - t0))

        for what, policy in (("5", few), (str(args.rules), many), ("5 again", few)):
            rs = compile_policy(policy, both, "enforce", table, ports)
            nft.run(full_transaction(rs))
            connections()  # warm
            results[what] = float(statistics.median(connections() for _ in range(3)))
        stop.set()
        drainer.join()
        listener.close()
        nft.run(remove_transaction(table))
    base = (results["5"] + results["5 again"]) / 2
    ratio = base / results[str(args.rules)]
    goals.append((f"new-connection cost, {args.rules} rules / 5 rules", ratio, 2.0))
    for what, rate in results.items():
        rows.append((f"new connections per second through {what} rules", f"{rate:.0f}/s"))
    rows.append(
        (
            f"cost of a new connection, {args.rules} rules vs 5 (goal < 2x; the time of a "
            "whole connect + close from Python, so the kernel's share is less)",
            f"{ratio:.2f}x",
        )
    )


def cleanup(prefix: str) -> None:
    client = docker.APIClient(base_url=default_url(os.environ.get("DOCKER_HOST")), version="auto")
    for c in client.containers(all=True, filters={"name": f"^{prefix}"}):
        with contextlib.suppress(docker.errors.NotFound):
            client.remove_container(c["Id"], force=True)
    for n in client.networks(names=[f"{prefix}mx", f"{prefix}cc"]):
        with contextlib.suppress(docker.errors.NotFound):
            client.remove_network(n["Id"])
    for table in (prefix, f"{prefix}pol", f"{prefix}r"):
        Nft().run(remove_transaction(table))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--containers", type=int, default=1000)
    ap.add_argument("--networks", type=int, default=20)
    ap.add_argument("--matrix", type=int, default=30, help="real containers for the matrix")
    ap.add_argument("--sample", type=int, default=3, help="pairs timed the chapter's way")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--rules", type=int, default=3000)
    ap.add_argument("--connections", type=int, default=3000)
    ap.add_argument("--compile-only", action="store_true", help="skip the real containers")
    args = ap.parse_args()
    prefix = f"dmb{secrets.token_hex(3)}"
    rows: list[tuple[str, str]] = []
    goals: list[Goal] = []
    try:
        bench_compile_apply(args, prefix, rows, goals)
        if not args.compile_only:
            bench_rules(args, prefix, rows, goals)
            bench_matrix(args, prefix, rows, goals)
    finally:
        cleanup(prefix)
    t = Table("measure", "value", title=f"policy and matrix ({os.cpu_count()} cores)")
    for k, v in rows:
        t.add_row(k, v)
    out.print(t)
    missed = [(what, took, goal) for what, took, goal in goals if took >= goal]
    for what, took, goal in goals:
        ok = took < goal
        out.print(
            f"{what}: {took:.3f} s, goal < {goal:g} s: {'OK' if ok else 'MISSED'}",
            style="green" if ok else "red",
        )
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
