"""Asking a running agent, for every command that reads the topology (`topology`, `why`,
`matrix`, `doctor`, `stats`, `bench`, `report`, `policy`: through `cli.common.load_topology`)
and for `proxy --agent`'s default: the agent at `agent_url()`, `$DOCKMESH_AGENT` else
`DEFAULT_AGENT` (the address `dockmesh agent` listens on by default).

Standard library only, so that the command line's fast paths stay light. The agent is a
peer, not an authority: an agent that does not answer, answers slowly, or answers with
something that is not a topology is not an error — it is logged and the caller reads the
engines instead. Every exchange has one deadline for the whole of it (a server that sends a
byte every few seconds cannot hold the command), and a process asks the agent once per path.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import threading
from typing import Any
from urllib.parse import urlsplit

from dockmesh.model.topology import Topology, topology_from_json

log = logging.getLogger(__name__)

DEFAULT_AGENT = "http://127.0.0.1:8500"
TOPOLOGY_PATH = "/v1/dockmesh/topology"
ENGINES_PATH = "/v1/dockmesh/engines"
# Enough for 10 000 containers; a bigger answer is not the agent's.
MAX_BODY = 64 * 1024 * 1024
CONNECT_TIMEOUT_S = 0.5
DEADLINE_S = 5.0

_answers: dict[str, bytes | None] = {}
_lock = threading.Lock()


def agent_url() -> str:
    """The one place the agent's URL is decided: `$DOCKMESH_AGENT`, else `DEFAULT_AGENT`."""
    return os.environ.get("DOCKMESH_AGENT") or DEFAULT_AGENT


def _get(url: str, path: str, out: list[bytes | None]) -> None:
    try:
        parts = urlsplit(url)
        host, port = parts.hostname, parts.port or 80
    except ValueError as e:
        log.warning("DOCKMESH_AGENT=%r: %s; reading the engine", url, e)
        return
    if parts.scheme != "http" or not host:
        log.warning("DOCKMESH_AGENT=%r: expected http://HOST:PORT; reading the engine", url)
        return
    try:
        conn = http.client.HTTPConnection(host, port, timeout=CONNECT_TIMEOUT_S)
        conn.connect()
        assert conn.sock is not None
        conn.sock.settimeout(DEADLINE_S)
        conn.request("GET", path, headers={"Accept": "application/json"})
        resp = conn.getresponse()
        if resp.status != 200:
            log.info("agent at %s answered %d for %s; reading the engine", url, resp.status, path)
            return
        body = resp.read(MAX_BODY + 1)
        conn.close()
    except (OSError, http.client.HTTPException, ValueError) as e:
        log.info("no agent at %s (%s); reading the engine", url, e)
        return
    if len(body) > MAX_BODY:
        log.warning("agent at %s sent more than %d bytes; reading the engine", url, MAX_BODY)
        return
    out.append(body)


def fetch(path: str, deadline_s: float | None = None) -> bytes | None:
    """The body of `GET path` from the agent, or None when no agent answers there in time
    (refused, timed out, not HTTP, an error status) — the reason is logged, never raised."""
    with _lock:
        if path in _answers:
            return _answers[path]
    url = agent_url()
    deadline_s = DEADLINE_S if deadline_s is None else deadline_s
    out: list[bytes | None] = []
    # The exchange runs on a thread the command does not wait for past the deadline: socket
    # timeouts bound each read, not a server that keeps sending one byte at a time.
    t = threading.Thread(target=_get, args=(url, path, out), daemon=True, name="agent-get")
    t.start()
    t.join(deadline_s)
    if t.is_alive():
        log.warning(
            "agent at %s did not answer %s within %.0f s; reading the engine", url, path, deadline_s
        )
    body = out[0] if out else None
    with _lock:
        _answers[path] = body
    return body


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def topology_json() -> bytes | None:
    return fetch(TOPOLOGY_PATH)


def agent_links() -> list[tuple[str, bool, float]] | None:
    """(engine, connected, seconds since its topology was last known current) for each of
    the agent's engines, or None when no agent gave the topology (not asked again then) or
    this answer is not one."""
    if topology_json() is None:
        return None
    body = fetch(ENGINES_PATH)
    if body is None:
        return None
    try:
        doc = json.loads(body, parse_constant=_no_constants)
        return [(str(e["engine"]), bool(e["connected"]), float(e["sync_age_s"])) for e in doc]
    except (ValueError, TypeError, KeyError, RecursionError) as e:
        log.info("the agent's engines are not readable (%s)", str(e)[:200])
        return None


def stale_warnings() -> list[str]:
    """One line per engine the agent that gave the topology does not follow now: what it
    shows of that engine may have changed since (`dockmesh topology` prints them on
    stderr, the JSON on stdout staying the topology)."""
    return [
        f"warning: the agent has not followed engine {name} for {age:.0f} s: "
        "this topology may be stale (--engine reads the engine itself)"
        for name, connected, age in agent_links() or []
        if not connected
    ]


def agent_topology() -> Topology | None:
    """The agent's topology, checked to be one (its JSON contract), or None."""
    body = topology_json()
    if body is None:
        return None
    try:
        doc = json.loads(body, parse_constant=_no_constants)
        return topology_from_json(doc)
    except (ValueError, RecursionError) as e:
        log.warning("the agent's answer is not a topology (%s); reading the engine", str(e)[:200])
        return None
