"""A client of one `dockmesh lab` for the tests and benchmarks that run on it: the lab's
commands as users type them (`python -m dockmesh lab …`), and quick questions asked from
inside a lab host's network namespace — its agent's API and DNS, as a process on that host
would ask them, without a process started per question (a timing of ±1 s needs answers in
milliseconds). The engines are reached over their unix sockets, the etcd members' keys with
`etcdctl` inside a member's namespace."""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import unquote

import dns.exception
import dns.message
import dns.query
import dns.rdatatype

from dockmesh.host.netns import NetnsPool
from dockmesh.lab.plan import API_PORT, DNS_PORT, ETCD_CLIENT_PORT, LabPlan
from dockmesh.lab.run import load

ROOT = "/dockmesh/v1/nodes/"


class LabClient:
    """One lab, by name. `close()` when done (it holds a few namespace threads)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.pool = NetnsPool(threads=4)

    def close(self) -> None:
        self.pool.close()

    # --- the lab's commands ------------------------------------------------------------------

    def cli(
        self, *args: str, check: bool = True, timeout: float = 240
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [sys.executable, "-m", "dockmesh", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, "DOCKMESH_LAB": self.name, "COLUMNS": "200"},
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"dockmesh {' '.join(args)} → {proc.returncode}\n{proc.stderr}")
        return proc

    def lab(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.cli("lab", *args, check=check)

    def status(self) -> dict[str, Any]:
        doc: dict[str, Any] = json.loads(self.lab("status", "--json").stdout)
        return doc

    def plan(self) -> LabPlan:
        state = load(self.name)
        if state is None:
            raise AssertionError(f"lab {self.name} is not up")
        return state.plan()

    def pids(self) -> dict[str, int]:
        state = load(self.name)
        return dict(state.pids) if state is not None else {}

    def engine_url(self, host: str) -> str:
        return self.plan().host(host).url

    def docker(self, host: str, *args: str, timeout: float = 120) -> str:
        proc = subprocess.run(
            ["docker", "-H", self.engine_url(host), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if proc.returncode != 0:
            raise AssertionError(f"docker {' '.join(args)} on {host}: {proc.stderr.strip()}")
        return proc.stdout

    # --- questions asked inside a host -------------------------------------------------------

    def ns_pid(self, host: str) -> int:
        """A process in `host`'s namespace that the failures leave alone: its engine."""
        return self.pids()[f"engine@{host}"]

    def _socket(self, pid: int, kind: int, timeout: float) -> socket.socket:
        sock = self.pool.socket(pid, socket.AF_INET, kind)
        sock.settimeout(timeout)
        return sock

    def udp_socket(self, host: str, pid: int | None = None) -> socket.socket:
        """A non-blocking UDP socket made in `host`'s namespace (or in `pid`'s)."""
        return self.pool.socket(pid or self.ns_pid(host), socket.AF_INET, socket.SOCK_DGRAM)

    def http(
        self,
        host: str,
        path: str,
        timeout: float = 2.0,
        pid: int | None = None,
        port: int = API_PORT,
    ) -> tuple[int, dict[str, str], Any]:
        """GET `path` from `host`'s agent: status, headers, the JSON body (None if not JSON)."""
        sock = self._socket(pid or self.ns_pid(host), socket.SOCK_STREAM, timeout)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        try:
            sock.connect(("127.0.0.1", port))
            conn.sock = sock
            conn.request("GET", path)
            resp = conn.getresponse()
            raw = resp.read()
            body: Any = None
            with contextlib.suppress(ValueError):
                body = json.loads(raw)
            return resp.status, dict(resp.headers.items()), body
        finally:
            conn.close()

    def dns(
        self,
        host: str,
        qname: str,
        timeout: float = 1.0,
        pid: int | None = None,
        server: str = "127.0.0.1",
        port: int = DNS_PORT,
    ) -> list[str] | None:
        """The A records of `qname` at `host`'s agent (or at `server` inside `pid`'s namespace:
        Docker's embedded DNS in a container); None when nothing answered."""
        sock = self._socket(pid or self.ns_pid(host), socket.SOCK_DGRAM, timeout)
        try:
            q = dns.message.make_query(qname, "A")
            r = dns.query.udp(q, server, port=port, timeout=timeout, sock=sock)
        except (dns.exception.Timeout, OSError):
            return None
        finally:
            sock.close()
        return sorted(
            item.to_text()
            for rrset in r.answer
            if rrset.rdtype == dns.rdatatype.A
            for item in rrset
        )

    def instances(
        self, host: str, services: Iterable[str], pid: int | None = None, port: int = API_PORT
    ) -> set[tuple[str, str]]:
        """(node, instance id) of every instance of `services` that `host`'s agent knows (its
        own under `host`, the others' under the node their `Meta.node` names)."""
        seen: set[tuple[str, str]] = set()
        for svc in services:
            code, _, rows = self.http(host, f"/v1/health/service/{svc}", pid=pid, port=port)
            if code != 200:
                raise AssertionError(f"{host}'s agent: /v1/health/service/{svc} → {code}")
            for row in rows:
                sid = str(row["Service"]["ID"])
                node = str((row["Service"].get("Meta") or {}).get("node") or host)
                seen.add((node, sid.removeprefix(f"{node}/")))
        return seen

    def known_leader(self, host: str) -> str:
        _, headers, _ = self.http(host, "/v1/health/service/none")
        return headers.get("X-Consul-KnownLeader", "")

    # --- etcd ---------------------------------------------------------------------------------

    def etcd_instances(self, services: Iterable[str] = ()) -> set[tuple[str, str]] | None:
        """(node, instance id) of every key etcd holds (of `services` when given: the value's
        service), asked of the first member that answers; None when none does."""
        wanted = set(services)
        for member in self.plan().etcd:
            proc = subprocess.run(
                ["nsenter", f"--net=/run/netns/{member.netns}", "etcdctl",
                 f"--endpoints={member.address}:{ETCD_CLIENT_PORT}", "--command-timeout=2s",
                 "get", "--prefix", ROOT, "--write-out=json"],
                capture_output=True, text=True, timeout=10,
                env={**os.environ, "ETCDCTL_API": "3"},
            )  # fmt: skip
            if proc.returncode != 0:
                continue
            got: set[tuple[str, str]] = set()
            for kv in json.loads(proc.stdout).get("kvs") or []:
                key = base64.b64decode(kv["key"]).decode()
                node, _, rest = key.removeprefix(ROOT).partition("/instances/")
                value = json.loads(base64.b64decode(kv["value"]))
                if not wanted or value.get("service") in wanted:
                    got.add((node, unquote(rest)))
            return got
        return None


def wait_for(pred: Callable[[], object], limit: float, step: float = 0.01) -> float:
    """Seconds until `pred()` is true; AssertionError after `limit` s."""
    t = time.monotonic()
    while time.monotonic() - t < limit:
        if pred():
            return time.monotonic() - t
        time.sleep(step)
    raise AssertionError(f"condition not reached within {limit} s")
