"""docker compose's habits on the real engine: -f/-p on every project command, orphans kept
unless asked, a project never emptied without --yes, `down -p` idempotent, `ps`, `logs [-f]`,
`config`."""

from __future__ import annotations

import json
import os
import pty
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from tests.integration.conftest import dockmesh, run_toolbox

# `$$`: the file is interpolated as Compose does it (`$i` would be a variable of the file).
TICKER = "i=0; while true; do echo tick $$i; i=$$((i+1)); sleep 0.2; done"


def names(api: Any, project: str) -> list[str]:
    f = {"label": [f"dockmesh.project={project}"]}
    return sorted(c["Names"][0].lstrip("/") for c in api.containers(all=True, filters=f))


def write(path: Path, doc: dict[str, Any]) -> str:
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return str(path)


def one_line(proc: subprocess.CompletedProcess[str]) -> str:
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    return lines[0]


def test_file_and_project_name_on_every_project_command(
    api: Any, prefix: str, tmp_path: Path, toolbox: str
) -> None:
    doc = {"project": prefix, "services": {"web": {"image": "dockmesh/toolbox"}}}
    write(tmp_path / "dockmesh.yaml", doc)
    other = f"{prefix}b"  # -p wins over the file's name (and still carries the prefix)
    elsewhere = tmp_path / "sub"
    elsewhere.mkdir()
    cwd = str(tmp_path)

    # ./dockmesh.yaml by default, -f FILE, FILE: the same file
    for args in ((), ("-f", "dockmesh.yaml"), ("--file", str(tmp_path / "dockmesh.yaml"))):
        plan = json.loads(dockmesh("plan", "--json", *args, cwd=cwd, check=True).stdout)
        # (A service that names no network is on the project's default one, as in Compose.)
        assert [c["name"] for c in plan["changes"]] == [f"{prefix}_default", f"{prefix}-web-1"]
    none = dockmesh("plan", cwd=str(elsewhere))
    assert none.returncode == 2
    assert one_line(none) == "dockmesh: no dockmesh.yaml in this folder: give -f FILE"

    dockmesh("up", "-p", other, "-f", str(tmp_path / "dockmesh.yaml"), check=True)
    assert names(api, other) == [f"{other}-web-1"] and names(api, prefix) == []
    assert dockmesh("plan", "-p", other, "--exit-code", cwd=cwd).returncode == 0
    assert dockmesh("plan", "--exit-code", cwd=cwd).returncode == 3  # the file's own name
    ps = json.loads(dockmesh("ps", "-p", other, "--json", cwd=str(elsewhere), check=True).stdout)
    assert [(c["name"], c["service"], c["state"]) for c in ps["containers"]] == [
        (f"{other}-web-1", "web", "running")
    ]
    assert json.loads(dockmesh("ps", "--json", cwd=cwd, check=True).stdout)["containers"] == []
    assert dockmesh("config", "-p", other, cwd=cwd, check=True).stdout.startswith(
        f"project: {other}\n"
    )

    # down -p NAME needs no file, and is idempotent
    down = dockmesh("down", "-p", other, cwd=str(elsewhere), check=True)
    assert "1 container removed" in down.stderr
    assert names(api, other) == []
    again = dockmesh("down", "-p", other, cwd=str(elsewhere), check=True)
    assert one_line(again) == (
        f"project {other}: nothing to remove (none of its containers or networks is on the engine)"
    )
    bad = dockmesh("down", "-p", "Not A Name", cwd=str(elsewhere))
    assert bad.returncode == 2 and one_line(bad).startswith("dockmesh: -p 'Not A Name': ")


def test_orphans_stay_unless_asked_and_nothing_is_emptied_without_yes(
    api: Any, prefix: str, tmp_path: Path, toolbox: str
) -> None:
    path = tmp_path / "dockmesh.yaml"
    doc: dict[str, Any] = {
        "project": prefix,
        "services": {
            "web": {"image": "dockmesh/toolbox"},
            "old": {"image": "dockmesh/toolbox"},
        },
    }
    write(path, doc)
    dockmesh("up", "-f", str(path), check=True)
    del doc["services"]["old"]
    write(path, doc)

    plan = json.loads(dockmesh("plan", "-f", str(path), "--json", check=True).stdout)
    assert plan["changes"] == [] and plan["orphans"] == [f"{prefix}-old-1"]
    up = dockmesh("up", "-f", str(path), check=True)
    assert (
        f"warning: containers of services no longer in the file, left running: {prefix}-old-1 "
        "(`up --remove-orphans` removes them)"
    ) in up.stderr
    assert names(api, prefix) == [f"{prefix}-old-1", f"{prefix}-web-1"]
    dockmesh("up", "-f", str(path), "--remove-orphans", check=True)
    assert names(api, prefix) == [f"{prefix}-web-1"]

    # a file with only project: would remove everything: refused, touched nothing
    write(path, {"project": prefix})
    for args in ((), ("--remove-orphans",)):
        refused = dockmesh("up", "-f", str(path), *args)
        if not args:  # web is an orphan now, kept: nothing is emptied
            assert refused.returncode == 0, refused.stderr
            continue
        assert refused.returncode == 2
        assert one_line(refused) == (
            "dockmesh: the file describes no service and no network: up would remove all of "
            f"project '{prefix}' (1 container, 1 network); give --yes to do so, or run "
            "`dockmesh down`"
        )
    assert names(api, prefix) == [f"{prefix}-web-1"]
    dockmesh("up", "-f", str(path), "--remove-orphans", "--yes", check=True)
    assert names(api, prefix) == []


