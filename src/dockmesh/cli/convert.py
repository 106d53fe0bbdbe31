"""`dockmesh convert`: a Compose file → the equivalent dockmesh.yaml."""

from __future__ import annotations

import os
from typing import Annotated

import typer

from dockmesh.cli.common import err, handle_errors


def register(app: typer.Typer) -> None:
    @app.command("convert")
    @handle_errors
    def convert(
        file: Annotated[str, typer.Argument(help="The Compose file (docker-compose.yml).")],
        output: Annotated[
            str | None,
            typer.Option("--output", "-o", help="Write the dockmesh.yaml here (default: stdout)."),
        ] = None,
        force: Annotated[
            bool, typer.Option("--force", help="Overwrite the --output file if it exists.")
        ] = False,
    ) -> None:
        """Write the dockmesh.yaml equivalent of a Compose file. What has no equivalent is
        left out and named on stderr, each at its line."""
        import yaml

        from dockmesh.errors import SpecError, UsageError
        from dockmesh.projectfile.convert import convert_compose
        from dockmesh.projectfile.load import format_problems
        from dockmesh.projectfile.yamlpos import MAX_FILE_BYTES, load_located_bytes

        if not os.path.isfile(file):
            raise UsageError(f"{file}: no such file")
        if output is not None and os.path.exists(output) and not force:
            raise UsageError(f"{output} exists: give --force to overwrite it")
        with open(file, "rb") as f:
            located = load_located_bytes(f.read(MAX_FILE_BYTES + 1))
        if located.data is None or located.problems:
            raise SpecError(format_problems(file, located.problems, located.lines))
        data, notes = convert_compose(located.data)
        for line in format_problems(file, notes, located.lines):
            err.print(line, markup=False, highlight=False, soft_wrap=True)
        text = yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=100)
        if output is None:
            typer.echo(text, nl=False)
        else:
            with open(output, "w", encoding="utf-8") as f:
                f.write(text)
