"""dockmesh topology, and the live watcher, against the real engine."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from typing import Any

import pytest

from dockmesh.engine.backend import EngineRef, default_url
from dockmesh.engine.docker import DockerBackend
from dockmesh.engine.watch import TopologyWatcher
from dockmesh.model.topology import Container, Topology
from tests.integration.conftest import dockmesh, free_subnets, run_toolbox


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def small(api: Any, prefix: str, toolbox: str) -> dict[str, Any]:
    """An internal network and a plain one; two containers sharing an alias; a published port."""
    s1, s2 = free_subnets(api, 2)
    inner, outer = f"{prefix}_inner", f"{prefix}_outer"
    api.create_network(
        inner,
        internal=True,
        labels={"team": "db"},
        ipam={"Config": [{"Subnet": s1, "Gateway": s1.replace(".0/24", ".1")}]},
    )
    api.create_network(outer, attachable=True, ipam={"Config": [{"Subnet": s2}]})
    port = free_port()
    a = run_toolbox(
        api, f"{prefix}-a", outer, aliases=["svc"], ports={"8080/tcp": ("127.0.0.1", port)}
    )
    b = run_toolbox(api, f"{prefix}-b", outer, aliases=["svc"])
    api.connect_container_to_network(a, inner, aliases=["db"])
    return {"inner": inner, "outer": outer, "a": a, "b": b, "port": port, "subnets": (s1, s2)}


def test_topology_json(small: dict[str, Any], prefix: str) -> None:
    proc = dockmesh("topology", "--json", check=True)
    doc = json.loads(proc.stdout)
    assert doc["engines"][0]["name"] == "local"
    assert doc["engines"][0]["server_version"]
    nets = {n["name"]: n for n in doc["networks"]}
    inner, outer = nets[small["inner"]], nets[small["outer"]]
    assert inner["internal"] is True and inner["attachable"] is False
    assert outer["attachable"] is True
    assert inner["labels"] == {"team": "db"}
    assert inner["ipam"][0]["subnet"] == small["subnets"][0]
    assert inner["ipam"][0]["gateway"] == small["subnets"][0].replace(".0/24", ".1")
    assert [(e["container"], e["aliases"]) for e in inner["endpoints"]] == [(f"{prefix}-a", ["db"])]
    assert [(e["container"], e["aliases"]) for e in outer["endpoints"]] == [
        (f"{prefix}-a", ["svc"]),
        (f"{prefix}-b", ["svc"]),
    ]
    for e in outer["endpoints"]:
        assert e["ipv4"].startswith(small["subnets"][1].rsplit(".", 1)[0])
        assert e["mac"].startswith("02:42:")
        assert "svc" in e["dns_names"] and e["container"] in e["dns_names"]
    ctrs = {c["name"]: c for c in doc["containers"]}
    a = ctrs[f"{prefix}-a"]
    assert a["state"] == "running" and a["pid"] > 0
    assert sorted(a["networks"]) == sorted([small["inner"], small["outer"]])
    assert {
        "container_port": 8080,
        "protocol": "tcp",
        "host_ip": "127.0.0.1",
        "host_port": small["port"],
    } in a["ports"]


def test_topology_tree_and_dot(small: dict[str, Any], prefix: str) -> None:
    tree = dockmesh("topology", check=True).stdout
    assert small["inner"] in tree and "internal" in tree and f"{prefix}-b" in tree
    assert "aliases: svc" in tree and f"127.0.0.1:{small['port']}→8080/tcp" in tree
    dot = dockmesh("topology", "--dot", check=True).stdout
    assert dot.startswith("graph dockmesh {") and dot.rstrip().endswith("}")
    assert f'label="{small["inner"]}' in dot and f'label="{prefix}-a' in dot
    assert dot.count(" -- ") >= 3


def test_bad_engine_arguments() -> None:
    proc = dockmesh("topology", "--engine", "not-a-url")
    assert proc.returncode == 2
    assert "--engine 'not-a-url'" in proc.stderr
    proc = dockmesh("topology", "--engine", "unix:///nonexistent/dockmesh.sock")
    assert proc.returncode == 1
    assert "dockmesh:" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_two_urls_to_one_engine_show_each_local_network_per_engine(small: dict[str, Any]) -> None:
    url = default_url(os.environ.get("DOCKER_HOST"))
    doc = json.loads(
        dockmesh(
            "topology", "--json", "--engine", f"one={url}", "--engine", f"two={url}", check=True
        ).stdout
    )
    assert [e["name"] for e in doc["engines"]] == ["one", "two"]
    inner = [n for n in doc["networks"] if n["name"] == small["inner"]]
    assert sorted(n["engine"] for n in inner) == ["one", "two"]  # local scope: not merged


# --- the live watcher ----------------------------------------------------------------------


def ctr(topo: Topology, name: str) -> Any:
    return topo.container(name)


def test_watcher_follows_events(api: Any, prefix: str, toolbox: str) -> None:
    [subnet] = free_subnets(api, 1)
    net = f"{prefix}_w"
    watcher = TopologyWatcher([EngineRef("local", default_url(os.environ.get("DOCKER_HOST")))])
    start = watcher.start()
    try:
        v0 = start.version
        nid = api.create_network(net, ipam={"Config": [{"Subnet": subnet}]})["Id"]
        assert watcher.wait_for(lambda t: t.network(net) is not None, 10)
        name = f"{prefix}-c"
        cid = api.create_container(
            "dockmesh/toolbox",
            name=name,
            hostname=name,
            healthcheck={
                "test": ["CMD-SHELL", "test -e /tmp/ok"],
                "interval": 200_000_000,
                "retries": 1,
            },
        )["Id"]
        assert watcher.wait_for(
            lambda t: ctr(t, name) is not None and ctr(t, name).state == "created", 10
        )
        api.start(cid)
        assert watcher.wait_for(lambda t: ctr(t, name).running and ctr(t, name).pid, 10)
        api.connect_container_to_network(cid, nid, aliases=["wx"])
        topo = watcher.wait_for(
            lambda t: any(a.network == net and a.ipv4 for a in ctr(t, name).attachments), 10
        )
        assert topo is not None
        [ep] = topo.endpoints_of(topo.network(net))  # type: ignore[arg-type]
        assert ep.aliases == ("wx",) and ep.ipv4 and ep.ipv4.startswith(subnet[:-5])
        # health_status events
        assert watcher.wait_for(lambda t: ctr(t, name).health == "unhealthy", 15)
        api.exec_start(api.exec_create(cid, ["touch", "/tmp/ok"]))
        assert watcher.wait_for(lambda t: ctr(t, name).health == "healthy", 15)
        api.disconnect_container_from_network(cid, nid)
        assert watcher.wait_for(
            lambda t: all(a.network != net for a in ctr(t, name).attachments), 10
        )
        api.stop(cid, timeout=1)
        assert watcher.wait_for(
            lambda t: ctr(t, name).state == "exited" and ctr(t, name).pid is None, 10
        )
        api.rename(cid, f"{name}-renamed")
        assert watcher.wait_for(
            lambda t: ctr(t, f"{name}-renamed") is not None and ctr(t, name) is None, 10
        )
        api.remove_container(cid, force=True)
        assert watcher.wait_for(lambda t: ctr(t, f"{name}-renamed") is None, 10)
        api.remove_network(nid)
        last = watcher.wait_for(lambda t: t.network(net) is None, 10)
        assert last is not None and last.version > v0
    finally:
        watcher.stop()


def test_watcher_resyncs_when_the_stream_drops(api: Any, prefix: str, toolbox: str) -> None:
    watcher = TopologyWatcher([EngineRef("local", default_url(os.environ.get("DOCKER_HOST")))])
    watcher.start()
    try:
        resyncs = watcher.resyncs
        # Cut the stream the way an engine restart does, then change the engine meanwhile.
        stream = watcher._streams[0]
        assert stream is not None
        stream.close()
        name = f"{prefix}-late"
        api.create_container("dockmesh/toolbox", name=name)
        assert watcher.wait_for(lambda t: t.container(name) is not None, 15)
        deadline = time.monotonic() + 10
        while watcher.resyncs == resyncs and time.monotonic() < deadline:
            time.sleep(0.05)
        assert watcher.resyncs > resyncs
    finally:
        watcher.stop()


class HeldBackend(DockerBackend):
    """The real engine, with the inspects of the containers in `held` answered only once
    `release` is set: an inspect the engine is slow to answer (it holds a container's lock
    while it starts or connects it, for as long as that takes)."""

    def __init__(self, ref: EngineRef) -> None:
        super().__init__(ref)
        self.held: set[str] = set()
        self.release = threading.Event()
        self.waiting = threading.Event()  # a held inspect is under way

    def container(self, container_id: str) -> Container | None:
        if any(container_id.startswith(h) or h.startswith(container_id) for h in self.held):
            self.waiting.set()
            assert self.release.wait(60), "never released"
        return super().container(container_id)


def test_a_slow_inspect_does_not_hold_up_another_start(api: Any, prefix: str, toolbox: str) -> None:
    [subnet] = free_subnets(api, 1)
    net = f"{prefix}_churn"
    api.create_network(net, ipam={"Config": [{"Subnet": subnet}]})

    def make(name: str) -> str:
        return str(
            api.create_container(
                toolbox,
                name=name,
                command=["sleep", "300"],
                host_config=api.create_host_config(network_mode=net),
            )["Id"]
        )

    slow, fast = make(f"{prefix}-slow"), make(f"{prefix}-fast")
    engine = HeldBackend(EngineRef("local", default_url(os.environ.get("DOCKER_HOST"))))
    watcher = TopologyWatcher([engine])
    watcher.start()

    def up(name: str) -> Any:
        def check(t: Topology) -> bool:
            c = t.container(name)
            return c is not None and c.running and any(a.ipv4 for a in c.attachments)

        return check

    try:
        engine.held.add(slow)
        api.start(slow)
        assert engine.waiting.wait(15), "the slow container was never re-read"
        api.start(fast)
        assert watcher.wait_for(up(f"{prefix}-fast"), 15), "held up by the slow inspect"
        assert not up(f"{prefix}-slow")(watcher.topology)
        engine.release.set()
        assert watcher.wait_for(up(f"{prefix}-slow"), 15)
    finally:
        engine.release.set()
        watcher.stop()
