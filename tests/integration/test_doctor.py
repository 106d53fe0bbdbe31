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
from typing import Any

import docker.errors
import pytest

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
