"""`dockmesh`: the command line."""

from __future__ import annotations

import logging
import os
import sys
from typing import Annotated, Any

import typer

from dockmesh.cli import agent, images, project, projectview, topology
from dockmesh.cli import bench as bench_cli
from dockmesh.cli import ca as ca_cli
from dockmesh.cli import convert as convert_cli
from dockmesh.cli import doctor as doctor_cli
from dockmesh.cli import lab as lab_cli
from dockmesh.cli import observe as observe_cli
from dockmesh.cli import policy as policy_cli
from dockmesh.cli import proxy as proxy_cli
from dockmesh.cli import reach as reach_cli

app = typer.Typer(
    name="dockmesh",
    help="Health-aware discovery, balancing, policy and network tooling for Docker hosts.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    # `--install-completion` / `--show-completion` (bash, zsh, fish, PowerShell): the shell
    # asks `dockmesh` itself, through the same entry point.
    add_completion=True,
    context_settings={"help_option_names": ["-h", "--help"]},
    # Help texts are plain text: `PORT[/tcp|udp]` is not rich markup.
    rich_markup_mode=None,
)
app.add_typer(images.app, name="images")
topology.register(app)
project.register(app)
projectview.register(app)
convert_cli.register(app)
agent.register(app)
policy_cli.register(app)
reach_cli.register(app)
proxy_cli.register(app)
observe_cli.register(app)
app.add_typer(bench_cli.app, name="bench")
app.add_typer(ca_cli.app, name="ca")
app.add_typer(lab_cli.app, name="lab")
doctor_cli.register(app)


def _version(value: bool) -> None:
    if value:
        from dockmesh import __version__

        sys.stdout.write(f"dockmesh {__version__}\n")
        raise typer.Exit(0)


@app.callback()
def options(
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            "-V",
            callback=_version,
            is_eager=True,
            help="Print dockmesh's version and exit.",
        ),
    ] = False,
    verbose: Annotated[
        int,
        typer.Option(
            "--verbose", "-v", count=True, help="Log what happens (-v info, -vv debug) to stderr."
        ),
    ] = 0,
) -> None:
    """Health-aware discovery, balancing, policy and network tooling for Docker hosts."""
    level = {0: logging.WARNING, 1: logging.INFO}.get(verbose, logging.DEBUG)
    given = os.environ.get("DOCKMESH_LOG", "")
    env = given.upper()
    if env in ("DEBUG", "INFO", "WARNING", "ERROR"):
        level = min(level, getattr(logging, env))
    elif env:
        # A usage error (one line, exit 2), not a value quietly ignored.
        raise typer.BadParameter(f"$DOCKMESH_LOG {given!r}: expected debug, info, warning or error")
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True
    )
    # Other libraries' chatter only at -vv.
    logging.getLogger("urllib3").setLevel(logging.DEBUG if verbose >= 2 else logging.WARNING)


def _word_metavars(command: Any) -> None:
    """An option's value shown as a word (`--engine ENGINE`, `--count COUNT`), not as its
    Python type (`<str>`, `<int>`): what docker's and compose's help do. Choices stay listed."""
    from typer.core import TyperOption

    for param in getattr(command, "params", ()):
        if not isinstance(param, TyperOption) or param.metavar is not None:
            continue
        if param.is_flag or param.count:
            continue
        choices = getattr(param.type, "choices", None)
        if choices:
            param.metavar = "|".join(str(c) for c in choices)
        else:
            param.metavar = max(param.opts, key=len).lstrip("-").upper()
    for sub in getattr(command, "commands", {}).values():
        _word_metavars(sub)


def main() -> None:
    """Runs the command line; a usage error (a bad flag, a value out of range, a missing
    argument) is one line on stderr and exit 2, as every other bad input."""
    from typer._click import exceptions as click_errors  # typer carries its own click

    try:
        command = typer.main.get_command(app)
        _word_metavars(command)
        rv = command.main(prog_name="dockmesh", standalone_mode=False)
    except click_errors.NoArgsIsHelpError as e:  # `dockmesh` alone: the help
        if e.ctx is not None:
            sys.stdout.write(e.ctx.get_help() + "\n")
        sys.exit(0)
    except click_errors.UsageError as e:
        where = e.ctx.command_path if e.ctx is not None else "dockmesh"
        message = " ".join(e.format_message().split())
        sys.stderr.write(f"{where}: {message} (see {where} --help)\n")
        sys.exit(2)
    except typer.Abort:
        sys.stderr.write("dockmesh: interrupted\n")
        sys.exit(130)
    except click_errors.ClickException as e:
        sys.stderr.write(f"dockmesh: {' '.join(e.format_message().split())}\n")
        sys.exit(e.exit_code)
    sys.exit(rv if isinstance(rv, int) else 0)
