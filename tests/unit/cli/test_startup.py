"""The commands that read the topology start without the topology file's machinery."""

from __future__ import annotations

import subprocess
import sys

import pytest

HEAVY = ("pydantic", "yaml", "pyroute2")


def imported_modules(*args: str) -> set[str]:
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "dockmesh", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    names = set()
    for line in proc.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            names.add(line.rsplit("|", 1)[1].strip().split(".")[0])
    return names


@pytest.mark.parametrize(
    "args", [("--help",), ("topology", "--engine", "unix:///nonexistent/docker.sock")]
)
def test_no_pydantic_yaml_or_pyroute2_at_start_up(args: tuple[str, ...]) -> None:
    loaded = imported_modules(*args)
    assert "dockmesh" in loaded
    assert not loaded & set(HEAVY), sorted(loaded & set(HEAVY))
