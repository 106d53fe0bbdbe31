"""`dockmesh plan`, `up`, `down`: a topology file made real on one engine."""

from __future__ import annotations

import contextlib
import dataclasses
import signal
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from dockmesh.cli.common import (
    EXIT_CHANGES,
    JsonOpt,
    OneEngineOpt,
    UserError,
    connect_one,
    err,
    handle_errors,
    out,
    print_json,
)
from dockmesh.cli.projectargs import (
    PROJECT_NAME,
    FileArg,
    FileOpt,
    ProjectOpt,
    emptying,
    orphans_warning,
    pick_file,
    project_name,
)

if TYPE_CHECKING:
    from dockmesh.ops.project import Outcome
    from dockmesh.projectfile.load import LoadedSpec
    from dockmesh.projectfile.plan import Change, Plan, Step

# pydantic, PyYAML and pyroute2 come in with dockmesh.ops, imported inside the commands that
# use them, so that `dockmesh topology` and `--help` do not pay for them at start-up.

PolicyModeOpt = Annotated[
    str,
    typer.Option(
        "--policy-mode",
        help="The file's policy: section, applied after the containers: enforce (drop) or "
        "audit (count and log would-be drops).",
    ),
]
PolicyTableOpt = Annotated[
    str | None,
    typer.Option(
        "--table",
        help="The nftables table (inet family) of the file's policy: $DOCKMESH_POLICY_TABLE, "
        "else dockmesh.",
    ),
]


@contextlib.contextmanager
def _stop_on_sigint() -> Iterator[Callable[[], bool]]:
    """The first Ctrl-C asks the run to stop after the step under way (a half-made
    container is worse than a finished one); a second one interrupts at once."""
    asked = False

    def handler(signum: int, frame: Any) -> None:
        nonlocal asked
        if asked:
            raise KeyboardInterrupt
        asked = True
        err.print("[yellow]stopping after the current step (Ctrl-C again to abort)[/]")

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield lambda: asked
    finally:
        signal.signal(signal.SIGINT, previous)


@contextlib.contextmanager
def _progress(verb: str) -> Iterator[Callable[[Step], None]]:
    """A progress bar on a terminal, started by the first step (a run with nothing to do, or
    one that fails before its first step, prints no bar); nothing when stderr is not one."""
    from dockmesh.ops.apply import STEP_VERBS

    progress: Progress | None = None
    seen = 0

    def step_started(step: Step) -> None:
        nonlocal progress, seen
        if not err.is_terminal:
            return
        if progress is None:
            progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=err,
                transient=True,
            )
            progress.start()
            progress.add_task(verb, total=None)
        task = progress.task_ids[0]
        description = escape(f"{STEP_VERBS[step.op]} {step.name}")
        progress.update(task, completed=seen, description=description)
        seen += 1

    try:
        yield step_started
    finally:
        if progress is not None:
            progress.stop()


def _with_policy(plan: Plan, change: Change | None) -> Plan:
    """The plan with the line of the project's policy (applied after the containers)."""
    if change is None:
        return plan
    return dataclasses.replace(plan, changes=(*plan.changes, change))


def _warn(plan: Plan) -> None:
    for w in plan.warnings:
        err.print(f"[yellow]warning:[/] {escape(w)}", soft_wrap=True)


def _summary(plan: Plan) -> None:
    _warn(plan)
    if plan.empty:
        err.print(f"[green]✓[/] project {escape(plan.project)}: nothing to do")
        return
    counts: dict[tuple[str, str], int] = {}
    for c in plan.changes:
        counts[(c.kind, c.action)] = counts.get((c.kind, c.action), 0) + 1
    summary = ", ".join(
        f"{n} {kind}{'' if n == 1 else 's'} {action}d" for (kind, action), n in counts.items()
    )
    err.print(f"[green]✓[/] project {escape(plan.project)}: {summary}")


def _say(message: str) -> None:
    err.print(message, markup=False, highlight=False)


TimeoutOpt = Annotated[
    int | None,
    typer.Option(
        "--timeout",
        "-t",
        min=0,
        max=86400,  # model.durations.MAX_GRACE_S (not imported at start-up)
        metavar="SECONDS",
        help="How long each container it removes may take to stop before it is killed "
        "(else its file's stop_grace_period, else 10).",
    ),
]
OrphansOpt = Annotated[
    bool,
    typer.Option(
        "--remove-orphans",
        help="Remove the containers of services no longer in the file (else they stay, named "
        "in a warning).",
    ),
]


def loaded_file(file_arg: str | None, file: str | None, project: str | None) -> LoadedSpec:
    """The file, named for `project` when -p is given (as Compose: -p wins over the file)."""
    from dockmesh.ops.project import load

    loaded = load(pick_file(file_arg, file))  # a file wrong without the engine's help stops here
    if project is None:
        return loaded
    return dataclasses.replace(loaded, project=project_name(project))


def _orphans(plan: Plan) -> None:
    if (w := orphans_warning(plan)) is not None:
        err.print(f"[yellow]warning:[/] {escape(w)}", soft_wrap=True)


