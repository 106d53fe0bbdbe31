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
`16k+20h` (16 KiB answers, requests carrying 20 extra headers). Then the TLS rows
(`tls_rows`, skipped with `--no-tls`): dockmesh's `--tls-listen` beside an HAProxy `bind …
ssl` with the same certificate, `tls-new` (a new connection per request: handshakes/s) and
`tls-ka` (keep-alive requests over TLS), printed as ratios to HAProxy. Goals: dockmesh at least 0.8x
HAProxy's requests/s and a p99 at most 1.5x HAProxy's, in both variants, with no errors. A
p99 that wrk did not print is missing, never 0: the goal then fails. The CPU each proxy spent
per request (from /proc) is printed too: on a shared machine it separates a proxy's own cost
from the contention.

`--baseline-src DIR` adds a fourth contender, `baseline`: the same proxy command run from
another dockmesh source tree (DIR or DIR/src on PYTHONPATH; e.g. `git worktree add
/tmp/before main`), in the same rounds, so a change's before/after ratios come from one run.

`--instructions` counts instead the instructions of one exchange, repeatably on a noisy machine
(a count does not depend on what else runs): each measurement runs twice under `valgrind
--tool=callgrind` with different numbers of exchanges, and the difference in instructions
divided by the difference in exchanges is printed. Two measurements: the `driver`, the proxy's
own objects driving whole exchanges against fake transports (its Python alone, no sockets,
no event loop); and the `process`, `dockmesh proxy` itself before the nginx backends serving
8 keep-alive clients (uvloop and the system calls' user side too; the sweep and the active
checks beside it add a little that depends on time), in both variants. The driver's lanes:
`fast`, the common request and a whole 4-byte response in one read; `split`, the common
request and a 16 KiB response in two reads, its head with the start of its body first, as
nginx sends a file; `general`, a head the fast lane leaves to the full reader and a response
cut in its head. Both measure this tree and the baseline.

Run: .venv/bin/python -m benchmarks.proxy [--seconds 5 --rounds 3] [--baseline-src DIR]
     .venv/bin/python -m benchmarks.proxy --instructions [--baseline-src DIR]
(haproxy, nginx, wrk and valgrind: scripts/setup.sh installs the first three). Everything
runs on loopback, from a temporary directory removed at the end; the processes started are
stopped by pid.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib
import itertools
import os
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HEADERS_20 = [f"X-Bench-Header-{i}: value-{i}-abcdefghijklmnopqrstuvwxyz" for i in range(20)]
VARIANTS: dict[str, tuple[str, list[str]]] = {"small": ("/", []), "16k+20h": ("/16k", HEADERS_20)}
HERE = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Result:
    rps: float
    p99_ms: float | None  # None: wrk printed no 99th percentile
    errors: int
    cpu_us: float | None


def parse_wrk(out: str) -> tuple[float, float | None, int, int]:
    rps = float(_must(re.search(r"Requests/sec:\s+([\d.]+)", out)).group(1))
    m = re.search(r"^\s+99%\s+([\d.]+)(us|ms|s)\b", out, re.M)
    p99 = None
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


def median_p99(results: list[Result]) -> float | None:
    """The median p99 over the rounds, or None when any round has none: a round without a
    figure is not a fast round."""
    got = [r.p99_ms for r in results]
    if not got or any(p is None for p in got):
        return None
    return statistics.median(p for p in got if p is not None)


def cpu_ticks(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total


def wrk(
    port: int,
    path: str,
    seconds: int,
    headers: list[str],
    pids: list[int],
    scheme: str = "http",
) -> Result:
    cmd = ["wrk", "-t1", "-c50", f"-d{seconds}s", "--latency"]
    for h in headers:
        cmd += ["-H", h]
    before = cpu_ticks(pids)
    out = subprocess.run(
        [*cmd, f"{scheme}://127.0.0.1:{port}{path}"], capture_output=True, text=True, check=True
    ).stdout
    used = cpu_ticks(pids) - before
    rps, p99, errors, total = parse_wrk(out)
    hz = os.sysconf("SC_CLK_TCK")
    return Result(rps, p99, errors, used / hz / max(total, 1) * 1e6 if pids else None)


def children_of(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(x) for x in out.split()]


def source_dir(tree: str) -> Path:
    """A dockmesh source tree's directory for PYTHONPATH: TREE/src, or TREE itself."""
    path = Path(tree).resolve()
    for candidate in (path / "src", path):
        if (candidate / "dockmesh" / "__init__.py").is_file():
            return candidate
    raise SystemExit(f"benchmarks.proxy: {tree} holds no dockmesh package (nor its src/ does)")


def tree_env(src: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(src)}


def check_imports(src: Path) -> None:
    """The tree's package is the one a child started with `tree_env` imports."""
    got = subprocess.run(
        [sys.executable, "-c", "import dockmesh; print(dockmesh.__file__)"],
        env=tree_env(src), capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    if not got.startswith(str(src) + os.sep):
        raise SystemExit(f"benchmarks.proxy: PYTHONPATH={src} imports {got}, not that tree")


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument(
        "--baseline-src", metavar="DIR", help="another dockmesh tree, run as contender 'baseline'"
    )
    ap.add_argument(
        "--instructions", action="store_true", help="instructions per exchange (callgrind)"
    )
    ap.add_argument(
        "--no-tls", action="store_true", help="skip the TLS rows (handshakes/s, keep-alive)"
    )
    ap.add_argument("--tls-only", action="store_true", help="only the TLS rows")
    ap.add_argument("--exchanges", type=int, help=argparse.SUPPRESS)  # callgrind's child
    ap.add_argument("--lane", choices=LANES, default="fast", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.exchanges is not None:
        drive_exchanges(args.exchanges, args.lane)
        return 0
    trees = {"dockmesh": source_dir(str(HERE))}
    if args.baseline_src:
        trees["baseline"] = source_dir(args.baseline_src)
    for src in trees.values():
        check_imports(src)
    if args.instructions:
        return instructions(trees)
    return throughput(args, trees)


def start_backends(tmp: Path) -> list[int]:
    """Three nginx backends on loopback (`/`: 4 bytes; `/16k`: a 16 KiB file), their pid in
    TMP/be.pid; their ports."""
    # nginx's workers run as an unprivileged user: they must be able to read the file.
    tmp.chmod(0o755)
    www = tmp / "www"
    www.mkdir(mode=0o755)
    (www / "16k").write_bytes(os.urandom(8192).hex().encode())  # 16 KiB
    (www / "16k").chmod(0o644)
    be = [free_port() for _ in range(3)]
    servers = "\n".join(
        f'server {{ listen 127.0.0.1:{p}; root {www}; location = / {{ return 200 "be{i}\\n"; }} }}'
        for i, p in enumerate(be, 1)
    )
    (tmp / "be.conf").write_text(
        f"worker_processes 1; daemon on; pid {tmp}/be.pid; error_log {tmp}/be.err;\n"
        "events { worker_connections 4096; }\n"
        f"http {{ access_log off; keepalive_requests 100000; {servers} }}\n"
    )
    subprocess.run(["nginx", "-c", str(tmp / "be.conf")], check=True)
    return be


def stop_pidfiles(pidfiles: list[Path]) -> None:
    for f in pidfiles:
        with contextlib.suppress(OSError, ValueError):
            os.kill(int(f.read_text().split()[0]), signal.SIGTERM)


def throughput(args: argparse.Namespace, trees: dict[str, Path]) -> int:
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
        be = start_backends(tmp)
        hap, ngx = free_port(), free_port()
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
        subprocess.run(["nginx", "-c", str(tmp / "lb.conf")], check=True)
        subprocess.run(
            ["haproxy", "-D", "-f", str(tmp / "hap.cfg"), "-p", str(tmp / "hap.pid")], check=True
        )
        ports: dict[str, int] = {}
        for name, src in trees.items():
            port, admin = free_port(), free_port()
            log = tmp / f"{name}.log"
            proxy = subprocess.Popen(
                [sys.executable, "-m", "dockmesh", "proxy", "--listen", f"127.0.0.1:{port}",
                 "--workers", "1", "--admin", f"127.0.0.1:{admin}",
                 *[a for p in be for a in ("--backend", f"http://127.0.0.1:{p}")]],
                stdout=log.open("wb"), stderr=subprocess.STDOUT, env=tree_env(src),
            )  # fmt: skip
            procs.append(proxy)
            ports[name] = port
            deadline = time.monotonic() + 20
            while True:
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=1):
                        break
                except OSError:
                    if time.monotonic() > deadline or proxy.poll() is not None:
                        print(log.read_text(), file=sys.stderr)
                        return 1
                    time.sleep(0.1)
        time.sleep(0.5)
        hap_pid = int((tmp / "hap.pid").read_text().split()[0])
        lb_master = int((tmp / "lb.pid").read_text().split()[0])
        peers = {
            "haproxy": (hap, [hap_pid]),
            "nginx": (ngx, children_of(lb_master)),
            **{name: (ports[name], [p.pid]) for name, p in zip(trees, procs, strict=True)},
        }
        variants = {} if args.tls_only else VARIANTS
        results: dict[tuple[str, str], list[Result]] = {}
        for name, (path, hdrs) in variants.items():
            for port, _ in peers.values():  # warm up: pools, caches
                wrk(port, path, 1, hdrs, [])
            for r in range(args.rounds):
                order = list(peers.items())
                order = order[r % len(order) :] + order[: r % len(order)]
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
            med: dict[str, tuple[float, float | None, int, float]] = {}
            for peer in peers:
                rs = results[(name, peer)]
                rps = statistics.median(r.rps for r in rs)
                p99 = median_p99(rs)
                errs = sum(r.errors for r in rs)
                cpus = [r.cpu_us for r in rs if r.cpu_us is not None]
                cpu = statistics.median(cpus) if cpus else float("nan")
                med[peer] = (rps, p99, errs, cpu)
                shown = "missing" if p99 is None else f"{p99:.2f}"
                print(f"{name:9} {peer:9} {rps:9.0f} {shown:>8} {errs:6d} {cpu:10.1f}")
            for peer in trees:
                d, h = med[peer], med["haproxy"]
                ratio = d[0] / h[0]
                p99r = ratio_of(d[1], h[1])
                good = ratio >= 0.8 and p99r is not None and p99r <= 1.5 and d[2] == 0
                ok = ok and good
                print(
                    f"{name:9} {peer}/haproxy: {ratio:.2f}x req/s (goal >= 0.8), "
                    f"{show_ratio(p99r)} p99 (goal <= 1.5); "
                    f"{peer}/nginx: {d[0] / med['nginx'][0]:.2f}x req/s  {'OK' if good else 'FAIL'}"
                )
            if "baseline" in med:
                d, b = med["dockmesh"], med["baseline"]
                # Each round's pair ran close in time: their ratio drifts less with the load.
                pairs = zip(results[(name, "dockmesh")], results[(name, "baseline")], strict=True)
                paired = statistics.median(x.rps / y.rps for x, y in pairs)
                print(
                    f"{name:9} dockmesh/baseline: {d[0] / b[0]:.3f}x req/s (rounds' ratios: "
                    f"median {paired:.3f}x), {show_ratio(ratio_of(d[1], b[1]))} p99, "
                    f"{d[3] / b[3]:.3f}x cpu us/req"
                )
        if not args.no_tls:
            ok = tls_rows(args, tmp, be, procs) and ok
        return 0 if ok else 1
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    p.kill()
        stop_pidfiles(pidfiles)
        time.sleep(0.2)
        shutil.rmtree(tmp, ignore_errors=True)


# The TLS rows: `tls-new`, a new connection (a full handshake: wrk resumes no session) per
# request, so req/s are handshakes/s; `tls-ka`, keep-alive requests over TLS.
TLS_VARIANTS: dict[str, list[str]] = {"tls-new": ["Connection: close"], "tls-ka": []}


def tls_rows(
    args: argparse.Namespace, tmp: Path, be: list[int], procs: list[subprocess.Popen[bytes]]
) -> bool:
    """dockmesh's TLS listener beside an HAProxy `bind … ssl` with the same certificate (an
    EC P-256 leaf from a dockmesh CA made here), TLS 1.2+ on both, the same backends; rows
    printed as ratios to HAProxy. This tree only (a baseline may have no TLS)."""
    import datetime as dt

    from cryptography.hazmat.primitives import serialization

    from dockmesh.pki.ca import init_ca

    now = dt.datetime.now(dt.UTC)
    cert, key = init_ca(tmp / "ca", now).issue_leaf("bench.test", now)
    pem = cert.public_bytes(serialization.Encoding.PEM)
    (tmp / "tls.crt").write_bytes(pem)
    (tmp / "tls.key").write_bytes(key)
    (tmp / "hap-tls.pem").write_bytes(pem + key)
    hap, port = free_port(), free_port()
    hap_servers = "\n".join(f"  server b{i} 127.0.0.1:{p} check" for i, p in enumerate(be, 1))
    (tmp / "hap-tls.cfg").write_text(
        "global\n  maxconn 4000\n  nbthread 1\n  ssl-default-bind-options ssl-min-ver TLSv1.2\n"
        "defaults\n  mode http\n  timeout connect 5s\n  timeout client 30s\n"
        "  timeout server 30s\n"
        f"frontend fe\n  bind 127.0.0.1:{hap} ssl crt {tmp}/hap-tls.pem alpn http/1.1\n"
        "  http-request set-header X-Forwarded-Proto https\n  default_backend be\n"
        f"backend be\n  balance roundrobin\n  http-reuse always\n{hap_servers}\n"
    )
    subprocess.run(
        ["haproxy", "-D", "-f", str(tmp / "hap-tls.cfg"), "-p", str(tmp / "hap-tls.pid")],
        check=True,
    )
    try:
        log = tmp / "dockmesh-tls.log"
        proxy = subprocess.Popen(
            [sys.executable, "-m", "dockmesh", "proxy", "--tls-listen", f"127.0.0.1:{port}",
             "--tls-cert", str(tmp / "tls.crt"), "--tls-key", str(tmp / "tls.key"),
             "--workers", "1", "--admin", f"127.0.0.1:{free_port()}",
             *[a for p in be for a in ("--backend", f"http://127.0.0.1:{p}")]],
            stdout=log.open("wb"), stderr=subprocess.STDOUT, env=tree_env(source_dir(str(HERE))),
        )  # fmt: skip
        procs.append(proxy)
        deadline = time.monotonic() + 20
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline or proxy.poll() is not None:
                    print(log.read_text(), file=sys.stderr)
                    return False
                time.sleep(0.1)
        time.sleep(0.5)
        hap_pid = int((tmp / "hap-tls.pid").read_text().split()[0])
        peers = {"haproxy": (hap, [hap_pid]), "dockmesh": (port, [proxy.pid])}
        results: dict[tuple[str, str], list[Result]] = {}
        for name, hdrs in TLS_VARIANTS.items():
            for p, _ in peers.values():
                wrk(p, "/", 1, hdrs, [], "https")
            for r in range(args.rounds):
                order = list(peers.items())[r % 2 :] + list(peers.items())[: r % 2]
                for peer, (p, pids) in order:
                    results.setdefault((name, peer), []).append(
                        wrk(p, "/", args.seconds, hdrs, pids, "https")
                    )
        print("TLS (same EC P-256 certificate, TLS 1.3 negotiated by wrk; tls-new: req/s are "
              "handshakes/s)")  # fmt: skip
        ok = True
        for name in TLS_VARIANTS:
            med = {}
            for peer in peers:
                rs = results[(name, peer)]
                cpus = [x.cpu_us for x in rs if x.cpu_us is not None]
                med[peer] = (
                    statistics.median(x.rps for x in rs),
                    median_p99(rs),
                    sum(x.errors for x in rs),
                    statistics.median(cpus) if cpus else float("nan"),
                )
                rps, p99, errs, cpu = med[peer]
                shown = "missing" if p99 is None else f"{p99:.2f}"
                print(f"{name:9} {peer:9} {rps:9.0f} {shown:>8} {errs:6d} {cpu:10.1f}")
            d, h = med["dockmesh"], med["haproxy"]
            ok = ok and d[2] == 0
            print(
                f"{name:9} dockmesh/haproxy: {d[0] / h[0]:.2f}x req/s, "
                f"{show_ratio(ratio_of(d[1], h[1]))} p99, "
                f"{d[3] / h[3]:.2f}x cpu us/req{'' if d[2] == 0 else '  FAIL (errors)'}"
            )
        return ok
    finally:
        stop_pidfiles([tmp / "hap-tls.pid"])


def ratio_of(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a / max(b, 1e-6)


def show_ratio(r: float | None) -> str:
    return "missing" if r is None else f"{r:.2f}x"


# --- instructions per exchange ------------------------------------------------------------

LANES = ("fast", "split", "general")
REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nUser-Agent: wrk\r\n\r\n"
RESPONSE = (
    b"HTTP/1.1 200 OK\r\nServer: nginx\r\nDate: Mon, 01 Jan 2024 00:00:00 GMT\r\n"
    b"Content-Type: text/plain\r\nContent-Length: 4\r\nConnection: keep-alive\r\n\r\nbe1\n"
)
COUNTS = (2000, 6000)
CLIENTS = 8


class _Loop:
    """What the proxy asks of its loop on the request path, as C callables (as uvloop's are),
    so that only the proxy's own Python is counted: the time (always the same), and
    `call_soon` (the driver runs the callbacks at the end of each pass)."""

    def __init__(self) -> None:
        self.ready: list[Any] = []
        self.time = itertools.repeat(1000.0).__next__
        self.call_soon = self.ready.append

    def run_ready(self) -> None:
        ready = self.ready
        for fn in ready:
            fn()
        ready.clear()


class _Transport:
    """A transport whose request-path methods are C callables, as uvloop's are; it keeps what
    is written until the driver clears it."""

    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.write = self.written.append
        self.is_closing = False.__bool__
        self.is_reading = True.__bool__

    def close(self) -> None:
        raise AssertionError("the driver's exchanges keep their connections")

    abort = pause_reading = resume_reading = close

    def set_write_buffer_limits(self, high: int, low: int) -> None:
        return None

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("10.0.0.9", 4242) if name == "peername" else default


def drive_exchanges(n: int, lane: str) -> None:
    """`n` whole exchanges through one client connection and three pooled upstream
    connections, as the event loop would deliver them."""
    from dockmesh.proxy.cluster import Cluster
    from dockmesh.proxy.server import ClientConn, Proxy, UpstreamConn

    try:
        settings: Any = importlib.import_module("dockmesh.proxy.settings")
    except ImportError:  # a tree from before the settings had a module of their own
        settings = importlib.import_module("dockmesh.proxy.server")

    loop: Any = _Loop()
    cluster: Any = Cluster("b", "round_robin", clock=time.monotonic, rng=random.Random(0))
    cluster.set_members({"127.0.0.1:1": 1, "127.0.0.1:2": 1, "127.0.0.1:3": 1})
    proxy = Proxy(settings.ProxySettings(routes=[settings.Route(cluster=cluster)]), loop)
    for up in cluster.upstreams.values():
        conn = UpstreamConn(proxy, up)
        conn.connection_made(_Transport())  # type: ignore[arg-type]
        up.connections += 1
        up.idle.append(conn)
    client = ClientConn(proxy)
    client_t = _Transport()
    client.connection_made(client_t)  # type: ignore[arg-type]
    # A header the fast lane leaves to the full reader; a response in two reads.
    general = lane == "general"
    request = REQUEST[:-2] + b"Connection: keep-alive\r\n\r\n" if general else REQUEST
    response = RESPONSE
    cut = 40  # in the head
    if lane == "split":
        response = RESPONSE.replace(b"Content-Length: 4", b"Content-Length: 16384")[:-4]
        response += b"x" * 16384
        cut = len(response) - 8192
    gc.collect()
    gc.freeze()
    for _ in range(n):
        client.data_received(request)
        loop.run_ready()
        up_conn = client.up
        assert up_conn is not None and up_conn.transport is not None
        up_conn.transport.written.clear()  # type: ignore[attr-defined]
        if lane == "fast":
            up_conn.data_received(response)
        else:
            up_conn.data_received(response[:cut])
            up_conn.data_received(response[cut:])
        loop.run_ready()
        assert client.up is None and client_t.written
        client_t.written.clear()
    assert sum(u.requests for u in cluster.upstreams.values()) == n


def instructions(trees: dict[str, Path]) -> int:
    if not shutil.which("valgrind") or not shutil.which("nginx"):
        print("benchmarks.proxy: --instructions needs valgrind and nginx", file=sys.stderr)
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="dmbproxy"))
    try:
        print(f"instructions per exchange, callgrind ({COUNTS[1]} - {COUNTS[0]} exchanges)")
        got: dict[tuple[str, str], int] = {}

        def show(lane: str, name: str, per: int) -> None:
            got[(name, lane)] = per
            print(f"{lane:16} {name:9} {per:8d}", flush=True)
            if name == "baseline":
                ratio = got[("dockmesh", lane)] / per
                print(f"{lane:16} dockmesh/baseline: {ratio:.4f}x", flush=True)

        for lane in LANES:
            for name, src in trees.items():
                ir = [callgrind(src, lane, n, tmp) for n in COUNTS]
                show(f"driver {lane}", name, (ir[1] - ir[0]) // (COUNTS[1] - COUNTS[0]))
        # The whole proxy process: uvloop and the sockets too (user space), the active checks
        # and the sweep beside it (they add a little that depends on time).
        be = start_backends(tmp)
        try:
            for variant, (path, headers) in VARIANTS.items():
                for name, src in trees.items():
                    ir = [process_callgrind(src, be, path, headers, n, tmp) for n in COUNTS]
                    show(f"process {variant}", name, (ir[1] - ir[0]) // (COUNTS[1] - COUNTS[0]))
        finally:
            stop_pidfiles([tmp / "be.pid"])
        return 0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def process_callgrind(
    src: Path, be: list[int], path: str, headers: list[str], n: int, tmp: Path
) -> int:
    """Instructions of `dockmesh proxy` (the tree at `src`) under callgrind serving `n`
    requests on CLIENTS keep-alive connections, start-up and stop included."""
    port = free_port()
    env = {**tree_env(src), "PYTHONHASHSEED": "0"}
    proc = subprocess.Popen(
        ["valgrind", "--tool=callgrind", f"--callgrind-out-file={tmp}/cg.%p",
         sys.executable, "-m", "dockmesh", "proxy", "--listen", f"127.0.0.1:{port}",
         "--workers", "1", *[a for p in be for a in ("--backend", f"http://127.0.0.1:{p}")]],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("the proxy under callgrind did not listen") from None
                time.sleep(0.2)
        request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        request += "".join(f"{h}\r\n" for h in headers) + "\r\n"
        threads = [
            threading.Thread(target=_keep_alive_client, args=(port, request.encode(), n // CLIENTS))
            for _ in range(CLIENTS)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    m = re.search(r"Collected : (\d+)", err)
    if m is None:
        raise RuntimeError(f"callgrind printed no count: {err[-500:]}")
    return int(m.group(1))


def _keep_alive_client(port: int, request: bytes, n: int) -> None:
    """`n` requests one after the other on one connection, each response read whole."""
    with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
        buf = b""
        for _ in range(n):
            s.sendall(request)
            while True:
                end = buf.find(b"\r\n\r\n")
                if end >= 0:
                    m = re.search(rb"(?i)\r\ncontent-length: *(\d+)", buf[:end])
                    if m is None:
                        raise RuntimeError(f"a response without Content-Length: {buf[:end]!r}")
                    whole = end + 4 + int(m.group(1))
                    if len(buf) >= whole:
                        buf = buf[whole:]
                        break
                chunk = s.recv(1 << 16)
                if not chunk:
                    raise RuntimeError("the proxy closed the connection")
                buf += chunk


def callgrind(src: Path, lane: str, n: int, tmp: Path) -> int:
    """Instructions of a whole run of `drive_exchanges(n, lane)` on the tree at `src`."""
    env = {**tree_env(src), "PYTHONHASHSEED": "0", "PYTHONPATH": f"{src}{os.pathsep}{HERE}"}
    out = subprocess.run(
        ["valgrind", "--tool=callgrind", f"--callgrind-out-file={tmp}/cg.%p",
         sys.executable, "-m", "benchmarks.proxy", "--exchanges", str(n), "--lane", lane],
        env=env, cwd=HERE, capture_output=True, text=True, check=True,
    )  # fmt: skip
    m = re.search(r"Collected : (\d+)", out.stderr)
    if m is None:
        raise RuntimeError(f"callgrind printed no count: {out.stderr[-500:]}")
    return int(m.group(1))


if __name__ == "__main__":
    sys.exit(main())
