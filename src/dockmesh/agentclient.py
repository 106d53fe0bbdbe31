"""Asking a running agent, for the commands that read the topology (`topology`, later `why`,
`matrix`, `doctor`): `$DOCKMESH_AGENT` (default http://127.0.0.1:8500).

Standard library only, so that the command line's fast path (`topology --json`) stays light.
An agent that does not answer is not an error: the caller reads the engines instead.
"""

from __future__ import annotations

import http.client
import logging
import os
from urllib.parse import urlsplit

log = logging.getLogger(__name__)

DEFAULT_AGENT = "http://127.0.0.1:8500"
TOPOLOGY_PATH = "/v1/dockmesh/topology"
# Enough for 10 000 containers; a bigger answer is not the agent's.
MAX_BODY = 64 * 1024 * 1024


def agent_url() -> str:
    return os.environ.get("DOCKMESH_AGENT") or DEFAULT_AGENT


def fetch(path: str, connect_timeout_s: float = 0.5, read_timeout_s: float = 10.0) -> bytes | None:
    """The body of `GET path` from the agent, or None when no agent answers there (refused,
    timed out, not HTTP, an error status) — the reason is logged, never raised."""
    url = agent_url()
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        log.warning("DOCKMESH_AGENT=%r: expected http://HOST:PORT; reading the engine", url)
        return None
    try:
        conn = http.client.HTTPConnection(
            parts.hostname, parts.port or 80, timeout=connect_timeout_s
        )
        conn.connect()
        assert conn.sock is not None
        conn.sock.settimeout(read_timeout_s)
        conn.request("GET", path, headers={"Accept": "application/json"})
        resp = conn.getresponse()
        if resp.status != 200:
            log.info("agent at %s answered %d for %s; reading the engine", url, resp.status, path)
            return None
        body = resp.read(MAX_BODY + 1)
        conn.close()
    except (TimeoutError, OSError, http.client.HTTPException) as e:
        log.info("no agent at %s (%s); reading the engine", url, e)
        return None
    if len(body) > MAX_BODY:
        log.warning("agent at %s sent more than %d bytes; reading the engine", url, MAX_BODY)
        return None
    return body


def topology_json() -> bytes | None:
    return fetch(TOPOLOGY_PATH)
