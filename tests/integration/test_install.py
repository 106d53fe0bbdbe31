"""Installing and running dockmesh like a tool: `agent install` brings up an agent container
that answers (and is left alone when it runs as asked), `agent uninstall` leaves nothing, and
a wheel installed in a venv outside the checkout runs and builds the images (under the test's
own names: the shared dockmesh/* images are never replaced)."""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import docker
import pytest

import dockmesh
from tests.integration.conftest import dockmesh as run_dockmesh

ROOT = Path(__file__).resolve().parents[2]
PYTHON_IMAGE = "dockmesh/python:latest"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.load(r)


@pytest.fixture
def agent_opts(prefix: str, tmp_path: Path, api: Any) -> Any:
    """An agent of the test's own: its name, loopback ports and state folder (no DNS on the
    bridges' gateways, which the machine's own agent may serve)."""
    try:
        api.inspect_image(PYTHON_IMAGE)
    except docker.errors.ImageNotFound:
        pytest.skip(f"{PYTHON_IMAGE} is not built (dockmesh images build)")
    name = f"{prefix}-agent"
    api_port, dns_port = free_port(), free_port()
    opts = [
        "--name",
        name,
        "--api",
        f"127.0.0.1:{api_port}",
        "--dns",
        f"127.0.0.1:{dns_port}",
        "--state-dir",
        str(tmp_path / "state"),
    ]
    yield name, api_port, opts, tmp_path / "state"
    with contextlib.suppress(docker.errors.NotFound):
        api.remove_container(name, force=True)


def test_agent_install_runs_an_agent_that_answers_and_uninstall_leaves_nothing(
    agent_opts: Any, api: Any
) -> None:
    name, api_port, opts, state = agent_opts
    proc = run_dockmesh("agent", "install", *opts, "--json", "--", "--no-gateway-dns", check=True)
    doc = json.loads(proc.stdout)
    assert (doc["mode"], doc["action"], doc["started"]) == ("container", "started", True)
    me = get_json(f"http://127.0.0.1:{api_port}/v1/agent/self")
    # (the shared image is built from main: the Consul-level version, which it has carried
    # for long; the plain `dockmesh` key is checked in tests/unit/api/test_app_consul.py)
    assert me["Config"]["Version"].endswith(f"+dockmesh.{dockmesh.__version__}")
    # the container is what the printed line says, flag for flag
    printed = run_dockmesh(
        "agent", "install", *opts, "--print", "--json", "--", "--no-gateway-dns", check=True
    )
    line = json.loads(printed.stdout)["command"]
    args = shlex.split(line)
    c = api.inspect_container(name)
    host = c["HostConfig"]
    assert c["Config"]["Cmd"] == args[args.index(PYTHON_IMAGE) + 1 :]
    assert c["Config"]["Labels"]["dockmesh.role"] == "agent"
    assert (host["NetworkMode"], host["PidMode"]) == ("host", "host")
    assert host["RestartPolicy"]["Name"] == "unless-stopped"
    assert sorted(cap.removeprefix("CAP_") for cap in host["CapAdd"]) == sorted(
        args[i + 1] for i, a in enumerate(args) if a == "--cap-add"
    )
    assert sorted(host["Binds"]) == sorted(args[i + 1] for i, a in enumerate(args) if a == "-v")
    assert "/var/run/docker.sock:/var/run/docker.sock" in host["Binds"]
    assert (state / "state.db").exists()
    started_at = c["State"]["StartedAt"]
    # installed again as it is: left alone
    again = json.loads(
        run_dockmesh(
            "agent", "install", *opts, "--json", "--", "--no-gateway-dns", check=True
        ).stdout
    )
    assert again["action"] == "unchanged"
    assert api.inspect_container(name)["State"]["StartedAt"] == started_at
    # uninstall, with the state; then again: nothing to do
    gone = json.loads(
        run_dockmesh("agent", "uninstall", "--name", name, "--volumes", "--json", check=True).stdout
    )
    assert f"container {name}" in gone["removed"] and str(state) in gone["removed"]
    with pytest.raises(docker.errors.NotFound):
        api.inspect_container(name)
    assert not state.exists()
    with pytest.raises(urllib.error.URLError, match="refused"):
        get_json(f"http://127.0.0.1:{api_port}/v1/status/leader")
    twice = run_dockmesh(
        "agent", "uninstall", "--name", name, "--volumes", "--state-dir", str(state), "--json"
    )
    assert twice.returncode == 0 and json.loads(twice.stdout) == {"removed": [], "kept": []}


def test_install_and_uninstall_leave_a_container_that_is_no_agent_alone(
    prefix: str, api: Any, toolbox: str, tmp_path: Path
) -> None:
    name = f"{prefix}-notagent"
    api.create_container(toolbox, name=name, command=["sleep", "60"])
    for args in (
        ("uninstall", "--name", name),
        ("install", "--name", name, "--api", "127.0.0.1:1", "--state-dir", str(tmp_path)),
    ):
        proc = run_dockmesh("agent", *args)
        assert proc.returncode == 2, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1 and "left alone" in proc.stderr
    assert api.inspect_container(name)["Name"] == f"/{name}"


