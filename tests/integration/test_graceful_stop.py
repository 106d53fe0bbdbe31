"""`down` and a replace stop each container before removing it, as `docker compose down`:
its `stop_signal` (else SIGTERM), then SIGKILL after its `stop_grace_period`; all at once, so
a `down` waits one grace period; `-t` overrides it. On the real engine, with processes that
write down which signal reached them into a named volume kept by `down`."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from tests.integration.conftest import dockmesh

# Each writes the signal it got into the volume, then exits; `stubborn` ignores SIGTERM.
FILE = """\
project: {prefix}
services:
  db:
    image: dockmesh/toolbox
    command: ["sh", "-c", "trap 'echo TERM > /data/db; exit 0' TERM; while :; do sleep 0.2; done"]
    volumes: ["data:/data"]
  worker:
    image: dockmesh/toolbox
    replicas: 2
    stop_signal: SIGUSR1
    stop_grace_period: 5s
    command: ["sh", "-c", "trap 'echo USR1 > /data/$$HOSTNAME; exit 0' USR1; while :; do sleep 0.2; done"]
    volumes: ["data:/data"]
  stubborn:
    image: dockmesh/toolbox
    stop_grace_period: 2s
    command: ["sh", "-c", "trap '' TERM; while :; do sleep 0.2; done"]
volumes:
  data: {{}}
"""


def read_volume(api: Any, toolbox: str, volume: str) -> dict[str, str]:
    """The files of VOLUME and what each says, read by a throwaway container."""
    cid = api.create_container(
        toolbox,
        ["sh", "-c", 'cd /data && for f in *; do [ -f "$f" ] && echo "$f $(cat "$f")"; done'],
        host_config=api.create_host_config(binds=[f"{volume}:/data:ro"]),
    )["Id"]
    try:
        api.start(cid)
        api.wait(cid, timeout=30)
        out = api.logs(cid).decode()
    finally:
        api.remove_container(cid, force=True)
    return dict(line.split(" ", 1) for line in out.splitlines() if " " in line)


def test_down_stops_with_each_services_signal_and_grace(
    api: Any, toolbox: str, prefix: str, tmp_path: Path
) -> None:
    path = tmp_path / "dockmesh.yaml"
    path.write_text(FILE.format(prefix=prefix))
    volume = f"{prefix}_data"
    try:
        dockmesh("up", str(path), check=True)
        worker = api.inspect_container(f"{prefix}-worker-1")["Config"]
        assert (worker["StopSignal"], worker["StopTimeout"]) == ("SIGUSR1", 5)
        stubborn = api.inspect_container(f"{prefix}-stubborn-1")["Config"]
        assert stubborn.get("StopTimeout") == 2
        time.sleep(0.5)  # the traps are set

        t = time.monotonic()
        done = dockmesh("down", str(path), check=True)
        took = time.monotonic() - t
        # one grace period (stubborn's 2 s), not 2 s + 10 s + 5 s + 5 s one after the other
        assert 2.0 <= took < 9.0, (took, done.stderr)
        assert read_volume(api, toolbox, volume) == {
            "db": "TERM",
            f"{prefix}-worker-1": "USR1",
            f"{prefix}-worker-2": "USR1",
        }
    finally:
        dockmesh("down", str(path), "--volumes", "-t", "0")


def test_down_timeout_and_a_replace_stop_first(
    api: Any, toolbox: str, prefix: str, tmp_path: Path
) -> None:
    path = tmp_path / "dockmesh.yaml"
    # stubborn would hold a plain down for 20 s
    slow = FILE.format(prefix=prefix).replace("stop_grace_period: 2s", "stop_grace_period: 20s")
    path.write_text(slow)
    volume = f"{prefix}_data"
    try:
        dockmesh("up", str(path), check=True)
        time.sleep(0.5)
        # a replace (a changed command) stops the old container with its signal first
        path.write_text(slow.replace("echo TERM > /data/db", "echo TERM2 > /data/db"))
        dockmesh("up", str(path), check=True)
        assert read_volume(api, toolbox, volume)["db"] == "TERM"
        time.sleep(0.5)
        # -t 0: the stop signal, then SIGKILL at once, whatever the file says (stubborn's
        # 20 s are not waited for)
        t = time.monotonic()
        dockmesh("down", str(path), "-t", "0", check=True)
        assert time.monotonic() - t < 10.0
    finally:
        dockmesh("down", str(path), "--volumes", "-t", "0")
