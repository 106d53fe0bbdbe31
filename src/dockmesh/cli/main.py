"""`dockmesh`: the command line."""

from __future__ import annotations

import typer

from dockmesh.cli import images, project, topology

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


def main() -> None:
    app(prog_name="dockmesh")
