"""Proxy throughput and tail latency: dockmesh's proxy beside HAProxy and nginx, same run.

Three nginx backends on loopback ports serve both variants: `/` answers a 4-byte body,
`/16k` a 16 KiB static file. In front of them, on loopback too:

  - HAProxy 2.6 (`balance roundrobin`, `http-reuse always`, health checks, one thread);
  - nginx 1.22 as a load balancer (`upstream` with `keepalive 64`, one worker);
  - `dockmesh proxy --workers 1 --admin …` with every feature on (forwarded fields, request
    ids, hop-by-hop stripping, breakers, outlier ejection, retry budget, active checks,
    metrics).

`wrk -t1 -c50 -d<seconds>s --latency` runs against each in turn, in alternating rounds so a
busy moment of the (shared) machine falls on all of them; the figures are medians over the
rounds and the ratios are of medians. Variants: `small` (a plain GET, 4-byte answers) and
`16k+20h` (16 KiB answers, requests carrying 20 extra headers). The goals: dockmesh at
least 0.8x HAProxy's requests/s and a p99 at most 1.5x HAProxy's, in both variants, with no
errors. The CPU each proxy spent per request (from /proc) is printed too: on a shared
machine it separates a proxy's own cost from the contention.

Run: .venv/bin/python -m benchmarks.proxy [--seconds 5 --rounds 3]
(haproxy, nginx and wrk: scripts/setup.sh installs them). Everything runs on loopback, from
a temporary directory removed at the end; the processes started are stopped by pid.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

HEADERS_20 = [f"X-Bench-Header-{i}: value-{i}-abcdefghijklmnopqrstuvwxyz" for i in range(20)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Result:
    rps: float
    p99_ms: float
    errors: int
    cpu_us: float | None


def parse_wrk(out: str) -> tuple[float, float, int, int]:
    rps = float(_must(re.search(r"Requests/sec:\s+([\d.]+)", out)).group(1))
    m = re.search(r"^\s+99%\s+([\d.]+)(us|ms|s)", out, re.M)
    p99 = 0.0
    if m:
        p99 = float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]
    errors = 0
    if e := re.search(r"Non-2xx or 3xx responses: (\d+)", out):
        errors += int(e.group(1))
    if e := re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out):
        errors += sum(int(x) for x in e.groups())
    total = int(_must(re.search(r"(\d+) requests in", out)).group(1))
    return rps, p99, errors, total


def _must(m: re.Match[str] | None) -> re.Match[str]:
    if m is None:
        raise RuntimeError("wrk printed no result")
    return m


def cpu_ticks(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total


def wrk(port: int, path: str, seconds: int, headers: list[str], pids: list[int]) -> Result:
    cmd = ["wrk", "-t1", "-c50", f"-d{seconds}s", "--latency"]
    for h in headers:
        cmd += ["-H", h]
    before = cpu_ticks(pids)
    out = subprocess.run(
        [*cmd, f"http://127.0.0.1:{port}{path}"], capture_output=True, text=True, check=True
    ).stdout
    used = cpu_ticks(pids) - before
    rps, p99, errors, total = parse_wrk(out)
    hz = os.sysconf("SC_CLK_TCK")
    return Result(rps, p99, errors, used / hz / max(total, 1) * 1e6 if pids else None)


def children_of(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(x) for x in out.split()]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    for tool in ("haproxy", "nginx", "wrk"):
        if not shutil.which(tool):
            print(
                f"benchmarks.proxy: {tool} is missing (scripts/setup.sh installs it)",
                file=sys.stderr,
            )
            return 2
    tmp = Path(tempfile.mkdtemp(prefix="dmbproxy"))
    procs: list[subprocess.Popen[bytes]] = []
    pidfiles = [tmp / "be.pid", tmp / "lb.pid", tmp / "hap.pid"]
    try:
        # nginx's workers run as an unprivileged user: they must be able to read the file.
        tmp.chmod(0o755)
        www = tmp / "www"
        www.mkdir(mode=0o755)
        (www / "16k").write_bytes(os.urandom(8192).hex().encode())  # 16 KiB
        (www / "16k").chmod(0o644)
        be = [free_port() for _ in range(3)]
        hap, ngx, dm, adm = free_port(), free_port(), free_port(), free_port()
        servers = "\n".join(
            f"server {{ listen 127.0.0.1:{p}; root {www}; "
            f'location = / {{ return 200 "be{i}\\n"; }} }}'
            for i, p in enumerate(be, 1)
        )
        (tmp / "be.conf").write_text(
            f"worker_processes 1; daemon on; pid {tmp}/be.pid; error_log {tmp}/be.err;\n"
            "events { worker_connections 4096; }\n"
            f"http {{ access_log off; keepalive_requests 100000; {servers} }}\n"
        )
        ups = " ".join(f"server 127.0.0.1:{p};" for p in be)
        (tmp / "lb.conf").write_text(
            f"worker_processes 1; daemon on; pid {tmp}/lb.pid; error_log {tmp}/lb.err;\n"
            "events { worker_connections 4096; }\n"
            f"http {{ access_log off; upstream b {{ {ups} keepalive 64; }}\n"
            f"server {{ listen 127.0.0.1:{ngx}; location / {{ proxy_pass http://b; "
            'proxy_http_version 1.1; proxy_set_header Connection ""; } } }\n'
        )
        hap_servers = "\n".join(f"  server b{i} 127.0.0.1:{p} check" for i, p in enumerate(be, 1))
        (tmp / "hap.cfg").write_text(
            "global\n  maxconn 4000\n  nbthread 1\ndefaults\n  mode http\n  timeout connect 5s\n"
            "  timeout client 30s\n  timeout server 30s\n"
            f"frontend fe\n  bind 127.0.0.1:{hap}\n  default_backend be\n"
            f"backend be\n  balance roundrobin\n  http-reuse always\n{hap_servers}\n"
        )
        subprocess.run(["nginx", "-c", str(tmp / "be.conf")], check=True)
        subprocess.run(["nginx", "-c", str(tmp / "lb.conf")], check=True)
        subprocess.run(
            ["haproxy", "-D", "-f", str(tmp / "hap.cfg"), "-p", str(tmp / "hap.pid")], check=True
        )
        dockmesh = Path(sys.executable).parent / "dockmesh"
        proxy = subprocess.Popen(
            [str(dockmesh), "proxy", "--listen", f"127.0.0.1:{dm}", "--workers", "1",
             "--admin", f"127.0.0.1:{adm}",
             *[a for p in be for a in ("--backend", f"http://127.0.0.1:{p}")]],
            stdout=(tmp / "proxy.log").open("wb"), stderr=subprocess.STDOUT,
        )  # fmt: skip
        procs.append(proxy)
        deadline = time.monotonic() + 20
        while True:
            try:
                with socket.create_connection(("127.0.0.1", dm), timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline or proxy.poll() is not None:
                    print((tmp / "proxy.log").read_text(), file=sys.stderr)
                    return 1
                time.sleep(0.1)
        time.sleep(0.5)
        hap_pid = int((tmp / "hap.pid").read_text().split()[0])
        lb_master = int((tmp / "lb.pid").read_text().split()[0])
        peers = {
            "haproxy": (hap, [hap_pid]),
            "nginx": (ngx, children_of(lb_master)),
            "dockmesh": (dm, [proxy.pid]),
        }
        variants = {"small": ("/", []), "16k+20h": ("/16k", HEADERS_20)}
        results: dict[tuple[str, str], list[Result]] = {}
        for name, (path, hdrs) in variants.items():
            for port, _ in peers.values():  # warm up: pools, caches
                wrk(port, path, 1, hdrs, [])
            for r in range(args.rounds):
                order = list(peers.items())
                order = order[r % 3 :] + order[: r % 3]
                for peer, (port, pids) in order:
                    results.setdefault((name, peer), []).append(
                        wrk(port, path, args.seconds, hdrs, pids)
                    )
        ok = True
        print(
            f"wrk -t1 -c50 -d{args.seconds}s, {args.rounds} rounds, medians; "
            "3 nginx backends on loopback"
        )
        print(
            f"{'variant':9} {'proxy':9} {'req/s':>9} {'p99 ms':>8} {'errors':>6} {'cpu us/req':>10}"
        )
        for name in variants:
            med = {}
            for peer in peers:
                rs = results[(name, peer)]
                rps = statistics.median(r.rps for r in rs)
                p99 = statistics.median(r.p99_ms for r in rs)
                errs = sum(r.errors for r in rs)
                cpus = [r.cpu_us for r in rs if r.cpu_us is not None]
                cpu = statistics.median(cpus) if cpus else float("nan")
                med[peer] = (rps, p99, errs)
                print(f"{name:9} {peer:9} {rps:9.0f} {p99:8.2f} {errs:6d} {cpu:10.1f}")
            d, h = med["dockmesh"], med["haproxy"]
            ratio, p99r = d[0] / h[0], d[1] / max(h[1], 1e-6)
            good = ratio >= 0.8 and p99r <= 1.5 and d[2] == 0
            ok = ok and good
            print(
                f"{name:9} dockmesh/haproxy: {ratio:.2f}x req/s (goal >= 0.8), "
                f"{p99r:.2f}x p99 (goal <= 1.5); "
                f"dockmesh/nginx: {d[0] / med['nginx'][0]:.2f}x req/s  {'OK' if good else 'FAIL'}"
            )
        return 0 if ok else 1
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    p.kill()
        for f in pidfiles:
            with contextlib.suppress(OSError, ValueError):
                os.kill(int(f.read_text().split()[0]), signal.SIGTERM)
        time.sleep(0.2)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
