"""Connecting to engines by reference. `EngineClient` is the real engine's backend."""

from __future__ import annotations

from dockmesh.engine.backend import (
    DEFAULT_URL,
    EngineBackend,
    EngineRef,
    default_url,
    parse_engine_refs,
)
from dockmesh.engine.docker import DockerBackend

EngineClient = DockerBackend

__all__ = [
    "DEFAULT_URL",
    "EngineBackend",
    "EngineClient",
    "EngineRef",
    "connect",
    "default_url",
    "parse_engine_refs",
]


def connect(ref: EngineRef) -> EngineBackend:
    return DockerBackend(ref)
