"""One Docker engine: connect, read a full snapshot, follow its event stream.

This is the only module that talks to the engine for reading. It hands plain model values
(`dockmesh.model.topology`) to everything else.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

import docker
import docker.errors

from dockmesh.engine.convert import container_from_api, network_from_api
from dockmesh.errors import EngineError
from dockmesh.model.topology import Container, EngineInfo, EngineState, Network

DEFAULT_URL = "unix:///var/run/docker.sock"
# Inspecting containers is the slow part of a snapshot; the engine serves requests in parallel.
_INSPECT_WORKERS = 8


def default_url() -> str:
    return os.environ.get("DOCKER_HOST") or DEFAULT_URL


@dataclass(frozen=True, slots=True)
class EngineRef:
    name: str
    url: str


def parse_engine_refs(values: list[str]) -> list[EngineRef]:
    """`--engine` values: `URL` or `NAME=URL`. The first unnamed engine is `local`; others are
    named after their socket file or host."""
    refs: list[EngineRef] = []
    for v in values or [default_url()]:
        name, sep, url = v.partition("=")
        if not sep or "://" in name:
            name, url = "", v
        if "://" not in url:
            raise ValueError(f"--engine {v!r}: expected a URL such as unix:///run/docker.sock")
        if not name:
            name = "local" if not refs else _name_from_url(url)
        if any(r.name == name for r in refs):
            name = f"{name}-{len(refs) + 1}"
        refs.append(EngineRef(name, url))
    return refs


def _name_from_url(url: str) -> str:
    u = urlparse(url)
    if u.scheme == "unix":
        base = os.path.basename(u.path)
        return base.removesuffix(".sock") or "unix"
    return u.hostname or url


class EngineClient:
    """A connection to one engine (docker-py's low-level API client)."""

    def __init__(self, ref: EngineRef, timeout: float = 30.0) -> None:
        self.ref = ref
        try:
            self.api: Any = docker.APIClient(
                base_url=ref.url,
                version="auto",
                timeout=timeout,
                max_pool_size=_INSPECT_WORKERS + 2,
            )
        except docker.errors.DockerException as e:
            raise EngineError(f"engine {ref.name} ({ref.url}) does not answer: {e}") from e
        self._info: EngineInfo | None = None

    def info(self) -> EngineInfo:
        if self._info is None:
            try:
                version = self.api.version()
            except (docker.errors.DockerException, OSError) as e:
                raise EngineError(f"engine {self.ref.name} ({self.ref.url}): {e}") from e
            self._info = EngineInfo(self.ref.name, self.ref.url, str(version.get("Version", "")))
        return self._info

    def swarm_active(self) -> bool:
        info = self.api.info()
        return bool((info.get("Swarm") or {}).get("LocalNodeState") == "active")

    # --- reading -------------------------------------------------------------------------

    def network(self, network_id: str) -> Network | None:
        try:
            return network_from_api(self.api.inspect_network(network_id), self.ref.name)
        except docker.errors.NotFound:
            return None

    def container(self, container_id: str) -> Container | None:
        try:
            return container_from_api(self.api.inspect_container(container_id), self.ref.name)
        except docker.errors.NotFound:
            return None

    def snapshot(self) -> EngineState:
        """Every network and container of the engine. Networks come from one list call (it
        carries all we need); containers need an inspect each (pid, aliases), run in parallel."""
        state = EngineState(self.info())
        try:
            for raw in self.api.networks():
                n = network_from_api(raw, self.ref.name)
                state.networks[n.id] = n
            ids = [c["Id"] for c in self.api.containers(all=True)]
        except (docker.errors.DockerException, OSError) as e:
            raise EngineError(f"engine {self.ref.name} ({self.ref.url}): {e}") from e
        with ThreadPoolExecutor(_INSPECT_WORKERS) as pool:
            for c in pool.map(self.container, ids):
                if c is not None:  # removed while we looked
                    state.containers[c.id] = c
        return state

    def events(self) -> EventStream:
        """Opens the event stream now: events from this moment on are buffered by the
        connection, so a snapshot taken after this call misses nothing."""
        try:
            raw = self.api.events(decode=True, filters={"type": ["container", "network"]})
        except (docker.errors.DockerException, OSError) as e:
            raise EngineError(f"engine {self.ref.name} ({self.ref.url}): {e}") from e
        return EventStream(raw)

    def close(self) -> None:
        self.api.close()


class EventStream:
    """The engine's event stream; `close()` from another thread ends the iteration."""

    def __init__(self, raw: Any) -> None:
        self._raw = raw
        self._closed = threading.Event()

    def __iter__(self) -> Iterator[dict[str, Any]]:
        try:
            yield from self._raw
        except Exception:
            if not self._closed.is_set():
                raise

    def close(self) -> None:
        self._closed.set()
        with contextlib.suppress(Exception):
            self._raw.close()
