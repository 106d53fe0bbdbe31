"""What dockmesh asks an engine to create, as typed values.

A topology file's desired state is made of these; the engine backends take them; their JSON
form (`to_json`, canonical) is what gets hashed and stored in the `dockmesh.spec.config`
label, and `from_json` reads it back, so an object can be re-created from its own labels when
a replace has to be undone. `from_json` takes untrusted input (anyone can label a container)
and raises ValueError on anything that is not a configuration it wrote.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

JSON = dict[str, Any]


def _str(v: Any, what: str) -> str:
    if not isinstance(v, str):
        raise ValueError(f"{what}: expected a string")
    return v


def _opt_str(v: Any, what: str) -> str | None:
    return None if v is None else _str(v, what)


def _int(v: Any, what: str) -> int:
    if not isinstance(v, int) or isinstance(v, bool):
        raise ValueError(f"{what}: expected an integer")
    return v


def _opt_int(v: Any, what: str) -> int | None:
    return None if v is None else _int(v, what)


def _list(v: Any, what: str) -> list[Any]:
    if not isinstance(v, list):
        raise ValueError(f"container.{what}: expected a list")
    return v


def _bool(v: Any, what: str) -> bool:
    if not isinstance(v, bool):
        raise ValueError(f"{what}: expected true or false")
    return v


def _str_map(v: Any, what: str) -> dict[str, str]:
    if not isinstance(v, dict) or not all(
        isinstance(k, str) and isinstance(x, str) for k, x in v.items()
    ):
        raise ValueError(f"{what}: expected a mapping of strings")
    return dict(v)


def _str_tuple(v: Any, what: str) -> tuple[str, ...]:
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise ValueError(f"{what}: expected a list of strings")
    return tuple(v)


def _obj(v: Any, what: str) -> Mapping[str, Any]:
    if not isinstance(v, dict):
        raise ValueError(f"{what}: expected a mapping")
    return v


@dataclass(frozen=True, slots=True)
class IpamConfig:
    subnet: str
    gateway: str | None = None
    ip_range: str | None = None
    aux_addresses: Mapping[str, str] = field(default_factory=dict)

    def to_json(self) -> JSON:
        return {
            "subnet": self.subnet,
            "gateway": self.gateway,
            "ip_range": self.ip_range,
            "aux_addresses": dict(sorted(self.aux_addresses.items())),
        }

    @staticmethod
    def from_json(raw: Any) -> IpamConfig:
        d = _obj(raw, "ipam")
        return IpamConfig(
            _str(d.get("subnet"), "ipam.subnet"),
            _opt_str(d.get("gateway"), "ipam.gateway"),
            _opt_str(d.get("ip_range"), "ipam.ip_range"),
            _str_map(d.get("aux_addresses", {}), "ipam.aux_addresses"),
        )


@dataclass(frozen=True, slots=True)
class NetworkConfig:
    name: str
    driver: str = "bridge"
    ipam: tuple[IpamConfig, ...] = ()  # empty: the engine picks a subnet
    internal: bool = False
    attachable: bool = False
    enable_ipv6: bool = False
    options: Mapping[str, str] = field(default_factory=dict)
    labels: Mapping[str, str] = field(default_factory=dict)

    def to_json(self) -> JSON:
        return {
            "name": self.name,
            "driver": self.driver,
            "ipam": [p.to_json() for p in self.ipam],
            "internal": self.internal,
            "attachable": self.attachable,
            "enable_ipv6": self.enable_ipv6,
            "options": dict(sorted(self.options.items())),
            "labels": dict(sorted(self.labels.items())),
        }

    @staticmethod
    def from_json(raw: Any) -> NetworkConfig:
        d = _obj(raw, "network")
        ipam = d.get("ipam", [])
        if not isinstance(ipam, list):
            raise ValueError("network.ipam: expected a list")
        return NetworkConfig(
            name=_str(d.get("name"), "network.name"),
            driver=_str(d.get("driver", "bridge"), "network.driver"),
            ipam=tuple(IpamConfig.from_json(p) for p in ipam),
            internal=_bool(d.get("internal", False), "network.internal"),
            attachable=_bool(d.get("attachable", False), "network.attachable"),
            enable_ipv6=_bool(d.get("enable_ipv6", False), "network.enable_ipv6"),
            options=_str_map(d.get("options", {}), "network.options"),
            labels=_str_map(d.get("labels", {}), "network.labels"),
        )


@dataclass(frozen=True, slots=True)
class EndpointConfig:
    """A container's place on one network."""

    network: str  # the engine's network name
    aliases: tuple[str, ...] = ()
    ipv4_address: str | None = None
    ipv6_address: str | None = None

    def to_json(self) -> JSON:
        return {
            "network": self.network,
            "aliases": list(self.aliases),
            "ipv4_address": self.ipv4_address,
            "ipv6_address": self.ipv6_address,
        }

    @staticmethod
    def from_json(raw: Any) -> EndpointConfig:
        d = _obj(raw, "endpoint")
        return EndpointConfig(
            _str(d.get("network"), "endpoint.network"),
            _str_tuple(d.get("aliases", []), "endpoint.aliases"),
            _opt_str(d.get("ipv4_address"), "endpoint.ipv4_address"),
            _opt_str(d.get("ipv6_address"), "endpoint.ipv6_address"),
        )


