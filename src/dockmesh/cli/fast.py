"""The console script's entry point.

`dockmesh topology --json` with an agent running is answered here, before the command line's
own machinery (typer, rich, the engine client) is imported: with hundreds of containers the
agent answers in milliseconds, and those imports would be most of the command's time.
Anything else — other arguments, no agent, an answer that is not a topology — takes the
normal path, which asks the agent again or reads the engine.
"""

from __future__ import annotations

import json
import sys


def _topology_from_agent() -> str | None:
    from dockmesh.agentclient import agent_topology

    topo = agent_topology()  # checked to be a topology; the agent is asked once per process
    return None if topo is None else json.dumps(topo.to_json(), indent=2) + "\n"


def main() -> None:
    if sys.argv[1:] in (["--version"], ["-V"]):  # as `dockmesh --version` in the full path
        from dockmesh import __version__

        sys.stdout.write(f"dockmesh {__version__}\n")
        return
    if sys.argv[1:] == ["topology", "--json"]:
        text = _topology_from_agent()
        if text is not None:
            sys.stdout.write(text)
            from dockmesh.agentclient import stale_warnings

            for line in stale_warnings():
                sys.stderr.write(line + "\n")
            return
    if sys.argv[1:] == ["stats", "--json"]:
        from dockmesh.cli.fast_stats import main as stats_fast

        if stats_fast():
            return
    from dockmesh.cli.main import main as full

    full()
