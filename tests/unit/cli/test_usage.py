"""Usage errors are bad input like any other: one line on stderr, exit 2."""

from __future__ import annotations

import subprocess
import sys

import pytest


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dockmesh", *args], capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize(
    "args",
    [
        ("--nope",),
        ("plan",),
        ("bench", "latency", "a", "b", "--count", "0"),
        ("bench", "latency", "a", "b", "--timeout", "inf"),
        ("report", "--duration", "nan"),
        ("report", "--duration", "1e9"),
        ("top", "--interval", "-inf"),
        ("why", "a", "b", "--timeout", "nan"),
        ("why", "a", "b", "--timeout", "1e20"),
        ("matrix", "--timeout", "1e308"),
        ("doctor", "c", "--timeout", "nan"),
        ("bench", "bandwidth", "a", "b", "--seconds", "nan"),
        # Commands that act on one engine refuse a second rather than ignore it.
        ("plan", "examples/microservices.yaml", "--engine", "unix:///a", "--engine", "unix:///b"),
        ("images", "build", "--engine", "unix:///a", "--engine", "unix:///b"),
    ],
)
def test_a_usage_error_is_one_line_and_exit_2(args: tuple[str, ...]) -> None:
    proc = run(*args)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dockmesh"), proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("command", ["why", "matrix", "policy", "bench", "proxy", "agent", "up"])
def test_every_help_page_prints(command: str) -> None:
    proc = run(command, "--help")
    assert proc.returncode == 0 and "Usage:" in proc.stdout, proc.stderr