@dataclass(frozen=True, slots=True)
class PortMapping:
    container_port: int
    protocol: str = "tcp"
    host_ip: str | None = None
    host_port: int | None = None  # None: the engine picks

    def key(self) -> str:
        return f"{self.container_port}/{self.protocol}"

    def to_json(self) -> JSON:
        return {
            "container_port": self.container_port,
            "protocol": self.protocol,
            "host_ip": self.host_ip,
            "host_port": self.host_port,
        }

    @staticmethod
    def from_json(raw: Any) -> PortMapping:
        d = _obj(raw, "port")
        hp = d.get("host_port")
        return PortMapping(
            _int(d.get("container_port"), "port.container_port"),
            _str(d.get("protocol", "tcp"), "port.protocol"),
            _opt_str(d.get("host_ip"), "port.host_ip"),
            None if hp is None else _int(hp, "port.host_port"),
        )


@dataclass(frozen=True, slots=True)
class HealthcheckConfig:
    """Docker's HEALTHCHECK: `test` in the engine's form (`CMD`, `CMD-SHELL` or `NONE` first)."""

    test: tuple[str, ...]
    interval_ns: int = 0
    timeout_ns: int = 0
    retries: int = 0
    start_period_ns: int = 0

    def to_json(self) -> JSON:
        return {
            "test": list(self.test),
            "interval_ns": self.interval_ns,
            "timeout_ns": self.timeout_ns,
            "retries": self.retries,
            "start_period_ns": self.start_period_ns,
        }

    @staticmethod
    def from_json(raw: Any) -> HealthcheckConfig:
        d = _obj(raw, "healthcheck")
        return HealthcheckConfig(
            _str_tuple(d.get("test"), "healthcheck.test"),
            _int(d.get("interval_ns", 0), "healthcheck.interval_ns"),
            _int(d.get("timeout_ns", 0), "healthcheck.timeout_ns"),
            _int(d.get("retries", 0), "healthcheck.retries"),
            _int(d.get("start_period_ns", 0), "healthcheck.start_period_ns"),
        )


@dataclass(frozen=True, slots=True)
class MountConfig:
    """A volume (`type` "volume": `source` is the engine's volume name) or a bind mount
    (`type` "bind": `source` is an absolute host path) at `target` in the container."""

    type: str
    source: str
    target: str
    read_only: bool = False

    def to_json(self) -> JSON:
        return {
            "type": self.type,
            "source": self.source,
            "target": self.target,
            "read_only": self.read_only,
        }

    @staticmethod
    def from_json(raw: Any) -> MountConfig:
        d = _obj(raw, "mount")
        kind = _str(d.get("type"), "mount.type")
        if kind not in ("volume", "bind"):
            raise ValueError("mount.type: expected volume or bind")
        return MountConfig(
            kind,
            _str(d.get("source"), "mount.source"),
            _str(d.get("target"), "mount.target"),
            _bool(d.get("read_only", False), "mount.read_only"),
        )


@dataclass(frozen=True, slots=True)
class VolumeConfig:
    """A named volume the engine keeps across containers (`down --volumes` removes it)."""

    name: str
    driver: str = "local"
    options: Mapping[str, str] = field(default_factory=dict)
    labels: Mapping[str, str] = field(default_factory=dict)

    def to_json(self) -> JSON:
        return {
            "name": self.name,
            "driver": self.driver,
            "options": dict(sorted(self.options.items())),
            "labels": dict(sorted(self.labels.items())),
        }


# Host settings a container may carry beyond what every container has. Written into its JSON
# (and so into its hash) only when set: a container made before they existed keeps its hash.
_OPTIONAL_DEFAULTS: dict[str, Any] = {
    "restart": None,  # no, always, unless-stopped, on-failure[:N]; None: the engine's (no)
    "user": None,
    "working_dir": None,
    "cap_add": (),
    "cap_drop": (),
    "tmpfs": (),  # "PATH" or "PATH:OPTIONS"
    "init": None,
    "memory_bytes": None,
    "nano_cpus": None,
    "mounts": (),
    "stop_signal": None,  # the engine's StopSignal; None: the image's (else SIGTERM)
    "stop_grace_s": None,  # the engine's StopTimeout; None: its default (10 s)
}


