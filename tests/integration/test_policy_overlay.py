"""The policy on an overlay network, on a real two-host lab: enforced in the overlay's own
namespace on each host (where br0 joins the containers' veths and vxlan0), with the bridge's
verdicts, across hosts and within one. One lab (its own name) for the module, removed after,
on failure too; the containers and the overlay live in the lab's engines and go with it."""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dockmesh.host.netns import NetnsPool
from tests.integration.test_policy_trust import connects, received, spoofed_udp

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("lab")]


class Lab:
    def __init__(self, name: str, policy_dir: Path, engines: dict[str, str]) -> None:
        self.name = name
        self.table = f"{name}pol"
        self.policy_dir = policy_dir
        self.engines = engines  # host → engine URL
        self.net = f"{name}ov"
        self.netns: dict[str, str] = {}  # host → the overlay's namespace file
        self.pids: dict[str, int] = {}
        self.ips: dict[str, str] = {}

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "DOCKMESH_LAB": self.name,
            "DOCKMESH_POLICY_DIR": str(self.policy_dir),
            "DOCKMESH_AGENT": "http://127.0.0.1:9",
            "COLUMNS": "200",
        }

    def dockmesh(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [sys.executable, "-m", "dockmesh", *args],
            capture_output=True,
            text=True,
            timeout=180,
            env=self.env(),
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"dockmesh {' '.join(args)} → {proc.returncode}\n{proc.stderr}")
        return proc

    def docker(self, host: str, *args: str) -> str:
        return subprocess.run(
            ["docker", "-H", self.engines[host], *args],
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        ).stdout.strip()

    def policy(self, *args: str) -> subprocess.CompletedProcess[str]:
        """`dockmesh policy …` as a user of the lab runs it: in host1's namespace, over both
        engines (the host-namespace tables land in host1's namespace, gone with the lab)."""
        return self.dockmesh(
            "lab", "exec", "host1", "--",
            sys.executable, "-m", "dockmesh", "policy", *args, "--table", self.table,
        )  # fmt: skip

    def overlay_table(self, host: str) -> bool:
        proc = subprocess.run(
            ["nsenter", f"--net={self.netns[host]}", "nft", "list", "table", "inet", self.table],
            capture_output=True,
            text=True,
        )
        return proc.returncode == 0


