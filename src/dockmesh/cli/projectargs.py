"""What the project commands share, as Compose has it: `-f FILE` (default ./dockmesh.yaml) and
`-p NAME` (the project's name, which wins over the file's), and the decisions `up` takes before
it touches anything. Pure but for the one `os.path.isfile` that finds the default file."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Annotated

import typer

from dockmesh.errors import UsageError

if TYPE_CHECKING:
    from dockmesh.projectfile.plan import Change, Plan

DEFAULT_FILE = "dockmesh.yaml"
# The topology file's own rule for `project:` (dockmesh.projectfile.validate.PROJECT), here
# without the file's machinery: `ps` and `down -p` do not read a file.
PROJECT_NAME = re.compile(r"[a-z0-9][a-z0-9_-]*")

FileOpt = Annotated[
    str | None,
    typer.Option(
        "--file",
        "-f",
        metavar="FILE",
        help=f"The topology file (default: ./{DEFAULT_FILE}).",
        show_default=False,
    ),
]
# `logs -f` is --follow, as in `docker compose logs -f`: there the file is --file only.
LongFileOpt = Annotated[
    str | None,
    typer.Option(
        "--file",
        metavar="FILE",
        help=f"The topology file (default: ./{DEFAULT_FILE}).",
        show_default=False,
    ),
]
ProjectOpt = Annotated[
    str | None,
    typer.Option(
        "--project-name",
        "-p",
        "--project",
        metavar="NAME",
        help="The project's name (default: the file's project:, else its folder's name).",
        show_default=False,
    ),
]
FileArg = Annotated[
    str | None,
    typer.Argument(
        metavar="[FILE]",
        help="The topology file, as --file (kept for the scripts that name it so).",
        show_default=False,
    ),
]


def project_name(value: str) -> str:
    if not PROJECT_NAME.fullmatch(value):
        raise UsageError(
            f"-p {value!r}: a project name is lowercase letters, digits, '-' and '_', "
            "starting with a letter or digit"
        )
    return value


def pick_file(arg: str | None, opt: str | None, cwd: str = ".", or_project: bool = False) -> str:
    """FILE or --file (the same, if both), else ./dockmesh.yaml, which must then be there."""
    if arg is not None and opt is not None and arg != opt:
        raise UsageError(f"FILE {arg!r} and --file {opt!r}: give one of them")
    given = arg if arg is not None else opt
    if given is not None:
        return given
    default = os.path.join(cwd, DEFAULT_FILE)
    if not os.path.isfile(default):
        alt = " or -p NAME" if or_project else ""
        raise UsageError(f"no {DEFAULT_FILE} in this folder: give -f FILE{alt}")
    return DEFAULT_FILE if cwd == "." else default


def orphans_warning(plan: Plan) -> str | None:
    if not plan.orphans:
        return None
    return (
        f"containers of services no longer in the file, left running: {', '.join(plan.orphans)} "
        "(`up --remove-orphans` removes them)"
    )


def emptying(plan: Plan, describes_nothing: bool) -> str | None:
    """Why `up` refuses without --yes: a file with no service and no network (only
    `project:`, say) would remove all that is left of the project. None when it may go on."""
    if not describes_nothing or plan.orphans:
        return None
    gone = [c for c in plan.changes if c.action == "remove" and c.kind != "policy"]
    if not gone:
        return None
    counts = ", ".join(x for kind in ("container", "network") if (x := _count(gone, kind)))
    return (
        f"the file describes no service and no network: up would remove all of project "
        f"{plan.project!r} ({counts}); give --yes to do so, or run `dockmesh down`"
    )


def _count(changes: Sequence[Change], kind: str) -> str:
    n = sum(1 for c in changes if c.kind == kind)
    return f"{n} {kind}{'' if n == 1 else 's'}" if n else ""
