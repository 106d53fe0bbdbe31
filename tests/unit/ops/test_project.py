"""The operations layer on the in-memory engine: facts, down's rules, the project lock."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from dockmesh.engine.memory import MemoryEngine
from dockmesh.errors import UsageError
from dockmesh.model.config import ContainerConfig, EndpointConfig, IpamConfig, NetworkConfig
from dockmesh.ops.context import gather_context
from dockmesh.ops.lock import project_lock
from dockmesh.ops.project import down, resolve_project, snapshot


def test_facts_come_from_the_engine() -> None:
    mem = MemoryEngine()
    mem.create_network(
        NetworkConfig("p_a", ipam=(IpamConfig("10.9.0.0/24"),), labels={"dockmesh.project": "p"})
    )
    mem.create_network(NetworkConfig("other", ipam=(IpamConfig("10.8.0.0/24"),)))
    mem.create_container(
        ContainerConfig("c1", "dockmesh/toolbox", networks=(EndpointConfig("other"),))
    )
    facts = gather_context(mem, snapshot(mem), {"dockmesh/toolbox", "dockmesh/missing"})
    assert {(n.name, n.project, n.subnets) for n in facts.networks} >= {
        ("p_a", "p", ("10.9.0.0/24",)),
        ("other", None, ("10.8.0.0/24",)),
    }
    assert facts.containers == {"c1": None}
    assert facts.images["dockmesh/missing"] is None
    assert facts.images["dockmesh/toolbox"] == mem.image("dockmesh/toolbox").id  # type: ignore[union-attr]
    assert "lo" in facts.interfaces  # the host's own


def test_down_of_a_named_project_that_does_not_exist_is_bad_input() -> None:
    mem = MemoryEngine()
    mem.create_network(NetworkConfig("q_a", labels={"dockmesh.project": "q"}))
    with pytest.raises(UsageError, match=r"project 'p' is not on the engine \(projects: q\)"):
        down("p", mem)
    assert down("p", mem, must_exist=False).plan.empty  # by its file: idempotent
    assert [c.name for c in down("q", mem).plan.changes] == ["q_a"]
    assert mem.network("q_a") is None


def test_down_finds_the_folders_file(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"no dockmesh\.yaml in this folder"):
        resolve_project(None, None, str(tmp_path))
    (tmp_path / "dockmesh.yaml").write_text("project: shop\n")
    assert resolve_project(None, None, str(tmp_path)) == "shop"
    assert resolve_project(None, "other", str(tmp_path)) == "other"


def test_the_project_lock_serialises_runs() -> None:
    order: list[str] = []
    waited: list[str] = []
    inside = threading.Event()

    def first() -> None:
        with project_lock("memory://t", f"lk{id(order)}"):
            inside.set()
            time.sleep(0.3)
            order.append("first")

    t = threading.Thread(target=first)
    t.start()
    inside.wait(5)
    with project_lock("memory://t", f"lk{id(order)}", waited.append):
        order.append("second")
    t.join()
    assert order == ["first", "second"]
    assert waited and "waiting for another dockmesh run" in waited[0]
    # another project is not held up
    with project_lock("memory://t", f"other{id(order)}", waited.append):
        pass
    assert len(waited) == 1


def test_one_engine_is_one_lock_however_its_url_is_spelled() -> None:
    from dockmesh.ops.lock import engine_key

    spellings = ["unix:///var/run/docker.sock", "unix:////var/run/docker.sock"]
    assert len({engine_key(u) for u in spellings}) == 1
    assert engine_key("tcp://Host:2375") == engine_key("tcp://host:2375")
    assert engine_key("tcp://host:2375") != engine_key("tcp://host:2376")
