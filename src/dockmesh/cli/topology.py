"""`dockmesh topology`."""

from __future__ import annotations

import logging
from typing import Annotated

import typer

from dockmesh.cli.common import (
    EngineOpt,
    JsonOpt,
    UserError,
    err,
    handle_errors,
    load_topology,
    out,
    print_json,
)
from dockmesh.cli.render import topology_dot, topology_tree

log = logging.getLogger(__name__)


def stale_warning() -> None:
    from dockmesh.agentclient import stale_warnings

    for line in stale_warnings():
        err.print(line, markup=False, highlight=False)


def register(app: typer.Typer) -> None:
    @app.command("topology")
    @handle_errors
    def topology(
        engine: EngineOpt = None,
        json_out: JsonOpt = False,
        dot: Annotated[bool, typer.Option("--dot", help="Print Graphviz source.")] = False,
        flows: Annotated[
            bool, typer.Option("--flows", help="With --dot: conntrack flows as edges.")
        ] = False,
    ) -> None:
        """Networks, containers and endpoints of one or more engines: from a running agent
        ($DOCKMESH_AGENT, default http://127.0.0.1:8500) when one answers, else (and always
        with --engine) from the engines themselves."""
        if json_out and dot:
            raise UserError("--json and --dot: choose one")
        if flows and not dot:
            raise UserError("--flows draws on the graph: use it with --dot")
        topo = load_topology(engine)
        if not engine:
            stale_warning()
        if json_out:
            print_json(topo.to_json())
        elif dot:
            edges = []
            if flows:  # who talks to whom, from the kernel's conntrack table
                from dockmesh.observe.conntrack import dump
                from dockmesh.observe.flows import aggregate

                edges = aggregate(dump(), topo)
            out.file.write(topology_dot(topo, edges))
        else:
            out.print(topology_tree(topo))
