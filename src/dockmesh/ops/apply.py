"""Carries out a plan on one engine, in the plan's order, keeping a journal of what it did.

On a failure, the journal is undone in reverse: what this run created is removed (by the ids
the engine returned, so nothing another run or a person made is touched), and what this run
removed is put back from its own labels (`dockmesh.spec.config` holds each object's whole
configuration), with other projects' containers reconnected. A failed replace therefore
leaves the project as it was. An object that carries no readable configuration cannot be
put back; the error then names it.

A container is stopped before it is removed, as `docker compose down` does: its stop signal
(`stop_signal:`, else the image's, else SIGTERM), then SIGKILL after its grace period
(`stop_grace_period:`, else 10 s, or the run's `stop_timeout_s`). The containers of a run of
removals are stopped together, so a `down` waits one grace period, not one per container.

Between two steps the run can be stopped (`should_stop`, set by SIGINT): it then raises
`Interrupted` naming what it created and removed, and leaves the engine as it is — `up`
again finishes the job, `down` removes it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from dockmesh.engine.backend import EngineBackend
from dockmesh.errors import EngineError, EngineNotFound, Interrupted
from dockmesh.model.config import ContainerConfig, EndpointConfig, NetworkConfig
from dockmesh.model.durations import MAX_GRACE_S
from dockmesh.model.labels import stamped_config
from dockmesh.model.topology import Container, Network
from dockmesh.projectfile.plan import Plan, Step

log = logging.getLogger(__name__)

Progress = Callable[[Step], None]


@dataclass(slots=True)
class Journal:
    """What this run has done so far, with what it removed as it was: enough to undo it in
    reverse (see the module)."""

    created_networks: list[tuple[str, str]] = field(default_factory=list)  # (name, id)
    created_containers: list[tuple[str, str]] = field(default_factory=list)
    # What was removed, as it was: restored from these on a rollback.
    removed_networks: list[Network] = field(default_factory=list)
    removed_containers: list[Container] = field(default_factory=list)
    disconnected: list[tuple[str, EndpointConfig]] = field(default_factory=list)
    reconnected: list[tuple[str, str]] = field(default_factory=list)  # (container, network)
    created_volumes: list[str] = field(default_factory=list)
    # Removed with their data (`down --volumes`): nothing can put that back.
    removed_volumes: list[str] = field(default_factory=list)
    # Stopped before their removal, by id, as they were: started again on a rollback (those
    # removed already are restored from `removed_containers`, running as they were).
    stopped: dict[str, Container] = field(default_factory=dict)

    def summary(self) -> str:
        parts = []
        if self.removed_containers or self.removed_networks:
            gone = [c.name for c in self.removed_containers] + [
                n.name for n in self.removed_networks
            ]
            parts.append("removed " + ", ".join(gone + self.removed_volumes))
        elif self.removed_volumes:
            parts.append("removed " + ", ".join(self.removed_volumes))
        gone_ids = {c.id for c in self.removed_containers}
        halted = [c.name for cid, c in self.stopped.items() if cid not in gone_ids]
        if halted:
            parts.append("stopped " + ", ".join(halted))
        made = [n for n, _ in self.created_networks] + [n for n, _ in self.created_containers]
        made += self.created_volumes
        if made:
            parts.append("created " + ", ".join(made))
        return "; ".join(parts) or "nothing changed yet"


def start_container(
    backend: EngineBackend, config: ContainerConfig, journal: Journal, start: bool = True
) -> str:
    """Creates the container, joins it to its other networks (the engine creates it on the
    first), and starts it."""
    cid = backend.create_container(config)
    # Ours from here on, whatever fails next.
    journal.created_containers.append((config.name, cid))
    if config.network_mode is None:
        for endpoint in config.networks[1:]:
            backend.connect(cid, endpoint)
    if start:
        backend.start(cid)
    return cid


@dataclass(frozen=True, slots=True)
class Waiting:
    """How long a container's `service_healthy` dependencies may take, and the time it is
    measured with (injected: tests wait on a fake clock)."""

    timeout_s: float = 300.0
    poll_s: float = 0.5
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep


def wait_healthy(
    backend: EngineBackend,
    names: tuple[str, ...],
    waiting: Waiting,
    should_stop: Callable[[], bool] = lambda: False,
) -> bool:
    """Returns True once every container of `names` is healthy, False as soon as
    `should_stop` says so (Ctrl-C: the wait can be minutes, the user should not sit through
    it); EngineError when one is unhealthy, not running or missing, or when
    `waiting.timeout_s` passes first."""
    deadline = waiting.clock() + waiting.timeout_s
    pending = list(names)
    while pending:
        if should_stop():
            return False
        name = pending[0]
        c = backend.container(name)
        if c is None:
            raise EngineError(f"waiting for {name} to be healthy: it does not exist")
        if c.health == "healthy":
            pending.pop(0)
            continue
        if c.health == "unhealthy":
            raise EngineError(f"{name} is unhealthy (its dependents wait for service_healthy)")
        if not c.running and c.state != "restarting":
            raise EngineError(f"waiting for {name} to be healthy: it is {c.state}")
        if c.health is None:
            raise EngineError(f"waiting for {name} to be healthy: it has no healthcheck")
        if waiting.clock() >= deadline:
            raise EngineError(
                f"{name} was not healthy after {waiting.timeout_s:g}s (its dependents wait "
                "for service_healthy)"
            )
        waiting.sleep(waiting.poll_s)
    return True


# How long a container's stop waits before SIGKILL when its file says nothing: Compose's
# `stop_grace_period` default and `docker stop`'s.
DEFAULT_GRACE_S = 10
# Stops under way at once: enough that a `down` of a few dozen containers that ignore their
# stop signal waits one grace period, not one per eight of them (the engine's client keeps a
# connection for each: see DockerBackend's pool).
STOP_PARALLEL = 64


def grace_of(c: Container, override_s: int | None = None) -> int:
    """Seconds C's stop waits before SIGKILL: OVERRIDE_S (`down -t`), else its file's
    `stop_grace_period` as stamped in its labels, else the default."""
    if override_s is not None:
        return override_s
    config = _container_from_labels(c)
    if config is None or config.stop_grace_s is None:
        return DEFAULT_GRACE_S
    # The file's value is checked against the same bound; a label edited by hand is not.
    return min(max(config.stop_grace_s, 0), MAX_GRACE_S)


def stop_before_removal(
    backend: EngineBackend, steps: Sequence[Step], journal: Journal, override_s: int | None
) -> None:
    """Stops the running containers STEPS are about to remove, all at once, each with its own
    grace period; recorded in the journal as they were. A container gone meanwhile (removed
    by someone else) is fine: its removal is a no-op. EngineError (the first, naming its
    container) when a stop fails, after every stop has ended."""
    running = []
    for step in steps:
        live = backend.container(step.live_id or step.name)
        if live is not None and live.running and live.id not in journal.stopped:
            running.append(live)
    if not running:
        return

    def stop(live: Container) -> EngineError | bool:
        """True once stopped, False when it was gone, else the engine's error."""
        try:
            backend.stop(live.id, grace_of(live, override_s))
        except EngineNotFound:
            return False
        except EngineError as e:
            return e
        return True

    # Daemon threads, joined by hand: a second Ctrl-C (KeyboardInterrupt) ends the wait at once
    # and the process does not wait for the stops under way (a ThreadPoolExecutor's exit, and
    # then the interpreter's, waited each to its end: one grace period after "abort at once").
    results: list[Exception | bool | None] = [None] * len(running)
    pending = iter(range(len(running)))
    taking = threading.Lock()
    abandoned = False

    def work() -> None:
        while not abandoned:
            with taking:
                i = next(pending, None)
            if i is None:
                return
            try:
                results[i] = stop(running[i])
            except Exception as e:  # not the engine's: raised below, as in one thread
                results[i] = e

    workers = [
        threading.Thread(target=work, name=f"stop-{n}", daemon=True)
        for n in range(min(STOP_PARALLEL, len(running)))
    ]
    try:
        for t in workers:
            t.start()
        for t in workers:
            t.join()
    finally:
        abandoned = True  # on KeyboardInterrupt: no stop begins after it
    bug = next(
        (r for r in results if isinstance(r, Exception) and not isinstance(r, EngineError)), None
    )
    if bug is not None:
        raise bug
    failed = None
    for live, result in zip(running, results, strict=True):
        if result is True:
            journal.stopped[live.id] = live
        elif isinstance(result, EngineError) and failed is None:
            # The run's step names another container: say which one refused.
            failed = type(result)(f"stopping {live.name}: {result}")
    if failed is not None:
        raise failed


