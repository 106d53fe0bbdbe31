"""A swarm service behind dockmesh's proxy on a real three-host lab (`dockmesh lab up --hosts 3`,
etcd-shared catalog): the tasks of `docker service create --replicas 3` on an attachable
overlay, spread over the hosts, are instances of the service on every host's agent (its own
task checked locally, the others' from the shared catalog) at their overlay addresses; the
proxy, a container on host1 attached to the overlay and following host1's agent, balances over
all three across hosts; a task that fails its check leaves the rotation and comes back; a
host whose agent is killed loses its task after the lease's TTL; a host cut off from the lab
(its task unreachable) costs the proxy's clients next to nothing while the catalog still
lists it (passive health and retries), and leaves after the TTL. Timings are printed.

The proxy runs this tree's code: `src` is mounted into the `dockmesh/python` image, ahead of
the image's own copy. `DOCKMESH_TEST_LAB=NAME` uses a lab that is already up (and leaves it
up) instead of making one."""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import secrets
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import pytest

from tests.integration.conftest import TOOLBOX

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("lab")]

PYTHON = "dockmesh/python:latest"
SRC = Path(__file__).resolve().parents[2] / "src"
TTL_S = 10.0  # the agents' lease (catalog/etcdstore.LEASE_TTL_S)
CHECK_INTERVAL_S = 1.0
PROXY_PORT = 18080  # published on host1 (its own namespace: no clash with anything else)
ADMIN_PORT = 18001  # the proxy's /status, published beside it
# httpd serves /w: /w/ok answers 200 until a test removes it, /w/id is the task's hostname.
SERVE = "mkdir -p /w && echo ok > /w/ok && hostname > /w/id && exec httpd -f -p 8080 -h /w"
# Asks the proxy for /id every 50 ms from host1's namespace, one line a reply:
# "<wall time sent> <seconds taken> <status> <body>" (status 0: no HTTP answer).
POLLER = """
import sys, time, urllib.error, urllib.request
while True:
    t = time.time()
    try:
        with urllib.request.urlopen(sys.argv[1], timeout=5) as r:
            code, body = r.status, r.read().decode().strip() or "-"
    except urllib.error.HTTPError as e:
        code, body = e.code, "-"
    except Exception as e:
        why = str(getattr(e, "reason", "") or e).replace(" ", "_")[:80]
        code, body = 0, f"{type(e).__name__}:{why}"
    print(f"{t:.3f} {time.time() - t:.3f} {code} {body}", flush=True)
    time.sleep(0.05)
"""


def dm(lab: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "dockmesh", *args],
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, "DOCKMESH_LAB": lab, "COLUMNS": "200"},
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"dockmesh {' '.join(args)} → {proc.returncode}\n{proc.stderr}")
    return proc


def wait_for(pred: Callable[[], Any], limit: float, what: str, step: float = 0.1) -> Any:
    deadline = time.monotonic() + limit
    while True:
        got = pred()
        if got:
            return got
        assert time.monotonic() < deadline, f"{what}: not within {limit} s"
        time.sleep(step)


@dataclass
class Host:
    name: str
    address: str
    netns: str
    api: Any  # docker.APIClient on this host's engine

    def agent(self, path: str) -> Any:
        """GET on this host's agent, from inside its namespace; None while it does not
        answer."""
        return self.get(f"http://127.0.0.1:8500{path}")

    def passing(self, service: str) -> dict[str, tuple[str, str]] | None:
        """The service's passing instances on this host's agent: ID → (address, Meta node)."""
        rows = self.agent(f"/v1/health/service/{service}?passing")
        if rows is None:
            return None
        return {
            r["Service"]["ID"]: (r["Service"]["Address"], r["Service"]["Meta"].get("node", ""))
            for r in rows
        }

    def get(self, url: str) -> Any:
        """GET `url` from inside this host's namespace; None without an answer."""
        proc = subprocess.run(
            ["nsenter", f"--net=/run/netns/{self.netns}", "curl", "-sf", "--max-time", "3", url],
            capture_output=True,
            text=True,
            timeout=10,
        )
        return json.loads(proc.stdout) if proc.returncode == 0 else None

    def members(self) -> set[str] | None:
        """The proxy's upstreams (host1's: its /status), or None while it does not answer."""
        doc = self.get(f"http://127.0.0.1:{ADMIN_PORT}/status")
        return None if doc is None else {u["address"] for u in doc["upstreams"]}

    def lists(self, service: str, instance: str) -> bool | None:
        """Whether this host's agent lists `instance` of `service` as passing (None: the agent
        does not answer)."""
        got = self.passing(service)
        return None if got is None else instance in got

    def tasks(self, service: str) -> dict[str, dict[str, Any]]:
        """The running task containers of `service` on this host: name → inspect."""
        out = {}
        for c in self.api.containers(filters={"label": f"com.docker.swarm.service.name={service}"}):
            i = self.api.inspect_container(c["Id"])
            out[i["Name"].lstrip("/")] = i
        return out

    def exec(self, container: str, *cmd: str) -> None:
        self.api.exec_start(self.api.exec_create(container, list(cmd)))


