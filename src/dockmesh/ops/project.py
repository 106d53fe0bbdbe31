"""The use cases of a topology file, shared by the command line and the agent:
load → gather the engine's context → validate → plan → apply, and teardown.

Nothing is touched before the whole file has been validated against the engine and the host.
`up` and `down` hold the project's lock while they read the engine, plan and apply, so two
concurrent runs do one after the other and the second plans against what the first left.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, replace

from dockmesh.engine.backend import EngineBackend
from dockmesh.errors import EngineError, UsageError
from dockmesh.model.labels import LABEL_PROJECT
from dockmesh.model.topology import Topology, build_topology
from dockmesh.ops.apply import Journal, Progress, apply_plan
from dockmesh.ops.context import gather_context
from dockmesh.ops.lock import project_lock
from dockmesh.projectfile.context import EngineContext
from dockmesh.projectfile.load import LoadedSpec, load_spec
from dockmesh.projectfile.plan import Plan, make_plan, teardown_plan

Say = Callable[[str], None]


def load(path: str) -> LoadedSpec:
    """Reads a topology file; SpecError (exit 2) when it is wrong in a way that needs no
    engine to see, UsageError when there is no such file."""
    if not os.path.exists(path):
        raise UsageError(f"{path}: no such file")
    if not os.path.isfile(path):
        raise UsageError(f"{path}: not a file")
    try:
        return load_spec(path)
    except OSError as e:
        raise UsageError(f"{path}: cannot be read: {e.strerror or e}") from None


def connect_for(loaded: LoadedSpec, connect: Callable[[], EngineBackend]) -> EngineBackend:
    """The engine to plan against. When it cannot be reached and the file is wrong whatever
    the engine holds, the file's problems are what the user hears (exit 2), not the engine."""
    try:
        return connect()
    except EngineError:
        if loaded.shape_problems:
            loaded.check(EngineContext())
        raise


def snapshot(backend: EngineBackend) -> Topology:
    return build_topology([backend.snapshot()], version=1)


def plan_loaded(loaded: LoadedSpec, backend: EngineBackend, remove_orphans: bool = True) -> Plan:
    """Validates the file against the engine and host as they are now, then plans."""
    try:
        live = snapshot(backend)
    except EngineError:
        if loaded.shape_problems:  # the file is wrong whatever the engine holds: say so
            loaded.check(EngineContext())
        raise
    images = {s.image for s in loaded.spec.services.values()}
    context = gather_context(backend, live, images)
    desired = loaded.check(context)  # every image exists past this point
    image_ids = {name: i for name, i in context.images.items() if i is not None}
    services = None if remove_orphans else set(loaded.spec.services)
    volumes = backend.volumes() if desired.volumes else {}
    plan = make_plan(
        desired,
        live,
        image_ids,
        engine=backend.ref.name,
        keep_orphans_of=services,
        volumes=volumes,
    )
    return replace(plan, warnings=(*loaded.warnings, *plan.warnings))


def plan_file(path: str, backend: EngineBackend) -> Plan:
    return plan_loaded(load(path), backend)


@dataclass(frozen=True, slots=True)
class Outcome:
    plan: Plan
    journal: Journal


def up(
    loaded: LoadedSpec,
    backend: EngineBackend,
    progress: Progress | None = None,
    should_stop: Callable[[], bool] = lambda: False,
    say: Say = lambda _msg: None,
    remove_orphans: bool = True,
    approve: Callable[[Plan], None] = lambda _plan: None,
    stop_timeout_s: int | None = None,
) -> Outcome:
    """`approve` sees the plan before anything is touched, and may refuse it by raising.
    `stop_timeout_s`: the grace period of every container it replaces or removes (`-t`)."""
    with project_lock(backend.ref.url, loaded.project, say):
        plan = plan_loaded(loaded, backend, remove_orphans)
        approve(plan)
        journal = apply_plan(backend, plan, progress, should_stop, stop_timeout_s=stop_timeout_s)
    return Outcome(plan, journal)


def projects_on(live: Topology) -> list[str]:
    labels = [n.labels for n in live.networks] + [c.labels for c in live.containers]
    return sorted({lb[LABEL_PROJECT] for lb in labels if LABEL_PROJECT in lb})


def down(
    project: str,
    backend: EngineBackend,
    progress: Progress | None = None,
    should_stop: Callable[[], bool] = lambda: False,
    say: Say = lambda _msg: None,
    must_exist: bool = True,
    volumes: bool = False,
    stop_timeout_s: int | None = None,
) -> Outcome:
    """Removes the project. A project named on its own (`--project`) must exist (a name that
    does not is bad input); one named by its file may be gone already (`down` twice is
    fine). `volumes`: its named volumes too, data and all."""
    with project_lock(backend.ref.url, project, say):
        live = snapshot(backend)
        # Named volumes hold data: kept unless asked for (`down --volumes`), as in Compose.
        owned = backend.volumes(f"{LABEL_PROJECT}={project}") if volumes else None
        if must_exist and project not in projects_on(live) and not owned:
            found = ", ".join(projects_on(live)) or "none"
            raise UsageError(f"project {project!r} is not on the engine (projects: {found})")
        plan = teardown_plan(project, live, engine=backend.ref.name, volumes=owned)
        journal = apply_plan(backend, plan, progress, should_stop, stop_timeout_s=stop_timeout_s)
    return Outcome(plan, journal)
