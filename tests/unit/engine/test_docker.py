"""DockerBackend without an engine: made at once, the engine's absence reported on first use."""

from __future__ import annotations

from pathlib import Path

import pytest

from dockmesh.engine.backend import EngineRef
from dockmesh.engine.docker import DockerBackend
from dockmesh.errors import EngineError


def test_a_backend_is_made_while_the_engine_is_absent_and_says_so_when_used(
    tmp_path: Path,
) -> None:
    backend = DockerBackend(EngineRef("gone", f"unix://{tmp_path}/docker.sock"))
    for call in (backend.snapshot, backend.events, lambda: backend.container("c")):
        with pytest.raises(EngineError, match=r"engine gone \(unix://.*\) does not answer"):
            call()
    backend.close()  # never connected: nothing to close, no error