@dataclass
class Task:
    name: str  # the task's container name: its instance ID on its own host
    host: str
    address: str  # on the overlay
    backend: str  # what it answers on /id (its hostname)


class Poller:
    """The client: a process in host1's namespace asking the proxy all along."""

    def __init__(self, host: Host, tmp: Path, url: str) -> None:
        self.out = tmp / "poller.log"
        self.proc = subprocess.Popen(
            [
                "nsenter",
                f"--net=/run/netns/{host.netns}",
                sys.executable,
                "-c",
                POLLER,
                url,
            ],
            stdout=self.out.open("wb"),
            stderr=subprocess.STDOUT,
        )

    def replies(self, since: float = 0.0) -> list[tuple[float, float, int, str]]:
        rows = []
        for line in self.out.read_text().splitlines():
            parts = line.split(" ", 3)
            if len(parts) == 4 and float(parts[0]) >= since:
                rows.append((float(parts[0]), float(parts[1]), int(parts[2]), parts[3]))
        return rows

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)


@dataclass
class Mesh:
    lab: str
    hosts: dict[str, Host]
    service: str
    overlay: str
    tasks: list[Task]
    poller: Poller
    proxy: str = ""  # the proxy's container on host1

    def no_errors(self, since: float) -> str:
        """Nothing when every reply since `since` was a 200; else the others, for the
        assertion, with the proxy container's state and the end of its log."""
        bad = [r for r in self.poller.replies(since) if r[2] != 200]
        if not bad:
            return ""
        api = self.hosts["host1"].api
        try:
            state = api.inspect_container(self.proxy)["State"]
            logs = api.logs(self.proxy, tail=15, timestamps=True).decode(errors="replace")
        except Exception as e:  # the diagnosis must not hide the failure
            state, logs = {"error": str(e)}, ""
        return (
            f"clients saw errors (since {since:.3f}): {bad[:20]} ({len(bad)} in all); "
            f"the proxy's state {state}; its log ends:\n{logs}"
        )

    def task_on(self, host: str) -> Task:
        return next(t for t in self.tasks if t.host == host)

    def last_reply_from(self, backend: str, since: float, quiet: float = 3.0) -> float:
        """When `backend` last answered after `since`, once it has not answered for `quiet` s
        while others did (waits for that)."""

        def settled() -> float | None:
            rows = self.poller.replies(since)
            mine = [t for t, _, code, body in rows if body == backend and code == 200]
            last = mine[-1] if mine else since
            others = [t for t, _, code, body in rows if t > last + quiet and code == 200]
            return last if others else None

        got: float = wait_for(settled, 60, f"{backend} out of rotation", step=0.3)
        return got

    def first_reply_from(self, backend: str, since: float) -> float:
        def seen() -> float | None:
            rows = self.poller.replies(since)
            return next((t for t, _, code, body in rows if body == backend and code == 200), None)

        got: float = wait_for(seen, 60, f"{backend} back in rotation", step=0.3)
        return got


@pytest.fixture(scope="module")
def lab3(toolbox: str, api: Any) -> Iterator[str]:
    """A lab of three hosts sharing the catalog through etcd; removed after the module, on
    failure too."""
    given = os.environ.get("DOCKMESH_TEST_LAB")
    if given:
        yield given
        return
    try:
        api.inspect_image(PYTHON)
    except docker.errors.ImageNotFound:
        pytest.fail("dockmesh/python is missing: scripts/test builds it (dockmesh images build)")
    name = f"t{secrets.token_hex(4)}"
    t0 = time.monotonic()
    try:
        dm(name, "lab", "up", "--hosts", "3", "--image", toolbox, "--image", PYTHON)
        print(f"lab up --hosts 3: {time.monotonic() - t0:.1f} s")
        yield name
    finally:
        dm(name, "lab", "down", check=False)


