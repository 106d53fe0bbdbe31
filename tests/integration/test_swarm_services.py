"""A real two-node swarm (tests/integration/lab.py): a service's tasks spread over both engines
are instances of the service, each listed by the agent of the host it runs on (a process in
that engine's namespace, following only that engine) at its overlay address, passing only
while its check passes; and `topology`, `why` and `matrix` see containers of both engines on
one overlay, their probes run from the source's own namespace on its own host."""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from docker.types import (
    ContainerSpec,
    EndpointSpec,
    NetworkAttachmentConfig,
    ServiceMode,
    TaskTemplate,
)

from tests.integration.conftest import TOOLBOX, cleanup, dockmesh, free_subnets
from tests.integration.lab import Lab, LabEngine
from tests.integration.test_agent import free_port

# Engines in namespaces: one such set-up at a time on the machine (with the lab's tests),
# or their dockerds and swarms starve each other and the timing checks beside them.
pytestmark = pytest.mark.xdist_group("lab")

# httpd serves /w: /w/ok answers 200 until a test removes it (then 404: the check fails while
# the task keeps running).
SERVE = ["sh", "-c", "mkdir -p /w && echo ok > /w/ok && exec httpd -f -p 8080 -h /w"]


@dataclass
class SwarmLab:
    lab: Lab
    prefix: str
    h1: LabEngine
    h2: LabEngine
    overlay: str
    overlay_subnet: str
    other: str  # a second overlay

    def engines(self) -> list[str]:
        return ["--engine", f"h1={self.h1.url}", "--engine", f"h2={self.h2.url}"]


@pytest.fixture(scope="module")
def swarm(api: Any) -> Iterator[SwarmLab]:
    prefix = f"dmt{secrets.token_hex(3)}"
    subnet, ov_subnet, other_subnet = free_subnets(api, 3)
    try:
        with Lab(prefix, subnet) as lab:
            h1, h2 = lab.engine("h1"), lab.engine("h2")
            for h in (h1, h2):
                lab.load_image(api, TOOLBOX, h)
            lab.swarm(h1, h2)
            ov, other = f"{prefix}_ov", f"{prefix}_other"
            for name, sub in ((ov, ov_subnet), (other, other_subnet)):
                h1.api.create_network(
                    name,
                    driver="overlay",
                    attachable=True,
                    ipam={"Driver": "default", "Config": [{"Subnet": sub}]},
                )
            yield SwarmLab(lab, prefix, h1, h2, ov, ov_subnet, other)
    finally:
        cleanup(api, prefix)


@pytest.fixture
def cli_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The command line reads the engines it is given, never an agent or the host's policy."""
    monkeypatch.setenv("DOCKMESH_AGENT", "http://127.0.0.1:9")
    monkeypatch.setenv("DOCKMESH_POLICY_DIR", str(tmp_path / "policy"))


def wait_for(pred: Callable[[], Any], limit: float, what: str) -> Any:
    deadline = time.monotonic() + limit
    while True:
        got = pred()
        if got:
            return got
        assert time.monotonic() < deadline, f"{what}: not within {limit} s"
        time.sleep(0.3)


class NsAgent:
    """`dockmesh agent` for one lab engine: in that engine's network namespace (nsenter), with
    its DOCKER_HOST, on ports of its own; asked through the same namespace."""

    def __init__(self, eng: LabEngine, tmp: Path) -> None:
        self.eng = eng
        self.api_port, self.dns_port = free_port(), free_port()
        self.log = tmp / f"agent-{eng.name}.log"
        env = {
            **os.environ,
            "DOCKER_HOST": eng.url,
            "DOCKMESH_POLICY_DIR": str(tmp / f"policy-{eng.name}"),
        }
        self.proc = subprocess.Popen(
            [
                "nsenter",
                f"--net=/run/netns/{eng.netns}",
                sys.executable,
                "-m",
                "dockmesh",
                "agent",
                "--api",
                f"127.0.0.1:{self.api_port}",
                "--dns",
                f"127.0.0.1:{self.dns_port}",
                "--state",
                "",
                "--no-gateway-dns",
            ],
            stdout=self.log.open("ab"),
            stderr=subprocess.STDOUT,
            env=env,
        )

    def get(self, path: str) -> Any:
        proc = subprocess.run(
            [
                "nsenter",
                f"--net=/run/netns/{self.eng.netns}",
                "curl",
                "-sf",
                "--max-time",
                "5",
                f"http://127.0.0.1:{self.api_port}{path}",
            ],
            capture_output=True,
            text=True,
            timeout=15,
        )
        assert self.proc.poll() is None, self.log.read_text()
        return json.loads(proc.stdout) if proc.returncode == 0 else None

    def dig(self, name: str) -> list[str]:
        out = subprocess.run(
            [
                "nsenter",
                f"--net=/run/netns/{self.eng.netns}",
                "dig",
                "+short",
                "+time=2",
                "+tries=1",
                "@127.0.0.1",
                "-p",
                str(self.dns_port),
                name,
            ],
            capture_output=True,
            text=True,
            timeout=15,
        ).stdout
        return sorted(line for line in out.splitlines() if line)

    def health(self, service: str, passing: bool = False) -> dict[str, tuple[str, str]] | None:
        """Instance ID → (address, aggregated status), or None while the agent does not
        answer."""
        rows = self.get(f"/v1/health/service/{service}{'?passing' if passing else ''}")
        if rows is None:
            return None
        out = {}
        for row in rows:
            statuses = {c["Status"] for c in row["Checks"] if c.get("ServiceID")}
            status = "passing" if statuses <= {"passing"} else "critical"
            out[row["Service"]["ID"]] = (row["Service"]["Address"], status)
        return out

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def get_ok(eng: LabEngine, container: str, host: str) -> bool:
    """Whether `container` gets /ok from host:8080 (the toolbox's own wget crashes: nc)."""
    request = f"printf 'GET /ok HTTP/1.0\\r\\n\\r\\n' | nc -w 1 {host} 8080"
    ex = eng.api.exec_create(container, ["sh", "-c", request])
    lines: list[str] = eng.api.exec_start(ex).decode().splitlines()
    return lines[-1:] == ["ok"]