def test_ps_logs_and_config(api: Any, prefix: str, tmp_path: Path, toolbox: str) -> None:
    doc: dict[str, Any] = {
        "project": prefix,
        "services": {
            "tick": {"image": "dockmesh/toolbox", "command": ["sh", "-c", TICKER], "replicas": 2},
            "web": {"image": "dockmesh/toolbox"},
        },
    }
    path = write(tmp_path / "dockmesh.yaml", doc)
    cwd = str(tmp_path)
    dockmesh("up", check=True, cwd=cwd)

    # ps: every container, its name whole even when piped
    ps = dockmesh("ps", cwd=cwd, check=True).stdout.splitlines()
    assert ps[0].split() == ["NAME", "SERVICE", "STATE", "PORTS", "NETWORKS"]
    assert [line.split()[:3] for line in ps[1:]] == [
        [f"{prefix}-tick-1", "tick", "running"],
        [f"{prefix}-tick-2", "tick", "running"],
        [f"{prefix}-web-1", "web", "running"],
    ]

    # logs: each line after its container's name; a service chosen; an unknown one is exit 2
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        text = dockmesh("logs", "tick", "--tail", "2", cwd=cwd, check=True).stdout
        if text.count("tick ") >= 4:
            break
        time.sleep(0.3)
    lines = text.splitlines()
    assert len(lines) == 4, text
    assert all(
        line.startswith((f"{prefix}-tick-1 | tick ", f"{prefix}-tick-2 | tick ")) for line in lines
    )
    unknown = dockmesh("logs", "nosuch", cwd=cwd)
    assert unknown.returncode == 2
    assert one_line(unknown) == (
        f"dockmesh: no container of service 'nosuch' in project '{prefix}' (services: tick, web)"
    )

    # logs -f: new lines as they come; Ctrl-C ends it cleanly
    proc = subprocess.Popen(
        [sys.executable, "-m", "dockmesh", "logs", "-f", "--tail", "0", "--file", path],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
    )
    try:
        assert proc.stdout is not None
        seen = [proc.stdout.readline() for _ in range(6)]
        assert {line.split(" | ")[0] for line in seen} == {f"{prefix}-tick-1", f"{prefix}-tick-2"}
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=30)
        assert proc.returncode == 0, stderr
        assert "Traceback" not in stderr
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    # config: the file as resolved (the default network added, as Compose does), its project
    # named, `$` written `$$` again; as JSON too; and it reads back in as the same project
    resolved = yaml.safe_load(dockmesh("config", cwd=cwd, check=True).stdout)
    assert resolved["project"] == prefix and resolved["networks"] == {"default": None}
    assert resolved["services"]["tick"]["command"] == doc["services"]["tick"]["command"]
    assert resolved["services"]["web"]["networks"] == {"default": {"aliases": ["web"]}}
    as_json = json.loads(dockmesh("config", "--json", "-f", path, check=True).stdout)
    assert as_json == resolved
    again = write(tmp_path / "again.yaml", resolved)
    assert dockmesh("plan", "-f", again, "--exit-code", cwd=cwd).returncode == 0
    (tmp_path / "bad.yaml").write_text("project: x\nservices:\n  a: {image: 3}\n")
    bad = dockmesh("config", "-f", "bad.yaml", cwd=cwd)
    assert bad.returncode == 2 and bad.stderr.startswith("bad.yaml:3: services.a.image: ")
    dockmesh("down", cwd=cwd, check=True)


def test_piped_output_is_full_width_and_plain(api: Any, prefix: str, toolbox: str) -> None:
    """Piped, a table is as wide as it needs (rich took 80 columns, or $COLUMNS), names
    whole, no escape codes; NO_COLOR is honoured on a terminal too (rich reads it)."""
    name = f"{prefix}-a-container-name-long-enough-to-be-cut-at-80-cols"  # 62: a hostname
    run_toolbox(api, name, "bridge")
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    for args in (
        ("stats", name),
        ("top", "--iterations", "1", "--interval", "0.2", "--limit", "100000"),
    ):
        proc = subprocess.run(
            [sys.executable, "-m", "dockmesh", *args, "--engine", "unix:///var/run/docker.sock"],
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
        )
        assert proc.returncode == 0, proc.stderr
        assert name in proc.stdout, args
        assert "\x1b[" not in proc.stdout


def test_top_quits_on_q(prefix: str) -> None:
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "dockmesh", "top", "--interval", "0.3"],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env={**os.environ, "COLUMNS": "120", "LINES": "40"},
    )
    os.close(slave)
    try:
        seen = b""
        deadline = time.monotonic() + 60
        while b"dockmesh top" not in seen and time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 1)
            if ready:
                seen += os.read(master, 65536)
        assert b"dockmesh top" in seen
        os.write(master, b"x")  # another key: ignored
        time.sleep(0.5)
        assert proc.poll() is None
        os.write(master, b"q")
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
