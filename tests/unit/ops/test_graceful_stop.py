"""A container is stopped before it is removed (`down`, a replace, an orphan): its stop
signal, then SIGKILL after its grace period, as `docker compose down` does; a run's removals
stop together; a failed stop rolls back, the stopped started again."""

from __future__ import annotations

import json
import signal
import threading
import time
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dockmesh.engine.memory import MemoryEngine
from dockmesh.errors import EngineError
from dockmesh.model.config import ContainerConfig
from dockmesh.model.durations import MAX_GRACE_S, grace_s
from dockmesh.model.labels import LABEL_CONFIG, stamped_config
from dockmesh.model.topology import build_topology
from dockmesh.ops.apply import DEFAULT_GRACE_S, STOP_PARALLEL, apply_plan, grace_of
from dockmesh.projectfile.plan import make_plan, teardown_plan
from tests.unit.helpers import desired_of, problems_of


class Recording(MemoryEngine):
    """The in-memory engine, noting each stop (container name, grace) and each removal, in
    order, and how many stops were under way at once."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, str, int | None]] = []
        self.busy = 0
        self.most_at_once = 0
        self.gate = threading.Lock()
        self.together = threading.Barrier(1)

    def stop(self, container: str, timeout_s: int = 10) -> None:
        name = self.name_of(container)
        with self.gate:
            self.busy += 1
            self.most_at_once = max(self.most_at_once, self.busy)
        try:
            self.together.wait(timeout=5)
            self.calls.append(("stop", name, timeout_s))
            super().stop(container, timeout_s)
        finally:
            with self.gate:
                self.busy -= 1

    def remove_container(self, container: str) -> None:
        self.calls.append(("remove", self.name_of(container), None))
        super().remove_container(container)

    def name_of(self, container: str) -> str:
        c = self.container(container)
        return c.name if c is not None else container


def svc(**fields: Any) -> dict[str, Any]:
    return {"image": "dockmesh/toolbox", **fields}


def up(mem: MemoryEngine, doc: dict[str, Any]) -> None:
    apply_plan(mem, make_plan(desired_of(doc), build_topology([mem.snapshot()], 1)))


def down(mem: MemoryEngine, project: str = "p", timeout: int | None = None) -> None:
    live = build_topology([mem.snapshot()], 1)
    apply_plan(mem, teardown_plan(project, live), stop_timeout_s=timeout)


DOC: dict[str, Any] = {
    "project": "p",
    "services": {
        "db": svc(stop_signal="SIGINT", stop_grace_period="1m30s"),
        "web": svc(replicas=2, stop_grace_period="1.5s"),
        "job": svc(),
    },
}


# --- the keys -------------------------------------------------------------------------------


def test_the_keys_reach_the_container() -> None:
    d = {c.config.name: c.config for c in desired_of(DOC).containers}
    assert (d["p-db-1"].stop_signal, d["p-db-1"].stop_grace_s) == ("SIGINT", 90)
    assert (d["p-web-1"].stop_signal, d["p-web-1"].stop_grace_s) == (None, 2)  # rounded up
    assert (d["p-job-1"].stop_signal, d["p-job-1"].stop_grace_s) == (None, None)
    for c in d.values():
        assert ContainerConfig.from_json(c.to_json()) == c
    # a container whose file says neither keeps its JSON (and so its hash) as before
    assert "stop_signal" not in d["p-job-1"].to_json()
    assert "stop_grace_s" not in d["p-job-1"].to_json()


def test_a_changed_grace_period_replaces_the_container() -> None:
    mem = MemoryEngine()
    up(mem, {"project": "p", "services": {"w": svc()}})
    live = build_topology([mem.snapshot()], 1)
    plan = make_plan(
        desired_of({"project": "p", "services": {"w": svc(stop_grace_period="30s")}}), live
    )
    assert [(c.action, c.reason) for c in plan.changes] == [("replace", "changed: stop_grace_s")]


@pytest.mark.parametrize(
    ("fields", "said"),
    [
        ({"stop_signal": "SIGFOO"}, "services.w.stop_signal: 'SIGFOO' is not a signal"),
        ({"stop_signal": 0}, "services.w.stop_signal: 0 is not a signal number (1 to 64)"),
        ({"stop_signal": "RTMIN+16"}, "services.w.stop_signal: 'RTMIN+16' is not a signal"),
        (
            {"stop_grace_period": 10},
            "services.w.stop_grace_period: must be a duration with a unit, like 10s",
        ),
        (
            {"stop_grace_period": "forever"},
            "services.w.stop_grace_period: 'forever' is not a duration",
        ),
        ({"stop_grace_period": "-1s"}, "services.w.stop_grace_period: '-1s' is not a duration"),
    ],
)
def test_bad_values_are_said_where_they_are(fields: dict[str, Any], said: str) -> None:
    out = "\n".join(problems_of({"services": {"w": svc(**fields)}}))
    assert said in out, out


@given(st.integers(min_value=0, max_value=10**15))
def test_a_grace_period_never_shrinks(ns: int) -> None:
    s = grace_s(f"{ns}ns")
    assert s * 1_000_000_000 >= ns > (s - 1) * 1_000_000_000 or (ns == 0 and s == 0)


# --- down, replace, rollback ----------------------------------------------------------------


def test_down_stops_every_container_with_its_grace_before_removing_it() -> None:
    mem = Recording()
    up(mem, DOC)
    mem.together = threading.Barrier(4)  # all four stops must be under way at once
    down(mem)
    stops = {name: grace for op, name, grace in mem.calls if op == "stop"}
    assert stops == {"p-db-1": 90, "p-web-1": 2, "p-web-2": 2, "p-job-1": DEFAULT_GRACE_S}
    assert mem.most_at_once == 4
    first_removal = next(i for i, c in enumerate(mem.calls) if c[0] == "remove")
    assert all(c[0] == "stop" for c in mem.calls[:first_removal])
    assert not mem.snapshot().containers


def test_down_timeout_overrides_every_grace_period() -> None:
    mem = Recording()
    up(mem, DOC)
    mem.together = threading.Barrier(4)
    down(mem, timeout=0)
    assert {grace for op, _, grace in mem.calls if op == "stop"} == {0}


def test_a_replaced_container_is_stopped_first_with_its_old_grace() -> None:
    mem = Recording()
    up(mem, {"project": "p", "services": {"w": svc(stop_grace_period="3s")}})
    live = build_topology([mem.snapshot()], 1)
    changed = desired_of({"project": "p", "services": {"w": svc(command=["sleep", "9"])}})
    apply_plan(mem, make_plan(changed, live))
    assert mem.calls[:2] == [("stop", "p-w-1", 3), ("remove", "p-w-1", None)]


def test_a_stopped_container_is_not_stopped_again() -> None:
    mem = Recording()
    up(mem, DOC)
    mem.stop("p-job-1")
    mem.calls.clear()
    mem.together = threading.Barrier(3)
    down(mem)
    assert ("stop", "p-job-1", DEFAULT_GRACE_S) not in mem.calls


def test_a_failed_stop_rolls_back_the_stopped_run_again() -> None:
    mem = Recording()
    up(mem, DOC)
    mem.fail("stop", "p-web-2")
    with pytest.raises(EngineError, match="rolled back"):
        down(mem)
    running = {c.name for c in mem.snapshot().containers.values() if c.running}
    assert running == {"p-db-1", "p-web-1", "p-web-2", "p-job-1"}
    assert not [c for c in mem.calls if c[0] == "remove"]


# --- found by the adversarial pass ----------------------------------------------------------


class Vanishing(Recording):
    """Someone else (`docker rm -f`) removes VICTIM between the run's look at it and its stop."""

    victim = "p-web-2"

    def stop(self, container: str, timeout_s: int = 10) -> None:
        if self.name_of(container) == self.victim:
            MemoryEngine.remove_container(self, container)
        super().stop(container, timeout_s)


