"""Where `why`/`matrix` probe a source: here when its process is on this machine, through its
host's agent when it is not (or with `--probe-via-agent`), not at all without an agent to ask.
Decided before any engine is read or any agent is asked."""

from __future__ import annotations

from typing import Any

import pytest
from typer.testing import CliRunner

from dockmesh.cli import reach
from dockmesh.cli.common import UserError
from dockmesh.cli.main import app
from dockmesh.cli.remote import Route


class _C:
    """A container as `Via` reads one: its name, engine, and whether its pid is shown here."""

    def __init__(self, name: str, engine: str, here: bool) -> None:
        self.name, self.engine, self.here = name, engine, here


def C(name: str, engine: str, here: bool) -> Any:
    return _C(name, engine, here)


@pytest.fixture
def shown(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(reach, "_elsewhere", lambda c: "" if c.here else "not on this machine")


def test_a_local_source_is_probed_here_and_a_remote_one_by_its_agent(shown: None) -> None:
    via = reach.Via(None, "http://10.0.9.2:8500", always=False)
    here, away = C("a", "local", True), C("b", "other", False)
    assert via.route(here) is None
    route: Any = via.route(away)
    assert route == Route("agent", "http://10.0.9.2:8500")
    assert via.route(None) is None  # `host` as SRC: always here


def test_without_an_agent_a_remote_source_is_not_probed_as_before(shown: None) -> None:
    via = reach.Via(["tcp://10.0.9.2:2375"], None, always=False)
    assert via.route(C("b", "tcp://10.0.9.2:2375", False)) is None


def test_probe_via_agent_takes_the_agent_for_a_local_source_or_says_why_not(shown: None) -> None:
    via = reach.Via(None, "http://10.0.9.2:8500", always=True)
    assert via.route(C("a", "local", True)) == Route("agent", "http://10.0.9.2:8500")
    with pytest.raises(UserError, match="no agent to ask"):
        reach.Via(["unix:///run/x.sock"], None, always=True).route(C("a", "local", True))


def test_why_probe_via_agent_needs_probe() -> None:
    got = CliRunner().invoke(app, ["why", "a", "b", "--probe-via-agent"])
    assert got.exit_code == 2 and "add --probe" in got.output
