"""`dockmesh plan` on hostile files, as a user runs it: exit 2, each stderr line
`FILE:LINE: path: message` printed literally, no traceback, no hang. The engine named does not
exist: a file this wrong is refused without one."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

NO_ENGINE = "unix:///nonexistent/dockmesh-test.sock"


def dockmesh() -> list[str]:
    script = Path(sys.executable).with_name("dockmesh")
    return [str(script)] if script.exists() else [sys.executable, "-m", "dockmesh"]


def laughs() -> bytes:
    out = ["l0: &l0 [lol]"]
    for i in range(1, 10):
        out.append(f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]")
    return ("\n".join(out) + "\n").encode()


FILES: dict[str, tuple[str, bytes]] = {
    "latin-1": ("dockmesh.yaml", "project: démo\n".encode("latin-1")),
    "utf-16": ("dockmesh.yaml", "project: demo\n".encode("utf-16")),
    "nul": ("dockmesh.yaml", b"project: demo\nservices:\x00\n"),
    "billion laughs": ("dockmesh.yaml", laughs()),
    "deep lists": ("dockmesh.yaml", b"[" * 100_000 + b"]" * 100_000),
    "deep mappings": ("dockmesh.yaml", b"{a: " * 100_000 + b"1" + b"}" * 100_000),
    "recursive alias": ("dockmesh.yaml", b"services: &s {a: *s}\n"),
    "python tag": (
        "dockmesh.yaml",
        b"services:\n  a:\n    image: !!python/object/apply:os.system ['touch MARKER']\n",
    ),
    "markup in the name": (
        ":smile: [bold]x.yaml",
        b"services:\n  ':smile: [red]a':\n    image: x\n  ':smile: [red]a':\n    image: y\n",
    ),
    "escapes in a key": ("dockmesh.yaml", b'services:\n  "a\\e[31m\\nb": {image: x}\n  x: 1\n'),
}


@pytest.mark.parametrize("case", FILES)
def test_plan_refuses_the_file_with_located_problems(tmp_path: Path, case: str) -> None:
    name, content = FILES[case]
    path = tmp_path / name
    path.write_bytes(content)
    env = {**os.environ, "DOCKER_HOST": NO_ENGINE, "COLUMNS": "60"}
    # A hang is a failure too: the timeout bounds it far above the second this takes.
    done = subprocess.run(
        [*dockmesh(), "plan", str(path), "--engine", NO_ENGINE],
        capture_output=True,
        timeout=60,
        env=env,
        cwd=tmp_path,
        check=False,
    )
    stderr = done.stderr.decode()
    assert done.returncode == 2, stderr
    assert "Traceback" not in stderr
    lines = stderr.splitlines()
    assert lines
    for line in lines:
        assert re.fullmatch(re.escape(str(path)) + r":\d+: .+: .+", line), line
    assert not (tmp_path / "MARKER").exists()


def test_users_text_is_printed_literally(tmp_path: Path) -> None:
    name, content = FILES["markup in the name"]
    path = tmp_path / name
    path.write_bytes(content)
    done = subprocess.run(
        [*dockmesh(), "plan", str(path), "--engine", NO_ENGINE],
        capture_output=True,
        timeout=60,
        check=False,
    )
    stderr = done.stderr.decode()
    assert f"{path}:4: services.:smile: [red]a: duplicate key" in stderr
    assert "\N{SMILING FACE WITH OPEN MOUTH AND SMILING EYES}" not in stderr