def test_a_container_removed_by_someone_else_during_down_is_no_failure() -> None:
    # It was: exit 1, "removing container p-db-1 failed: stop …: No such container", and the
    # rollback started every other container again.
    mem = Vanishing()
    up(mem, DOC)
    down(mem)
    assert not mem.snapshot().containers


def test_a_failed_stop_names_the_container_that_refused() -> None:
    mem = Recording()
    up(mem, DOC)
    mem.fail("stop", "p-web-2", "engine says no")
    with pytest.raises(EngineError, match="stopping p-web-2: stop p-web-2: engine says no"):
        down(mem)


def test_thirty_replicas_are_stopped_all_at_once() -> None:
    # Eight at a time, 30 containers that ignore SIGTERM took four grace periods to go down.
    mem = Recording()
    up(mem, {"project": "p", "services": {"w": svc(replicas=30)}})
    mem.together = threading.Barrier(30)  # each waits until all 30 stops are under way
    down(mem)
    assert mem.most_at_once == 30
    assert not mem.snapshot().containers


def test_the_engine_client_keeps_a_connection_per_stop() -> None:
    from dockmesh.engine import docker as docker_engine

    assert docker_engine._STOP_PARALLEL == STOP_PARALLEL


@pytest.mark.parametrize("grace", ["24h1s", "86401s", "2562047h", "2562047h47m16.854775807s"])
def test_a_grace_period_longer_than_a_day_is_refused(grace: str) -> None:
    # 2562047h47m16.854775807s was taken: `down` then failed half-way with "internal error:
    # OverflowError: timestamp out of range for platform time_t", half the project stopped.
    out = "\n".join(problems_of({"services": {"w": svc(stop_grace_period=grace)}}))
    assert f"services.w.stop_grace_period: {grace!r} is longer than a stop may wait" in out, out