def test_a_name_that_is_another_agents_id_prefix_finds_nothing(
    prefix: str, api: Any, toolbox: str
) -> None:
    # The engine finds a container by a prefix of its ID too: `uninstall --name <hex>`
    # removed the agent whose ID starts so.
    name = f"{prefix}-idagent"
    cid = api.create_container(
        toolbox, name=name, command=["sleep", "60"], labels={"dockmesh.role": "agent"}
    )["Id"]
    proc = run_dockmesh("agent", "uninstall", "--name", cid[:12], "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {"removed": [], "kept": []}
    assert api.inspect_container(name)["Id"] == cid


def test_a_service_unit_is_written_and_removed(tmp_path: Path) -> None:
    units = tmp_path / "units"
    opts = ["--service", "--name", "dmtest-svc", "--unit-dir", str(units)]
    state = ["--state-dir", str(tmp_path / "state")]
    proc = run_dockmesh("agent", "install", *opts, *state, "--dns", "off", "--json", check=True)
    doc = json.loads(proc.stdout)
    unit = units / "dmtest-svc.service"
    assert doc["unit"] == str(unit) and unit.is_file()
    # not in systemd's folder (and maybe no systemd at all): written, and said so
    assert doc["started"] is False and "systemctl" in doc["note"]
    assert "ExecStart=" in unit.read_text() and "Restart=always" in unit.read_text()
    foreign = units / "dmtest-other.service"
    foreign.write_text("[Service]\nExecStart=/bin/true\n")
    refused = run_dockmesh(
        "agent", "uninstall", "--service", "--name", "dmtest-other", "--unit-dir", str(units)
    )
    assert refused.returncode == 2 and foreign.exists()
    run_dockmesh("agent", "uninstall", *opts, *state, "--volumes", check=True)
    assert not unit.exists() and not (tmp_path / "state").exists()


def test_a_wheel_in_a_venv_outside_the_checkout_runs_and_builds_the_images(
    tmp_path: Path, prefix: str, api: Any
) -> None:
    """What a user without the repository does: pip wheel, a fresh venv, pip install, then
    `dockmesh --version`, `images build` and `agent install --print` from elsewhere."""
    assert not tmp_path.is_relative_to(ROOT)
    wheels, venv = tmp_path / "wheels", tmp_path / "venv"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", str(ROOT), "-w", str(wheels)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = wheels.glob("dockmesh-*.whl")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    subprocess.run(
        [str(venv / "bin" / "pip"), "install", "-q", str(wheel)],
        check=True,
        capture_output=True,
        timeout=600,
    )
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["DOCKMESH_IMAGE_REPO_PREFIX"] = prefix
    images = [f"{prefix}/toolbox:latest", f"{prefix}/python:latest"]

    def dm(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(venv / "bin" / "dockmesh"), *args],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            env=env,
            timeout=900,
        )

    try:
        version = dm("--version")
        assert version.returncode == 0 and version.stdout == f"dockmesh {dockmesh.__version__}\n"
        # the installed copy, not this checkout
        where = subprocess.run(
            [str(venv / "bin" / "python"), "-c", "import dockmesh; print(dockmesh.__file__)"],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            env=env,
            check=True,
        ).stdout
        assert where.startswith(str(venv))
        built = dm("images", "build", "--json")
        assert built.returncode == 0, built.stderr
        assert [(i["image"], i["built"]) for i in json.loads(built.stdout)["images"]] == [
            (images[0], True),
            (images[1], True),
        ]
        again = json.loads(dm("images", "build", "--json").stdout)
        assert [i["built"] for i in again["images"]] == [False, False]
        # the agent's image runs the installed dockmesh and carries nft
        for cmd in (
            ["--entrypoint", "nft", images[1], "--version"],
            [images[1], "dockmesh", "--version"],
        ):
            ran = subprocess.run(
                ["docker", "run", "--rm", "--network", "none", *cmd],
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert ran.returncode == 0, ran.stderr
        assert ran.stdout == f"dockmesh {dockmesh.__version__}\n"
        line = dm("agent", "install", "--print")
        assert line.returncode == 0 and "--restart unless-stopped" in line.stdout
        assert "/var/run/docker.sock" in line.stdout and images[1] in line.stdout
        # a failure with --json: still one document, and one line on stderr
        bad = subprocess.run(
            [str(venv / "bin" / "dockmesh"), "images", "build", "--json"],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            env={**env, "DOCKER_HOST": "unix:///nonexistent/docker.sock"},
            timeout=120,
        )
        assert bad.returncode == 1 and json.loads(bad.stdout)["error"]["exit_code"] == 1
        assert len(bad.stderr.strip().splitlines()) == 1
    finally:
        for image in images:
            with contextlib.suppress(docker.errors.ImageNotFound):
                api.remove_image(image, force=True)
