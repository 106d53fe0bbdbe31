"""The shape of dockmesh.yaml (pydantic, extra keys forbidden). Shape only: meaning — address
maths, references, cycles — is checked in `dockmesh.projectfile.validate`, where every problem can
name its own field."""

from __future__ import annotations

import types
from math import inf
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from dockmesh.model.policy import Scope, parse_policy
from dockmesh.projectfile.problems import Problem
from dockmesh.projectfile.suggest import did_you_mean

Scalar = str | int | float | bool


class _Strict(BaseModel):
    # strict: a number is a number and a boolean a boolean. Lax parsing would read
    # `replicas: "3"`, `replicas: true` and `internal: "off"` as 3, 1 and False, and take
    # `"3_000"` for 3000: values the file does not say.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


# One address family's value, or one per family: `subnet: [10.1.0.0/24, fd00:1::/64]`.
PerFamily = str | list[str]
INT32_MAX = 2**31 - 1


def per_family(value: PerFamily | None) -> list[str]:
    """The values of a per-family field, as a list whichever way it was written."""
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


class NetworkSpec(_Strict):
    driver: Literal["bridge", "macvlan", "overlay", "ipvlan"] = "bridge"
    subnet: PerFamily | None = None
    gateway: PerFamily | None = None  # matched to the subnet of its family
    ip_range: PerFamily | None = None  # the dynamic pool: static addresses may lie outside it
    aux_addresses: dict[str, str] = Field(default_factory=dict)
    internal: bool = False
    attachable: bool = False
    enable_ipv6: bool | None = None  # None: on exactly when there is an IPv6 subnet
    parent: str | None = None
    options: dict[str, Scalar] = Field(default_factory=dict)
    labels: dict[str, str] = Field(default_factory=dict)


class ServiceNetwork(_Strict):
    aliases: list[str] = Field(default_factory=list)
    ipv4_address: str | None = None
    ipv6_address: str | None = None


class Healthcheck(_Strict):
    http: str | None = None
    tcp: bool = False
    port: int | None = Field(default=None, ge=1, le=65535)
    test: list[str] | str | None = None
    interval: str = "5s"
    timeout: str = "3s"
    retries: int = Field(default=3, ge=1, le=INT32_MAX)
    start_period: str = "0s"


class DiscoveryCheck(_Strict):
    http: str | None = None
    tcp: bool = False
    interval: str = "5s"
    timeout: str = "2s"


class Discovery(_Strict):
    name: str | None = None
    port: int = Field(ge=1, le=65535)
    tags: list[str] = Field(default_factory=list)
    weight: int = Field(default=1, ge=0, le=1_000_000)  # what the discovery labels carry
    network: str | None = None
    check: DiscoveryCheck | None = None


class Expose(_Strict):
    """An HTTP route for `dockmesh proxy --project` (written as `dockmesh.http.*` labels)."""

    host: str | list[str] | None = None
    path: str | None = None
    strip_prefix: bool | str = False
    middlewares: list[str] = Field(default_factory=list)
    port: int | None = Field(default=None, ge=1, le=65535)


class DependsOn(_Strict):
    """`depends_on: {db: {condition: service_healthy}}`, as Compose writes it."""

    condition: Literal["service_started", "service_healthy"] = "service_started"


class Limits(_Strict):
    cpus: float | int | str | None = None
    memory: str | int | None = None


class Resources(_Strict):
    limits: Limits | None = None


class Deploy(_Strict):
    """The part of Compose's `deploy:` a single engine honours."""

    replicas: int | None = Field(default=None, ge=0, le=1000)
    resources: Resources | None = None


class VolumeSpec(_Strict):
    driver: str = "local"
    driver_opts: dict[str, str] = Field(default_factory=dict)
    labels: dict[str, str] = Field(default_factory=dict)