def test_a_day_is_the_longest_grace_period() -> None:
    assert not problems_of({"services": {"w": svc(stop_grace_period="24h")}})
    assert grace_s("24h") == MAX_GRACE_S


def test_a_grace_period_edited_by_hand_in_the_labels_is_bounded() -> None:
    mem = MemoryEngine()
    up(mem, {"project": "p", "services": {"w": svc(stop_grace_period="5s")}})
    (c,) = mem.snapshot().containers.values()
    assert grace_of(c) == 5
    stamped = stamped_config(c.labels)
    assert isinstance(stamped, dict)
    raw = {**stamped, "stop_grace_s": 10**12}
    edited = replace(c, labels={**c.labels, LABEL_CONFIG: json.dumps(raw)})
    assert grace_of(edited) == MAX_GRACE_S


class Slow(MemoryEngine):
    """Each stop takes until RELEASED is set (a container that ignores its stop signal)."""

    def __init__(self) -> None:
        super().__init__()
        self.released = threading.Event()
        self.started = threading.Semaphore(0)

    def stop(self, container: str, timeout_s: int = 10) -> None:
        self.started.release()
        self.released.wait(timeout=30)
        super().stop(container, timeout_s)


def test_a_second_ctrl_c_ends_the_wait_for_the_stops_at_once() -> None:
    # "Ctrl-C again to abort": the ThreadPoolExecutor's exit waited for every stop under way
    # (a grace period) before the KeyboardInterrupt got out, and the interpreter's exit again.
    mem = Slow()
    up(mem, DOC)
    live = build_topology([mem.snapshot()], 1)

    main = threading.main_thread().ident
    assert main is not None

    def ctrl_c() -> None:
        for _ in range(4):
            assert mem.started.acquire(timeout=5)
        time.sleep(0.1)  # the main thread waits in its join
        # A real SIGINT to the main thread, as a terminal's: _thread.interrupt_main() only
        # sets a flag, which a thread blocked on a lock does not see until it is released.
        signal.pthread_kill(main, signal.SIGINT)

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    threading.Thread(target=ctrl_c, daemon=True).start()
    t = time.monotonic()
    try:
        with pytest.raises(KeyboardInterrupt):
            apply_plan(mem, teardown_plan("p", live))
        assert time.monotonic() - t < 3
        stoppers = [th for th in threading.enumerate() if th.name.startswith("stop-")]
        assert stoppers and all(th.daemon for th in stoppers)
    finally:
        signal.signal(signal.SIGINT, previous)
        mem.released.set()
    assert len(mem.snapshot().containers) == 4  # none removed


def test_a_bug_in_a_stop_is_raised_as_it_is() -> None:
    class Buggy(MemoryEngine):
        def stop(self, container: str, timeout_s: int = 10) -> None:
            raise OverflowError("timestamp out of range for platform time_t")

    mem = Buggy()
    up(mem, DOC)
    with pytest.raises(OverflowError):
        down(mem)
    assert len(mem.snapshot().containers) == 4


@pytest.mark.parametrize(
    ("value", "said"),
    [
        (True, "must be text, not the boolean true"),  # was: "like 1s (not the bare number 1)"
        (float("inf"), "must be text, not the number inf"),  # was: "like infs"
        (90, "must be a duration with a unit, like 90s (not the bare number 90)"),
    ],
)
def test_a_grace_period_of_another_type_is_named_as_it_is(value: Any, said: str) -> None:
    out = "\n".join(problems_of({"services": {"w": svc(stop_grace_period=value)}}))
    assert f"services.w.stop_grace_period: {said}" in out, out
