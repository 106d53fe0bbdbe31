"""The catalog shared through etcd, as users run it: a real etcd member on free loopback
ports (its own data directory, stopped by its pid), and two agents started with `--store
etcd://… --node NAME`. Agent `a` follows the real engine and publishes its containers; agent
`b` follows no engine (`--engine none`), so whatever its DNS and API answer came through
etcd. Measured: a container's start to its name in the other agent's DNS (printed, not
asserted); the failure semantics asserted: an agent SIGKILLed leaves the other's catalog
within the lease TTL ± 1 s, one stopped with SIGTERM at once; etcd stopped for 5 s and
started again loses nothing and misses no change; etcd wiped, the agents publish again."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import statistics
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dns.message
import dns.query
import dns.rdatatype
import pytest

from tests.integration.conftest import free_subnets
from tests.integration.test_agent import AgentProc, free_port

pytestmark = pytest.mark.integration

TTL_S = 10.0


class EtcdProc:
    """One etcd member on loopback, with a data directory of its own."""

    def __init__(self, tmp: Path, name: str = "dmt", cluster: str | None = None) -> None:
        self.name = name
        self.data = tmp / f"etcd-{name}.data"
        self.log = tmp / f"etcd-{name}.log"
        self.client_port, self.peer_port = free_port(), free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.token = secrets.token_hex(4)
        self.cluster = cluster  # the --initial-cluster of several members (None: alone)

    @property
    def peer(self) -> str:
        return f"http://127.0.0.1:{self.peer_port}"

    @property
    def url(self) -> str:
        return f"etcd://127.0.0.1:{self.client_port}"

    def start(self) -> None:
        client = f"http://127.0.0.1:{self.client_port}"
        peer = f"http://127.0.0.1:{self.peer_port}"
        self.proc = subprocess.Popen(
            [
                "etcd",
                f"--name={self.name}",
                f"--data-dir={self.data}",
                f"--listen-client-urls={client}",
                f"--advertise-client-urls={client}",
                f"--listen-peer-urls={peer}",
                f"--initial-advertise-peer-urls={peer}",
                f"--initial-cluster={self.cluster or f'{self.name}={peer}'}",
                f"--initial-cluster-token={self.token}",
            ],
            stdout=self.log.open("ab"),
            stderr=subprocess.STDOUT,
        )
        if self.cluster is not None:
            return  # a member alone has no leader: the cluster waits for its quorum
        self.wait_healthy()

    def wait_healthy(self) -> None:
        client = f"http://127.0.0.1:{self.client_port}"
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{client}/health", timeout=2) as r:
                    if json.load(r).get("health") == "true":
                        return
            except OSError:
                pass
            assert self.proc is not None and self.proc.poll() is None, self.log.read_text()[-3000:]
            time.sleep(0.1)
        raise AssertionError("etcd did not become healthy: " + self.log.read_text()[-3000:])

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def wipe(self) -> None:
        """Stopped, its data removed, started as a new cluster (a new cluster ID)."""
        self.stop()
        shutil.rmtree(self.data)
        self.token = secrets.token_hex(4)
        self.start()

    def keys(self, prefix: str) -> list[str]:
        out = subprocess.run(
            [
                "etcdctl",
                f"--endpoints=127.0.0.1:{self.client_port}",
                "get",
                "--prefix",
                "--keys-only",
                prefix,
            ],
            capture_output=True,
            text=True,
            timeout=10,
            env={**os.environ, "ETCDCTL_API": "3"},
            check=True,
        ).stdout
        return sorted(line for line in out.splitlines() if line)


@pytest.fixture
def etcd(tmp_path: Path) -> Iterator[EtcdProc]:
    if shutil.which("etcd") is None:
        pytest.fail("etcd is missing: scripts/setup.sh installs Debian's etcd-server")
    e = EtcdProc(tmp_path)
    e.start()
    try:
        yield e
    finally:
        e.stop()


class Agents:
    """Agent `a` over the real engine, agent `b` over none, both on `etcd`."""

    def __init__(self, tmp: Path, etcd: EtcdProc) -> None:
        (tmp / "a").mkdir(exist_ok=True)
        (tmp / "b").mkdir(exist_ok=True)
        self.a = AgentProc(tmp / "a", "--store", etcd.url, "--node", "a")
        self.b = AgentProc(tmp / "b", "--store", etcd.url, "--node", "b", "--engine", "none")

    def close(self) -> None:
        for agent in (self.a, self.b):
            proc = agent.proc
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


@pytest.fixture
def agents(tmp_path: Path, etcd: EtcdProc) -> Iterator[Agents]:
    pair = Agents(tmp_path, etcd)
    try:
        pair.a.start()
        pair.b.start()
        yield pair
    finally:
        pair.close()


def ask(port: int, name: str) -> list[str]:
    """The A records `name` has at the DNS server on `port` (a lost answer: none)."""
    q = dns.message.make_query(name, "A")
    try:
        r = dns.query.udp(q, "127.0.0.1", port=port, timeout=1.0)
    except (dns.exception.Timeout, OSError):
        return []
    return sorted(
        item.to_text() for rrset in r.answer if rrset.rdtype == dns.rdatatype.A for item in rrset
    )


def known_leader(agent: AgentProc) -> str:
    with urllib.request.urlopen(agent.api + "/v1/health/service/none", timeout=10) as r:
        return str(r.headers["X-Consul-KnownLeader"])


def wait_for(pred: Any, limit: float, step: float = 0.01) -> float:
    t = time.monotonic()
    while time.monotonic() - t < limit:
        if pred():
            return time.monotonic() - t
        time.sleep(step)
    raise AssertionError(f"condition not reached within {limit} s")


def labelled(api: Any, toolbox: str, name: str, service: str, net: str, ip: str) -> str:
    cid = api.create_container(
        toolbox,
        name=name,
        command=["sleep", "600"],
        labels={"dockmesh.service": service, "dockmesh.port": "8080"},
        host_config=api.create_host_config(network_mode=net),
        networking_config=api.create_networking_config(
            {net: api.create_endpoint_config(ipv4_address=ip)}
        ),
    )
    return str(cid["Id"])


def network(api: Any, prefix: str) -> tuple[str, str]:
    """A network of the test's, and its /24's first three octets."""
    (subnet,) = free_subnets(api, 1)
    net = f"{prefix}_net"
    api.create_network(net, ipam={"Config": [{"Subnet": subnet}]})
    return net, subnet.rsplit(".", 1)[0]


def test_a_container_started_on_one_host_is_in_the_other_hosts_dns(
    api: Any, prefix: str, toolbox: str, agents: Agents
) -> None:
    net, base = network(api, prefix)
    starts = 30
    ids = [
        labelled(api, toolbox, f"{prefix}-l{i}", f"{prefix}l{i}", net, f"{base}.{10 + i}")
        for i in range(starts)
    ]
    after_start: list[float] = []
    with_start: list[float] = []
    for i, cid in enumerate(ids):
        name, ip = f"{prefix}l{i}.service.dockmesh", f"{base}.{10 + i}"
        t0 = time.perf_counter()
        api.start(cid)
        t1 = time.perf_counter()
        wait_for(lambda name=name, ip=ip: ask(agents.b.dns_port, name) == [ip], 15, step=0.001)
        t2 = time.perf_counter()
        after_start.append((t2 - t1) * 1000)
        with_start.append((t2 - t0) * 1000)

    def summary(xs: list[float]) -> str:
        xs = sorted(xs)
        p99 = xs[min(len(xs) - 1, round(0.99 * (len(xs) - 1)))]
        return f"median {statistics.median(xs):.1f} ms, p99 {p99:.1f} ms, max {xs[-1]:.1f} ms"

    print(f"\nstart → the other agent's DNS over {starts} starts:")
    print(f"  from the engine's start answering: {summary(after_start)}")
    print(f"  from the start call:               {summary(with_start)}")
    # The other agent serves them from its cache: its API says where they came from.
    _, rows = agents.b.get(f"/v1/health/service/{prefix}l0")
    assert rows[0]["Service"]["ID"] == f"a/{prefix}-l0"
    assert rows[0]["Service"]["Meta"]["node"] == "a"


def test_an_agent_killed_leaves_the_others_catalog_after_its_lease_and_a_stopped_one_at_once(
    api: Any, prefix: str, toolbox: str, agents: Agents, etcd: EtcdProc
) -> None:
    net, base = network(api, prefix)
    api.start(labelled(api, toolbox, f"{prefix}-k", f"{prefix}k", net, f"{base}.10"))
    name = f"{prefix}k.service.dockmesh"
    wait_for(lambda: ask(agents.b.dns_port, name) == [f"{base}.10"], 15)

    proc = agents.a.proc
    assert proc is not None
    proc.send_signal(signal.SIGKILL)
    t0 = time.monotonic()
    proc.wait()
    gone = wait_for(lambda: ask(agents.b.dns_port, name) == [], TTL_S + 5, step=0.02)
    gone = time.monotonic() - t0
    print(f"\nSIGKILL: gone from the other agent's DNS after {gone:.2f} s (TTL {TTL_S:.0f} s)")
    assert TTL_S - 1 <= gone <= TTL_S + 1
    assert etcd.keys("/dockmesh/v1/nodes/a/") == []

    agents.a.start()  # the same node again: it publishes its subtree anew
    back = wait_for(lambda: ask(agents.b.dns_port, name) == [f"{base}.10"], 15)
    print(f"restarted: back in the other agent's DNS after {back:.2f} s")
    proc = agents.a.proc
    assert proc is not None
    proc.send_signal(signal.SIGTERM)
    t0 = time.monotonic()
    try:
        wait_for(lambda: ask(agents.b.dns_port, name) == [], 5, step=0.005)
    except AssertionError as e:
        proc.wait(timeout=20)
        raise AssertionError(
            f"{e}; agent a's log ends:\n{agents.a.log.read_text()[-3000:]}"
        ) from None
    gone = time.monotonic() - t0
    assert proc.wait(timeout=20) == 0
    print(f"SIGTERM: gone from the other agent's DNS after {gone * 1000:.0f} ms")
    assert gone <= 1.0


def own_keys(keys: list[str], prefix: str) -> list[str]:
    """The keys of this test's instances (named after its prefix)."""
    return [k for k in keys if k.rsplit("/", 1)[-1].startswith(f"{prefix}-")]


