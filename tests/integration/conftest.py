"""Integration tests run against the real Docker engine (scripts/test starts one).

Every test names what it creates with a unique prefix (`dmt` + random hex) and removes it
afterwards, on failure too; nothing else on the engine is touched.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import random
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest

from dockmesh.engine.backend import DEFAULT_URL, EngineRef, default_url
from dockmesh.engine.docker import DockerBackend
from dockmesh.host.netns import NetnsPool
from dockmesh.model.ipam import pick_free_subnets
from dockmesh.model.labels import LABEL_PROJECT
from dockmesh.model.topology import build_topology
from dockmesh.ops.context import taken_subnets
from dockmesh.testing.relay import CuttableRelay

TOOLBOX = "dockmesh/toolbox:latest"
HERE = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Marks every test under tests/integration/ `integration` (`-m integration`, `-m "not
    integration"`): a `pytestmark` in a conftest is ignored by pytest. The hook sees the items
    of the whole session, so it picks ours by path."""
    for item in items:
        if HERE in item.path.parents:
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def engine() -> DockerBackend:
    client = DockerBackend(EngineRef("local", default_url(os.environ.get("DOCKER_HOST"))))
    client.info()  # fails the session loudly when no engine answers
    return client


@pytest.fixture(scope="session")
def api(engine: DockerBackend) -> Any:
    """docker-py's own client: the tests check the engine through it, independently of
    dockmesh's backend."""
    return docker.APIClient(base_url=default_url(os.environ.get("DOCKER_HOST")), version="auto")


@pytest.fixture(scope="session")
def toolbox(api: Any) -> str:
    try:
        api.inspect_image(TOOLBOX)
    except docker.errors.ImageNotFound:
        pytest.fail("dockmesh/toolbox is missing: scripts/test builds it (dockmesh images build)")
    return TOOLBOX


@pytest.fixture
def prefix(api: Any) -> Iterator[str]:
    """A unique name prefix; whatever carries it is removed after the test."""
    p = f"dmt{secrets.token_hex(3)}"
    yield p
    cleanup(api, p)


def cleanup(api: Any, p: str) -> None:
    for c in api.containers(all=True):
        names = [n.lstrip("/") for n in c.get("Names") or []]
        labels = c.get("Labels") or {}
        if any(n.startswith(p) for n in names) or labels.get(LABEL_PROJECT) == p:
            with contextlib.suppress(docker.errors.NotFound):
                api.remove_container(c["Id"], force=True, v=True)
    for n in api.networks():
        if n["Name"].startswith(p) or (n.get("Labels") or {}).get("dockmesh.project") == p:
            with contextlib.suppress(docker.errors.NotFound):
                api.remove_network(n["Id"])
    for v in (api.volumes() or {}).get("Volumes") or []:
        if v["Name"].startswith(p) or (v.get("Labels") or {}).get(LABEL_PROJECT) == p:
            with contextlib.suppress(docker.errors.NotFound):
                api.remove_volume(v["Name"], force=True)


def free_subnets(api: Any, count: int) -> list[str]:
    """/24s in 10.128.0.0/9 that no engine network and no host route uses."""
    client = DockerBackend(EngineRef("local", default_url(os.environ.get("DOCKER_HOST"))))
    taken = taken_subnets(build_topology([client.snapshot()], 1))
    return [str(n) for n in pick_free_subnets(taken, count, random.Random())]