def register(app: typer.Typer) -> None:
    @app.command("plan")
    @handle_errors
    def plan_cmd(
        file_arg: FileArg = None,
        file: FileOpt = None,
        project: ProjectOpt = None,
        engine: OneEngineOpt = None,
        json_out: JsonOpt = False,
        exit_code: Annotated[
            bool, typer.Option("--exit-code", help="Exit 3 when there are changes.")
        ] = False,
        remove_orphans: OrphansOpt = False,
        policy_mode: PolicyModeOpt = "enforce",
        table: PolicyTableOpt = None,
    ) -> None:
        """What `up` would change, without changing it."""
        from dockmesh.cli.policy import project_policy_change, project_table
        from dockmesh.cli.render import plan_table
        from dockmesh.ops.project import connect_for, plan_loaded, snapshot

        loaded = loaded_file(file_arg, file, project)
        name = project_table(table)
        backend = connect_for(loaded, lambda: connect_one(engine))
        plan = plan_loaded(loaded, backend, remove_orphans)
        change = project_policy_change(loaded, policy_mode, name, snapshot(backend))
        plan = _with_policy(plan, change)
        if not json_out:
            _warn(plan)
            _orphans(plan)
        if json_out:
            print_json(plan.to_json())
        elif plan.empty:
            out.print(
                f"[green]No changes.[/] Project {escape(plan.project)} matches "
                f"{escape(loaded.filename)}."
            )
        else:
            out.print(plan_table(plan))
        if exit_code and not plan.empty:
            raise typer.Exit(EXIT_CHANGES)

    @app.command("up")
    @handle_errors
    def up(
        file_arg: FileArg = None,
        file: FileOpt = None,
        project: ProjectOpt = None,
        engine: OneEngineOpt = None,
        json_out: JsonOpt = False,
        remove_orphans: OrphansOpt = False,
        yes: Annotated[
            bool,
            typer.Option(
                "--yes",
                "-y",
                help="Go on when the file describes nothing and up would remove all of the "
                "project.",
            ),
        ] = False,
        policy_mode: PolicyModeOpt = "enforce",
        table: PolicyTableOpt = None,
        timeout: TimeoutOpt = None,
    ) -> None:
        """Create or replace what the file describes; leave what matches alone. The file's
        policy: section is applied once its containers exist. A container it replaces or
        removes is stopped first (its stop_signal, then SIGKILL after its grace period)."""
        from dockmesh.cli.policy import (
            converge_project_policy,
            project_policy_check,
            project_table,
        )
        from dockmesh.ops.project import connect_for, snapshot, up

        loaded = loaded_file(file_arg, file, project)
        name = project_table(table)
        project_policy_check(
            loaded, policy_mode, name
        )  # refused now, not after the containers exist
        backend = connect_for(loaded, lambda: connect_one(engine))
        describes_nothing = not loaded.spec.services and not loaded.spec.networks

        def approve(plan: Plan) -> None:
            why = None if yes else emptying(plan, describes_nothing)
            if why is not None:
                raise UserError(why)

        outcome: Outcome
        with _stop_on_sigint() as should_stop, _progress("up") as progress:
            outcome = up(
                loaded,
                backend,
                progress,
                should_stop,
                _say,
                remove_orphans,
                approve=approve,
                stop_timeout_s=timeout,
            )
        change = converge_project_policy(loaded, policy_mode, name, snapshot(backend))
        plan = _with_policy(outcome.plan, change)
        _summary(plan)
        _orphans(plan)
        if json_out:
            print_json(plan.to_json())

    @app.command("down")
    @handle_errors
    def down(
        file_arg: FileArg = None,
        file: FileOpt = None,
        project: ProjectOpt = None,
        engine: OneEngineOpt = None,
        json_out: JsonOpt = False,
        table: PolicyTableOpt = None,
        volumes: Annotated[
            bool,
            typer.Option(
                "--volumes", "-v", help="Remove the project's named volumes too, with their data."
            ),
        ] = False,
        timeout: TimeoutOpt = None,
    ) -> None:
        """Remove every container and network of the project, and the policy its `up`
        applied. A project that is not there (any more) is fine: there is nothing to do. Named
        volumes are kept unless --volumes is given. Containers are stopped first, together:
        their stop_signal, then SIGKILL after their grace period (--timeout, else the file's
        stop_grace_period, else 10 s)."""
        from dockmesh.cli.policy import project_table, remove_project_policy
        from dockmesh.ops.project import down

        name = resolve_name(file_arg, file, project)
        policy_table = project_table(table)
        backend = connect_one(engine)
        with _stop_on_sigint() as should_stop, _progress("down") as progress:
            outcome = down(
                name,
                backend,
                progress,
                should_stop,
                _say,
                must_exist=False,
                volumes=volumes,
                stop_timeout_s=timeout,
            )
        plan = _with_policy(outcome.plan, remove_project_policy(name, policy_table))
        if plan.empty:
            err.print(
                f"project {name}: nothing to remove (none of its containers or networks is "
                "on the engine)",
                markup=False,
                highlight=False,
            )
        else:
            _summary(plan)
        if json_out:
            print_json(plan.to_json())


def resolve_name(file_arg: str | None, file: str | None, project: str | None) -> str:
    """The project of a command that needs only its name (down, ps, logs): -p NAME, else the
    file's (FILE, --file, else ./dockmesh.yaml)."""
    if project is not None:
        if file_arg is not None and file is not None and file_arg != file:
            raise UserError(f"FILE {file_arg!r} and --file {file!r}: give one of them")
        return project_name(project)
    from dockmesh.errors import SpecError
    from dockmesh.ops.project import load
    from dockmesh.projectfile.load import format_problems
    from dockmesh.projectfile.problems import Problem

    loaded = load(pick_file(file_arg, file, or_project=True))
    if not PROJECT_NAME.fullmatch(loaded.project):
        # As `up` would say: a name no project can have matched nothing, and `down` said
        # "nothing to remove" (exit 0) for a file `up` refuses.
        why = Problem(
            ("project",), f"{loaded.project!r}: lowercase letters, digits, '-' and '_' only"
        )
        raise SpecError(format_problems(loaded.filename, [why], loaded.lines))
    return loaded.project