def _removals_from(steps: Sequence[Step], i: int) -> Sequence[Step]:
    """The run of container removals starting at I (empty unless step I begins one)."""
    if steps[i].op != "remove_container" or (i and steps[i - 1].op == "remove_container"):
        return ()
    end = i
    while end < len(steps) and steps[end].op == "remove_container":
        end += 1
    return steps[i:end]


def apply_plan(
    backend: EngineBackend,
    plan: Plan,
    progress: Progress | None = None,
    should_stop: Callable[[], bool] = lambda: False,
    waiting: Waiting | None = None,
    stop_timeout_s: int | None = None,
) -> Journal:
    """`stop_timeout_s`: every stop's grace period (`down -t`), whatever the files say."""
    journal = Journal()
    waiting = waiting or Waiting()
    step: Step | None = None
    try:
        for i, step in enumerate(plan.steps):
            if should_stop():
                raise _interrupted(step, journal)
            removals = _removals_from(plan.steps, i)
            if len(removals) > 1:
                if progress:
                    progress(Step("stop_containers", f"{len(removals)} containers"))
                stop_before_removal(backend, removals, journal, stop_timeout_s)
            if progress:
                progress(step)
            log.info("%s", _describe(step))
            if step.wait_healthy and not wait_healthy(
                backend, step.wait_healthy, waiting, should_stop
            ):
                raise _interrupted(step, journal)
            _do(backend, step, journal, stop_timeout_s)
    except EngineError as e:
        assert step is not None
        failed = f"{_describe(step)} failed: {e}"
        problems = rollback(backend, journal)
        if problems:
            raise EngineError(f"{failed}. Rolling back also failed: {'; '.join(problems)}") from e
        raise EngineError(f"{failed} (rolled back: the project is as it was)") from e
    return journal


