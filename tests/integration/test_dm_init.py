"""The toolbox's entrypoint (dm-init) as the source tree has it, mounted over the image's: the
command runs as its child and gets the signals a stop or `docker kill -s` sends. A command run
in the background ignores SIGINT and SIGQUIT (and cannot take that back): dm-init sends it
SIGTERM instead, or `stop_signal: SIGINT` waited for SIGKILL. On a terminal the command is PID
1, as before, so that Ctrl-C reaches what an interactive shell runs."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

import dockmesh

DM_INIT = Path(dockmesh.__file__).parent / "images" / "toolbox" / "bin" / "dm-init"


def start(api: Any, toolbox: str, name: str, command: list[str], **config: Any) -> str:
    cid = api.create_container(
        toolbox,
        command,
        name=name,
        host_config=api.create_host_config(binds=[f"{DM_INIT}:/bin/dm-init:ro"]),
        **config,
    )["Id"]
    api.start(cid)
    for _ in range(50):  # dm-init has started the command (and then set its traps)
        if any("sleep" in row[-1] for row in api.top(cid)["Processes"] or []):
            break
        time.sleep(0.1)
    time.sleep(0.3)
    return str(cid)


@pytest.mark.parametrize("signal", ["SIGINT", "SIGQUIT"])
def test_a_stop_signal_the_command_ignores_still_ends_it(
    api: Any, toolbox: str, prefix: str, signal: str
) -> None:
    cid = start(api, toolbox, f"{prefix}-s", ["sleep", "1000"], stop_signal=signal)
    t = time.monotonic()
    api.stop(cid, timeout=20)
    took = time.monotonic() - t
    state = api.inspect_container(cid)["State"]
    # it was: SIGKILL after the whole grace period, exit 137
    assert (state["ExitCode"], took < 10) == (143, True), took


def test_docker_kill_int_ends_the_command(api: Any, toolbox: str, prefix: str) -> None:
    cid = start(api, toolbox, f"{prefix}-k", ["sleep", "1000"])
    api.kill(cid, signal="SIGINT")
    assert api.wait(cid, timeout=10)["StatusCode"] == 143


def test_on_a_terminal_the_command_is_pid_1(api: Any, toolbox: str, prefix: str) -> None:
    # A background command (and all it starts) ignores Ctrl-C: `docker run -it toolbox sh`
    # could not interrupt a command typed into it.
    cid = start(api, toolbox, f"{prefix}-t", ["sleep", "1000"], tty=True, stdin_open=True)
    assert api.exec_start(api.exec_create(cid, ["cat", "/proc/1/comm"])).strip() == b"sleep"
    cid = start(api, toolbox, f"{prefix}-n", ["sleep", "1000"])
    assert api.exec_start(api.exec_create(cid, ["cat", "/proc/1/comm"])).strip() == b"dm-init"
