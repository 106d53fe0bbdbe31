"""Two real engines in a swarm (each in its own network namespace): an overlay network is one
network in dockmesh's topology, with endpoints from both engines."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from dockmesh.engine.backend import EngineRef
from dockmesh.engine.watch import TopologyWatcher
from tests.integration.conftest import dockmesh, free_subnets
from tests.integration.lab import Lab

# Engines in namespaces: one such set-up at a time on the machine (with the lab's tests),
# or their dockerds and swarms starve each other and the timing checks beside them.
pytestmark = pytest.mark.xdist_group("lab")


def test_overlay_seen_from_two_engines_is_one_network(api: Any, prefix: str, toolbox: str) -> None:
    [subnet] = free_subnets(api, 1)
    with Lab(prefix, subnet) as lab:
        h1, h2 = lab.engine("h1"), lab.engine("h2")
        for h in (h1, h2):
            lab.load_image(api, toolbox, h)
        lab.swarm(h1, h2)
        ov = f"{prefix}_ov"
        h1.api.create_network(ov, driver="overlay", attachable=True)
        for h, name in ((h1, f"{prefix}-a"), (h2, f"{prefix}-b")):
            cid = h.api.create_container(
                toolbox,
                name=name,
                command=["sleep", "600"],
                host_config=h.api.create_host_config(network_mode=ov),
                networking_config=h.api.create_networking_config(
                    {ov: h.api.create_endpoint_config(aliases=["peer"])}
                ),
            )["Id"]
            h.api.start(cid)
        # A real overlay: a container on h1 reaches the one on h2 by name.
        deadline = time.monotonic() + 30
        while True:
            ex = h1.api.exec_create(f"{prefix}-a", ["ping", "-c", "1", "-W", "1", f"{prefix}-b"])
            out = h1.api.exec_start(ex).decode()
            if h1.api.exec_inspect(ex["Id"])["ExitCode"] == 0:
                break
            assert time.monotonic() < deadline, out
            time.sleep(0.5)

        proc = dockmesh(
            "topology", "--json", "--engine", f"h1={h1.url}", "--engine", f"h2={h2.url}", check=True
        )
        doc = json.loads(proc.stdout)
        assert [e["name"] for e in doc["engines"]] == ["h1", "h2"]
        overlays = [n for n in doc["networks"] if n["name"] == ov]
        assert len(overlays) == 1
        [net] = overlays
        assert net["scope"] == "swarm" and net["driver"] == "overlay"
        assert sorted(net["engines"]) == ["h1", "h2"]
        assert sorted((e["container"], e["engine"]) for e in net["endpoints"]) == [
            (f"{prefix}-a", "h1"),
            (f"{prefix}-b", "h2"),
        ]
        assert all(e["aliases"] == ["peer"] for e in net["endpoints"])
        # local networks stay per engine: each engine has its own `bridge`
        assert sorted(n["engine"] for n in doc["networks"] if n["name"] == "bridge") == ["h1", "h2"]
        tree = dockmesh(
            "topology", "--engine", f"h1={h1.url}", "--engine", f"h2={h2.url}", check=True
        ).stdout
        assert "engines: h1, h2" in tree


def test_watcher_resyncs_after_an_engine_restart(api: Any, prefix: str, toolbox: str) -> None:
    [subnet] = free_subnets(api, 1)
    with Lab(prefix, subnet) as lab:
        h1 = lab.engine("h1")
        lab.load_image(api, toolbox, h1)
        watcher = TopologyWatcher([EngineRef("h1", h1.url)])
        first = watcher.start()
        try:
            lab.restart(h1)
            # made after the restart: only a resync against the new engine can show it
            h1.api.create_network(f"{prefix}_after")
            topo = watcher.wait_for(lambda t: t.network(f"{prefix}_after") is not None, 30)
            assert topo is not None
            assert topo.version > first.version
            assert watcher.resyncs >= 1
            h1.api.create_container(toolbox, name=f"{prefix}-late")
            assert watcher.wait_for(lambda t: t.container(f"{prefix}-late") is not None, 10)
        finally:
            watcher.stop()


def test_up_creates_an_overlay_on_a_swarm_engine(
    api: Any, prefix: str, toolbox: str, tmp_path: Path
) -> None:
    [subnet] = free_subnets(api, 1)
    [ov_subnet] = free_subnets(api, 1)
    with Lab(prefix, subnet) as lab:
        h1 = lab.engine("h1")
        lab.load_image(api, toolbox, h1)
        path = tmp_path / "dockmesh.yaml"
        path.write_text(
            yaml.safe_dump(
                {
                    "project": prefix,
                    "networks": {
                        "ov": {"driver": "overlay", "attachable": True, "subnet": ov_subnet}
                    },
                    "services": {
                        "web": {"image": "dockmesh/toolbox", "networks": ["ov"], "replicas": 2}
                    },
                }
            )
        )
        proc = dockmesh("up", str(path), "--engine", f"h1={h1.url}")
        assert proc.returncode == 2
        assert "overlay needs the engine to be in a swarm" in proc.stderr
        lab.swarm(h1)
        dockmesh("up", str(path), "--engine", f"h1={h1.url}", check=True)
        doc = json.loads(
            dockmesh("topology", "--json", "--engine", f"h1={h1.url}", check=True).stdout
        )
        [net] = [n for n in doc["networks"] if n["name"] == f"{prefix}_ov"]
        assert net["driver"] == "overlay" and net["scope"] == "swarm" and net["attachable"]
        assert net["ipam"][0]["subnet"] == ov_subnet
        assert sorted(e["container"] for e in net["endpoints"]) == [
            f"{prefix}-web-1",
            f"{prefix}-web-2",
        ]
        assert (
            dockmesh("plan", str(path), "--exit-code", "--engine", f"h1={h1.url}").returncode == 0
        )
        dockmesh("down", str(path), "--engine", f"h1={h1.url}", check=True)
        # the swarm removes the network asynchronously
        deadline = time.monotonic() + 20
        while [n for n in h1.api.networks() if n["Name"] == f"{prefix}_ov"]:
            assert time.monotonic() < deadline, "the overlay was not removed"
            time.sleep(0.2)