@dataclass(frozen=True, slots=True)
class ContainerConfig:
    name: str
    image: str
    command: tuple[str, ...] | None = None
    entrypoint: tuple[str, ...] | None = None
    environment: Mapping[str, str] = field(default_factory=dict)
    hostname: str | None = None
    # The engine creates a container on the first; the others are joined before it starts.
    networks: tuple[EndpointConfig, ...] = ()
    network_mode: str | None = None  # host, none; None: the networks (or the default bridge)
    ports: tuple[PortMapping, ...] = ()
    healthcheck: HealthcheckConfig | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    restart: str | None = None
    user: str | None = None
    working_dir: str | None = None
    cap_add: tuple[str, ...] = ()
    cap_drop: tuple[str, ...] = ()
    tmpfs: tuple[str, ...] = ()
    init: bool | None = None
    memory_bytes: int | None = None
    nano_cpus: int | None = None
    mounts: tuple[MountConfig, ...] = ()
    stop_signal: str | None = None
    stop_grace_s: int | None = None

    def to_json(self) -> JSON:
        out = self._base_json()
        for key, default in _OPTIONAL_DEFAULTS.items():
            value = getattr(self, key)
            if value != default:
                if key == "mounts":
                    out[key] = [m.to_json() for m in value]
                else:
                    out[key] = list(value) if isinstance(value, tuple) else value
        return out

    def _base_json(self) -> JSON:
        return {
            "name": self.name,
            "image": self.image,
            "command": None if self.command is None else list(self.command),
            "entrypoint": None if self.entrypoint is None else list(self.entrypoint),
            "environment": dict(sorted(self.environment.items())),
            "hostname": self.hostname,
            "networks": [n.to_json() for n in self.networks],
            "network_mode": self.network_mode,
            "ports": [p.to_json() for p in self.ports],
            "healthcheck": None if self.healthcheck is None else self.healthcheck.to_json(),
            "labels": dict(sorted(self.labels.items())),
        }

    @staticmethod
    def from_json(raw: Any) -> ContainerConfig:
        d = _obj(raw, "container")
        nets, ports = d.get("networks", []), d.get("ports", [])
        if not isinstance(nets, list) or not isinstance(ports, list):
            raise ValueError("container.networks and .ports: expected lists")
        cmd, ep, hc = d.get("command"), d.get("entrypoint"), d.get("healthcheck")
        return ContainerConfig(
            name=_str(d.get("name"), "container.name"),
            image=_str(d.get("image"), "container.image"),
            command=None if cmd is None else _str_tuple(cmd, "container.command"),
            entrypoint=None if ep is None else _str_tuple(ep, "container.entrypoint"),
            environment=_str_map(d.get("environment", {}), "container.environment"),
            hostname=_opt_str(d.get("hostname"), "container.hostname"),
            networks=tuple(EndpointConfig.from_json(n) for n in nets),
            network_mode=_opt_str(d.get("network_mode"), "container.network_mode"),
            ports=tuple(PortMapping.from_json(p) for p in ports),
            healthcheck=None if hc is None else HealthcheckConfig.from_json(hc),
            labels=_str_map(d.get("labels", {}), "container.labels"),
            restart=_opt_str(d.get("restart"), "container.restart"),
            user=_opt_str(d.get("user"), "container.user"),
            working_dir=_opt_str(d.get("working_dir"), "container.working_dir"),
            cap_add=_str_tuple(d.get("cap_add", []), "container.cap_add"),
            cap_drop=_str_tuple(d.get("cap_drop", []), "container.cap_drop"),
            tmpfs=_str_tuple(d.get("tmpfs", []), "container.tmpfs"),
            init=None if d.get("init") is None else _bool(d.get("init"), "container.init"),
            memory_bytes=_opt_int(d.get("memory_bytes"), "container.memory_bytes"),
            nano_cpus=_opt_int(d.get("nano_cpus"), "container.nano_cpus"),
            mounts=tuple(MountConfig.from_json(m) for m in _list(d.get("mounts", []), "mounts")),
            stop_signal=_opt_str(d.get("stop_signal"), "container.stop_signal"),
            stop_grace_s=_opt_int(d.get("stop_grace_s"), "container.stop_grace_s"),
        )
