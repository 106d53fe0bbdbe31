"""docker's and compose's habits that need no engine: --version, -h, option values as words,
-f/-p on every project command."""

from __future__ import annotations

import os
import pty
import subprocess
import sys

import typer

import dockmesh
from dockmesh.cli.main import _word_metavars, app


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dockmesh", *args], capture_output=True, text=True, timeout=60
    )


def test_version_both_ways() -> None:
    for flag in ("--version", "-V"):
        proc = run(flag)
        assert (proc.returncode, proc.stdout, proc.stderr) == (
            0,
            f"dockmesh {dockmesh.__version__}\n",
            "",
        )


def test_dash_h_is_help_on_every_level() -> None:
    for args in ((), ("up",), ("policy", "show"), ("bench", "latency")):
        proc = run(*args, "-h")
        assert proc.returncode == 0 and proc.stdout.startswith("Usage: dockmesh"), proc.stderr


def _commands(cmd: object, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], object]]:
    found = [(path, cmd)]
    for name, sub in getattr(cmd, "commands", {}).items():
        found += _commands(sub, (*path, name))
    return found


def test_no_option_value_is_shown_as_a_python_type() -> None:
    command = typer.main.get_command(app)
    _word_metavars(command)
    for path, cmd in _commands(command):
        ctx = typer.Context(cmd, info_name=" ".join(("dockmesh", *path)))  # type: ignore[arg-type]
        help_text = cmd.get_help(ctx)  # type: ignore[attr-defined]
        assert "<str>" not in help_text and "<int>" not in help_text, path
        assert "<float>" not in help_text, path
    help_up = run("up", "--help").stdout
    assert "--engine ENGINE" in help_up and "-f, --file FILE" in help_up


def test_the_project_commands_take_file_and_project_name() -> None:
    for cmd in ("plan", "up", "down", "ps", "config", "logs"):
        text = run(cmd, "--help").stdout
        assert "--file FILE" in text and "-p, --project-name" in text, cmd


def test_completion_is_answered_through_the_fast_entry_point() -> None:
    env = {**os.environ, "_DOCKMESH_COMPLETE": "complete_bash", "COMP_CWORD": "2"}
    env["COMP_WORDS"] = "dockmesh up --remove-or"
    proc = subprocess.run(
        [sys.executable, "-c", "from dockmesh.cli.fast import main; main()"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert (proc.returncode, proc.stdout.split()) == (0, ["--remove-orphans"]), proc.stderr


def _on_a_terminal(env: dict[str, str]) -> bytes:
    """What the out console writes to a terminal (a pty)."""
    master, slave = pty.openpty()
    code = "from dockmesh.cli.common import out; out.print('[red]x[/]')"
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=slave, env=env)
    os.close(slave)
    seen = b""
    try:
        while True:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            seen += chunk
    finally:
        proc.wait(timeout=30)
        os.close(master)
    return seen


def test_colour_on_a_terminal_only_without_no_color() -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "FORCE_COLOR")}
    env["TERM"] = "xterm-256color"
    assert b"\x1b[31m" in _on_a_terminal(env)
    assert b"\x1b[" not in _on_a_terminal({**env, "NO_COLOR": "1"})
    piped = subprocess.run(
        [sys.executable, "-c", "from dockmesh.cli.common import out; out.print('[red]x[/]')"],
        capture_output=True,
        env=env,
        timeout=60,
    )
    assert piped.stdout == b"x\n"