def tasks_on(eng: LabEngine, service: str) -> dict[str, dict[str, Any]]:
    """The running task containers of `service` on one engine: name → inspect."""
    out = {}
    for c in eng.api.containers(filters={"label": f"com.docker.swarm.service.name={service}"}):
        i = eng.api.inspect_container(c["Id"])
        out[i["Name"].lstrip("/")] = i
    return out


def test_service_tasks_are_instances_of_the_service_on_each_host(
    swarm: SwarmLab, tmp_path: Path, cli_env: None
) -> None:
    h1, h2 = swarm.h1, swarm.h2
    service = f"{swarm.prefix}web"
    spec = ContainerSpec(
        TOOLBOX,
        command=SERVE,
        # Container labels (`--container-label`): what reaches the task's container.
        labels={
            "dockmesh.port": "8080",
            "dockmesh.check.http": "/ok",
            "dockmesh.check.interval": "1s",
            "dockmesh.check.timeout": "1s",
        },
    )
    published = free_port()
    created = h1.api.create_service(
        TaskTemplate(spec, networks=[NetworkAttachmentConfig(swarm.overlay)]),
        name=service,
        mode=ServiceMode("replicated", replicas=3),
        # A published port puts every task on the ingress network too (in the lab's
        # namespaces): its address there must not be the one registered.
        endpoint_spec=EndpointSpec(ports={published: 8080}),
    )
    agents = [NsAgent(h, tmp_path) for h in (h1, h2)]
    try:
        running = wait_for(
            lambda: (
                (t := {h.name: tasks_on(h, service) for h in (h1, h2)})
                and sum(len(x) for x in t.values()) == 3
                and t
            ),
            120,
            "3 running tasks",
        )
        # spread: the swarm put tasks on both engines
        assert all(running[h.name] for h in (h1, h2)), {k: list(v) for k, v in running.items()}
        overlay_net = ipaddress.ip_network(swarm.overlay_subnet)
        expected: dict[str, dict[str, tuple[str, str]]] = {}
        for h in (h1, h2):
            mine = {}
            for name, i in running[h.name].items():
                nets = i["NetworkSettings"]["Networks"]
                assert "ingress" in nets  # the routing mesh is there, and not registered
                address = nets[swarm.overlay]["IPAddress"]
                assert ipaddress.ip_address(address) in overlay_net
                mine[name] = (address, "passing")
            expected[h.name] = mine

        # Each agent lists its own engine's tasks, and only those, passing at their overlay
        # addresses: each checks from the host the task runs on.
        started = time.monotonic()
        for a in agents:

            def listed(a: NsAgent = a) -> bool:
                return a.health(service, passing=True) == expected[a.eng.name]

            wait_for(listed, 60, f"{a.eng.name}'s agent lists its tasks passing")
        print(f"both agents list their tasks passing {time.monotonic() - started:.2f} s after")
        for a in agents:
            rows = a.get(f"/v1/catalog/service/{service}")
            for row in rows:
                meta = row["ServiceMeta"]
                assert meta["swarm-service"] == service
                assert meta["swarm-task"] == row["ServiceID"]
                assert meta["network"] == swarm.overlay
            assert a.dig(f"{service}.service.dockmesh") == sorted(
                addr for addr, _ in expected[a.eng.name].values()
            )

        # The registered address is reached through the overlay from the other host's task.
        [(src_name, _)] = list(running["h1"].items())[:1]
        [(dst_addr, _)] = list(expected["h2"].values())[:1]

        # (the overlay's data path to a fresh task takes a moment across hosts)
        def fetched() -> bool:
            return get_ok(h1, src_name, dst_addr)

        wait_for(fetched, 30, f"{dst_addr}:8080 from h1's task")

        # One task on h2 fails its check: critical there, within the check's interval and
        # rise/fall; the other agent's list does not change.
        sick = sorted(running["h2"])[0]
        ex = h2.api.exec_create(sick, ["rm", "/w/ok"])
        h2.api.exec_start(ex)
        started = time.monotonic()
        agent2 = agents[1]
        wait_for(
            lambda: (agent2.health(service) or {}).get(sick, ("", ""))[1] == "critical",
            30,
            "the sick task goes critical",
        )
        print(f"sick task critical after {time.monotonic() - started:.2f} s")
        passing2 = agent2.health(service, passing=True)
        assert passing2 is not None and sick not in passing2
        assert set(passing2) == set(expected["h2"]) - {sick}
        assert agents[0].health(service, passing=True) == expected["h1"]
        assert expected["h2"][sick][0] not in agent2.dig(f"{service}.service.dockmesh")

        # Scaling down removes the instances of the tasks that stop.
        info = h1.api.inspect_service(created["ID"])
        h1.api.update_service(
            created["ID"],
            info["Version"]["Index"],
            mode=ServiceMode("replicated", replicas=1),
            fetch_current_spec=True,
        )
        started = time.monotonic()

        def scaled() -> bool:
            left = {h.name: set(tasks_on(h, service)) for h in (h1, h2)}
            listed = {a.eng.name: set(a.health(service) or {}) for a in agents}
            return sum(map(len, left.values())) == 1 and listed == left

        wait_for(scaled, 90, "one task and one instance left")
        print(f"scaled down to one instance after {time.monotonic() - started:.2f} s")
    finally:
        for a in agents:
            a.stop()
        with contextlib.suppress(Exception):
            h1.api.remove_service(created["ID"])