def test_etcd_stopped_for_five_seconds_loses_nothing_and_misses_no_change(
    api: Any, prefix: str, toolbox: str, agents: Agents, etcd: EtcdProc
) -> None:
    net, base = network(api, prefix)
    stays = labelled(api, toolbox, f"{prefix}-z", f"{prefix}z", net, f"{base}.10")
    goes = labelled(api, toolbox, f"{prefix}-x", f"{prefix}x", net, f"{base}.11")
    comes = labelled(api, toolbox, f"{prefix}-y", f"{prefix}y", net, f"{base}.12")
    api.start(stays)
    api.start(goes)
    z, x, y = (f"{prefix}{s}.service.dockmesh" for s in "zxy")
    wait_for(lambda: ask(agents.b.dns_port, z) and ask(agents.b.dns_port, x), 15)
    assert known_leader(agents.b) == "true"

    misses: list[float] = []
    done = threading.Event()

    def watch_z() -> None:
        while not done.is_set():
            if ask(agents.b.dns_port, z) != [f"{base}.10"]:
                misses.append(time.monotonic())
            time.sleep(0.02)

    watcher = threading.Thread(target=watch_z, daemon=True)
    watcher.start()
    try:
        etcd.stop()
        down = time.monotonic()
        wait_for(lambda: known_leader(agents.b) == "false", 5, step=0.05)
        print(
            f"\netcd down: the other agent says it has no leader after {time.monotonic() - down:.2f} s"
        )
        # Changes while the store is down: one container stops, another starts.
        api.stop(goes, timeout=0)
        api.start(comes)
        wait_for(lambda: ask(agents.a.dns_port, y) == [f"{base}.12"], 10)
        assert ask(agents.b.dns_port, x) == [f"{base}.11"]  # its cache: nothing was said yet
        time.sleep(max(0.0, 5.0 - (time.monotonic() - down)))
        etcd.start()
        up = time.monotonic()
        wait_for(
            lambda: ask(agents.b.dns_port, y) == [f"{base}.12"] and ask(agents.b.dns_port, x) == [],
            15,
            step=0.02,
        )
        print(
            f"etcd up again: both changes in the other agent's DNS after {time.monotonic() - up:.2f} s"
        )
        wait_for(lambda: known_leader(agents.b) == "true", 10, step=0.05)
    finally:
        done.set()
        watcher.join(timeout=5)
    assert misses == [], f"{prefix}z went missing {len(misses)} times"
    # (Only this test's: the agent follows the shared engine, where other tests' labelled
    # containers come and go too.)
    assert own_keys(etcd.keys("/dockmesh/v1/nodes/a/"), prefix) == sorted(
        f"/dockmesh/v1/nodes/a/instances/{prefix}-{s}" for s in "yz"
    )