class ServiceSpec(_Strict):
    image: str
    command: str | list[str] | None = None
    entrypoint: str | list[str] | None = None
    replicas: int = Field(default=1, ge=0, le=1000)
    environment: dict[str, Scalar | None] = Field(default_factory=dict)
    networks: dict[str, ServiceNetwork | None] = Field(default_factory=dict)
    network_mode: Literal["host", "none"] | None = None
    ports: list[str | int] = Field(default_factory=list)
    labels: dict[str, str] = Field(default_factory=dict)
    hostname: str | None = None
    healthcheck: Healthcheck | None = None
    depends_on: list[str] | dict[str, DependsOn | None] = Field(default_factory=list)
    discovery: Discovery | None = None
    expose: Expose | None = None
    restart: str | None = None
    user: str | None = None
    working_dir: str | None = None
    cap_add: list[str] = Field(default_factory=list)
    cap_drop: list[str] = Field(default_factory=list)
    tmpfs: str | list[str] = Field(default_factory=list)
    init: bool | None = None
    mem_limit: str | int | None = None
    cpus: float | int | str | None = None
    deploy: Deploy | None = None
    env_file: str | list[str] = Field(default_factory=list)
    volumes: list[str] = Field(default_factory=list)
    stop_signal: str | int | None = None
    stop_grace_period: str | None = None

    @property
    def dependencies(self) -> list[str]:
        """The services `depends_on` names, in the file's order."""
        return list(self.depends_on)

    @property
    def healthy_dependencies(self) -> list[str]:
        """Those whose containers must be healthy before this service's are created."""
        if isinstance(self.depends_on, list):
            return []
        return [
            n
            for n, d in self.depends_on.items()
            if d is not None and d.condition == "service_healthy"
        ]

    @model_validator(mode="before")
    @classmethod
    def _deploy_replicas(cls, v: Any) -> Any:
        # `deploy: {replicas: N}` is Compose's spelling of `replicas: N`.
        if not isinstance(v, dict):
            return v
        deploy = v.get("deploy")
        n = deploy.get("replicas") if isinstance(deploy, dict) else None
        if n is None:
            return v
        if "replicas" in v and v["replicas"] != n:
            raise ValueError("replicas and deploy.replicas differ: give one of them")
        return {**v, "replicas": n}

    @field_validator("restart", mode="before")
    @classmethod
    def _restart_no(cls, v: Any) -> Any:
        # `restart: no` unquoted is YAML's false; Compose reads it as "no".
        return "no" if v is False else v

    @field_validator("networks", mode="before")
    @classmethod
    def _networks_list(cls, v: Any) -> Any:
        # `networks: [a, b]` is short for `networks: {a: {}, b: {}}`.
        if isinstance(v, list) and all(isinstance(x, str) for x in v):
            return dict.fromkeys(v)
        return v

    @field_validator("environment", mode="before")
    @classmethod
    def _environment_list(cls, v: Any) -> Any:
        # `environment: [A=1, B]` as in compose files.
        if isinstance(v, list) and all(isinstance(x, str) for x in v):
            return {k: (val if sep else None) for k, sep, val in (x.partition("=") for x in v)}
        return v


class Spec(_Strict):
    project: str | None = None
    networks: dict[str, NetworkSpec | None] = Field(default_factory=dict)
    services: dict[str, ServiceSpec] = Field(default_factory=dict)
    volumes: dict[str, VolumeSpec | None] = Field(default_factory=dict)
    policy: dict[str, Any] = Field(default_factory=dict)


def parse_spec(data: Any) -> tuple[Spec | None, list[Problem]]:
    spec, problems, _ = parse_spec_partial(data)
    return (None if problems else spec), problems


def parse_spec_partial(data: Any) -> tuple[Spec | None, list[Problem], frozenset[str]]:
    """The spec, its shape problems, and — when there are some — a spec of what was well
    formed, so that the meaning of the rest can be checked in the same run. The third value
    names the networks and services left out (references to them are not problems again)."""
    if not isinstance(data, dict):
        doc = "the document must be a mapping (project, networks, services)"
        return None, [Problem((), doc)], frozenset()
    data = _without_extensions(data)
    try:
        spec = Spec.model_validate(data)
    except ValidationError as e:
        problems = _problems_from(e, data)
    else:
        return spec, _policy_problems(data), frozenset()
    if not any(p.path[:1] == ("policy",) for p in problems):
        problems += _policy_problems(data)
    partial: dict[str, Any] = {}
    dropped: set[str] = set()
    for section, model in (("networks", NetworkSpec), ("services", ServiceSpec)):
        entries = data.get(section)
        kept: dict[str, Any] = {}
        if isinstance(entries, dict):
            for name, value in entries.items():
                try:
                    model.model_validate(value or {})
                    kept[name] = value
                except ValidationError:
                    dropped.add(name)
        partial[section] = kept
    if isinstance(data.get("project"), str):
        partial["project"] = data["project"]
    if isinstance(data.get("volumes"), dict):
        kept_volumes: dict[str, Any] = {}
        for name, value in data["volumes"].items():
            try:
                VolumeSpec.model_validate(value or {})
                kept_volumes[name] = value
            except ValidationError:
                dropped.add(name)
        partial["volumes"] = kept_volumes
    try:
        return Spec.model_validate(partial), problems, frozenset(dropped)
    except ValidationError:
        return None, problems, frozenset(dropped)


