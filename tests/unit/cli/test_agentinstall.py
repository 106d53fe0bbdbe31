"""`dockmesh agent install --service` / `uninstall --service` on the files they meet: a state
dir that cannot be one is bad input before anything is written, a unit path that is no file
is left alone, and a state dir that is someone's symbolic link is kept. A unit outside
/etc/systemd/system is only written, never started, so these run without systemd."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest


def agent(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dockmesh", "agent", *args, "--name", "dmtest-agent"],
        capture_output=True,
        text=True,
        timeout=60,
    )


def install(units: Path, state: Path) -> subprocess.CompletedProcess[str]:
    return agent("install", "--service", "--unit-dir", str(units), "--state-dir", str(state))


@pytest.mark.parametrize(
    ("make", "said"),
    [
        (lambda p: p.write_text("mine"), "a file, not a folder"),
        (lambda p: p.symlink_to(p.parent / "nowhere"), "a symbolic link to nothing"),
    ],
)
def test_a_state_dir_that_cannot_be_one_stops_before_the_unit(
    tmp_path: Path, make: Callable[[Path], object], said: str
) -> None:
    # It failed with an errno (exit 1) after the unit had been written.
    state = tmp_path / "state"
    make(state)
    proc = install(tmp_path / "units", state)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert proc.stderr.startswith(f"dockmesh: --state-dir {state}: {said}")
    assert not (tmp_path / "units").exists()


def test_a_unit_path_that_is_a_folder_is_left_alone(tmp_path: Path) -> None:
    unit = tmp_path / "units" / "dmtest-agent.service"
    unit.mkdir(parents=True)
    for proc in (
        install(tmp_path / "units", tmp_path / "state"),
        agent("uninstall", "--service", "--unit-dir", str(tmp_path / "units")),
    ):
        assert (proc.returncode, proc.stderr) == (
            2,
            f"dockmesh: {unit} is not a file: left alone\n",
        )
    assert unit.is_dir()


def test_uninstall_keeps_a_state_dir_that_is_a_symbolic_link(tmp_path: Path) -> None:
    # rmdir on the link failed (exit 1) after the state file had gone.
    (tmp_path / "real").mkdir()
    (tmp_path / "state").symlink_to(tmp_path / "real")
    assert install(tmp_path / "units", tmp_path / "state").returncode == 0
    (tmp_path / "real" / "state.db").write_text("")
    proc = agent(
        "uninstall", "--service", "--unit-dir", str(tmp_path / "units"), "--volumes",
        "--state-dir", str(tmp_path / "state"),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "state").is_symlink() and (tmp_path / "real").is_dir()
    assert not (tmp_path / "real" / "state.db").exists()
    assert not (tmp_path / "units" / "dmtest-agent.service").exists()


def test_uninstall_volumes_with_no_agent_found_keeps_the_default_state(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `--service` forgotten: no container was found, and the state of the agent that runs as
    # a service (the same default folder) was removed all the same.
    from typer.testing import CliRunner

    from dockmesh.cli import agentinstall
    from dockmesh.cli.main import app

    state = tmp_path / "state"
    state.mkdir()
    (state / "state.db").write_text("live")
    monkeypatch.setattr(agentinstall, "DEFAULT_STATE_DIR", str(state))
    args = ["agent", "uninstall", "--service", "--unit-dir", str(tmp_path / "units")]
    got = CliRunner().invoke(app, [*args, "--volumes", "--name", "dmtest-agent"])
    assert got.exit_code == 0, got.output
    assert (state / "state.db").read_text() == "live"
    assert f"kept {state}: no agent was removed" in got.output
    # named, it goes
    got = CliRunner().invoke(
        app, [*args, "--volumes", "--name", "dmtest-agent", "--state-dir", str(state)]
    )
    assert got.exit_code == 0, got.output
    assert not state.exists()