def _interrupted(step: Step, journal: Journal) -> Interrupted:
    return Interrupted(
        f"stopped before {_describe(step)}: {journal.summary()}. "
        f"`dockmesh up` again finishes the job; `dockmesh down` removes the project"
    )


# What each kind of step is doing, as a progress line or an error names it.
STEP_VERBS = {
    "stop_containers": "stopping",
    "remove_container": "removing container",
    "disconnect": "disconnecting",
    "remove_network": "removing network",
    "create_network": "creating network",
    "reconnect": "reconnecting",
    "create_volume": "creating volume",
    "create_container": "starting container",
    "remove_volume": "removing volume",
}


def _describe(step: Step) -> str:
    what = STEP_VERBS[step.op]
    if step.op in ("disconnect", "reconnect") and step.endpoint is not None:
        preposition = "from" if step.op == "disconnect" else "to"
        return f"{what} {step.name} {preposition} {step.endpoint.network}"
    return f"{what} {step.name}"


def _do(
    backend: EngineBackend, step: Step, journal: Journal, stop_timeout_s: int | None = None
) -> None:
    ref = step.live_id or step.name
    if step.op == "remove_container":
        live = backend.container(ref)
        if live is not None:
            if live.running:
                stop_before_removal(backend, (step,), journal, stop_timeout_s)
            backend.remove_container(live.id)
            # As it was before its stop: a rollback restores it running.
            journal.removed_containers.append(journal.stopped.get(live.id, live))
    elif step.op == "disconnect":
        assert step.endpoint is not None
        live_c = backend.container(ref)
        if live_c is not None and any(
            a.network == step.endpoint.network for a in live_c.attachments
        ):
            backend.disconnect(live_c.id, step.endpoint.network, force=True)
            journal.disconnected.append((live_c.id, step.endpoint))
    elif step.op == "remove_network":
        net = backend.network(ref)
        if net is not None:
            backend.remove_network(net.id)
            journal.removed_networks.append(net)
    elif step.op == "create_network":
        assert step.network is not None
        nid = backend.create_network(step.network)
        journal.created_networks.append((step.name, nid))
    elif step.op == "reconnect":
        assert step.endpoint is not None
        backend.connect(ref, step.endpoint)
        journal.reconnected.append((ref, step.endpoint.network))
    elif step.op == "create_volume":
        assert step.volume is not None
        backend.create_volume(step.volume)
        journal.created_volumes.append(step.name)
    elif step.op == "remove_volume":
        backend.remove_volume(step.name)
        journal.removed_volumes.append(step.name)
    else:
        assert step.container is not None
        start_container(backend, step.container, journal)


def _network_from_labels(n: Network) -> NetworkConfig | None:
    raw = stamped_config(n.labels)
    try:
        return replace(NetworkConfig.from_json(raw), labels=dict(n.labels))
    except ValueError:
        return None


def _container_from_labels(c: Container) -> ContainerConfig | None:
    raw = stamped_config(c.labels)
    try:
        return replace(ContainerConfig.from_json(raw), labels=dict(c.labels))
    except ValueError:
        return None


def rollback(backend: EngineBackend, journal: Journal) -> list[str]:
    """Undoes the journal; returns what could not be undone (empty: all of it was)."""
    problems: list[str] = []

    def attempt(what: str, fn: Callable[..., object], *args: Any) -> None:
        try:
            fn(*args)
        except EngineError as e:
            log.warning("rollback: %s: %s", what, e)
            problems.append(f"{what}: {e}")

    for container, network in reversed(journal.reconnected):
        what = f"disconnect {container} from {network}"
        attempt(what, backend.disconnect, container, network, True)
    for name, cid in reversed(journal.created_containers):
        attempt(f"remove container {name}", backend.remove_container, cid)
    for name in reversed(journal.created_volumes):
        attempt(f"remove volume {name}", backend.remove_volume, name)
    for name, nid in reversed(journal.created_networks):
        attempt(f"remove network {name}", backend.remove_network, nid)
    for net in reversed(journal.removed_networks):
        cfg = _network_from_labels(net)
        if cfg is None:
            problems.append(f"network {net.name} was removed and has no configuration to restore")
        else:
            attempt(f"restore network {net.name}", backend.create_network, cfg)
    for container, endpoint in reversed(journal.disconnected):
        what = f"reconnect {container} to {endpoint.network}"
        attempt(what, backend.connect, container, endpoint)
    restore = Journal()
    for live in reversed(journal.removed_containers):
        ccfg = _container_from_labels(live)
        if ccfg is None:
            problems.append(
                f"container {live.name} was removed and has no configuration to restore"
            )
        else:
            what = f"restore container {live.name}"
            attempt(what, start_container, backend, ccfg, restore, live.running)
    removed = {c.id for c in journal.removed_containers}
    for cid, live in journal.stopped.items():
        if cid not in removed:
            attempt(f"start container {live.name} again", backend.start, cid)
    return problems