@pytest.fixture(scope="module")
def ovlab(toolbox: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """Two hosts, an attachable overlay, a on host1, b and c on host2 (each serving 8080)."""
    name = f"o{secrets.token_hex(3)}"
    lab = Lab(name, tmp_path_factory.mktemp("ovpolicy"), {})
    t0 = time.monotonic()
    try:
        up = lab.dockmesh("lab", "up", "--hosts", "2", "--image", toolbox, "--json", check=False)
        print(f"lab up --hosts 2: {time.monotonic() - t0:.1f} s (exit {up.returncode})")
        assert up.returncode == 0, up.stderr
        status = json.loads(lab.dockmesh("lab", "status", "--json").stdout)
        lab.engines = {h["name"]: h["engine"] for h in status["hosts"]}
        net_id = lab.docker(
            "host1", "network", "create", "-d", "overlay", "--attachable", lab.net
        )  # fmt: skip
        for host, role in (("host1", "a"), ("host2", "b"), ("host2", "c")):
            cname = f"{name}-{role}"
            lab.docker(host, "run", "-d", "--name", cname, "--network", lab.net, toolbox)
            doc = json.loads(lab.docker(host, "inspect", cname))[0]
            lab.pids[role] = int(doc["State"]["Pid"])
            lab.ips[role] = doc["NetworkSettings"]["Networks"][lab.net]["IPAddress"]
        for host in ("host1", "host2"):
            root = f"/run/dockmesh-lab/lab-{name}/{host}/netns"
            lab.netns[host] = f"{root}/1-{net_id[:10]}"
            assert os.path.exists(lab.netns[host]), os.listdir(root)
        yield lab
    finally:
        lab.dockmesh("lab", "down", check=False)


@pytest.fixture(scope="module")
def pool() -> Iterator[NetnsPool]:
    with NetnsPool(threads=2) as p:
        yield p


def write_policy(lab: Lab, rules: list[dict[str, Any]]) -> str:
    path = lab.policy_dir.parent / f"{lab.name}-policy.json"
    path.write_text(json.dumps({"policy": {"default": "deny", "rules": rules}}))
    return str(path)


def a_to_b(lab: Lab) -> str:
    """a may reach b on 8080/tcp and 9999/udp; nothing else on the overlay."""
    return write_policy(
        lab,
        [{"from": {"container": f"{lab.name}-a"}, "to": {"container": f"{lab.name}-b"},
          "ports": ["8080/tcp", "9999/udp"]}],
    )  # fmt: skip


def verdicts(lab: Lab, pool: NetnsPool) -> dict[str, bool]:
    pairs = ("ab", "ba", "ca", "ac", "bc", "cb")
    return {
        f"{x}>{y}": connects(pool, lab.pids[x], lab.ips[y], timeout=1.0)
        for x, y in (tuple(p) for p in pairs)
    }


ALL_OPEN = {"a>b": True, "b>a": True, "c>a": True, "a>c": True, "b>c": True, "c>b": True}
A_TO_B = {"a>b": True, "b>a": False, "c>a": False, "a>c": False, "b>c": False, "c>b": False}


def test_an_overlay_policy_denies_across_hosts_and_within_one(ovlab: Lab, pool: NetnsPool) -> None:
    # The overlay works before any policy, once every listener is up (on a loaded machine the
    # last container's httpd may still be starting when the lab is handed over).
    deadline = time.monotonic() + 20
    while (seen := verdicts(ovlab, pool)) != ALL_OPEN and time.monotonic() < deadline:
        time.sleep(0.5)
    assert seen == ALL_OPEN
    t0 = time.monotonic()
    proc = ovlab.policy("apply", a_to_b(ovlab), "--engine", "host1", "--engine", "host2")
    print(f"policy apply over 2 engines: {time.monotonic() - t0:.2f} s\n{proc.stdout}")
    for host in ("host1", "host2"):
        assert f"overlay {ovlab.net} on {host}: table inet {ovlab.table}" in proc.stdout
        assert ovlab.overlay_table(host), host
    got = verdicts(ovlab, pool)
    # a→b crosses hosts and is allowed; c→a, a→c and b→a cross hosts and are denied; b→c and
    # c→b never leave host2 and are judged there all the same.
    assert got == A_TO_B, got
    # why agrees, with a probe from c's namespace on host2, and says where it is judged.
    why = ovlab.dockmesh(
        "lab", "exec", "host1", "--", sys.executable, "-m", "dockmesh", "why",
        f"{ovlab.name}-c", f"{ovlab.name}-a", "--port", "8080/tcp", "--probe",
        "--table", ovlab.table, "--engine", "host1", "--engine", "host2", check=False,
    )  # fmt: skip
    assert why.returncode == 1, why.stderr
    assert f"judged in {ovlab.net}'s namespace on host2 and host1" in why.stdout, why.stdout
    assert "probe: ✗" in why.stdout, why.stdout


def test_a_forged_source_on_the_overlay_matches_no_allow_rule(ovlab: Lab, pool: NetnsPool) -> None:
    """c (host2) sends UDP to b as a (host1's address): a's address is bound to vxlan0 in
    host2's overlay bridge, so the frame from c's veth is unconfirmed and denied; a's own
    datagram, over the tunnel, arrives."""
    ovlab.policy("apply", a_to_b(ovlab), "--engine", "host1", "--engine", "host2")
    a4, b4 = ovlab.ips["a"], ovlab.ips["b"]
    listener = pool.socket(ovlab.pids["b"], socket.AF_INET, socket.SOCK_DGRAM)
    try:
        listener.bind(("0.0.0.0", 9999))
        listener.setblocking(False)
        raw = pool.socket(ovlab.pids["c"], socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
        try:
            raw.sendto(spoofed_udp(a4, b4, 9999, b"forged"), (b4, 0))
        finally:
            raw.close()
        assert received(listener) == []
        real = pool.socket(ovlab.pids["a"], socket.AF_INET, socket.SOCK_DGRAM)
        try:
            real.sendto(b"real", (b4, 9999))
        finally:
            real.close()
        assert received(listener) == [b"real"]
    finally:
        listener.close()


def test_a_packet_between_hosts_is_judged_at_both_ends(ovlab: Lab, pool: NetnsPool) -> None:
    """With host2's overlay table deleted behind dockmesh's back, host1's still denies what
    crosses to or from host2; only host2's own traffic goes unjudged until the table is
    written again (no agent keeps overlay tables: `policy apply` does)."""
    ovlab.policy("apply", a_to_b(ovlab), "--engine", "host1", "--engine", "host2")
    subprocess.run(
        ["nsenter", f"--net={ovlab.netns['host2']}", "nft", "delete", "table", "inet", ovlab.table],
        check=True,
    )
    got = verdicts(ovlab, pool)
    assert {k: got[k] for k in ("a>b", "b>a", "c>a", "a>c")} == {
        "a>b": True, "b>a": False, "c>a": False, "a>c": False,
    }  # fmt: skip
    assert got["b>c"] and got["c>b"]
    # policy show says which namespace's table differs; policy apply writes it again.
    assert overlay_drift(ovlab) == {"host1": False, "host2": True}
    ovlab.policy("apply", a_to_b(ovlab), "--engine", "host1", "--engine", "host2")
    assert overlay_drift(ovlab) == {"host1": False, "host2": False}
    assert verdicts(ovlab, pool) == A_TO_B


def overlay_drift(lab: Lab) -> dict[str, bool]:
    """Host → whether `policy show` finds its overlay table differing from the policy."""
    doc = json.loads(lab.policy("show", "--json", "--engine", "host1", "--engine", "host2").stdout)
    assert all(o["network"] == lab.net for o in doc["overlays"]), doc["overlays"]
    return {o["engine"]: bool(o["differences"]) for o in doc["overlays"]}


def test_removing_the_policy_removes_it_from_every_overlay_namespace(
    ovlab: Lab, pool: NetnsPool
) -> None:
    ovlab.policy("apply", a_to_b(ovlab), "--engine", "host1", "--engine", "host2")
    proc = ovlab.policy("remove")
    for host in ("host1", "host2"):
        assert f"and from overlay namespace {ovlab.netns[host]}" in proc.stdout
        assert not ovlab.overlay_table(host), host
    assert verdicts(ovlab, pool) == ALL_OPEN
    assert not list((ovlab.policy_dir / "overlay").iterdir())


def test_a_swarm_services_tasks_on_both_hosts_are_members_by_service(
    ovlab: Lab, pool: NetnsPool, toolbox: str
) -> None:
    """Tasks of a service spread over both hosts are the overlay's members like containers:
    a may reach the service `<name>web` (each task, on either host), c may not."""
    web = f"{ovlab.name}web"
    ovlab.docker(
        "host1", "service", "create", "--quiet", "--no-resolve-image", "--name", web,
        "--replicas", "2", "--replicas-max-per-node", "1", "--network", ovlab.net, toolbox,
    )  # fmt: skip
    tasks: dict[str, tuple[int, str]] = {}  # host → (pid, overlay address)
    for host in ("host1", "host2"):
        ids = ovlab.docker(
            host, "ps", "-q", "--filter", f"label=com.docker.swarm.service.name={web}"
        )
        [cid] = ids.split()
        doc = json.loads(ovlab.docker(host, "inspect", cid))[0]
        tasks[host] = (
            int(doc["State"]["Pid"]),
            doc["NetworkSettings"]["Networks"][ovlab.net]["IPAddress"],
        )
    policy = write_policy(
        ovlab,
        [{"from": {"container": f"{ovlab.name}-a"}, "to": {"service": web}, "ports": ["8080/tcp"]}],
    )
    ovlab.policy("apply", policy, "--engine", "host1", "--engine", "host2")
    for host, (_, address) in tasks.items():
        assert connects(pool, ovlab.pids["a"], address), host
        assert not connects(pool, ovlab.pids["c"], address), host
    # And the tasks themselves are denied what no rule allows (to a, across or within hosts).
    for host, (pid, _) in tasks.items():
        assert not connects(pool, pid, ovlab.ips["a"]), host


def test_an_agent_keeps_the_overlay_tables_as_members_come_and_go(
    ovlab: Lab, pool: NetnsPool, toolbox: str, tmp_path: Path
) -> None:
    """An agent in host1's namespace following both engines keeps what `policy apply` wrote
    into both hosts' overlay namespaces true: a container started after the apply is judged
    by its labels within seconds (allowed where a rule allows it, denied elsewhere), one
    removed leaves the sets, and a table deleted behind the agent's back is written again."""
    late = f"{ovlab.name}-late"
    policy = write_policy(
        ovlab,
        [{"from": {"container": f"{ovlab.name}-a"}, "to": {"label": "role=late"},
          "ports": ["8080/tcp"]}],
    )  # fmt: skip
    ovlab.policy("apply", policy, "--engine", "host1", "--engine", "host2")
    api_port = 18577
    log = tmp_path / "keeper.log"
    env = {**ovlab.env(), "DOCKMESH_POLICY_TABLE": ovlab.table}
    keeper = subprocess.Popen(
        [
            sys.executable, "-m", "dockmesh", "lab", "exec", "host1", "--",
            sys.executable, "-m", "dockmesh", "agent", "--engine", "host1", "--engine", "host2",
            "--api", f"127.0.0.1:{api_port}", "--dns", "off", "--no-gateway-dns",
            "--state", str(tmp_path / "state.db"),
        ],
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )  # fmt: skip

    def until(what: str, ok: Any, limit: float = 30.0) -> None:
        deadline = time.monotonic() + limit
        while not ok():
            assert keeper.poll() is None, f"the agent exited: {log.read_text()[-3000:]}"
            if time.monotonic() > deadline:
                raise AssertionError(f"{what}: not within {limit:g}s\n{log.read_text()[-3000:]}")
            time.sleep(0.3)

    try:
        ovlab.docker(
            "host2", "run", "-d", "--name", late, "--label", "role=late", "--network", ovlab.net,
            toolbox,
        )  # fmt: skip
        doc = json.loads(ovlab.docker("host2", "inspect", late))[0]
        address = doc["NetworkSettings"]["Networks"][ovlab.net]["IPAddress"]
        until("a reaches the late container", lambda: connects(pool, ovlab.pids["a"], address))
        assert not connects(pool, ovlab.pids["c"], address)  # no rule lets c
        assert not connects(pool, ovlab.pids["a"], ovlab.ips["b"])  # nor a to b any more
        until("both tables as the policy says", lambda: not any(overlay_drift(ovlab).values()))
        # removed: its address leaves the sets (what policy show compiles is what is there)
        ovlab.docker("host2", "rm", "-f", late)
        until("the tables follow the removal", lambda: not any(overlay_drift(ovlab).values()))
        # deleted behind the agent's back: written again
        subprocess.run(
            ["nsenter", f"--net={ovlab.netns['host2']}", "nft", "delete", "table", "inet",
             ovlab.table],
            check=True,
        )  # fmt: skip
        until("host2's table written again", lambda: ovlab.overlay_table("host2"))
        assert not any(overlay_drift(ovlab).values())
        # a is host1's only member (once the module's services are gone): stopped, Docker
        # removes host1's namespace, table and all; started, it makes a new one, which the
        # agent (in a mount namespace of lab exec's) sees and writes the table into
        services = ovlab.docker("host1", "service", "ls", "-q").split()
        if services:
            ovlab.docker("host1", "service", "rm", *services)
        ovlab.docker("host1", "stop", "-t", "1", f"{ovlab.name}-a")

        def members_on_host1() -> str:
            doc = json.loads(ovlab.docker("host1", "network", "inspect", ovlab.net))[0]
            return json.dumps(doc.get("Containers") or {})

        # The service's task leaves on its own time, and the engine removes the namespace
        # after its last endpoint (slower on a loaded machine).
        until("no member left on host1", lambda: members_on_host1() == "{}", 120)
        until("host1's namespace gone", lambda: not os.path.exists(ovlab.netns["host1"]), 120)
        ovlab.docker("host1", "start", f"{ovlab.name}-a")
        doc = json.loads(ovlab.docker("host1", "inspect", f"{ovlab.name}-a"))[0]
        ovlab.pids["a"] = int(doc["State"]["Pid"])
        ovlab.ips["a"] = doc["NetworkSettings"]["Networks"][ovlab.net]["IPAddress"]
        until("host1's new namespace has the table", lambda: ovlab.overlay_table("host1"))
    finally:
        if keeper.poll() is None:
            os.killpg(keeper.pid, signal.SIGTERM)
            try:
                keeper.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(keeper.pid, signal.SIGKILL)
                keeper.wait(10)
        subprocess.run(["docker", "-H", ovlab.engines["host2"], "rm", "-f", late],
                       capture_output=True, check=False)  # fmt: skip
