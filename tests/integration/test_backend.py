"""The in-memory engine keeps the real engine's semantics where dockmesh depends on them: the
same script of operations gives the same shapes and the same refusals on both."""

from __future__ import annotations

from typing import Any

import pytest

from dockmesh.engine.backend import EngineBackend
from dockmesh.engine.docker import DockerBackend
from dockmesh.engine.memory import MemoryEngine
from dockmesh.errors import EngineConflict, EngineError, EngineNotFound
from dockmesh.model.config import ContainerConfig, EndpointConfig, IpamConfig, NetworkConfig
from tests.integration.conftest import free_subnets

TOOLBOX = "dockmesh/toolbox:latest"


def script(b: EngineBackend, prefix: str, subnets: list[str]) -> dict[str, Any]:
    """Operations and what they gave, as plain data comparable across backends."""
    a, c = subnets
    seen: dict[str, Any] = {}

    def refused(fn: Any, *args: Any) -> str:
        try:
            fn(*args)
        except EngineConflict:
            return "conflict"
        except EngineNotFound:
            return "not found"
        except EngineError:
            return "error"
        return "ok"

    na = b.create_network(
        NetworkConfig(
            f"{prefix}_a",
            ipam=(IpamConfig(a, a.replace(".0/24", ".1"), a.replace(".0/24", ".16/28")),),
            labels={"k": "v"},
        )
    )
    b.create_network(NetworkConfig(f"{prefix}_b", internal=True, ipam=(IpamConfig(c),)))
    seen["duplicate network"] = refused(b.create_network, NetworkConfig(f"{prefix}_a"))
    seen["overlapping network"] = refused(
        b.create_network, NetworkConfig(f"{prefix}_c", ipam=(IpamConfig(a),))
    )
    cfg = ContainerConfig(
        f"{prefix}-one",
        TOOLBOX,
        command=("sleep", "300"),
        hostname=f"{prefix}-one",
        networks=(
            EndpointConfig(f"{prefix}_a", ("alias1",)),
            EndpointConfig(f"{prefix}_b", (), c.replace(".0/24", ".9")),
        ),
        labels={"x": "y"},
    )
    cid = b.create_container(cfg)
    seen["created, not started"] = b.container(cid).state  # type: ignore[union-attr]
    b.connect(cid, cfg.networks[1])
    seen["duplicate name"] = refused(b.create_container, cfg)
    seen["unknown image"] = refused(
        b.create_container, ContainerConfig(f"{prefix}-two", "dockmesh/none:latest")
    )
    b.start(cid)
    one = b.container(f"{prefix}-one")
    assert one is not None
    seen["running"] = (one.state, one.hostname == f"{prefix}-one", dict(one.labels)["x"])
    seen["attachments"] = [
        (x.network, x.ipv4, sorted(set(x.aliases) - {one.id[:12], one.hostname}))
        for x in one.attachments
    ]
    seen["dynamic address from ip_range"] = one.attachments[0].ipv4 == a.replace(".0/24", ".16")
    seen["network in use"] = refused(b.remove_network, na)
    static = ContainerConfig(
        f"{prefix}-two",
        TOOLBOX,
        command=("sleep", "300"),
        networks=(EndpointConfig(f"{prefix}_b", (), c.replace(".0/24", ".9")),),
    )
    two = b.create_container(static)
    seen["address in use"] = refused(b.start, two)
    b.remove_container(two)
    b.stop(cid, timeout_s=0)
    stopped = b.container(cid)
    assert stopped is not None
    seen["stopped"] = (stopped.state != "running", [x.ipv4 for x in stopped.attachments])
    b.disconnect(cid, f"{prefix}_b")
    seen["after disconnect"] = [x.network for x in b.container(cid).attachments]  # type: ignore[union-attr]
    b.remove_container(cid)
    seen["gone"] = b.container(cid)
    seen["remove twice"] = refused(b.remove_container, cid)
    b.remove_network(na)
    seen["network gone"] = b.network(na)
    seen["remove network twice"] = refused(b.remove_network, na)
    b.remove_network(f"{prefix}_b")
    return seen


def test_memory_engine_behaves_like_docker(api: Any, prefix: str, engine: DockerBackend) -> None:
    subnets = free_subnets(api, 2)
    real = script(engine, prefix, subnets)
    mem = script(MemoryEngine(), prefix, subnets)
    assert mem == real
    assert real["duplicate network"] == "conflict"
    assert real["address in use"] != "ok"


def test_docker_errors_are_one_line_engine_errors(engine: DockerBackend, prefix: str) -> None:
    with pytest.raises(EngineNotFound) as e:
        engine.start(f"{prefix}-nothing")
    assert "\n" not in str(e.value) and f"{prefix}-nothing" in str(e.value)
    assert engine.container(f"{prefix}-nothing") is None
    assert engine.network(f"{prefix}-nothing") is None
    assert engine.image("dockmesh/none:latest") is None


def test_concurrent_inspects_share_one_connection_pool(engine: DockerBackend) -> None:
    """docker-py keys a unix socket's pools by each request's whole URL and closes the one
    it drops past 25: a snapshot's parallel inspects could use a pool closed under them
    ("Pool is closed", `up` exited 1 once with 200 containers on the engine). Requests share
    one pool now, whatever the number of containers."""
    import secrets
    from concurrent.futures import ThreadPoolExecutor

    backend = DockerBackend(engine.ref)
    try:
        ids = [secrets.token_hex(32) for _ in range(100)]  # none exists: each a new URL
        with ThreadPoolExecutor(8) as pool:
            assert list(pool.map(backend.container, ids)) == [None] * 100
        adapter = backend._api.adapters.get("http+docker://")
        if adapter is not None:  # a unix socket: the version check's pool and the shared one
            # keys(): urllib3's container refuses iteration
            pools = [adapter.pools[k] for k in adapter.pools.keys()]  # noqa: SIM118
            assert len(pools) <= 2 and all(p.pool is not None for p in pools)
    finally:
        backend.close()