def _policy_problems(data: dict[str, Any]) -> list[Problem]:
    """The `policy:` section, read by the policy's own model (dockmesh.model.policy): its
    network and service names must be this file's."""
    nets, services = data.get("networks"), data.get("services")
    names = set(map(str, nets)) if isinstance(nets, dict) else set()
    if isinstance(services, dict) and any(
        isinstance(s, dict) and not s.get("networks") and s.get("network_mode") is None
        for s in services.values()
    ):
        names.add(DEFAULT_NETWORK)  # made for the services that name none
    scope = Scope(
        str(data.get("project") or "project"),
        frozenset(names),
        frozenset(map(str, services)) if isinstance(services, dict) else frozenset(),
    )
    _, found = parse_policy(data.get("policy"), scope, ("policy",))
    return [Problem(path, message) for path, message in found]


def _problems_from(e: ValidationError, data: Any) -> list[Problem]:
    by_path: dict[tuple[str | int, ...], list[str]] = {}
    kinds: dict[tuple[str | int, ...], list[str]] = {}
    for err in e.errors(include_url=False):
        path = _data_path(err["loc"], data)
        if _copied_replicas(path, data):
            continue  # said once, at deploy.replicas where the file has it
        kinds.setdefault(path, []).append(err["type"])
        msg = _message(err, path)
        msgs = by_path.setdefault(path, [])
        if msg not in msgs:
            msgs.append(msg)
    out = []
    for p, m in by_path.items():
        plain = _type_message(p, kinds[p], data)
        out.append(Problem(p, plain if plain is not None else "; ".join(m)))
    return out


def _copied_replicas(path: tuple[str | int, ...], data: Any) -> bool:
    """`services.X.replicas` when the file has no such key: its value is deploy.replicas,
    copied there (ServiceSpec._deploy_replicas), whose own problem names the file's line."""
    if len(path) != 3 or path[0] != "services" or path[2] != "replicas":
        return False
    svc = _at(data, path[:2])
    return isinstance(svc, dict) and "replicas" not in svc and isinstance(svc.get("deploy"), dict)


# What a value of the wrong type should have been, in words.
_EXPECTED = {
    "string_type": "text",
    "list_type": "a list",
    "int_type": "a whole number",
    "float_type": "a number",
    "bool_type": "true or false",
    "dict_type": "a mapping (key: value)",
    "model_type": "a mapping (key: value)",
    "model_attributes_type": "a mapping (key: value)",
    "none_required": "empty",
}
_DURATIONS = {"interval", "timeout", "start_period", "stop_grace_period"}


def _type_message(path: tuple[str | int, ...], kinds: list[str], data: Any) -> str | None:
    """`interval: 2` → "a duration with a unit, like 2s, not the number 2": a value of the
    wrong type, said in the file's words, when every complaint about it is its type."""
    if not kinds or not all(k in _EXPECTED for k in kinds):
        return None
    value = _at(data, path)
    # Not `true` (a bool is an int) nor `.inf`: "like 1s (not the bare number 1)" named
    # neither.
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if path and path[-1] in _DURATIONS and number and value == value and abs(value) != inf:
        return f"must be a duration with a unit, like {value:g}s (not the bare number {value:g})"
    wanted = list(dict.fromkeys(_EXPECTED[k] for k in kinds if k != "none_required"))
    if "a number" in wanted and "a whole number" in wanted:
        wanted.remove("a whole number")
    if not wanted:
        return None
    said = wanted[0] if len(wanted) == 1 else ", ".join(wanted[:-1]) + " or " + wanted[-1]
    if "text" in wanted and isinstance(value, int | float) and not isinstance(value, bool):
        return f'must be {said}, not the number {value!r} (quote it: "{value}")'
    return f"must be {said}, not {_describe(value)}"


def _at(data: Any, path: tuple[str | int, ...]) -> Any:
    node = data
    for part in path:
        if not isinstance(node, dict | list):
            return None
        try:
            node = node[part]  # type: ignore[index]  # a list's part is an int: _data_path's
        except (KeyError, IndexError, TypeError):
            return None
    return node


def _describe(value: Any) -> str:
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, int | float):
        return f"the number {value!r}"
    if isinstance(value, str):
        shown = value if len(value) <= 30 else value[:29] + "…"
        return f"the text {shown!r}"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return "empty" if value is None else type(value).__name__


def _data_path(loc: tuple[Any, ...], data: Any) -> tuple[str | int, ...]:
    """Pydantic's location with its union-member tags dropped: walk the data itself."""
    path: list[str | int] = []
    node = data
    for part in loc:
        if (isinstance(node, dict) and part in node) or (
            isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node)
        ):
            path.append(part)
            node = node[part]
        elif isinstance(node, dict) and isinstance(part, str) and not _is_union_tag(part):
            path.append(part)  # a missing or extra key: name it
            node = None
        # else: a union tag such as 'str' or 'list[str]' — skip it
    return tuple(path)


