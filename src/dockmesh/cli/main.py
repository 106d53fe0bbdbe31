"""`dockmesh`: the command line."""

from __future__ import annotations

import logging
import os
from typing import Annotated

import typer

from dockmesh.cli import agent, images, project, topology
from dockmesh.cli import bench as bench_cli
from dockmesh.cli import doctor as doctor_cli
from dockmesh.cli import observe as observe_cli
from dockmesh.cli import policy as policy_cli
from dockmesh.cli import proxy as proxy_cli
from dockmesh.cli import reach as reach_cli

app = typer.Typer(
    name="dockmesh",
    help="Health-aware discovery, balancing, policy and network tooling for Docker hosts.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(images.app, name="images")
topology.register(app)
project.register(app)
agent.register(app)
policy_cli.register(app)
reach_cli.register(app)
proxy_cli.register(app)
observe_cli.register(app)
app.add_typer(bench_cli.app, name="bench")
doctor_cli.register(app)


@app.callback()
def options(
    verbose: Annotated[
        int,
        typer.Option(
            "--verbose", "-v", count=True, help="Log what happens (-v info, -vv debug) to stderr."
        ),
    ] = 0,
) -> None:
    """Health-aware discovery, balancing, policy and network tooling for Docker hosts."""
    level = {0: logging.WARNING, 1: logging.INFO}.get(verbose, logging.DEBUG)
    env = os.environ.get("DOCKMESH_LOG", "").upper()
    if env in ("DEBUG", "INFO", "WARNING", "ERROR"):
        level = min(level, getattr(logging, env))
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True
    )
    # Other libraries' chatter only at -vv.
    logging.getLogger("urllib3").setLevel(logging.DEBUG if verbose >= 2 else logging.WARNING)


def main() -> None:
    app(prog_name="dockmesh")
