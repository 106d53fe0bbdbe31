"""The agent's installation as values (dockmesh.ops.agentinstall): the docker run line a user
pastes is the argument list that runs, the compose snippet says the same, and the systemd
unit's ExecStart reads back as the command (systemd-analyze verify accepts the unit)."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from dockmesh.ops.agentinstall import (
    CAPABILITIES,
    CONTAINER_STATE_DIR,
    UNIT_MARK,
    AgentInstall,
    compose_snippet,
    container_command,
    docker_run_args,
    docker_run_line,
    service_command,
    systemd_quote,
    systemd_unit,
    unit_path,
)

names = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,20}", fullmatch=True)
dirs = st.lists(
    st.text(
        alphabet=st.characters(blacklist_characters="/:,", blacklist_categories=["Cc", "Cs"]),
        min_size=1,
        max_size=8,
    ),
    min_size=1,
    max_size=3,
).map(lambda parts: "/" + "/".join(parts))
hostports = st.builds(
    lambda h, p: f"{h}:{p}",
    st.sampled_from(["127.0.0.1", "0.0.0.0", "[::1]"]),
    st.integers(0, 65535),
)
extra = st.lists(
    st.text(alphabet=st.characters(blacklist_characters="\n\r\x00"), max_size=12), max_size=3
)
specs = st.builds(
    AgentInstall,
    name=names,
    image=st.sampled_from(["dockmesh/python:latest", "t1/python:latest"]),
    state_dir=dirs,
    api=hostports,
    dns=st.one_of(hostports, st.just("off")),
    agent_args=extra.map(tuple),
)


def test_the_default_line_is_the_one_the_demo_ran() -> None:
    args = docker_run_args(AgentInstall())
    line = docker_run_line(AgentInstall())
    assert line.startswith("docker run -d --name dockmesh-agent --restart unless-stopped ")
    for flag in (
        "--pid host --network host",
        "--cap-add SYS_ADMIN --cap-add SYS_PTRACE --cap-add NET_ADMIN --cap-add NET_RAW",
        "--security-opt seccomp=unconfined --security-opt apparmor=unconfined",
        "-v /var/run/docker.sock:/var/run/docker.sock -v /var/lib/dockmesh:/var/lib/dockmesh",
        "--label dockmesh.role=agent dockmesh/python:latest dockmesh agent --api 127.0.0.1:8500"
        " --dns 127.0.0.1:8600 --state /var/lib/dockmesh/state.db",
    ):
        assert flag in line
    assert "--privileged" not in args


@given(specs)
def test_the_printed_line_is_the_argument_list(spec: AgentInstall) -> None:
    assert not spec.problems()
    assert shlex.split(docker_run_line(spec)) == docker_run_args(spec)


def _unescaped(value: Any) -> Any:
    if isinstance(value, str):
        return value.replace("$$", "$")
    if isinstance(value, list):
        return [_unescaped(v) for v in value]
    if isinstance(value, dict):
        return {k: _unescaped(v) for k, v in value.items()}
    return value


@given(specs)
def test_the_compose_snippet_says_what_the_line_says(spec: AgentInstall) -> None:
    doc = yaml.safe_load(compose_snippet(spec))
    # as Compose reads it: `$$` is a literal `$` (a lone `$` would have been substituted)
    assert not re.search(r"(?<!\$)\$(?:\$\$)*(?!\$)", compose_snippet(spec))
    service = _unescaped(doc["services"][spec.name])
    args = docker_run_args(spec)
    assert service["image"] == spec.image == args[-len(container_command(spec)) - 1]
    assert service["command"] == container_command(spec) == args[-len(service["command"]) :]
    assert service["container_name"] == spec.name
    assert service["restart"] == args[args.index("--restart") + 1]
    assert (service["network_mode"], service["pid"]) == ("host", "host")
    assert service["cap_add"] == [args[i + 1] for i, a in enumerate(args) if a == "--cap-add"]
    assert service["security_opt"] == [
        args[i + 1] for i, a in enumerate(args) if a == "--security-opt"
    ]
    assert service["volumes"] == [args[i + 1] for i, a in enumerate(args) if a == "-v"]
    assert service["labels"] == {"dockmesh.role": "agent"}
    # the agent's state, in the container where its defaults look
    assert f"{spec.state_path}:{CONTAINER_STATE_DIR}" in service["volumes"]
    assert f"{CONTAINER_STATE_DIR}/state.db" in service["command"]


@pytest.mark.parametrize(
    ("spec", "problem"),
    [
        (AgentInstall(name="a b"), "--name"),
        (AgentInstall(name="-a"), "--name"),
        (AgentInstall(name=""), "--name"),
        (AgentInstall(state_dir="var/lib"), "--state-dir"),
        (AgentInstall(state_dir="/a:/b"), "--state-dir"),
        (AgentInstall(state_dir="/a\nb"), "--state-dir"),
        (AgentInstall(state_dir="/"), "root"),
        (AgentInstall(agent_args=("--x\n",)), "line break"),
        # in the docker run line the image stands where an option would be read as one
        (AgentInstall(image="--privileged"), "--image"),
        (AgentInstall(image="-v/:/host"), "--image"),
        (AgentInstall(image="x y"), "--image"),
        (AgentInstall(image=""), "--image"),
        (AgentInstall(image="x\n"), "--image"),
    ],
)
def test_bad_settings_are_named(spec: AgentInstall, problem: str) -> None:
    assert len(spec.problems()) == 1 and problem in spec.problems()[0]


def _systemd_split(line: str) -> list[str]:
    """ExecStart='s words as systemd reads them (the subset systemd_quote writes: bare words,
    double quotes with backslash escapes; %% and $$ are one % and one $)."""
    out, i = [], 0
    while i < len(line):
        if line[i] == " ":
            i += 1
            continue
        word = ""
        if line[i] == '"':
            i += 1
            while line[i] != '"':
                if line[i] == "\\":
                    i += 1
                word += line[i]
                i += 1
            i += 1
        else:
            while i < len(line) and line[i] != " ":
                word += line[i]
                i += 1
        out.append(word.replace("%%", "%").replace("$$", "$"))
    return out


@given(st.lists(st.text(alphabet=st.characters(blacklist_characters="\n\r\x00"), max_size=10)))
def test_systemd_quoting_reads_back(args: list[str]) -> None:
    line = " ".join(systemd_quote(a) for a in args)
    assert _systemd_split(line) == args


@given(specs)
def test_the_unit_runs_the_agent_with_its_state_and_restarts_it(spec: AgentInstall) -> None:
    program = ["/opt/dockmesh/bin/dockmesh"]
    text = systemd_unit(spec, program)
    assert text.startswith(UNIT_MARK + "\n")
    (exec_start,) = re.findall(r"^ExecStart=(.*)$", text, re.M)
    assert _systemd_split(exec_start) == service_command(spec, program)
    assert f"{spec.state_path}/state.db" in service_command(spec, program)
    for line in ("Restart=always", "WantedBy=multi-user.target"):
        assert line in text.splitlines()
    after = re.findall(r"^(?:After|Wants)=(.*)$", text, re.M)
    assert len(after) == 2 and all("docker.service" in a.split() for a in after)
    # not bound to the engine: the agent stays when docker.service stops
    assert "BindsTo=" not in text and "Requires=" not in text


def test_the_unit_path() -> None:
    assert unit_path(AgentInstall()) == "/etc/systemd/system/dockmesh-agent.service"
    assert unit_path(AgentInstall(name="a1"), "/tmp/u/") == "/tmp/u/a1.service"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze here")
def test_systemd_analyze_verifies_the_unit(tmp_path: Path) -> None:
    def verify(text: str) -> subprocess.CompletedProcess[str]:
        path = tmp_path / "dmtest-agent.service"
        path.write_text(text)
        return subprocess.run(
            ["systemd-analyze", "verify", str(path)], capture_output=True, text=True, timeout=60
        )

    spec = AgentInstall(name="dmtest-agent", state_dir="/tmp/dm test/%state")
    good = verify(systemd_unit(spec, [sys.executable, "-m", "dockmesh"]))
    assert good.returncode == 0, good.stderr
    assert "dmtest-agent" not in good.stderr, good.stderr
    # the check has teeth: a unit whose program is not an absolute path is refused
    bad = verify(systemd_unit(spec, ["dockmesh-nowhere/bin/dockmesh"]))
    assert bad.returncode != 0 or "dmtest-agent" in bad.stderr


def test_the_unit_gives_a_moved_state_dir_its_policy_folder_too() -> None:
    assert "DOCKMESH_POLICY_DIR" not in systemd_unit(AgentInstall(), ["/x/dockmesh"])
    moved = systemd_unit(AgentInstall(state_dir="/srv/dm"), ["/x/dockmesh"])
    assert "Environment=DOCKMESH_POLICY_DIR=/srv/dm/policy" in moved.splitlines()
    assert set(CAPABILITIES) <= set(docker_run_args(AgentInstall()))


@pytest.mark.parametrize(
    "image", ["dockmesh/python:latest", "localhost:5000/a/b:1.0", "x@sha256:" + "a" * 64, "a_b"]
)
def test_image_references_are_taken(image: str) -> None:
    assert AgentInstall(image=image).problems() == []


@given(dirs)
def test_the_policy_folder_reads_back_whatever_the_state_dir(state_dir: str) -> None:
    # Environment= does not expand `$`: doubled as in ExecStart, a state dir with a `$` gave
    # the agent one policy folder and `dockmesh policy apply` another.
    text = systemd_unit(AgentInstall(state_dir=state_dir), ["/x/dockmesh"])
    envs = re.findall(r"^Environment=(.*)$", text, re.M)
    if AgentInstall(state_dir=state_dir).state_path == "/var/lib/dockmesh":
        assert envs == []
        return
    (value,) = _systemd_split(envs[0].replace("$", "$$"))
    assert value == f"DOCKMESH_POLICY_DIR={state_dir.rstrip('/')}/policy"


def test_the_compose_snippet_keeps_a_dollar() -> None:
    # Compose substitutes `$b`: the state dir /srv/a$b was mounted as /srv/a.
    text = compose_snippet(AgentInstall(state_dir="/srv/a$b", agent_args=("--tag=$y",)))
    assert "- /srv/a$$b:/var/lib/dockmesh\n" in text and "- --tag=$$y\n" in text
