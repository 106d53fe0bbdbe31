"""`dockmesh images build`."""

from __future__ import annotations

import os
import time
from typing import Annotated, Any

import typer
from rich.progress import Progress, SpinnerColumn, TaskID, TextColumn, TimeElapsedColumn

from dockmesh.cli.common import (
    EXIT_BAD_INPUT,
    EXIT_FAILED,
    JsonOpt,
    OneEngineOpt,
    UserError,
    connect_one,
    err,
    handle_errors,
    print_json,
)
from dockmesh.errors import BuildError, EngineError
from dockmesh.images.build import BUILDERS, BuildResult, repo_prefix

app = typer.Typer(help="Offline images (no registry needed).", no_args_is_help=True)


@app.command("build")
@handle_errors
def build(
    only: Annotated[
        list[str] | None, typer.Argument(help="toolbox, python (default: both)")
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Rebuild even if inputs are unchanged.")
    ] = False,
    engine: OneEngineOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Build dockmesh/toolbox and dockmesh/python; skip those whose inputs did not change.

    $DOCKMESH_IMAGE_REPO_PREFIX builds them as <prefix>/toolbox and <prefix>/python."""
    results: list[BuildResult] = []
    try:
        _build(only, force, engine, json_out, results)
    except (UserError, BuildError, EngineError, OSError) as e:
        if json_out:
            # With --json, stdout holds one document whatever happens: what was built
            # before the failure, and the failure (its one line on stderr too).
            code = EXIT_BAD_INPUT if isinstance(e, UserError) else EXIT_FAILED
            doc = _doc(results)
            doc["error"] = {"message": str(e) or type(e).__name__, "exit_code": code}
            print_json(doc)
        raise
    if json_out:
        print_json(_doc(results))


def _doc(results: list[BuildResult]) -> dict[str, Any]:
    return {
        "images": [
            {
                "image": r.image,
                "built": r.built,
                "inputs": r.inputs,
                "seconds": round(r.seconds, 2),
            }
            for r in results
        ]
    }


def _build(
    only: list[str] | None,
    force: bool,
    engine: list[str] | None,
    json_out: bool,
    results: list[BuildResult],
) -> None:
    names = only or list(BUILDERS)
    unknown = [n for n in names if n not in BUILDERS]
    if unknown:
        raise UserError(f"unknown image {unknown[0]!r} (known: {', '.join(BUILDERS)})")
    work_dir = os.environ.get("DOCKMESH_BUILD_DIR") or None
    if work_dir is not None and not os.path.isdir(work_dir):
        # Checked before anything is built: it is read only once a build needs room.
        raise UserError(f"$DOCKMESH_BUILD_DIR {work_dir!r}: not a directory")
    repo_prefix()  # a bad $DOCKMESH_IMAGE_REPO_PREFIX: one line before any progress is shown
    client = connect_one(engine)
    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
        console=err,
        transient=True,
    ) as progress:
        for name in names:
            task = progress.add_task(f"{name}: checking inputs")
            started = time.monotonic()

            def say(msg: str, task: TaskID = task, name: str = name) -> None:
                progress.update(task, description=f"{name}: {msg}")

            r = BUILDERS[name](client, say, force, work_dir)
            results.append(BuildResult(r.image, r.built, r.inputs, time.monotonic() - started))
            progress.remove_task(task)
            if not json_out:
                verb = "built" if r.built else "up to date"
                err.print(
                    f"[green]✓[/] {r.image} {verb} [dim]({results[-1].seconds:.1f} s, "
                    f"inputs {r.inputs[:12]})[/]"
                )
