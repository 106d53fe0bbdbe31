"""`dockmesh plan` on hostile files, as a user runs it: exit 2, each stderr line
`FILE:LINE: path: message` printed literally, no traceback, no hang. The engine named does not
exist: a file this wrong is refused without one."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
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
    "billion laughs": ("dockmesh.yaml", laughs()),
    "deep lists": ("dockmesh.yaml", b"[" * 100_000 + b"]" * 100_000),
    "python tag": (
        "dockmesh.yaml",
        b"services:\n  a:\n    image: !!python/object/apply:os.system ['touch MARKER']\n",
    ),
    "markup in the name": (
        ":smile: [bold]x.yaml",
        b"services:\n  ':smile: [red]a':\n    image: x\n  ':smile: [red]a':\n    image: y\n",
    ),
    "escapes in a key": (
        "dockmesh.yaml",
        b'services:\n  "a\\e[31m\\nb": {image: x}\n  "a\\e[31m\\nb": {image: y}\n',
    ),
    # Valid YAML, wrong shape: no engine is needed to say so, and none is answering.
    "shape only": ("dockmesh.yaml", b"services: {x: 1}\nnetworks: [a]\n"),
}


# The module's tests share one set of runs (8 interpreters started at once): one xdist worker
# starts them, not each worker that gets one of the tests.
pytestmark = pytest.mark.xdist_group("bad_files")


@dataclass(frozen=True)
class Run:
    path: Path
    returncode: int
    stderr: str


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Run]:
    """`dockmesh plan` on every file at once: each run is a fresh interpreter start."""
    env = {**os.environ, "DOCKER_HOST": NO_ENGINE, "COLUMNS": "60"}
    started = {}
    for case, (name, content) in FILES.items():
        folder = tmp_path_factory.mktemp("bad")
        path = folder / name
        path.write_bytes(content)
        command = [*dockmesh(), "plan", str(path), "--engine", NO_ENGINE]
        started[case] = (
            path,
            subprocess.Popen(command, stderr=subprocess.PIPE, env=env, cwd=folder),
        )
    done = {}
    for case, (path, process) in started.items():
        # A hang is a failure too: the timeout bounds it far above the seconds a run takes.
        _, stderr = process.communicate(timeout=120)
        done[case] = Run(path, process.returncode, stderr.decode())
    return done


@pytest.mark.parametrize("case", FILES)
def test_plan_refuses_the_file_with_located_problems(runs: dict[str, Run], case: str) -> None:
    run = runs[case]
    assert run.returncode == 2, run.stderr
    assert "Traceback" not in run.stderr
    lines = run.stderr.splitlines()
    assert lines
    for line in lines:
        assert re.fullmatch(re.escape(str(run.path)) + r":\d+: .+: .+", line), line
    assert not (run.path.parent / "MARKER").exists()


def test_users_text_is_printed_literally(runs: dict[str, Run]) -> None:
    run = runs["markup in the name"]
    assert f"{run.path}:4: services.:smile: [red]a: duplicate key" in run.stderr
    assert "\N{SMILING FACE WITH OPEN MOUTH AND SMILING EYES}" not in run.stderr
    run = runs["escapes in a key"]
    assert f"{run.path}:3: services.a\\x1b[31m\\nb: duplicate key" in run.stderr


def test_a_reason_is_one_visible_line(tmp_path: Path) -> None:
    missing = tmp_path / "no\nsuch [bold]:smile:.yaml"
    done = subprocess.run(
        [*dockmesh(), "plan", str(missing), "--engine", NO_ENGINE],
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 2
    assert (
        done.stderr.decode() == f"dockmesh: {tmp_path}/no\\nsuch [bold]:smile:.yaml: no such file\n"
    )
