"""plan / up / down round trips on the real engine, and validation that touches nothing."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.integration.conftest import dockmesh, free_subnets


def project_objects(api: Any, project: str) -> tuple[list[str], list[str]]:
    f = {"label": [f"dockmesh.project={project}"]}
    ctrs = sorted(c["Names"][0].lstrip("/") for c in api.containers(all=True, filters=f))
    nets = sorted(n["Name"] for n in api.networks(filters=f))
    return ctrs, nets


def write(tmp_path: Path, doc: dict[str, Any]) -> str:
    path = tmp_path / "dockmesh.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return str(path)


def stack(prefix: str, subnets: list[str], port: int) -> dict[str, Any]:
    front, back, db = subnets
    return {
        "project": prefix,
        "networks": {
            "front": {"subnet": front, "labels": {"tier": "front"}},
            "back": {
                "subnet": back,
                "options": {
                    "com.docker.network.driver.mtu": "1400",
                    "com.docker.network.bridge.enable_icc": "true",
                },
            },
            "db": {
                "subnet": db,
                "gateway": db.replace(".0/24", ".254"),
                "ip_range": db.replace(".0/24", ".0/28"),
                "aux_addresses": {"spare": db.replace(".0/24", ".200")},
                "internal": True,
            },
        },
        "services": {
            "store": {
                "image": "dockmesh/toolbox",
                "command": "httpd -f -p 5432 -h /www",
                "networks": {
                    "db": {"aliases": ["store"], "ipv4_address": db.replace(".0/24", ".10")}
                },
                "healthcheck": {"tcp": True, "port": 5432, "interval": "1s"},
            },
            "api": {
                "image": "dockmesh/toolbox",
                "replicas": 2,
                "environment": {"INSTANCE_ID": "api-{{replica}}"},
                "networks": {"back": {"aliases": ["api"]}, "db": {}},
                "healthcheck": {"http": "/health", "port": 8080, "interval": "1s"},
                "depends_on": ["store"],
                "discovery": {
                    "port": 8080,
                    "tags": ["v1", "blue"],
                    "network": "back",
                    "check": {"http": "/health", "interval": "2s"},
                },
            },
            "gw": {
                "image": "dockmesh/toolbox",
                "environment": {"INSTANCE_ID": "gw"},
                "networks": ["front", "back"],
                "ports": [f"127.0.0.1:{port}:8080"],
                "depends_on": ["api"],
            },
        },
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_get(url: str, tries: int = 50) -> str:
    for _ in range(tries):
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                return str(r.read().decode().strip())
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"{url}: no answer")


def exec_out(api: Any, container: str, cmd: list[str]) -> str:
    return str(api.exec_start(api.exec_create(container, cmd)).decode())


def test_plan_up_plan_change_down(api: Any, prefix: str, tmp_path: Path, toolbox: str) -> None:
    subnets = free_subnets(api, 3)
    port = free_port()
    doc = stack(prefix, subnets, port)
    path = write(tmp_path, doc)

    plan = json.loads(dockmesh("plan", path, "--json", check=True).stdout)
    assert [(c["action"], c["kind"], c["name"]) for c in plan["changes"]] == [
        ("create", "network", f"{prefix}_front"),
        ("create", "network", f"{prefix}_back"),
        ("create", "network", f"{prefix}_db"),
        ("create", "container", f"{prefix}-store-1"),
        ("create", "container", f"{prefix}-api-1"),
        ("create", "container", f"{prefix}-api-2"),
        ("create", "container", f"{prefix}-gw-1"),
    ]
    assert dockmesh("plan", path, "--exit-code").returncode == 3
    assert project_objects(api, prefix) == ([], [])  # plan touched nothing

    dockmesh("up", path, check=True)
    ctrs, nets = project_objects(api, prefix)
    assert ctrs == [f"{prefix}-api-1", f"{prefix}-api-2", f"{prefix}-gw-1", f"{prefix}-store-1"]
    assert nets == [f"{prefix}_back", f"{prefix}_db", f"{prefix}_front"]

    # What the engine now holds is what the file said.
    db = api.inspect_network(f"{prefix}_db")
    assert db["Internal"] is True
    assert db["IPAM"]["Config"][0] == {
        "Subnet": subnets[2],
        "Gateway": subnets[2].replace(".0/24", ".254"),
        "IPRange": subnets[2].replace(".0/24", ".0/28"),
        "AuxiliaryAddresses": {"spare": subnets[2].replace(".0/24", ".200")},
    }
    back = api.inspect_network(f"{prefix}_back")
    assert back["Options"]["com.docker.network.driver.mtu"] == "1400"
    assert api.inspect_network(f"{prefix}_front")["Labels"]["tier"] == "front"
    store = api.inspect_container(f"{prefix}-store-1")
    assert store["NetworkSettings"]["Networks"][f"{prefix}_db"]["IPAddress"] == subnets[2].replace(
        ".0/24", ".10"
    )
    api1 = api.inspect_container(f"{prefix}-api-1")
    assert api1["Config"]["Healthcheck"]["Interval"] == 1_000_000_000
    assert api1["Config"]["Labels"]["dockmesh.service"] == "api"
    assert api1["Config"]["Labels"]["dockmesh.tags"] == "v1,blue"
    assert api1["Config"]["Labels"]["dockmesh.network"] == f"{prefix}_back"
    assert sorted(api1["NetworkSettings"]["Networks"]) == [f"{prefix}_back", f"{prefix}_db"]
    # depends_on is start order
    started = {
        n: api.inspect_container(f"{prefix}-{n}")["State"]["StartedAt"]
        for n in ("store-1", "api-1", "api-2", "gw-1")
    }
    assert started["store-1"] < started["api-1"] < started["gw-1"]
    # the published port reaches the gateway; replicas got their own INSTANCE_ID
    assert http_get(f"http://127.0.0.1:{port}/id") == f"gw {prefix}-gw-1"
    ips = sorted(exec_out(api, f"{prefix}-gw-1", ["nslookup", "api"]).split("Name:")[1:])
    assert len(ips) == 2  # the shared alias answers with both replicas
    api2_ip = api.inspect_container(f"{prefix}-api-2")["NetworkSettings"]["Networks"][
        f"{prefix}_back"
    ]["IPAddress"]
    assert http_get(f"http://{api2_ip}:8080/id") == f"api-2 {prefix}-api-2"
    # Docker runs the HEALTHCHECK dockmesh wrote: the services become healthy
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        states = [
            api.inspect_container(f"{prefix}-{n}")["State"]["Health"]["Status"]
            for n in ("store-1", "api-1", "api-2")
        ]
        if states == ["healthy"] * 3:
            break
        time.sleep(0.3)
    assert states == ["healthy"] * 3

    # up again: nothing to do, nothing recreated
    ids = {
        c["Id"] for c in api.containers(all=True, filters={"label": [f"dockmesh.project={prefix}"]})
    }
    again = dockmesh("up", path, check=True)
    assert "nothing to do" in again.stderr
    assert dockmesh("plan", path, "--exit-code").returncode == 0
    assert {
        c["Id"] for c in api.containers(all=True, filters={"label": [f"dockmesh.project={prefix}"]})
    } == ids

    # change one service: only its containers are replaced
    doc["services"]["api"]["environment"]["INSTANCE_ID"] = "v2-{{replica}}"
    del doc["services"]["gw"]
    path = write(tmp_path, doc)
    # the deleted service is an orphan: kept (and named) unless --remove-orphans, as Compose
    plan = json.loads(dockmesh("plan", path, "--json", check=True).stdout)
    assert {(c["action"], c["name"]) for c in plan["changes"]} == {
        ("replace", f"{prefix}-api-1"),
        ("replace", f"{prefix}-api-2"),
    }
    assert plan["orphans"] == [f"{prefix}-gw-1"]
    plan = json.loads(dockmesh("plan", path, "--json", "--remove-orphans", check=True).stdout)
    assert {(c["action"], c["name"], c["reason"]) for c in plan["changes"]} == {
        ("replace", f"{prefix}-api-1", "changed: environment"),
        ("replace", f"{prefix}-api-2", "changed: environment"),
        ("remove", f"{prefix}-gw-1", "no longer in the file"),
    }
    dockmesh("up", path, "--remove-orphans", check=True)
    assert api.inspect_container(f"{prefix}-store-1")["Id"] in ids
    assert api.inspect_container(f"{prefix}-api-1")["Id"] not in ids
    assert dockmesh("plan", path, "--exit-code").returncode == 0

    dockmesh("down", path, check=True)
    assert project_objects(api, prefix) == ([], [])
    # down is idempotent, by its file or by its name (as `docker compose down -p`)
    assert "nothing to remove" in dockmesh("down", path, check=True).stderr
    gone = dockmesh("down", "--project", prefix, check=True)
    assert gone.stderr == (
        f"project {prefix}: nothing to remove (none of its containers or networks is on the "
        "engine)\n"
    )


def test_bad_file_exits_2_and_touches_nothing(api: Any, prefix: str, tmp_path: Path) -> None:
    a, _ = free_subnets(api, 2)
    inside = a.replace(".0/24", ".128/25")
    text = (
        f"project: {prefix}\n"
        "networks:\n"
        f"  a: {{subnet: {a}}}\n"
        f"  b: {{subnet: {inside}, gateway: 192.0.2.1}}\n"
        "services:\n"
        "  web: {image: dockmesh/toolbox, networks: [a]}\n"
    )
    path = tmp_path / "dockmesh.yaml"
    path.write_text(text)
    for cmd in ("plan", "up"):
        proc = dockmesh(cmd, str(path))
        assert proc.returncode == 2, proc.stderr
        assert proc.stdout == ""
        lines = proc.stderr.strip().splitlines()
        assert (
            f"{path}:4: networks.b.gateway: gateway 192.0.2.1 is outside the subnet {inside}"
            in lines
        )
        assert (
            f"{path}:4: networks.b.subnet: {inside} overlaps the subnet {a} of network 'a'" in lines
        )
    assert project_objects(api, prefix) == ([], [])


def test_clash_with_an_engine_network_is_reported(api: Any, prefix: str, tmp_path: Path) -> None:
    [s] = free_subnets(api, 1)
    api.create_network(f"{prefix}-foreign", ipam={"Config": [{"Subnet": s}]})
    path = write(tmp_path, {"project": prefix, "networks": {"n": {"subnet": s}}})
    proc = dockmesh("up", path)
    assert proc.returncode == 2
    assert (
        f"networks.n.subnet: {s} overlaps {s} of the engine's network '{prefix}-foreign'"
        in proc.stderr
    )
    assert project_objects(api, prefix) == ([], [])


def test_failed_up_rolls_back(api: Any, prefix: str, tmp_path: Path, toolbox: str) -> None:
    """The port is taken on the host, so the engine cannot start the second service: what
    this run created is removed again."""
    s1, s2 = free_subnets(api, 2)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        path = write(
            tmp_path,
            {
                "project": prefix,
                "networks": {"a": {"subnet": s1}, "b": {"subnet": s2}},
                "services": {
                    "ok": {"image": "dockmesh/toolbox", "networks": ["a"]},
                    "clash": {
                        "image": "dockmesh/toolbox",
                        "networks": ["a", "b"],
                        "ports": [f"127.0.0.1:{port}:8080"],
                        "depends_on": ["ok"],
                    },
                },
            },
        )
        proc = dockmesh("up", path)
    assert proc.returncode == 1, proc.stderr
    assert f"starting container {prefix}-clash-1 failed" in proc.stderr
    assert "rolled back" in proc.stderr and "Traceback" not in proc.stderr
    assert project_objects(api, prefix) == ([], [])


def test_down_takes_the_folders_file_or_a_project(api: Any, prefix: str, tmp_path: Path) -> None:
    """As Compose does: without a FILE, ./dockmesh.yaml; without that, --project."""
    api.create_network(f"{prefix}_x", labels={"dockmesh.project": prefix})
    proc = dockmesh("down", cwd=str(tmp_path))
    assert proc.returncode == 2
    assert proc.stderr == "dockmesh: no dockmesh.yaml in this folder: give -f FILE or -p NAME\n"
    (tmp_path / "dockmesh.yaml").write_text(f"project: {prefix}\n")
    dockmesh("down", cwd=str(tmp_path), check=True)
    assert project_objects(api, prefix) == ([], [])


def test_drivers(api: Any, prefix: str, tmp_path: Path, toolbox: str) -> None:
    """macvlan on a veth the test creates; ipvlan and overlay refused with a reason."""
    parent = f"{prefix}a"
    subprocess.run(
        ["ip", "link", "add", parent, "type", "veth", "peer", "name", f"{prefix}b"], check=True
    )
    try:
        subprocess.run(["ip", "link", "set", parent, "up"], check=True)
        [s] = free_subnets(api, 1)
        path = write(
            tmp_path,
            {
                "project": prefix,
                "networks": {
                    "mv": {"driver": "macvlan", "parent": parent, "subnet": s},
                    "iv": {"driver": "ipvlan", "parent": parent},
                    "ov": {"driver": "overlay", "attachable": True},
                },
                "services": {
                    "m": {
                        "image": "dockmesh/toolbox",
                        "networks": {"mv": {"ipv4_address": s.replace(".0/24", ".9")}},
                    },
                    "h": {
                        "image": "dockmesh/toolbox",
                        "network_mode": "host",
                        "command": "sleep 600",
                    },
                    "n": {
                        "image": "dockmesh/toolbox",
                        "network_mode": "none",
                        "command": "sleep 600",
                    },
                },
            },
        )
        proc = dockmesh("up", path)
        assert proc.returncode == 2
        assert "networks.iv.driver: ipvlan: this kernel has no ipvlan support" in proc.stderr
        assert "networks.ov.driver: overlay needs the engine to be in a swarm" in proc.stderr
        doc = yaml.safe_load(Path(path).read_text())
        del doc["networks"]["iv"], doc["networks"]["ov"]
        path = write(tmp_path, doc)
        dockmesh("up", path, check=True)
        mv = api.inspect_network(f"{prefix}_mv")
        assert mv["Driver"] == "macvlan" and mv["Options"]["parent"] == parent
        m = api.inspect_container(f"{prefix}-m-1")
        assert m["NetworkSettings"]["Networks"][f"{prefix}_mv"]["IPAddress"] == s.replace(
            ".0/24", ".9"
        )
        assert api.inspect_container(f"{prefix}-h-1")["HostConfig"]["NetworkMode"] == "host"
        n = api.inspect_container(f"{prefix}-n-1")
        assert n["HostConfig"]["NetworkMode"] == "none" and n["State"]["Running"]
        assert dockmesh("plan", path, "--exit-code").returncode == 0
        dockmesh("down", path, check=True)
    finally:
        subprocess.run(["ip", "link", "del", parent], check=False)


@pytest.mark.parametrize("what", ["missing", "yaml"])
def test_unreadable_files(tmp_path: Path, what: str) -> None:
    path = tmp_path / "x.yaml"
    if what == "yaml":
        path.write_text("networks: [\n")
    proc = dockmesh("plan", str(path))
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1


# --- nothing lost --------------------------------------------------------------------------


def small(prefix: str, subnet: str, replicas: int = 2, **web: Any) -> dict[str, Any]:
    return {
        "project": prefix,
        "networks": {"net": {"subnet": subnet}},
        "services": {
            "web": {
                "image": "dockmesh/toolbox",
                "replicas": replicas,
                "networks": {"net": {"aliases": ["web"]}},
                **web,
            }
        },
    }


def test_two_concurrent_ups_converge(api: Any, prefix: str, tmp_path: Path) -> None:
    (subnet,) = free_subnets(api, 1)
    path = write(tmp_path, small(prefix, subnet, replicas=4))
    cmd = [sys.executable, "-m", "dockmesh", "up", path]
    procs = [subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(p.wait(timeout=300), p.stderr.read() if p.stderr else "") for p in procs]
    assert [rc for rc, _ in results] == [0, 0], results
    assert dockmesh("plan", path, "--exit-code").returncode == 0
    ctrs, nets = project_objects(api, prefix)
    assert ctrs == [f"{prefix}-web-{i}" for i in range(1, 5)] and nets == [f"{prefix}_net"]


def test_a_failed_replace_leaves_the_project_running(api: Any, prefix: str, tmp_path: Path) -> None:
    (subnet,) = free_subnets(api, 1)
    path = write(tmp_path, small(prefix, subnet))
    dockmesh("up", path, check=True)
    before = {
        c: api.inspect_container(c)["State"]["Running"] for c in project_objects(api, prefix)[0]
    }
    with socket.socket() as busy:  # the new configuration's port is taken on the host
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        changed = small(prefix, subnet, replicas=1, ports=[f"127.0.0.1:{port}:8080"])
        changed["networks"]["net"]["internal"] = False
        changed["networks"]["net"]["labels"] = {"v": "2"}  # the network is replaced too
        proc = dockmesh("up", write(tmp_path, changed))
    assert proc.returncode == 1, proc.stderr
    assert "rolled back: the project is as it was" in proc.stderr
    after = {
        c: api.inspect_container(c)["State"]["Running"] for c in project_objects(api, prefix)[0]
    }
    assert after == before == {f"{prefix}-web-1": True, f"{prefix}-web-2": True}
    assert dockmesh("plan", write(tmp_path, small(prefix, subnet)), "--exit-code").returncode == 0


def test_a_container_disconnected_by_hand_is_a_change_and_up_repairs_it(
    api: Any, prefix: str, tmp_path: Path
) -> None:
    (subnet,) = free_subnets(api, 1)
    path = write(tmp_path, small(prefix, subnet, replicas=1))
    dockmesh("up", path, check=True)
    api.disconnect_container_from_network(f"{prefix}-web-1", f"{prefix}_net")
    plan = json.loads(dockmesh("plan", path, "--json", check=True).stdout)
    assert [(c["action"], c["name"]) for c in plan["changes"]] == [("replace", f"{prefix}-web-1")]
    assert "disconnected by hand" in plan["changes"][0]["reason"]
    dockmesh("up", path, check=True)
    nets = api.inspect_container(f"{prefix}-web-1")["NetworkSettings"]["Networks"]
    assert list(nets) == [f"{prefix}_net"] and "web" in nets[f"{prefix}_net"]["Aliases"]
    assert dockmesh("plan", path, "--exit-code").returncode == 0


def test_sigint_during_up_stops_cleanly_and_says_what_was_created(
    api: Any, prefix: str, tmp_path: Path
) -> None:
    (subnet,) = free_subnets(api, 1)
    path = write(tmp_path, small(prefix, subnet, replicas=12))
    proc = subprocess.Popen(
        [sys.executable, "-m", "dockmesh", "up", path], stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 60
    made: list[str] = []
    while time.monotonic() < deadline and not made:
        made = project_objects(api, prefix)[0]
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    # The signal went when the first of 12 containers existed: an up that then finished
    # (exit 0) went on after SIGINT. That is the regression this test is for, not a skip.
    assert made, "up created no container within 60 s"
    assert proc.returncode == 130, f"{len(made)} of 12 containers made when signalled: {err}"
    assert "Traceback" not in err
    assert "interrupted: stopped before" in err and f"created {prefix}_net" in err
    dockmesh("up", path, check=True)  # finishes the job
    assert dockmesh("plan", path, "--exit-code").returncode == 0
