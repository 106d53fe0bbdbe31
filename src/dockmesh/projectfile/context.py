"""What validation needs to know about the machine and its engine, gathered beforehand so that
validation itself stays pure."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class ExistingNetwork:
    """A network the engine already has (the file may name it, or collide with it)."""

    name: str
    project: str | None  # the dockmesh.project label, None for networks dockmesh did not make
    subnets: tuple[str, ...] = ()
    # The dockmesh.spec.hash label: when it equals the file's, `up` keeps the network and
    # with it the addresses its endpoints hold.
    spec_hash: str | None = None


@dataclass(frozen=True, slots=True)
class Route:
    destination: str  # CIDR
    device: str


@dataclass(frozen=True, slots=True)
class PublishedPort:
    """A host port a running container holds."""

    container: str
    project: str | None  # the container's dockmesh.project label
    host_ip: str | None  # None: every address
    host_port: int
    protocol: str


@dataclass(frozen=True, slots=True)
class EngineContext:
    """What the engine and the host hold when a file is validated: its networks, containers,
    images, addresses and published ports, the host's routes and interfaces, and what the
    kernel and the engine support. The default (everything empty) is a machine that holds
    nothing: what a file's own problems are found against when the engine cannot be reached."""

    networks: tuple[ExistingNetwork, ...] = ()
    containers: Mapping[str, str | None] = field(default_factory=dict)  # name → project label
    routes: tuple[Route, ...] = ()
    interfaces: frozenset[str] = frozenset()
    swarm_active: bool = False
    ipvlan_available: bool = False
    images: Mapping[str, str | None] = field(default_factory=dict)  # name → id, None: missing
    # network name → address (IPv4 or IPv6, as the engine writes it) → container name
    endpoints: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    published: tuple[PublishedPort, ...] = ()
