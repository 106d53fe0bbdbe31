"""What every test shares."""

from __future__ import annotations

import pytest
from hypothesis import settings

# No deadline per example: speed is measured in benchmarks, never asserted in a test, and on a
# loaded machine (two cores, the engine and other suites beside) a 200 ms deadline failed
# examples that were merely slow.
settings.register_profile("dockmesh", deadline=None)
settings.load_profile("dockmesh")

# Nothing listens on the discard port: a command under test reads the engine (or the double it
# is given), never an agent that happens to run on the machine (the demo's, on :8500) and whose
# view would change what the test sees. A test about the agent points the variable at its own.
NO_AGENT = "http://127.0.0.1:9"


@pytest.fixture(autouse=True)
def _no_foreign_agent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKMESH_AGENT", NO_AGENT)
