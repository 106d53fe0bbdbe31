"""`down` and the project's name on the in-memory engine (dockmesh.ops.project)."""

from __future__ import annotations

import pytest

from dockmesh.engine.memory import MemoryEngine
from dockmesh.errors import UsageError
from dockmesh.model.config import NetworkConfig
from dockmesh.ops.project import down


def test_down_of_a_named_project_that_does_not_exist_is_bad_input() -> None:
    mem = MemoryEngine()
    mem.create_network(NetworkConfig("q_a", labels={"dockmesh.project": "q"}))
    with pytest.raises(UsageError, match=r"project 'p' is not on the engine \(projects: q\)"):
        down("p", mem)
    assert down("p", mem, must_exist=False).plan.empty  # by its file: idempotent
    assert [c.name for c in down("q", mem).plan.changes] == ["q_a"]
    assert mem.network("q_a") is None
