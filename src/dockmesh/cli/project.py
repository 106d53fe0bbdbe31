"""`dockmesh plan`, `up`, `down`: a topology file made real on one engine."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from dockmesh.cli.common import (
    EXIT_CHANGES,
    EngineOpt,
    JsonOpt,
    UserError,
    connect,
    err,
    handle_errors,
    out,
    print_json,
)
from dockmesh.engine.client import EngineClient
from dockmesh.errors import EngineError
from dockmesh.model.labels import LABEL_PROJECT
from dockmesh.model.topology import Topology, build_topology

if TYPE_CHECKING:
    from dockmesh.projectfile.load import LoadedSpec
    from dockmesh.projectfile.plan import Plan, Step

# pydantic, PyYAML and pyroute2 are imported inside the commands that use them, so that
# `dockmesh topology` does not pay for them at start-up.

FileArg = Annotated[str, typer.Argument(help="The topology file (dockmesh.yaml).")]


def _load(path: str) -> LoadedSpec:
    from dockmesh.projectfile.load import load_spec

    if not os.path.isfile(path):
        raise UserError(f"{path}: no such file")
    return load_spec(path)


def _snapshot(client: EngineClient) -> Topology:
    return build_topology([client.snapshot()], version=1)


def _plan_for(path: str, engine: list[str] | None) -> tuple[EngineClient, Plan]:
    from dockmesh.engine.facts import gather_facts
    from dockmesh.projectfile.facts import Facts
    from dockmesh.projectfile.plan import make_plan

    loaded = _load(path)  # malformed YAML stops here; other problems wait for check()
    try:
        client = connect(engine)[0]
        live = _snapshot(client)
    except EngineError:
        if loaded.shape_problems:  # the file is wrong whatever the engine holds: say so
            loaded.check(Facts())
        raise
    images = {s.image for s in loaded.spec.services.values()}
    facts = gather_facts(client, live, images)
    desired = loaded.check(facts)  # every image exists past this point
    image_ids = {name: i for name, i in facts.images.items() if i is not None}
    return client, make_plan(desired, live, image_ids)


def _run(client: EngineClient, plan: Plan, verb: str) -> None:
    from dockmesh.engine.apply import apply_plan

    if plan.empty:
        err.print(f"[green]✓[/] project {plan.project}: nothing to do")
        return
    labels = {
        "remove_container": "removing container",
        "remove_network": "removing network",
        "create_network": "creating network",
        "create_container": "starting container",
    }
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=True,
    ) as progress:
        task = progress.add_task(verb, total=len(plan.steps))
        seen = 0

        def step_done(step: Step) -> None:
            nonlocal seen
            progress.update(task, completed=seen, description=f"{labels[step.op]} {step.name}")
            seen += 1

        apply_plan(client, plan, step_done)
        progress.update(task, completed=len(plan.steps))
    counts: dict[str, int] = {}
    for c in plan.changes:
        key = f"{c.kind}s {c.action}d"
        counts[key] = counts.get(key, 0) + 1
    summary = ", ".join(f"{n} {k}" for k, n in counts.items())
    err.print(f"[green]✓[/] project {plan.project}: {summary}")


def register(app: typer.Typer) -> None:
    @app.command("plan")
    @handle_errors
    def plan_cmd(
        file: FileArg,
        engine: EngineOpt = None,
        json_out: JsonOpt = False,
        exit_code: Annotated[
            bool, typer.Option("--exit-code", help="Exit 3 when there are changes.")
        ] = False,
    ) -> None:
        """What `up` would change, without changing it."""
        from dockmesh.cli.render import plan_table

        _, plan = _plan_for(file, engine)
        if json_out:
            print_json(plan.to_json())
        elif plan.empty:
            out.print(f"[green]No changes.[/] Project {plan.project} matches {file}.")
        else:
            out.print(plan_table(plan))
        if exit_code and not plan.empty:
            raise typer.Exit(EXIT_CHANGES)

    @app.command("up")
    @handle_errors
    def up(file: FileArg, engine: EngineOpt = None, json_out: JsonOpt = False) -> None:
        """Create or replace what the file describes; leave what matches alone."""
        client, plan = _plan_for(file, engine)
        _run(client, plan, "up")
        if json_out:
            print_json(plan.to_json())

    @app.command("down")
    @handle_errors
    def down(
        file: Annotated[
            str | None,
            typer.Argument(
                help="The topology file (default: its project "
                "from --project, or the only one running)."
            ),
        ] = None,
        project: Annotated[str | None, typer.Option("--project", "-p")] = None,
        engine: EngineOpt = None,
        json_out: JsonOpt = False,
    ) -> None:
        """Remove every container and network of the project."""
        from dockmesh.projectfile.plan import teardown_plan

        if file is not None and project is None:
            project = _load(file).project
        client = connect(engine)[0]
        live = _snapshot(client)
        if project is None:
            labels = [n.labels for n in live.networks] + [c.labels for c in live.containers]
            running = sorted({lb[LABEL_PROJECT] for lb in labels if LABEL_PROJECT in lb})
            if len(running) != 1:
                found = ", ".join(running) or "none"
                raise UserError(
                    f"name the project (a FILE or --project); projects on the engine: {found}"
                )
            project = running[0]
        plan = teardown_plan(project, live)
        _run(client, plan, "down")
        if json_out:
            print_json(plan.to_json())
