"""`dockmesh doctor` on real containers, one of them built FROM scratch (a static busybox
serving on 127.0.0.1 only: no shell, no ip, no netstat inside)."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker.errors
import pytest
import yaml

from tests.integration.conftest import dockmesh, free_subnets, run_toolbox

pytestmark = pytest.mark.integration


@pytest.fixture
def scratch_image(api: Any, prefix: str) -> Iterator[str]:
    busybox = shutil.which("busybox")
    if busybox is None:
        pytest.fail("busybox-static is missing: scripts/setup.sh installs it")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        # Named busybox: a multi-call binary started under another name finds no applet.
        tar.add(busybox, arcname="busybox")
    name = f"{prefix}scratch:latest"
    api.import_image_from_data(
        buf.getvalue(),
        repository=f"{prefix}scratch",
        tag="latest",
        changes=['ENTRYPOINT ["/busybox"]'],
    )
    yield name
    with contextlib.suppress(docker.errors.APIError):
        api.remove_image(name, force=True)


def doctor(name: str) -> dict[str, Any]:
    proc = dockmesh("doctor", name, "--json")
    assert proc.returncode in (0, 1), proc.stderr
    doc: dict[str, Any] = json.loads(proc.stdout)
    return doc


def test_scratch_container_listening_on_loopback_only(
    api: Any, prefix: str, scratch_image: str, toolbox: str
) -> None:
    net = f"{prefix}-net"
    (subnet,) = free_subnets(api, 1)
    api.create_network(net, ipam={"Config": [{"Subnet": subnet}]})
    host_config = api.create_host_config(network_mode=net)
    cid = api.create_container(
        scratch_image,
        name=f"{prefix}-lonely",
        host_config=host_config,
        command=["httpd", "-f", "-p", "127.0.0.1:9000", "-h", "/"],
    )["Id"]
    api.start(cid)
    run_toolbox(api, f"{prefix}-peer", net, command=["sleep", "300"])
    no_tools = subprocess.run(["docker", "exec", cid, "ip", "addr"], capture_output=True)
    assert no_tools.returncode != 0  # nothing to run inside: the doctor works from outside
    doc = doctor(f"{prefix}-lonely")
    s = doc["sections"]
    assert s["state"]["state"] == "running"
    assert {x["name"] for x in s["interfaces"]} == {"lo", "eth0"}
    assert any(r["destination"] == "default" for r in s["routes"])
    assert {"proto": "tcp", "address": "127.0.0.1", "port": 9000} in s["listening"]
    assert s["resolv_conf"]["nameservers"] == ["127.0.0.11"]
    (dns,) = s["dns"]
    assert dns["name"] == f"{prefix}-peer" and dns["answers"] == dns["expected"]
    assert all(p["reachable"] for p in s["connectivity"])
    (finding,) = doc["findings"]
    assert finding["severity"] == "warning" and "127.0.0.1:9000 only" in finding["message"]


def test_published_port_with_nothing_listening_and_ambiguous_name(
    api: Any, prefix: str, toolbox: str
) -> None:
    net = f"{prefix}-net"
    (subnet,) = free_subnets(api, 1)
    api.create_network(net, ipam={"Config": [{"Subnet": subnet}]})
    run_toolbox(api, f"{prefix}-web", net, command=["sleep", "300"], ports={"8080/tcp": None})
    for project in ("one", "two"):
        cid = api.create_container(
            toolbox,
            name=f"{prefix}-db-{project}",
            command=["sleep", "300"],
            labels={"dockmesh.project": f"{prefix}{project}"},
            host_config=api.create_host_config(network_mode=net),
            networking_config=api.create_networking_config(
                {net: api.create_endpoint_config(aliases=["db"])}
            ),
        )["Id"]
        api.start(cid)
    proc = dockmesh("doctor", f"{prefix}-web", "--json")
    assert proc.returncode == 1  # an error was found
    doc = json.loads(proc.stdout)
    codes = {f["code"] for f in doc["findings"]}
    assert {"published-not-listening", "dns-ambiguous"} <= codes
    (db,) = [d for d in doc["sections"]["dns"] if d["name"] == "db"]
    assert len(db["answers"]) == 2


def test_stopped_container(api: Any, prefix: str, toolbox: str) -> None:
    net = f"{prefix}-net"
    (subnet,) = free_subnets(api, 1)
    api.create_network(net, ipam={"Config": [{"Subnet": subnet}]})
    cid = run_toolbox(api, f"{prefix}-gone", net, command=["sleep", "300"])
    api.stop(cid, timeout=0)
    doc = doctor(f"{prefix}-gone")
    assert [f["code"] for f in doc["findings"]] == ["not-running"]


def test_a_project_made_by_up_host_network_and_a_shared_namespace(
    api: Any, prefix: str, tmp_path: Path, toolbox: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A project file puts `web` (two replicas, alias web) and `db` on separate networks and
    `hostly` on the host's network; `side` joins web-1's namespace. The doctor said: web's
    own alias resolving to itself was unexpected; db, hostly and side "share no network"
    (connect them!); hostly one such warning per member, and "run as root"."""
    monkeypatch.setenv("DOCKMESH_AGENT", "http://127.0.0.1:9")
    monkeypatch.setenv("DOCKMESH_POLICY_TABLE", f"{prefix}pol")
    monkeypatch.setenv("DOCKMESH_POLICY_DIR", str(tmp_path / "policy"))
    front, back = free_subnets(api, 2)
    sleep = "sleep 600"
    doc = {
        "project": prefix,
        "networks": {"front": {"subnet": front}, "back": {"subnet": back}},
        "services": {
            "web": {
                "image": toolbox,
                "command": sleep,
                "replicas": 2,
                "networks": {"front": {"aliases": ["web"]}},
            },
            "db": {"image": toolbox, "command": sleep, "networks": {"back": {}}},
            "hostly": {"image": toolbox, "command": sleep, "network_mode": "host"},
        },
    }
    path = tmp_path / "dockmesh.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    dockmesh("up", str(path), check=True)
    side = api.create_container(
        toolbox,
        name=f"{prefix}-side",
        command=["sleep", "600"],
        labels={"dockmesh.project": prefix},
        host_config=api.create_host_config(network_mode=f"container:{prefix}-web-1"),
    )["Id"]
    api.start(side)
    try:
        web = doctor(f"{prefix}-web-1")
        by_code = {f["code"]: f for f in web["findings"]}
        assert "dns-unexpected" not in by_code and "dns-ambiguous" not in by_code, web
        assert "no-shared-network" not in by_code, web["findings"]
        assert f"{prefix}-db-1" in by_code["separated"]["message"]
        assert by_code["separated"]["severity"] == "info"
        assert f"{prefix}-side lives in {prefix}-web-1's" in by_code["shared-namespace"]["message"]
        assert not any("docker network connect" in f["fix"] for f in web["findings"])
        (web_dns,) = [d for d in web["sections"]["dns"] if d["name"] == "web"]
        assert sorted(web_dns["answers"]) == sorted(web_dns["expected"])
        assert len(web_dns["expected"]) == 2

        hostly = doctor(f"{prefix}-hostly-1")
        assert [(f["severity"], f["code"]) for f in hostly["findings"]] == [
            ("info", "host-network")
        ]

        joined = doctor(f"{prefix}-side")
        shared = next(f for f in joined["findings"] if f["code"] == "shared-namespace")
        assert f"lives in {prefix}-web-1's network namespace" in shared["message"]
        assert joined["sections"]["namespace"]["owner"] == f"{prefix}-web-1"
        assert not any("docker network connect" in f["fix"] for f in joined["findings"])

        # A policy rule between them says they are meant to talk: then it is a warning, and
        # the fix is the file's, not a `docker network connect` that `up` would undo.
        policy = tmp_path / "policy.yaml"
        policy.write_text(
            "policy:\n  rules:\n"
            f"    - {{from: {{container: {prefix}-web-1}}, to: {{container: {prefix}-db-1}}}}\n"
        )
        dockmesh("policy", "apply", str(policy), check=True)
        web = doctor(f"{prefix}-web-1")
        (warn,) = [f for f in web["findings"] if f["code"] == "no-shared-network"]
        assert "allows traffic between them" in warn["message"]
        assert "project file" in warn["fix"] and "docker network connect" not in warn["fix"]
    finally:
        with contextlib.suppress(docker.errors.NotFound):
            api.remove_container(side, force=True)
        dockmesh("policy", "remove")
        dockmesh("down", str(path))