def test_topology_and_why_see_a_service_across_engines(swarm: SwarmLab, cli_env: None) -> None:
    h1, h2 = swarm.h1, swarm.h2
    service = f"{swarm.prefix}topo"
    created = h1.api.create_service(
        TaskTemplate(
            ContainerSpec(TOOLBOX, command=SERVE),
            networks=[NetworkAttachmentConfig(swarm.overlay)],
        ),
        name=service,
        mode=ServiceMode("replicated", replicas=2),
        endpoint_spec=EndpointSpec(ports={free_port(): 8080}),
    )
    try:
        wait_for(
            lambda: all(len(tasks_on(h, service)) == 1 for h in (h1, h2)),
            120,
            "a task on each engine",
        )
        doc = json.loads(dockmesh("topology", "--json", *swarm.engines(), check=True).stdout)
        [net] = [n for n in doc["networks"] if n["name"] == swarm.overlay]
        assert net["scope"] == "swarm" and sorted(net["engines"]) == ["h1", "h2"]
        assert net["ingress"] is False
        tasks = sorted(e["engine"] for e in net["endpoints"] if e["container"].startswith(service))
        assert tasks == ["h1", "h2"]
        [ingress] = [n for n in doc["networks"] if n["name"] == "ingress"]
        assert ingress["ingress"] is True and sorted(ingress["engines"]) == ["h1", "h2"]

        # The swarm service's name stands for its tasks, on both engines: `why` analyses and
        # probes each from the h1 task's namespace.
        [mine] = tasks_on(h1, service)
        # The overlay's data path to the other host's task takes a moment (the engines learn
        # each other's endpoints by gossip, slower on a loaded machine): a real answer first.
        [theirs] = tasks_on(h2, service).values()
        other = theirs["NetworkSettings"]["Networks"][swarm.overlay]["IPAddress"]
        wait_for(lambda: get_ok(h1, mine, other), 90, "h1's task reaches h2's")
        proc = dockmesh(
            "why", mine, service, "--port", "8080/tcp", "--probe", "--json", *swarm.engines()
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        doc = json.loads(proc.stdout)
        dst = doc["resolved"]["dst"]
        assert dst["kind"] == "service", dst
        every = {n for h in (h1, h2) for n in tasks_on(h, service)}
        assert {p["dst"] for p in doc["pairs"]} == every
        assert all(p["reachable"] and p["probe"]["ok"] for p in doc["pairs"]), doc["pairs"]
    finally:
        h1.api.remove_service(created["ID"])


def run_plain(eng: LabEngine, name: str, network: str) -> None:
    cid = eng.api.create_container(
        TOOLBOX,
        name=name,
        command=SERVE,
        host_config=eng.api.create_host_config(network_mode=network),
    )["Id"]
    eng.api.start(cid)


def test_why_and_matrix_across_engines_agree_with_probes(swarm: SwarmLab, cli_env: None) -> None:
    h1, h2 = swarm.h1, swarm.h2
    a, b, c = (f"{swarm.prefix}-{x}" for x in "abc")
    run_plain(h1, a, swarm.overlay)
    run_plain(h2, b, swarm.overlay)
    run_plain(h2, c, swarm.other)  # on h2, but not on the overlay a and b share
    # The overlay's data path to a fresh container takes a moment: wait for a real answer.
    wait_for(lambda: get_ok(h1, a, b), 90, "a reaches b")

    for src, dst in ((a, b), (b, a)):
        proc = dockmesh(
            "why", src, dst, "--port", "8080/tcp", "--probe", "--json", *swarm.engines()
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        doc = json.loads(proc.stdout)
        assert doc["reachable"] is True and doc["probe"]["ok"] is True, doc
        assert doc["network"] == swarm.overlay

    # nothing listens on 9: the analysis says so from DST's sockets on its host, and the
    # probe from SRC's namespace on the other host is refused
    proc = dockmesh("why", b, a, "--port", "9/tcp", "--probe", "--json", *swarm.engines())
    assert proc.returncode == 1, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["reachable"] is False and doc["probe"]["ok"] is False, doc

    # no shared network: c (h2) and a (h1)
    proc = dockmesh("why", c, a, "--port", "8080/tcp", "--probe", "--json", *swarm.engines())
    assert proc.returncode == 1, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["reachable"] is False and doc["probe"]["ok"] is False, doc

    proc = dockmesh(
        "matrix",
        "--port",
        "8080/tcp",
        "--json",
        *[x for n in (a, b, c) for x in ("--select", f"container={n}")],
        *swarm.engines(),
    )
    doc = json.loads(proc.stdout)
    assert proc.returncode == 0 and doc["mismatches"] == 0, doc
    verdicts = {(p["src"], p["dst"]): p["observed"] for p in doc["pairs"]}
    assert verdicts == {
        (a, b): True,
        (b, a): True,
        (a, c): False,
        (c, a): False,
        (b, c): False,
        (c, b): False,
    }
    print("matrix across two engines:", doc["elapsed_s"], "s")


def test_a_task_with_a_docker_healthcheck_passes_only_while_docker_says_healthy(
    swarm: SwarmLab, tmp_path: Path, cli_env: None
) -> None:
    """The task's Docker HEALTHCHECK decides (`docker:<ID>`): passing once healthy, critical
    once Docker calls it unhealthy (before the swarm replaces it), on the agent of its host."""
    from docker.types import Healthcheck

    h1, h2 = swarm.h1, swarm.h2
    service = f"{swarm.prefix}hc"
    second = 1_000_000_000
    created = h1.api.create_service(
        TaskTemplate(
            ContainerSpec(
                TOOLBOX,
                command=SERVE,
                labels={"dockmesh.port": "8080"},
                healthcheck=Healthcheck(
                    test=["CMD", "test", "-f", "/w/ok"],
                    interval=second,
                    timeout=second,
                    retries=1,
                ),
            ),
            networks=[NetworkAttachmentConfig(swarm.overlay)],
        ),
        name=service,
        mode=ServiceMode("replicated", replicas=2),
    )
    agents = [NsAgent(h, tmp_path) for h in (h1, h2)]
    try:

        def healthy_everywhere() -> bool:
            for a in agents:
                tasks = tasks_on(a.eng, service)
                if len(tasks) != 1:
                    return False
                [i] = tasks.values()
                if i["State"].get("Health", {}).get("Status") != "healthy":
                    return False
                address = i["NetworkSettings"]["Networks"][swarm.overlay]["IPAddress"]
                if a.health(service, passing=True) != {i["Name"].lstrip("/"): (address, "passing")}:
                    return False
            return True

        wait_for(healthy_everywhere, 120, "a healthy task passing on each host")
        [sick] = tasks_on(h2, service)
        ex = h2.api.exec_create(sick, ["rm", "/w/ok"])
        h2.api.exec_start(ex)
        started = time.monotonic()
        agent2 = agents[1]
        wait_for(
            lambda: (agent2.health(service) or {}).get(sick, ("", ""))[1] == "critical",
            30,
            "the unhealthy task goes critical",
        )
        print(f"unhealthy task critical after {time.monotonic() - started:.2f} s")
        [mine] = tasks_on(h1, service)
        assert set(agents[0].health(service, passing=True) or {}) == {mine}
    finally:
        for a in agents:
            a.stop()
        with contextlib.suppress(Exception):
            h1.api.remove_service(created["ID"])