def dockmesh(
    *args: str, check: bool = False, timeout: float = 300, cwd: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Runs the real command line, as a user would."""
    proc = subprocess.run(
        [sys.executable, "-m", "dockmesh", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env={**os.environ, "COLUMNS": "200"},
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"dockmesh {' '.join(args)} → {proc.returncode}\n{proc.stderr}")
    return proc


def run_toolbox(
    api: Any,
    name: str,
    network: str,
    *,
    aliases: list[str] | None = None,
    env: dict[str, str] | None = None,
    command: list[str] | None = None,
    ports: dict[str, Any] | None = None,
) -> str:
    host_config = api.create_host_config(network_mode=network, port_bindings=ports)
    networking = api.create_networking_config(
        {network: api.create_endpoint_config(aliases=aliases)}
    )
    cid = api.create_container(
        TOOLBOX,
        name=name,
        hostname=name,
        environment=env,
        command=command,
        host_config=host_config,
        networking_config=networking,
        ports=[int(k.split("/")[0]) for k in ports] if ports else None,
    )["Id"]
    api.start(cid)
    return str(cid)


def remove_policy_tables(table: str) -> None:
    """A test's policy tables (inet and bridge), when they are there."""
    from dockmesh.policy.compile import remove_transaction
    from dockmesh.policy.nft import Nft

    Nft().run(remove_transaction(table))


# A policy table holds Docker's isolation for IPv6 for every bridge on the host (Docker 20.10
# writes no ip6tables rules), so a test that observes Docker's own IPv6 forwarding cannot run
# while any test's policy table exists. Every integration test holds this lock shared; one
# marked raw_ipv6 holds it exclusive. So does one marked alone: it measures latency under a
# load it makes itself, which other tests' containers beside it on 2 cores would swamp.
# (Tests run in several processes: a file lock.)
NFT_LOCK = Path("/tmp/dockmesh-tests-nft.lock")


@pytest.fixture(autouse=True)
def _policy_tables_lock(request: pytest.FixtureRequest) -> Iterator[None]:
    exclusive = any(request.node.get_closest_marker(m) for m in ("raw_ipv6", "alone"))
    with NFT_LOCK.open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def own_differences(show: dict[str, Any]) -> list[str]:
    """`policy show --json`'s differences but those of the sets of Docker's isolation for IPv6,
    which list every IPv6 bridge on the host: tests beside this one make and remove such
    networks, and no agent runs here to follow them."""
    return [d for d in show["differences"] if ": set br6" not in d and not d.startswith("set br6")]


@pytest.fixture(scope="session", autouse=True)
def _no_lone_bridge_tables() -> Iterator[None]:
    """At the end, a test's bridge table left without its inet twin is removed (a policy is
    always both; seen once after a full parallel run, with empty sets). Only `dmt…` tables."""
    yield
    listing = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True)
    names = [line.split() for line in listing.stdout.splitlines()]
    inet = {n[2] for n in names if len(n) == 3 and n[1] == "inet"}
    for n in names:
        if len(n) == 3 and n[1] == "bridge" and n[2].startswith("dmt") and n[2] not in inet:
            subprocess.run(["nft", "delete", "table", "bridge", n[2]], capture_output=True)


@pytest.fixture
def relay(tmp_path: Path) -> Iterator[CuttableRelay]:
    """The engine's unix socket behind a relay the test cuts and restores (an outage
    without stopping dockerd)."""
    engine_url = os.environ.get("DOCKER_HOST") or DEFAULT_URL
    if not engine_url.startswith("unix://"):
        pytest.skip("the relay stands in for a unix socket engine")
    r = CuttableRelay(tmp_path / "docker.sock", engine_url.removeprefix("unix://"))
    r.restore()
    yield r
    r.cut()


@pytest.fixture
def pool() -> Iterator[NetnsPool]:
    """Threads that enter containers' network namespaces (the policy tests' probes)."""
    with NetnsPool(threads=2) as p:
        yield p


@pytest.fixture
def policy_env(prefix: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A policy table and folder of the test's own (named after its prefix), removed after;
    no agent is asked (port 9 answers nobody)."""
    table = f"{prefix}pol"
    monkeypatch.setenv("DOCKMESH_POLICY_TABLE", table)
    monkeypatch.setenv("DOCKMESH_POLICY_DIR", str(tmp_path / "policy"))
    monkeypatch.setenv("DOCKMESH_AGENT", "http://127.0.0.1:9")
    try:
        yield table
    finally:
        remove_policy_tables(table)
