"""The shared catalog's failure semantics on a real lab (`dockmesh lab up --hosts 2 --etcd 3`:
two Docker engines as a swarm, three etcd members, an agent per host sharing the catalog),
each failure injected with the lab's own commands as users would: an agent SIGKILLed, the
etcd leader killed, every etcd member down for 5 s, host2 cut from etcd, etcd wiped. Each
test prints its timings. The agents are asked from inside their hosts' namespaces (their API
on 127.0.0.1:8500, DNS on :53), etcd with `etcdctl` inside a member's namespace.

One lab for the module (its own name, removed after it, on failure too): three etcd members
rather than one lab per case, to spare the machine's cores; "etcd down" and "etcd wiped" then
stop every member."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from dockmesh.testing.lab import LabClient, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("lab")]

TTL_S = 10.0
HOSTS = ("host1", "host2")


@pytest.fixture(scope="module")
def lab(toolbox: str) -> Iterator[LabClient]:
    client = LabClient(f"f{secrets.token_hex(3)}")
    t0 = time.monotonic()
    try:
        up = client.cli("lab", "up", "--hosts", "2", "--etcd", "3", "--image", toolbox, check=False)
        print(f"\nlab up --hosts 2 --etcd 3: {time.monotonic() - t0:.1f} s (exit {up.returncode})")
        assert up.returncode == 0, up.stderr
        assert client.status()["shared_store"], "the agents do not share the catalog"
        yield client
    finally:
        client.lab("down", check=False)
        client.close()


@pytest.fixture(autouse=True)
def timed(request: pytest.FixtureRequest) -> Iterator[None]:
    t0 = time.monotonic()
    yield
    print(f"{request.node.name}: {time.monotonic() - t0:.1f} s")


def run(lab: LabClient, host: str, name: str, service: str, toolbox: str) -> None:
    lab.docker(
        host, "run", "-d", "--name", name, "-l", f"dockmesh.service={service}",
        "-l", "dockmesh.port=8080", toolbox, "sleep", "3600",
    )  # fmt: skip


def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def members(lab: LabClient) -> list[str]:
    return [f"etcd@{m.name.removeprefix('etcd')}" for m in lab.plan().etcd]


def all_etcd(lab: LabClient, verb: str) -> None:
    """`lab stop|start etcd@N` for every member at once (a member started alone waits for
    its quorum)."""
    with ThreadPoolExecutor(max_workers=3) as ex:
        list(ex.map(lambda t: lab.lab(verb, t), members(lab)))


def settle(lab: LabClient, svc: str, want: set[tuple[str, str]], limit: float = 15) -> float:
    """Seconds until every host's agent holds exactly `want` of `svc`; on timeout, what each
    host and etcd hold."""
    try:
        return wait_for(lambda: all(lab.instances(h, [svc]) == want for h in HOSTS), limit)
    except AssertionError:
        views = {h: sorted(lab.instances(h, [svc])) for h in HOSTS}
        raise AssertionError(
            f"want {sorted(want)}; hosts hold {views}; etcd {lab.etcd_instances([svc])}"
        ) from None


def caches_equal_etcd(lab: LabClient, services: list[str]) -> bool:
    want = lab.etcd_instances(services)
    return want is not None and all(lab.instances(h, services) == want for h in ("host1", "host2"))


def test_an_agent_killed_on_host2_leaves_host1_after_the_lease_ttl(
    lab: LabClient, toolbox: str
) -> None:
    svc = f"{lab.name}k"
    run(lab, "host2", f"{svc}-1", svc, toolbox)
    wait_for(lambda: lab.instances("host1", [svc]) == {("host2", f"{svc}-1")}, 15)
    pid = lab.pids()["agent@host2"]
    killer = subprocess.Popen(
        [*lab_cmd(lab), "kill", "agent@host2"], stdout=subprocess.DEVNULL, env=lab_env(lab)
    )
    wait_for(lambda: not pid_alive(pid), 30, step=0.002)
    t0 = time.monotonic()
    assert killer.wait(timeout=60) == 0
    present: list[float] = []

    def gone() -> bool:
        if lab.instances("host1", [svc]):
            present.append(time.monotonic() - t0)
            return False
        return True

    wait_for(gone, TTL_S + 5, step=0.02)
    after = time.monotonic() - t0
    print(
        f"\nSIGKILL of agent@host2: gone from host1 after {after:.2f} s "
        f"(last seen at {max(present, default=0):.2f} s; TTL {TTL_S:.0f} s)"
    )
    assert TTL_S - 1 <= after <= TTL_S + 1
    assert lab.etcd_instances([svc]) == set()
    t1 = time.monotonic()
    lab.lab("start", "agent@host2")
    wait_for(lambda: lab.instances("host1", [svc]) == {("host2", f"{svc}-1")}, 15)
    print(f"agent@host2 started again: back in host1's catalog after {time.monotonic() - t1:.2f} s")


def lab_cmd(lab: LabClient) -> list[str]:
    return [sys.executable, "-m", "dockmesh", "lab"]


def lab_env(lab: LabClient) -> dict[str, str]:
    return {**os.environ, "DOCKMESH_LAB": lab.name}


class Watch:
    """Checks, every 20 ms until stopped, that `host` still holds `expected` among `services`
    (an instance missing even once is a loss)."""

    def __init__(
        self, lab: LabClient, host: str, services: list[str], expected: set[tuple[str, str]]
    ) -> None:
        self.misses: list[Any] = []
        self.done = threading.Event()

        def loop() -> None:
            while not self.done.is_set():
                try:
                    got = lab.instances(host, services)
                except (OSError, AssertionError) as e:
                    self.misses.append(f"{host}: {e}")
                else:
                    if not expected <= got:
                        self.misses.append(f"{host}: {sorted(expected - got)}")
                time.sleep(0.02)

        self.thread = threading.Thread(target=loop, daemon=True)
        self.thread.start()

    def stop(self) -> list[Any]:
        self.done.set()
        self.thread.join(timeout=10)
        return self.misses


def test_the_etcd_leader_killed_loses_nothing(lab: LabClient, toolbox: str) -> None:
    svc = f"{lab.name}l"
    run(lab, "host1", f"{svc}-1", svc, toolbox)
    run(lab, "host2", f"{svc}-2", svc, toolbox)
    both = {("host1", f"{svc}-1"), ("host2", f"{svc}-2")}
    settle(lab, svc, both)
    [leader] = [m["name"] for m in lab.status()["etcd"] if m["leader"]]
    watches = [Watch(lab, h, [svc], both) for h in ("host1", "host2")]
    target = f"etcd@{leader.removeprefix('etcd')}"
    try:
        lab.lab("kill", target)
        t0 = time.monotonic()
        # A change right after: host2 starts another instance; host1 must see it.
        run(lab, "host2", f"{svc}-3", svc, toolbox)
        seen = wait_for(lambda: ("host2", f"{svc}-3") in lab.instances("host1", [svc]), 20)
        print(f"\n{target} (the leader) killed: host1 saw a change made after it in {seen:.2f} s")
        time.sleep(max(0.0, 3.0 - (time.monotonic() - t0)))
    finally:
        misses = [m for w in watches for m in w.stop()]
        lab.lab("start", target)
    assert misses == [], misses[:5]
    wait_for(lambda: caches_equal_etcd(lab, [svc]), 10, step=0.1)
    assert lab.etcd_instances([svc]) == both | {("host2", f"{svc}-3")}
    print(f"new leader: {[m['name'] for m in lab.status()['etcd'] if m['leader']]}")


def test_etcd_down_for_five_seconds_loses_nothing_and_misses_no_change(
    lab: LabClient, toolbox: str
) -> None:
    svc = f"{lab.name}d"
    run(lab, "host2", f"{svc}-stays", svc, toolbox)
    run(lab, "host2", f"{svc}-goes", svc, toolbox)
    before = {("host2", f"{svc}-stays"), ("host2", f"{svc}-goes")}
    wait_for(lambda: lab.instances("host1", [svc]) == before, 15)
    assert lab.known_leader("host1") == "true"
    watch = Watch(lab, "host1", [svc], {("host2", f"{svc}-stays")})
    try:
        all_etcd(lab, "stop")
        down = time.monotonic()
        said = wait_for(lambda: lab.known_leader("host1") == "false", 5, step=0.05)
        print(f"\nevery etcd member down: host1 says it has no leader after {said:.2f} s")
        # Changes while the store is down: one instance stops, another starts.
        lab.docker("host2", "rm", "-f", f"{svc}-goes")
        run(lab, "host2", f"{svc}-comes", svc, toolbox)
        after = {("host2", f"{svc}-stays"), ("host2", f"{svc}-comes")}
        wait_for(lambda: lab.instances("host2", [svc]) == after, 10)
        assert lab.instances("host1", [svc]) == before  # its cache: nothing was said yet
        time.sleep(max(0.0, 5.0 - (time.monotonic() - down)))
        all_etcd(lab, "start")
        up = time.monotonic()
        print(f"etcd down for {up - down:.1f} s")
        got = wait_for(lambda: lab.instances("host1", [svc]) == after, 15, step=0.02)
        print(f"etcd up again: the changes made meanwhile in host1's catalog after {got:.2f} s")
        wait_for(lambda: lab.known_leader("host1") == "true", 10, step=0.05)
    finally:
        misses = watch.stop()
    assert misses == [], misses[:5]
    wait_for(lambda: caches_equal_etcd(lab, [svc]), 5, step=0.1)
    assert lab.etcd_instances([svc]) == after


def test_host2_cut_from_etcd_leaves_host1_after_the_ttl_and_answers_from_its_cache(
    lab: LabClient, toolbox: str
) -> None:
    svc = f"{lab.name}p"
    run(lab, "host1", f"{svc}-1", svc, toolbox)
    run(lab, "host2", f"{svc}-2", svc, toolbox)
    both = {("host1", f"{svc}-1"), ("host2", f"{svc}-2")}
    settle(lab, svc, both)
    try:
        t0 = time.monotonic()
        lab.lab("partition", "host2", "--from", "etcd")
        t1 = time.monotonic()
        wait_for(lambda: ("host2", f"{svc}-2") not in lab.instances("host1", [svc]), 20)
        gone = time.monotonic()
        print(
            f"\nhost2 cut from etcd: its instance left host1 {gone - t1:.2f} s after "
            f"`lab partition` returned ({gone - t0:.2f} s after it began; TTL {TTL_S:.0f} s)"
        )
        assert gone - t0 >= TTL_S - 1 and gone - t1 <= TTL_S + 1
        # host2 answers from its cache (both instances, in its DNS too) and says no leader.
        said = wait_for(lambda: lab.known_leader("host2") == "false", 5, step=0.05)
        print(f"host2 says X-Consul-KnownLeader: false {said:.2f} s after that")
        assert lab.instances("host2", [svc]) == both
        assert lab.dns("host2", f"{svc}.service.dockmesh") not in (None, [])
    finally:
        lab.lab("heal")
    healed = time.monotonic()
    equal = wait_for(
        lambda: caches_equal_etcd(lab, [svc]) and lab.etcd_instances([svc]) == both, 5, step=0.05
    )
    print(f"healed: every cache equals etcd (host2's instance published again) after {equal:.2f} s")
    assert time.monotonic() - healed <= 5.5
    wait_for(lambda: lab.known_leader("host2") == "true", 5 - (time.monotonic() - healed), 0.05)
    print(f"host2 follows etcd again (knows a leader) {time.monotonic() - healed:.2f} s after heal")


def test_etcd_wiped_the_agents_publish_everything_again(lab: LabClient, toolbox: str) -> None:
    """Every member stopped, its data directory removed, started again: the lab starts them
    with the same token and peer addresses, so the cluster ID stays (printed) but the revision
    goes back to the start and every lease is gone."""
    svc = f"{lab.name}w"
    run(lab, "host1", f"{svc}-1", svc, toolbox)
    run(lab, "host2", f"{svc}-2", svc, toolbox)
    both = {("host1", f"{svc}-1"), ("host2", f"{svc}-2")}
    settle(lab, svc, both)
    everything = lab.etcd_instances()
    assert everything is not None and both <= everything
    cluster_before = cluster_id(lab)
    all_etcd(lab, "stop")
    for m in lab.plan().etcd:
        shutil.rmtree(m.data_dir)
    all_etcd(lab, "start")
    assert lab.etcd_instances() is not None
    got = wait_for(lambda: lab.etcd_instances() == everything, 15, step=0.1)
    print(
        f"\netcd wiped (cluster id {cluster_before} → {cluster_id(lab)}): all "
        f"{len(everything)} instances published again after {got:.2f} s"
    )
    wait_for(lambda: caches_equal_etcd(lab, [svc]), 5, step=0.1)
    assert all(lab.instances(h, [svc]) == both for h in ("host1", "host2"))


def cluster_id(lab: LabClient) -> str:
    m = lab.plan().etcd[0]
    out = subprocess.run(
        ["nsenter", f"--net=/run/netns/{m.netns}", "etcdctl", f"--endpoints={m.address}:2379",
         "endpoint", "status", "--write-out=json"],
        capture_output=True, text=True, timeout=10,
    ).stdout  # fmt: skip
    try:
        return format(int(json.loads(out)[0]["Status"]["header"]["cluster_id"]), "x")
    except (ValueError, KeyError, IndexError):
        return "?"
