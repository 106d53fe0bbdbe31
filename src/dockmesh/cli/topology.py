"""`dockmesh topology`."""

from __future__ import annotations

from typing import Annotated

import typer

from dockmesh.cli.common import (
    EngineOpt,
    JsonOpt,
    UserError,
    connect,
    handle_errors,
    out,
    print_json,
)
from dockmesh.cli.render import topology_dot, topology_tree
from dockmesh.model.topology import build_topology


def register(app: typer.Typer) -> None:
    @app.command("topology")
    @handle_errors
    def topology(
        engine: EngineOpt = None,
        json_out: JsonOpt = False,
        dot: Annotated[bool, typer.Option("--dot", help="Print Graphviz source.")] = False,
    ) -> None:
        """Networks, containers and endpoints of one or more engines."""
        if json_out and dot:
            raise UserError("--json and --dot: choose one")
        clients = connect(engine)
        topo = build_topology([c.snapshot() for c in clients], version=1)
        if json_out:
            print_json(topo.to_json())
        elif dot:
            out.file.write(topology_dot(topo))
        else:
            out.print(topology_tree(topo))
