"""The one interface dockmesh reads and changes an engine through.

`dockmesh.engine.docker.DockerBackend` talks to a real engine (the only module that imports
docker-py); `dockmesh.engine.memory.MemoryEngine` keeps an engine in memory and emits the events
Docker would, for fast tests of everything built on top. Both take and return model values
only; both raise `dockmesh.errors.EngineError` (or its `EngineNotFound` / `EngineConflict`)
and nothing else for what the engine refuses or cannot do.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urlparse

from dockmesh.model.config import ContainerConfig, EndpointConfig, NetworkConfig, VolumeConfig
from dockmesh.model.topology import Container, EngineInfo, EngineState, Network

DEFAULT_URL = "unix:///var/run/docker.sock"


def default_url(docker_host: str | None) -> str:
    """The engine to use when none is named: `docker_host` (the caller's $DOCKER_HOST, as
    Docker's own client reads it), else the local socket."""
    return docker_host or DEFAULT_URL


@dataclass(frozen=True, slots=True)
class EngineRef:
    name: str
    url: str


def parse_engine_refs(
    values: Sequence[str], default: str, default_from: str = "the default engine"
) -> list[EngineRef]:
    """`--engine` values: `URL` or `NAME=URL`; none: the `default` URL (which came from
    `default_from`, as a message names it: the caller's `$DOCKER_HOST`). The first unnamed
    engine is `local`; others are named after their socket file or host. ValueError, saying
    which value, for one that is not an engine URL: its port and host are checked here, since
    docker-py reads them only when it connects."""
    refs: list[EngineRef] = []
    for v in values or [default]:
        label = f"--engine {v!r}" if values else f"{default_from} {v!r}"
        name, sep, url = v.partition("=")
        if not sep or "://" in name:
            name, url = "", v
        if "://" not in url:
            raise ValueError(f"{label}: expected a URL such as unix:///run/docker.sock")
        try:
            parts = urlparse(url)
            parts.port  # noqa: B018 - read for its ValueError: not a number, out of range
        except ValueError as e:
            raise ValueError(f"{label}: {e}") from None
        scheme = parts.scheme
        if scheme not in ("unix", "tcp", "http", "https", "ssh"):
            raise ValueError(f"{label}: unknown scheme {scheme!r} (unix, tcp, http, ssh)")
        if scheme != "unix" and not parts.hostname:
            raise ValueError(f"{label}: no host")
        if not name:
            name = "local" if not refs else _name_from_url(url)
        if any(r.name == name for r in refs):
            n = len(refs) + 1
            while any(r.name == f"{name}-{n}" for r in refs):  # `a-3=…, a=…, a=…`
                n += 1
            name = f"{name}-{n}"
        refs.append(EngineRef(name, url))
    return refs


def _name_from_url(url: str) -> str:
    u = urlparse(url)
    if u.scheme == "unix":
        base = os.path.basename(u.path)
        return base.removesuffix(".sock") or "unix"
    return u.hostname or url


class EventSource(Protocol):
    """An engine's event stream (Docker's event JSON); `close()` from another thread ends the
    iteration."""

    def __iter__(self) -> Iterator[dict[str, Any]]: ...
    def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class ImageInfo:
    id: str
    labels: Mapping[str, str] = field(default_factory=dict)


class EngineSource(Protocol):
    """What following a topology needs: a snapshot, the event stream, single re-reads."""

    ref: EngineRef

    def snapshot(self) -> EngineState: ...
    def events(self) -> EventSource: ...
    def container(self, container_id: str) -> Container | None: ...
    def network(self, network_id: str) -> Network | None: ...
    def close(self) -> None: ...


class EngineBackend(EngineSource, Protocol):
    """Everything dockmesh does with an engine. References (`ref`) are names or ids."""

    def info(self) -> EngineInfo: ...
    def swarm_active(self) -> bool: ...

    # networks
    def create_network(self, config: NetworkConfig) -> str: ...
    def remove_network(self, ref: str) -> None:
        """Removes it; absent already is fine. Raises EngineConflict while endpoints remain."""
        ...

    # volumes
    def volumes(self, label: str | None = None) -> dict[str, dict[str, str]]:
        """The volumes (those carrying `label`, `key=value`): name → labels."""
        ...

    def create_volume(self, config: VolumeConfig) -> str: ...
    def remove_volume(self, name: str) -> None:
        """Removes it; absent already is fine. Raises EngineConflict while a container uses it."""
        ...

    # containers
    def create_container(self, config: ContainerConfig) -> str:
        """Creates it (not started) on its first network; returns the id."""
        ...

    def connect(self, container: str, endpoint: EndpointConfig) -> None: ...
    def disconnect(self, container: str, network: str, force: bool = False) -> None: ...
    def start(self, container: str) -> None: ...
    def stop(self, container: str, timeout_s: int = 10) -> None: ...
    def remove_container(self, container: str) -> None:
        """Stops and removes it with its anonymous volumes; absent already is fine."""
        ...

    def wait(self, container: str, timeout_s: float) -> int:
        """Blocks until it exits; its exit code."""
        ...

    def logs(self, container: str) -> bytes: ...
    def put_archive(self, container: str, path: str, tar: bytes) -> None: ...

    # images
    def image(self, ref: str) -> ImageInfo | None: ...
    def import_image(
        self, source: bytes | str, repository: str, tag: str, changes: Sequence[str]
    ) -> None:
        """`docker import`: a root file system tar (bytes, or a path to a file)."""
        ...

    def commit(
        self, container: str, repository: str, tag: str, message: str, conf: Mapping[str, Any]
    ) -> str: ...
    def remove_image(self, ref: str) -> None:
        """Raises EngineConflict while a container uses it."""
        ...
