"""dockmesh images build: offline images that work."""

from __future__ import annotations

import json
import time
import urllib.request
from typing import Any

from tests.integration.conftest import dockmesh, free_subnets, run_toolbox


def test_second_build_skips_unchanged_inputs() -> None:
    dockmesh("images", "build", check=True)
    proc = dockmesh("images", "build", "--json", check=True)
    doc = json.loads(proc.stdout)
    assert {i["image"]: i["built"] for i in doc["images"]} == {
        "dockmesh/toolbox:latest": False,
        "dockmesh/python:latest": False,
    }


def test_unknown_image_name_is_bad_input() -> None:
    proc = dockmesh("images", "build", "nginx")
    assert proc.returncode == 2
    assert "unknown image 'nginx'" in proc.stderr


def test_toolbox_serves_id_and_health(api: Any, prefix: str, toolbox: str) -> None:
    [subnet] = free_subnets(api, 1)
    net = f"{prefix}_net"
    api.create_network(net, ipam={"Config": [{"Subnet": subnet}]})
    cid = run_toolbox(api, f"{prefix}-web", net, env={"INSTANCE_ID": "seven"})
    ip = api.inspect_container(cid)["NetworkSettings"]["Networks"][net]["IPAddress"]

    def get(path: str) -> tuple[int, str]:
        for _ in range(50):
            try:
                with urllib.request.urlopen(f"http://{ip}:8080{path}", timeout=2) as r:
                    return r.status, r.read().decode().strip()
            except urllib.error.HTTPError as e:
                return e.code, ""
            except OSError:
                time.sleep(0.1)
        raise AssertionError(f"{path}: no answer")

    assert get("/id") == (200, f"seven {prefix}-web")
    assert get("/health") == (200, "ok")
    assert get("/cgi-bin/id") == (200, f"seven {prefix}-web")
    ex = api.exec_create(cid, ["touch", "/tmp/unhealthy"])
    api.exec_start(ex)
    assert get("/cgi-bin/health")[0] == 503
    # the tools later issues rely on are there
    ex = api.exec_create(cid, ["sh", "-c", "for t in nc ping nslookup httpd ip; do which $t; done"])
    assert api.exec_start(ex).decode().count("/bin/") == 5


def test_python_image_runs_dockmesh(api: Any, prefix: str) -> None:
    cid = api.create_container(
        "dockmesh/python:latest", name=f"{prefix}-py", command=["dockmesh", "images", "--help"]
    )["Id"]
    api.start(cid)
    assert api.wait(cid, timeout=60)["StatusCode"] == 0
    assert "Offline images" in api.logs(cid).decode()


def test_the_agent_image_base_carries_nft(api: Any, engine: Any, prefix: str) -> None:
    """Built under the test's own name (the shared dockmesh/python-base is not touched): the
    base the agent's image is made from runs nft, which keeps a table in its namespace."""
    from dockmesh.images.build import ensure_base

    ref = ensure_base(engine, lambda _msg: None, None, repo=f"{prefix}/python-base")
    try:
        cid = api.create_container(
            ref,
            name=f"{prefix}-nft",
            command=["sh", "-c", "nft --version && nft add table inet t && nft list tables"],
            host_config=api.create_host_config(network_mode="none", cap_add=["NET_ADMIN"]),
        )["Id"]
        api.start(cid)
        assert api.wait(cid, timeout=60)["StatusCode"] == 0, api.logs(cid).decode()
        text = api.logs(cid).decode()
        assert "nftables v" in text and "table inet t" in text
    finally:
        for c in api.containers(all=True, filters={"ancestor": ref}):
            api.remove_container(c["Id"], force=True)
        api.remove_image(ref, force=True)