@pytest.fixture(scope="module")
def mesh(lab3: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    doc = json.loads(dm(lab3, "lab", "status", "--json").stdout)
    assert doc["shared_store"], doc
    hosts = {
        h["name"]: Host(
            h["name"],
            h["address"],
            h["netns"],
            docker.APIClient(base_url=h["engine"], version="auto", timeout=60),
        )
        for h in doc["hosts"]
    }
    assert list(hosts) == ["host1", "host2", "host3"]
    h1 = hosts["host1"]
    prefix = f"dmt{secrets.token_hex(3)}"
    overlay, service, proxy = f"{prefix}_ov", f"{prefix}web", f"{prefix}-proxy"
    tmp = tmp_path_factory.mktemp("multihost-proxy")
    poller = None
    try:
        h1.api.create_network(overlay, driver="overlay", attachable=True)
        h1.api.create_service(
            docker.types.TaskTemplate(
                docker.types.ContainerSpec(
                    TOOLBOX,
                    command=["sh", "-c", SERVE],
                    labels={
                        "dockmesh.port": "8080",
                        "dockmesh.check.http": "/ok",
                        "dockmesh.check.interval": f"{CHECK_INTERVAL_S:g}s",
                        "dockmesh.check.timeout": "1s",
                    },
                ),
                networks=[docker.types.NetworkAttachmentConfig(overlay)],
                # one task a host: the spread is the point
                placement=docker.types.Placement(maxreplicas=1),
            ),
            name=service,
            mode=docker.types.ServiceMode("replicated", replicas=3),
        )
        t0 = time.monotonic()
        running = wait_for(
            lambda: (
                (t := {n: h.tasks(service) for n, h in hosts.items()})
                and all(len(x) == 1 for x in t.values())
                and t
            ),
            180,
            "a running task on each host",
            step=0.5,
        )
        print(f"3 tasks running, one a host: {time.monotonic() - t0:.1f} s")
        tasks = []
        for hname, mine in running.items():
            [(tname, i)] = mine.items()
            address = i["NetworkSettings"]["Networks"][overlay]["IPAddress"]
            tasks.append(Task(tname, hname, address, i["Config"]["Hostname"]))

        # The proxy: on host1, on the overlay (the tasks' addresses are reached there), asking
        # host1's agent at its lab address (through docker_gwbridge, host1's own address).
        h1.api.create_container(
            PYTHON,
            name=proxy,
            command=[
                *("dockmesh", "proxy", "--service", service),
                *("--agent", f"http://{h1.address}:8500"),
                *("--listen", "0.0.0.0:8080", "--admin", "0.0.0.0:8001"),
            ],
            environment={"PYTHONPATH": "/dmsrc:/opt/dockmesh"},
            ports=[8080, 8001],
            host_config=h1.api.create_host_config(
                network_mode=overlay,
                port_bindings={8080: ("127.0.0.1", PROXY_PORT), 8001: ("127.0.0.1", ADMIN_PORT)},
                binds={str(SRC): {"bind": "/dmsrc", "mode": "ro"}},
            ),
        )
        h1.api.start(proxy)
        # The poller asks the proxy at its own address on docker_gwbridge, not through the
        # published port: docker-proxy, which serves a port published on 127.0.0.1, is
        # Docker's, and what is checked is what dockmesh's proxy does.
        pid = h1.api.inspect_container(proxy)["Id"]
        ends = h1.api.inspect_network("docker_gwbridge")["Containers"]
        direct = str(ends[pid]["IPv4Address"]).split("/")[0]
        poller = Poller(h1, tmp, f"http://{direct}:8080/id")
        # Ready before any test looks: the proxy balances over the three tasks and the
        # poller's requests are answered. (A test that ran first counted the proxy's own start
        # as clients' errors: refused while it did not listen yet, 503 before it knew the
        # tasks; through docker-proxy the same moments were quick resets.)
        every = {f"{t.address}:8080" for t in tasks}
        wait_for(lambda: (h1.members() or set()) >= every, 60, "the proxy lists the 3 tasks")
        ready = time.time()
        wait_for(lambda: any(r[2] == 200 for r in poller.replies(ready)), 30, "a 200 polled")
        yield Mesh(lab3, hosts, service, overlay, tasks, poller, proxy)
    finally:
        if poller is not None:
            poller.stop()
        for c in (proxy,):
            with contextlib.suppress(Exception):
                print(h1.api.logs(c, tail=30).decode(errors="replace"))
            with contextlib.suppress(Exception):
                h1.api.remove_container(c, force=True)
        with contextlib.suppress(Exception):
            h1.api.remove_service(service)
        # the tasks go with the service; the overlay once they are gone
        for _ in range(60):
            try:
                h1.api.remove_network(overlay)
                break
            except Exception:
                time.sleep(1)


def expected_listing(mesh: Mesh, seen_from: str) -> dict[str, tuple[str, str]]:
    """What `seen_from`'s agent lists: its own task under its name, the others as
    `hostN/<name>` with the Meta node saying where they run."""
    return {
        (t.name if t.host == seen_from else f"{t.host}/{t.name}"): (
            t.address,
            "" if t.host == seen_from else t.host,
        )
        for t in mesh.tasks
    }


def test_every_agent_lists_all_tasks_and_the_proxy_balances_over_hosts(mesh: Mesh) -> None:
    t0 = time.monotonic()
    for name, host in mesh.hosts.items():
        want = expected_listing(mesh, name)
        wait_for(lambda h=host, w=want: h.passing(mesh.service) == w, 60, f"{name}'s listing")  # type: ignore[misc]
    print(f"every agent lists the 3 tasks passing: {time.monotonic() - t0:.1f} s")
    subnet = ipaddress.ip_network(
        mesh.hosts["host1"].api.inspect_network(mesh.overlay)["IPAM"]["Config"][0]["Subnet"]
    )
    assert all(ipaddress.ip_address(t.address) in subnet for t in mesh.tasks)

    backends = {t.backend for t in mesh.tasks}
    since = time.time()
    wait_for(
        lambda: {b for _, _, c, b in mesh.poller.replies(since) if c == 200} == backends,
        60,
        "replies from the 3 tasks",
        step=0.3,
    )
    start = time.time()
    wait_for(lambda: len(mesh.poller.replies(start)) >= 90, 60, "90 replies", step=0.3)
    window = mesh.poller.replies(start)[:90]
    count = Counter(b for _, _, c, b in window if c == 200)
    by_host = {t.host: count[t.backend] for t in mesh.tasks}
    print(f"90 requests through the proxy on host1: {by_host}")
    assert sum(count.values()) == 90, window
    # round robin: 30 each (a request in flight around the window's edges aside)
    assert all(27 <= n <= 33 for n in by_host.values()), by_host


def test_a_task_failing_its_check_leaves_the_rotation_and_comes_back(mesh: Mesh) -> None:
    h2, h1 = mesh.hosts["host2"], mesh.hosts["host1"]
    sick = mesh.task_on("host2")
    addr = f"{sick.address}:8080"
    # (One read may go unanswered on a loaded machine: the proxy is asked until it says.)
    wait_for(lambda: addr in (h1.members() or set()), 15, "the task among the proxy's members")
    t0 = time.time()
    h2.exec(sick.name, "rm", "/w/ok")
    key = f"host2/{sick.name}"
    wait_for(lambda: h1.lists(mesh.service, key) is False, 30, "host1 drops it", step=0.02)
    agent_s = time.time() - t0
    wait_for(lambda: addr not in (h1.members() or {addr}), 30, "the proxy drops it", step=0.02)
    proxy_s = time.time() - t0
    gone_s = mesh.last_reply_from(sick.backend, t0) - t0
    after = mesh.poller.replies(t0 + gone_s + 0.5)
    print(
        f"task on host2 fails its check (interval {CHECK_INTERVAL_S:g} s): not passing on "
        f"host1's agent after {agent_s:.2f} s, out of the proxy's members after {proxy_s:.2f} s "
        f"(each seen by polling, ~0.05 s a poll), last request to it {gone_s:.2f} s after"
    )
    assert sick.backend not in {b for _, _, _, b in after}
    assert not (bad := mesh.no_errors(t0)), bad
    assert gone_s < 10

    t1 = time.time()
    h2.exec(sick.name, "sh", "-c", "echo ok > /w/ok")
    back_s = mesh.first_reply_from(sick.backend, t1) - t1
    print(f"passes again: first request to it {back_s:.2f} s after")
    assert back_s < 10
    assert not (bad := mesh.no_errors(t0)), bad


def test_a_hosts_agent_killed_its_task_leaves_after_the_lease(mesh: Mesh) -> None:
    h1 = mesh.hosts["host1"]
    orphan = mesh.task_on("host2")
    key = f"host2/{orphan.name}"
    wait_for(lambda: h1.lists(mesh.service, key), 30, "host2's task passing")
    t0 = time.time()
    dm(mesh.lab, "lab", "kill", "agent@host2")
    try:
        wait_for(
            lambda: h1.lists(mesh.service, key) is False,
            TTL_S + 10,
            "host1 drops host2's task",
            step=0.05,
        )
        dropped_s = time.time() - t0
        gone_s = mesh.last_reply_from(orphan.backend, t0) - t0
        during = [r for r in mesh.poller.replies(t0) if r[0] < t0 + dropped_s]
        served = sum(1 for r in during if r[3] == orphan.backend)
        print(
            f"agent@host2 killed: host1 drops its task after {dropped_s:.2f} s (TTL {TTL_S:g}), "
            f"the proxy's last request to it {gone_s:.2f} s after; meanwhile the task (alive) "
            f"served {served} of {len(during)} requests"
        )
        # Not before the TTL; the window's upper side (TTL + 1 s) is held by
        # test_multihost_failures: here, on a loaded machine, etcd's expiry and the
        # watch came 17 s late once, and what is checked is what the proxy's clients see.
        assert TTL_S - 1 <= dropped_s <= TTL_S + 10
        assert not (bad := mesh.no_errors(t0)), bad
    finally:
        dm(mesh.lab, "lab", "start", "agent@host2")
    t1 = time.time()
    back_s = mesh.first_reply_from(orphan.backend, t1) - t1
    print(f"agent@host2 started again: its task back in rotation {back_s:.2f} s after")


def test_a_host_cut_off_costs_the_proxys_clients_little_until_its_lease_ends(mesh: Mesh) -> None:
    h1 = mesh.hosts["host1"]
    lost = mesh.task_on("host3")
    key = f"host3/{lost.name}"
    wait_for(lambda: h1.lists(mesh.service, key), 30, "host3's task passing")
    t0 = time.time()
    dm(mesh.lab, "lab", "partition", "host3")
    try:
        wait_for(
            lambda: h1.lists(mesh.service, key) is False,
            TTL_S + 10,
            "host1 drops host3's task",
            step=0.05,
        )
        dropped_s = time.time() - t0
        gone_s = mesh.last_reply_from(lost.backend, t0) - t0
        time.sleep(2)
        rows = mesh.poller.replies(t0)
        during = [r for r in rows if r[0] < t0 + dropped_s]
        failed = [r for r in during if r[2] != 200]
        slow = sorted(r[1] for r in during)
        print(
            f"host3 cut off: host1 drops its task after {dropped_s:.2f} s; meanwhile "
            f"{len(failed)} of {len(during)} requests failed, {sum(x > 1 for x in slow)} took "
            f"over 1 s (max {slow[-1]:.3f} s, p50 {slow[len(slow) // 2]:.3f} s); last reply "
            f"from it {gone_s:.2f} s after the cut"
        )
        # Not before the TTL; the window's upper side (TTL + 1 s) is held by
        # test_multihost_failures: here, on a loaded machine, etcd's expiry and the
        # watch came 17 s late once, and what is checked is what the proxy's clients see.
        assert TTL_S - 1 <= dropped_s <= TTL_S + 10
        after = [r for r in rows if r[0] > t0 + dropped_s + 1]
        assert after and all(r[2] == 200 for r in after), after[:5]
        assert len(failed) <= 3, failed
    finally:
        dm(mesh.lab, "lab", "heal")
    t1 = time.time()
    back_s = mesh.first_reply_from(lost.backend, t1) - t1
    print(f"healed: host3's task back in rotation {back_s:.2f} s after")