def test_etcd_wiped_the_agents_publish_everything_again(
    api: Any, prefix: str, toolbox: str, agents: Agents, etcd: EtcdProc
) -> None:
    net, base = network(api, prefix)
    api.start(labelled(api, toolbox, f"{prefix}-w", f"{prefix}w", net, f"{base}.10"))
    name = f"{prefix}w.service.dockmesh"
    wait_for(lambda: ask(agents.b.dns_port, name) == [f"{base}.10"], 15)
    etcd.wipe()
    up = time.monotonic()
    wait_for(
        lambda: f"/dockmesh/v1/nodes/a/instances/{prefix}-w" in etcd.keys("/dockmesh/v1/nodes/a/"),
        15,
        step=0.1,
    )
    wait_for(lambda: ask(agents.b.dns_port, name) == [f"{base}.10"], 15)
    print(
        f"\netcd wiped: republished and in the other agent's DNS after {time.monotonic() - up:.2f} s"
    )


def test_a_store_without_a_leader_is_said_and_the_cache_keeps_answering(
    api: Any, prefix: str, toolbox: str, tmp_path: Path
) -> None:
    """Two members: one stopped, the other has no quorum and so no leader. The watch (with
    `hasleader`) ends, the agent says it has no leader and answers from its cache; the
    member back, it follows again and nothing was lost."""
    members = [EtcdProc(tmp_path, f"m{i}") for i in range(2)]
    cluster = ",".join(f"{m.name}={m.peer}" for m in members)
    for m in members:
        m.cluster, m.token = cluster, members[0].token
    url = "etcd://" + ",".join(f"127.0.0.1:{m.client_port}" for m in members)
    for m in members:
        m.start()
    try:
        for m in members:
            m.wait_healthy()
        (tmp_path / "a").mkdir()
        (tmp_path / "b").mkdir()
        pair = Agents.__new__(Agents)
        pair.a = AgentProc(tmp_path / "a", "--store", url, "--node", "a")
        pair.b = AgentProc(tmp_path / "b", "--store", url, "--node", "b", "--engine", "none")
        try:
            pair.a.start()
            pair.b.start()
            net, base = network(api, prefix)
            api.start(labelled(api, toolbox, f"{prefix}-q", f"{prefix}q", net, f"{base}.10"))
            name = f"{prefix}q.service.dockmesh"
            wait_for(lambda: ask(pair.b.dns_port, name) == [f"{base}.10"], 15)
            assert known_leader(pair.b) == "true"

            members[1].stop()
            down = time.monotonic()
            wait_for(lambda: known_leader(pair.b) == "false", 20, step=0.1)
            print(
                f"\nquorum lost: the agent says it has no leader after {time.monotonic() - down:.2f} s"
            )
            assert ask(pair.b.dns_port, name) == [f"{base}.10"]  # from its cache
            members[1].start()
            up = time.monotonic()
            wait_for(lambda: known_leader(pair.b) == "true", 20, step=0.1)
            print(f"quorum back: a leader again after {time.monotonic() - up:.2f} s")
            assert ask(pair.b.dns_port, name) == [f"{base}.10"]
            assert own_keys(members[0].keys("/dockmesh/v1/nodes/a/"), prefix) == [
                f"/dockmesh/v1/nodes/a/instances/{prefix}-q"
            ]
        finally:
            pair.close()
    finally:
        for m in members:
            m.stop()
