"""Failover under load: the proxy in --service mode, following a real agent, while one of
three backend containers is killed and later started again.

Three `dockmesh/toolbox` containers (busybox httpd on :8080 answering /id with their
hostname and /health) carry the labels that register them as one service with an HTTP check
every second. `dockmesh agent` (free loopback ports, its state in a temporary file) follows
them; `dockmesh proxy --service … --agent …` follows the agent. Client threads send
keep-alive GETs to /id through the proxy all along, noting the time, the answering backend
and any failure. Meanwhile a poller notes when the agent lists each instance as passing.

After a few seconds of steady load one container is killed (`docker kill`), later started
again (`docker start`). The goals: zero failed GETs; no answer from the killed one
more than 1 s after the kill; an answer from the restarted one within 1 s of its first
passing check.

Run: .venv/bin/python -m benchmarks.failover [--clients 8 --steady 4]
(root and a Docker engine with the images built). Everything it creates is named dmf<hex>…
and removed at the end, on failure too; the processes it starts are stopped by pid.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

TOOLBOX = "dockmesh/toolbox:latest"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def docker(*args: str) -> str:
    return subprocess.run(
        ["docker", *args], capture_output=True, text=True, check=True
    ).stdout.strip()


def wait_for(pred: Any, limit: float, what: str) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, ValueError):
            if pred():
                return
        time.sleep(0.05)
    raise RuntimeError(f"timed out waiting for {what}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--steady", type=float, default=4.0, help="seconds of load between steps")
    args = ap.parse_args()
    prefix = f"dmf{secrets.token_hex(3)}"
    svc = f"{prefix}svc"
    tmp = Path(tempfile.mkdtemp(prefix=prefix))
    procs: list[subprocess.Popen[bytes]] = []
    net = f"{prefix}_net"
    names = [f"{prefix}-b{i}" for i in (1, 2, 3)]
    stop = threading.Event()
    try:
        docker("network", "create", net)
        labels = [
            f"dockmesh.service={svc}", "dockmesh.port=8080", "dockmesh.check.http=/health",
            "dockmesh.check.interval=1s",
        ]  # fmt: skip
        for n in names:
            flags = [x for lab in labels for x in ("--label", lab)]
            docker("run", "-d", "--name", n, "--hostname", n, "--network", net, *flags, TOOLBOX)
        dm = str(Path(sys.executable).parent / "dockmesh")
        api_port, dns_port, proxy_port = free_port(), free_port(), free_port()
        agent_url = f"http://127.0.0.1:{api_port}"
        agent_cmd = [dm, "agent", "--api", f"127.0.0.1:{api_port}", "--dns"]
        agent_cmd += [f"127.0.0.1:{dns_port}", "--state", str(tmp / "state.db"), "--no-gateway-dns"]
        log = (tmp / "agent.log").open("wb")
        procs.append(subprocess.Popen(agent_cmd, stdout=log, stderr=subprocess.STDOUT))

        def passing() -> set[str]:
            url = f"{agent_url}/v1/health/service/{svc}?passing"
            with urllib.request.urlopen(url, timeout=5) as r:
                return {e["Service"]["ID"] for e in json.load(r)}

        wait_for(lambda: passing() == set(names), 30, "three passing instances")
        admin_port = free_port()
        proxy_cmd = [dm, "proxy", "--listen", f"127.0.0.1:{proxy_port}", "--service", svc]
        proxy_cmd += ["--agent", agent_url, "--admin", f"127.0.0.1:{admin_port}"]
        log = (tmp / "proxy.log").open("wb")
        procs.append(subprocess.Popen(proxy_cmd, stdout=log, stderr=subprocess.STDOUT))
        seen: list[tuple[float, str]] = []  # (time, backend) of every answer
        failures: list[tuple[float, str]] = []
        lock = threading.Lock()

        def client() -> None:
            conn: http.client.HTTPConnection | None = None
            while not stop.is_set():
                try:
                    if conn is None:
                        conn = http.client.HTTPConnection("127.0.0.1", proxy_port, timeout=10)
                    conn.request("GET", "/id")
                    r = conn.getresponse()
                    # /id holds the container's hostname (its name here).
                    body = (r.read().decode().split() or ["?"])[0]
                    with lock:
                        if r.status == 200:
                            seen.append((time.monotonic(), body))
                        else:
                            failures.append((time.monotonic(), f"{r.status} {body}"))
                except (OSError, http.client.HTTPException) as e:
                    with lock:
                        failures.append((time.monotonic(), repr(e)))
                    if conn is not None:
                        conn.close()
                    conn = None

        def upstreams_known() -> bool:
            url = f"http://127.0.0.1:{admin_port}/status"
            with urllib.request.urlopen(url, timeout=2) as r:
                return len(json.load(r)["upstreams"]) == 3

        wait_for(upstreams_known, 20, "the proxy to know the three instances")
        # When each instance is first seen passing again (polled every 50 ms).
        first_passing: dict[str, float] = {}

        def poll() -> None:
            while not stop.is_set():
                with contextlib.suppress(OSError, ValueError):
                    now = time.monotonic()
                    for n in passing():
                        first_passing.setdefault(n, now)
                time.sleep(0.05)

        threads = [threading.Thread(target=client, daemon=True) for _ in range(args.clients)]
        for t in threads:
            t.start()
        time.sleep(args.steady)
        victim = names[1]
        t_kill = time.monotonic()
        docker("kill", victim)
        time.sleep(args.steady)
        first_passing.clear()
        poller = threading.Thread(target=poll, daemon=True)
        poller.start()
        t_start = time.monotonic()
        docker("start", victim)
        wait_for(lambda: victim in first_passing, 30, "the restarted instance to pass")
        time.sleep(args.steady)
        stop.set()
        for t in threads:
            t.join(timeout=15)
        poller.join(timeout=5)
        after_kill = [t for t, b in seen if b == victim and t_kill <= t < t_start]
        last_dead = max(after_kill) - t_kill if after_kill else 0.0
        t_pass = first_passing[victim]
        back = [t for t, b in seen if b == victim and t >= t_start]
        # The poller sees "passing" up to 50 ms late: an earlier answer counts as 0.
        first_back = max(0.0, min(back) - t_pass) if back else float("inf")
        per = {n: sum(1 for _, b in seen if b == n) for n in names}
        print(f"{len(seen)} GETs answered, {len(failures)} failed; per backend {per}")
        for when, why in failures[:5]:
            print(f"  failed at +{when - t_kill:.2f}s after the kill: {why}")
        print(f"killed {victim}: last answer from it {last_dead:.2f}s after the kill (goal <= 1 s)")
        print(
            f"restarted: first passing check {t_pass - t_start:.2f}s after docker start; first "
            f"answer {first_back:.2f}s after it (goal <= 1 s)"
        )
        ok = not failures and last_dead <= 1.0 and first_back <= 1.0
        print("OK" if ok else "FAIL")
        return 0 if ok else 1
    finally:
        stop.set()
        for p in reversed(procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    p.kill()
        for n in names:
            subprocess.run(["docker", "rm", "-f", n], capture_output=True)
        subprocess.run(["docker", "network", "rm", net], capture_output=True)
        subprocess.run(["rm", "-rf", str(tmp)], check=False)


if __name__ == "__main__":
    sys.exit(main())
