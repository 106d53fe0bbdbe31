"""The agent's watch on the ruleset (dockmesh.policy.watch): which monitor lines are about the
policy's table, one check per burst of events, the child started again when it ends, killed
when the watch stops and when the agent's process dies, and the metrics it shows. A small
script stands in for `nft -j monitor` (the real one: tests/integration/test_policy_tamper.py)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest

from dockmesh.policy.watch import RepairCollector, RulesetWatch, touches

NAMES = st.sampled_from(["t", "docker", "other", "t2"])
KINDS = st.sampled_from(["table", "chain", "rule", "set", "element", "map"])


@given(
    st.sampled_from(["add", "delete", "flush", "replace"]),
    KINDS,
    NAMES,
    st.sampled_from(["inet", "bridge", "ip"]),
)
def test_an_event_is_about_the_table_by_its_name_in_any_family(
    verb: str, kind: str, name: str, family: str
) -> None:
    obj: dict[str, Any] = {"family": family, "handle": 3}
    obj["name" if kind == "table" else "table"] = name
    if kind != "table":
        obj["name"] = "x"
    line = json.dumps({verb: {kind: obj}})
    assert touches(line, "t") == (name == "t")


@given(st.text())
def test_a_line_it_cannot_read_counts_as_one_about_the_table(line: str) -> None:
    try:
        doc = json.loads(line)
    except ValueError:
        assert touches(line, "t") == bool(line.strip())
        return
    readable = (
        isinstance(doc, dict)
        and len(doc) == 1
        and isinstance(next(iter(doc.values())), dict)
        and len(next(iter(doc.values()))) == 1
        and isinstance(next(iter(next(iter(doc.values())).values())), dict)
    )
    if not readable:
        assert touches(line, "t")


def _script(body: str) -> list[str]:
    return [sys.executable, "-c", body]


def test_a_burst_of_events_is_one_check_and_a_child_that_ends_is_started_again() -> None:
    calls: list[bool] = []
    lines = [json.dumps({"add": {"rule": {"family": "inet", "table": "t", "chain": "c"}}})] * 5
    lines.append(json.dumps({"add": {"rule": {"family": "ip", "table": "docker", "chain": "c"}}}))
    body = f"import sys, time\nfor l in {lines!r}: print(l, flush=True)\ntime.sleep(0.3)"

    def check(patient: bool) -> list[str] | None:
        calls.append(patient)
        return []

    async def main() -> RulesetWatch:
        watch = RulesetWatch("t", check, _script(body))
        stop = asyncio.Event()
        task = asyncio.create_task(watch.run(stop))
        deadline = time.monotonic() + 10
        while (watch.restarts < 2 or len(calls) <= watch.restarts) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        stop.set()
        await asyncio.wait_for(task, 5)
        return watch

    watch = asyncio.run(main())
    assert watch.restarts >= 2 and not watch.up
    # Each run of the child: one check at its start (what changed while nobody watched)
    # and the burst folded into it or one more; never one per event.
    runs = watch.restarts + 1
    assert runs - 1 <= len(calls) <= 2 * runs, calls
    assert all(calls)


def test_a_table_another_apply_wrote_is_checked_again_impatiently() -> None:
    calls: list[bool] = []

    def check(patient: bool) -> list[str] | None:
        calls.append(patient)
        return None if patient else []

    async def main() -> None:
        watch = RulesetWatch("t", check, _script("import time; time.sleep(5)"))
        stop = asyncio.Event()
        task = asyncio.create_task(watch.run(stop))
        deadline = time.monotonic() + 5
        while len(calls) < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        stop.set()
        await asyncio.wait_for(task, 5)

    asyncio.run(main())
    assert calls[:2] == [True, False]


def test_a_watch_that_cannot_start_says_so_once(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> RulesetWatch:
        watch = RulesetWatch("t", lambda _: [], ["/nonexistent/nft", "-j", "monitor"])
        stop = asyncio.Event()
        task = asyncio.create_task(watch.run(stop))
        await asyncio.sleep(1.0)  # back-off 0.1, 0.2, 0.4 s: several attempts
        stop.set()
        await asyncio.wait_for(task, 5)
        return watch

    with caplog.at_level(logging.DEBUG, "dockmesh.policy.watch"):
        watch = asyncio.run(main())
    tries = [r for r in caplog.records if "cannot watch the ruleset" in r.getMessage()]
    assert len(tries) >= 3 and not watch.up
    assert [r.levelno for r in tries] == [logging.WARNING] + [logging.DEBUG] * (len(tries) - 1)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def test_the_child_is_killed_when_the_watch_stops() -> None:
    async def main() -> int:
        watch = RulesetWatch("t", lambda _: [], _script("import time; time.sleep(60)"))
        stop = asyncio.Event()
        task = asyncio.create_task(watch.run(stop))
        while not watch.up:
            await asyncio.sleep(0.01)
        (child,) = _children(os.getpid())
        stop.set()
        await asyncio.wait_for(task, 5)
        return child

    child = asyncio.run(main())
    assert not _alive(child)


def _children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        out += [int(c) for c in text]
    return out


def test_the_child_dies_with_the_agent_even_when_it_is_killed(tmp_path: Path) -> None:
    """SIGKILL to the agent's process runs no clean-up: the kernel's parent-death signal ends
    the child."""
    pidfile = tmp_path / "child.pid"
    agent = subprocess.Popen(
        _script(
            "import asyncio, sys\n"
            "from dockmesh.policy.watch import RulesetWatch\n"
            f"cmd = ['sh', '-c', 'echo $$ > {pidfile}; exec sleep 60']\n"
            "asyncio.run(RulesetWatch('t', lambda _: [], cmd).run(asyncio.Event()))\n"
        )
    )
    try:
        deadline = time.monotonic() + 20
        while not (pidfile.exists() and pidfile.read_text().strip()):
            assert time.monotonic() < deadline and agent.poll() is None
            time.sleep(0.02)
        child = int(pidfile.read_text())
        assert _alive(child)
    finally:
        agent.send_signal(signal.SIGKILL)
        agent.wait()
    deadline = time.monotonic() + 5
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not _alive(child)


def test_the_metrics_say_repairs_and_whether_the_watch_runs() -> None:
    class Counts:
        repairs = 3

    registry = CollectorRegistry()
    watch = RulesetWatch("t", lambda _: [], ["true"])
    watch.up, watch.restarts = True, 2
    registry.register(RepairCollector(Counts(), watch))
    text = generate_latest(registry).decode()
    assert "dockmesh_policy_repairs_total 3.0" in text
    assert "dockmesh_policy_watch_up 1.0" in text
    assert "dockmesh_policy_watch_restarts_total 2.0" in text
    registry = CollectorRegistry()
    registry.register(RepairCollector(Counts(), None))
    assert "dockmesh_policy_watch_up 0.0" in generate_latest(registry).decode()