def _is_union_tag(part: str) -> bool:
    return (
        part in {"str", "int", "float", "bool", "list[str]", "none"}
        or "[" in part
        or (part.startswith("function-"))
    )


def _message(err: Any, path: tuple[str | int, ...] = ()) -> str:
    kind = err["type"]
    if kind == "extra_forbidden":
        key = path[-1] if path else None
        known = _keys_at(path[:-1]) if isinstance(key, str) else []
        hint = did_you_mean(key, known) if isinstance(key, str) else ""
        if not hint and key in _COMPOSE_ONLY:
            return "unknown key: a Compose key dockmesh does not take (yet)"
        return "unknown key" + hint
    if kind == "missing":
        return "is required"
    if kind == "literal_error":
        return f"must be one of {err['ctx']['expected']}"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return "must be a mapping (key: value)"
    if kind == "value_error":  # our own validators' words, without pydantic's "Value error, "
        return str(err["ctx"]["error"]) if "error" in err.get("ctx", {}) else str(err["msg"])
    return str(err["msg"]).replace("Input should be", "must be")


# Compose keys a file may carry over that dockmesh does not take: said as such, not only
# "unknown".
_COMPOSE_ONLY = frozenset(
    [
        "build",
        "container_name",
        "logging",
        "extra_hosts",
        "secrets",
        "configs",
        "profiles",
        "read_only",
        "privileged",
        "devices",
        "dns",
        "dns_search",
        "ulimits",
        "sysctls",
        "security_opt",
        "shm_size",
        "links",
        "external_links",
        "pid",
        "ipc",
        "platform",
        "pull_policy",
        "domainname",
        "mac_address",
        "group_add",
        "userns_mode",
        "cgroup_parent",
        "isolation",
        "oom_score_adj",
        "storage_opt",
        "labels_file",
        "external",
        "driver_opts",
        "attachable",
    ]
)


def _keys_at(path: tuple[str | int, ...]) -> list[str]:
    """The keys the model at `path` (of the document) takes, for "did you mean"."""
    node: Any = Spec
    for part in path:
        node = _inside(node, part)
        if node is None:
            return []
    model = _model_of(node)
    keys = list(model.model_fields) if model is not None else []
    return [*keys, "version"] if model is Spec else keys


def _inside(annotation: Any, part: str | int) -> Any:
    model = _model_of(annotation)
    if model is not None:
        f = model.model_fields.get(str(part))
        return None if f is None else f.annotation
    for arg in _union_args(annotation):
        origin = get_origin(arg)
        if origin is dict:
            return get_args(arg)[1]
        if origin is list and isinstance(part, int):
            return get_args(arg)[0]
    return None


def _union_args(annotation: Any) -> tuple[Any, ...]:
    if get_origin(annotation) in (Union, types.UnionType):
        return get_args(annotation)
    return (annotation,)


def _model_of(annotation: Any) -> type[BaseModel] | None:
    for arg in _union_args(annotation):
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return arg
    return None


def _without_extensions(data: dict[Any, Any]) -> dict[Any, Any]:
    """Compose's extension fields (`x-…`: at the top, and in a service or network) are for the
    file's own anchors and tools; they are left out, as Compose leaves them."""

    def strip(d: Any) -> Any:
        if not isinstance(d, dict):
            return d
        return {k: v for k, v in d.items() if not (isinstance(k, str) and k.startswith("x-"))}

    out: dict[Any, Any] = strip(data)
    # Compose's `version:` (obsolete there too) says nothing dockmesh needs.
    out.pop("version", None)
    for section in ("services", "networks", "volumes"):
        entries = out.get(section)
        if isinstance(entries, dict):
            out[section] = {name: strip(v) for name, v in entries.items()}
    return out


DEFAULT_NETWORK = "default"


def with_default_network(spec: Spec) -> Spec:
    """Compose's default network: a service that names no network (and no network_mode)
    joins `default` (`<project>_default`), where its service name resolves; the network is
    made when a service uses it, with the file's `networks: {default: …}` when it has one."""
    alone = [name for name, s in spec.services.items() if not s.networks and s.network_mode is None]
    if not alone:
        return spec
    services = dict(spec.services)
    for name in alone:
        attach = ServiceNetwork(aliases=[name])
        services[name] = services[name].model_copy(update={"networks": {DEFAULT_NETWORK: attach}})
    networks = dict(spec.networks)
    networks.setdefault(DEFAULT_NETWORK, None)
    return spec.model_copy(update={"services": services, "networks": networks})
