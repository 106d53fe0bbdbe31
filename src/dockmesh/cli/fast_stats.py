"""`dockmesh stats --json` answered before typer and rich load, when an agent serves the
topology: the command then costs the interpreter's start, one HTTP request and the reads of
the counters themselves. Standard library and dockmesh's pure model only."""

from __future__ import annotations

import json
import sys


def stats_json_from_agent() -> str | None:
    """The document, or None when no agent answers with a topology (the caller then takes
    the normal path, which reads the engine)."""
    from dockmesh.agentclient import agent_topology

    topo = agent_topology()
    if topo is None:
        return None
    from dockmesh.observe.counters import stats_json
    from dockmesh.observe.sample import sample, targets

    s = sample(targets(topo))
    return json.dumps(stats_json(s.containers, s.elapsed_s), indent=2) + "\n"


def main() -> bool:
    text = stats_json_from_agent()
    if text is None:
        return False
    sys.stdout.write(text)
    return True
