"""The proxy's settings: command-line flags plus an optional routes file (`--config FILE`).

    timeouts: {connect: 3s, response_header: 30s, client_header: 10s, idle: 60s,
               tunnel_idle: 1h, pool_idle: 15s,
               client_body: 30s,             # each request_buffer_bytes of a body (or all of
                                             # a smaller one) within this, else 408
               client_send: 60s}             # a client that takes nothing of its response
                                             # for this long is closed
    limits: {max_connections: 10000, max_header_bytes: 65536,
             max_connections_per_upstream: 1024,
             request_buffer_bytes: 65536,    # a body up to this is read whole before any
                                             # upstream is asked (slow uploads hold none)
             max_connections_per_client: 0,  # per client IP (IPv6: per /64); 0: no limit
             max_upstream_per_h2_connection: 16,  # upstream connections one HTTP/2 client
                                             # connection's streams hold at once; the
                                             # others wait for a slot
             max_buffered_bytes: 67108864}   # per worker: bytes held for clients (backlogs,
                                             # bodies, unsent responses); near it, idle
                                             # keep-alives close, then the biggest holders
    trusted_proxies: [10.0.0.0/8]    # peers whose X-Forwarded-For is appended to and whose
                                     # Forwarded, X-Forwarded-Proto/-Host (and other
                                     # X-Forwarded-*, X-Real-IP) are kept; default none:
                                     # replaced or dropped for everyone
    routes:                          # first match wins; longest prefixes first is wise
      - host: api.example.test       # optional: the Host without its port
        prefix: /api                 # optional, default /
        service: api                 # instances from the agent (--agent URL)
        balance: p2c                 # optional: the --balance default otherwise
        breaker: {failures: 5, open_for: 1s}   # optional, per upstream of the route (below)
        outlier: {failures: 5, eject_for: 30s}
        retry: {attempts: 2, on: [connect, 502]}
      - prefix: /
        backends: [http://127.0.0.1:9001, http://127.0.0.1:9002]
        health: /health              # the active check's path for backends (default /)
        upstream_protocol: h2        # optional: http/1.1 (default) or h2 (h2c, for gRPC)
        middlewares: [per-client, squeeze]   # declared below; none: the fast path
    passive:                         # passive health (resilience/passive.py), as the flags
      failure_statuses: [502, 503, 504]  # what counts against a host (add 500 to count it)
      max_ejection_percent: 50       # hosts out (breaker open or ejected) at most; never all
      panic_threshold: 50            # below this % available, balance over every host
    tls:                             # what the --tls-listen listener serves (the flags'
                                     # --tls internal, --tls-cert/--tls-key, --ca-dir: the
                                     # file's keys win over them)
      certificates:                  # each serves the names its subjectAltName lists
        - {cert: site.crt, key: site.key}   # relative to this file's folder
      internal: true                 # leaves from the dockmesh CA (`dockmesh ca init`) for
                                     # the routes' hosts no file covers, issued at first use
      ca_dir: /var/lib/dockmesh/ca   # the CA's folder (its leaves kept under leaves/)
      default_name: api.example.test # served to clients that send no SNI (default: the
                                     # first certificate file, else the first route host)
      handshake_timeout: 10s         # a client that does not finish its handshake: closed
      max_names: 1000                # leaves kept in memory at most (least recently used out)
    middlewares:                     # named; a route lists those it goes through, in order
      internal-headers:              # (proxy/middleware.py says what each kind does)
        headers:
          request: {set: {X-Env: prod}, remove: [X-Debug]}
          response: {add: {X-Frame-Options: DENY}, remove: [Server]}
      per-client: {rate_limit: {rate: 10, period: 1s, burst: 20, per: client}}
      small-bodies: {max_body: 1m}
      squeeze: {compress: {min_size: 1024, encodings: [br, gzip]}}
    access_log: {path: /var/log/dockmesh/access.log, format: json, sample: 1.0}
                                     # path - is stdout; --access-log* flags win over it

Resilience per route (each key optional; the defaults are those shown):

    breaker: {failures: 5,           # consecutive failures that open it
              failure_ratio: 0.5,    # or this share of failures over `window`...
              window: 10s, min_requests: 20,   # ...once it saw at least min_requests
              open_for: 1s,          # the first backoff, doubled (`backoff`) each trip
              backoff: 2, open_max: 30s,  # up to open_max (raised to open_for if below)
              probes: 1, close_after: 2}  # half-open: probes at once, successes to close
    outlier: {failures: 5,           # consecutive failures (failure_statuses) that eject
              gateway_failures: 3,   # consecutive 502/503/504/no answer that eject
              eject_for: 30s, eject_max: 5m}   # times the ejections so far, capped
    retry: {attempts: 3,             # per request, the first included (1: no retry)
            on: [connect, reset, 502, 503, 504],  # connect: never reached; reset: no answer
            budget: 0.2, min_per_s: 10}  # retries <= budget * requests + min_per_s a second

Routes that share a cluster (the same service or backends) must not set these differently.

A wrong file is reported as `FILE:LINE: path: problem`, every problem at once, and nothing
starts (exit 2). Pure: text in, settings or problems out.
"""

from __future__ import annotations

import ipaddress
import os.path
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from dockmesh.model.durations import parse_duration_ns
from dockmesh.pki import DEFAULT_CA_DIR
from dockmesh.projectfile.load import format_problems
from dockmesh.projectfile.problems import Path, Problem
from dockmesh.projectfile.yamlpos import load_located_bytes
from dockmesh.proxy import paths
from dockmesh.proxy.middleware import MiddlewareSpec, parse_middlewares
from dockmesh.resilience.balance import BALANCERS
from dockmesh.resilience.breaker import BreakerPolicy
from dockmesh.resilience.outlier import OutlierPolicy
from dockmesh.resilience.passive import parse_statuses
from dockmesh.resilience.retry import RETRY_ON, RetryPolicy

ACCESS_LOG_FORMATS = ("common", "json")


@dataclass(frozen=True)
class AccessLogSpec:
    """Where the access log goes (a file, or - for stdout), its format, its sample rate."""

    path: str
    format: str = "common"
    sample: float = 1.0


BALANCE_HELP = "round_robin|weighted|least_request|p2c|hash:<header>"


@dataclass
class RouteSpec:
    name: str
    service: str | None = None
    backends: list[str] = field(default_factory=list)  # host:port
    host: str | None = None
    prefix: str = "/"
    balance: str | None = None
    health_path: str = "/"
    upstream_protocol: str = "http/1.1"  # or "h2": HTTP/2 with prior knowledge (h2c)
    strip_prefix: str | None = None
    middlewares: list[str] = field(default_factory=list)  # names, in order
    # Declared on containers (`labelroutes`): the members come from the label watch.
    labelled: bool = False
    # The route's resilience settings, those given only (policy field → value): merged
    # with the defaults where the cluster is made.
    breaker: dict[str, Any] = field(default_factory=dict)
    outlier: dict[str, Any] = field(default_factory=dict)
    retry: dict[str, Any] = field(default_factory=dict)


@dataclass
class TlsSpec:
    """What a TLS listener serves (`proxy.tls.Edge`)."""

    certificates: list[tuple[str, str]] = field(default_factory=list)  # (cert, key) files
    internal: bool = False
    ca_dir: str = DEFAULT_CA_DIR
    default_name: str | None = None
    handshake_timeout: float = 10.0
    max_names: int = 1000


@dataclass
class FileSettings:
    routes: list[RouteSpec] = field(default_factory=list)
    timeouts: dict[str, float] = field(default_factory=dict)
    limits: dict[str, int] = field(default_factory=dict)
    # failure_statuses (frozenset), max_ejection_percent, panic_threshold: those given only.
    passive: dict[str, Any] = field(default_factory=dict)
    trusted_proxies: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = field(
        default_factory=list
    )
    # TlsSpec's fields, those given only (the flags give the others).
    tls: dict[str, Any] = field(default_factory=dict)
    middlewares: dict[str, MiddlewareSpec] = field(default_factory=dict)
    access_log: AccessLogSpec | None = None


def check_balance(value: str) -> str | None:
    """None when `value` names a balancer, else what is wrong with it."""
    if value in BALANCERS:
        return None
    if value.startswith("hash:") and re.fullmatch(r"[!#$%&'*+\-.^_`|~0-9A-Za-z:]+", value[5:]):
        return None
    return f"{value!r} is not a balancer: expected {BALANCE_HELP}"


def parse_backend(url: str) -> str:
    """`http://HOST:PORT` (or HOST:PORT) → `host:port`; raises ValueError saying why."""
    text = url if "://" in url else f"http://{url}"
    parts = urlsplit(text)
    if parts.scheme != "http":
        raise ValueError(f"{url!r}: only http:// backends are proxied")
    if not parts.hostname:
        raise ValueError(f"{url!r}: no host")
    try:
        port = parts.port or 80
    except ValueError:
        raise ValueError(f"{url!r}: the port must be a number from 1 to 65535") from None
    if parts.path not in ("", "/") or parts.query:
        raise ValueError(f"{url!r}: a backend is HOST:PORT, without a path")
    host = parts.hostname
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


_TIMEOUTS = (
    "connect",
    "response_header",
    "client_header",
    "idle",
    "tunnel_idle",
    "pool_idle",
    "client_body",
    "client_send",
)
_LIMITS = (
    "max_connections",
    "max_header_bytes",
    "max_connections_per_upstream",
    "request_buffer_bytes",
    "max_connections_per_client",
    "max_buffered_bytes",
    "max_upstream_per_h2_connection",
)
# Limits for which 0 means "none".
_LIMITS_ZERO_OK = ("max_connections_per_client",)
_ROUTE_KEYS = (
    "host",
    "prefix",
    "service",
    "backends",
    "balance",
    "health",
    "upstream_protocol",
    "middlewares",
    "breaker",
    "outlier",
    "retry",
)
UPSTREAM_PROTOCOLS = ("http/1.1", "h2")


def load_config(raw: bytes, filename: str) -> FileSettings:
    """The routes file's settings; raises SpecError with every problem, one line each."""
    from dockmesh.errors import SpecError

    located = load_located_bytes(raw)
    problems = list(located.problems)
    out = FileSettings()
    data = located.data
    if data is not None and not isinstance(data, dict):
        problems.append(Problem((), "must be a mapping with routes:"))
        data = None
    if isinstance(data, dict):
        problems += _check(data, out)
        _check_tls(data, out, os.path.dirname(filename), problems)
    if problems:
        raise SpecError(format_problems(filename, problems, located.lines))
    return out


def _section(
    data: dict[str, Any], name: str, known: tuple[str, ...], noun: str, problems: list[Problem]
) -> dict[str, Any]:
    """The mapping `data[name]` without the keys not `known` (reported in `problems`)."""
    section = data.get(name) or {}
    if not isinstance(section, dict):
        problems.append(Problem((name,), "must be a mapping"))
        return {}
    for k in section:
        if k not in known:
            problems.append(Problem((name, k), f"unknown {noun} (expected {', '.join(known)})"))
    return {k: v for k, v in section.items() if k in known}


_TOP = (
    "routes",
    "timeouts",
    "limits",
    "trusted_proxies",
    "passive",
    "tls",
    "middlewares",
    "access_log",
)


def _check(data: dict[str, Any], out: FileSettings) -> list[Problem]:
    problems: list[Problem] = []
    for key in data:
        if key not in _TOP:
            problems.append(Problem((key,), f"unknown key (expected {', '.join(_TOP)})"))
    _check_passive(data, out, problems)
    _check_access_log(data, out, problems)
    out.middlewares = parse_middlewares(data.get("middlewares"), problems)
    declared = data.get("middlewares")
    declared = declared if isinstance(declared, dict) else {}
    trusted = data.get("trusted_proxies") or []
    if not isinstance(trusted, list):
        problems.append(Problem(("trusted_proxies",), "must be a list of CIDRs"))
        trusted = []
    for i, cidr in enumerate(trusted):
        try:
            out.trusted_proxies.append(ipaddress.ip_network(str(cidr), strict=False))
        except ValueError:
            problems.append(Problem(("trusted_proxies", i), f"{cidr!r} is not an address or CIDR"))
    for k, v in _section(data, "timeouts", _TIMEOUTS, "timeout", problems).items():
        try:
            ns = parse_duration_ns(v)
        except ValueError as e:
            problems.append(Problem(("timeouts", k), str(e)))
            continue
        if ns <= 0:
            problems.append(Problem(("timeouts", k), "must be longer than 0"))
        out.timeouts[k] = ns / 1e9
    for k, v in _section(data, "limits", _LIMITS, "limit", problems).items():
        low = 0 if k in _LIMITS_ZERO_OK else 1
        if not isinstance(v, int) or isinstance(v, bool) or v < low:
            problems.append(Problem(("limits", k), f"must be a whole number >= {low}"))
        else:
            out.limits[k] = v
    routes = data.get("routes")
    if routes is None:
        return problems
    if not isinstance(routes, list):
        return [*problems, Problem(("routes",), "must be a list of routes")]
    for i, r in enumerate(routes):
        path: Path = ("routes", i)
        if not isinstance(r, dict):
            problems.append(Problem(path, "must be a mapping (prefix, host, service or backends)"))
            continue
        spec = RouteSpec(name=f"route{i}")
        for k in r:
            if k not in _ROUTE_KEYS:
                problems.append(
                    Problem((*path, k), f"unknown key (expected {', '.join(_ROUTE_KEYS)})")
                )
        host = r.get("host")
        if host is not None:
            if not isinstance(host, str) or not re.fullmatch(r"[A-Za-z0-9.\-_\[\]:]+", host):
                problems.append(Problem((*path, "host"), "must be a host name"))
            elif ":" in host and not re.fullmatch(r"\[[0-9A-Fa-f:.]+\]", host):
                # Requests are matched by their Host without its port: this never would.
                if "]:" in host:
                    bare = host[: host.index("]:") + 1]
                elif host.count(":") == 1:
                    bare = host.partition(":")[0]
                else:
                    bare = f"[{host.strip('[]')}]"  # an IPv6 address, as a Host writes it
                problems.append(
                    Problem((*path, "host"), f"must be a host name without a port: {bare}")
                )
            else:
                spec.host = host.lower()
        prefix = r.get("prefix", "/")
        if not isinstance(prefix, str) or not prefix.startswith("/") or not prefix.isascii():
            problems.append(Problem((*path, "prefix"), "must be a path starting with /"))
        elif not paths.is_normal(prefix.encode()) or "?" in prefix:
            # Requests are matched in normalised form: this prefix could never match.
            normal = paths.normalise_target(prefix.encode())
            hint = f": {normal.decode()}" if normal and "?" not in prefix else ""
            problems.append(Problem((*path, "prefix"), f"must be a normalised path{hint}"))
        else:
            spec.prefix = prefix
        service, backends = r.get("service"), r.get("backends")
        if (service is None) == (backends is None):
            problems.append(Problem(path, "needs exactly one of service or backends"))
        if service is not None:
            if not isinstance(service, str) or not re.fullmatch(
                r"[A-Za-z0-9][A-Za-z0-9_.\-]*", service
            ):
                problems.append(Problem((*path, "service"), "must be a service name"))
            else:
                spec.service = service
                spec.name = service
        if backends is not None:
            if not isinstance(backends, list) or not backends:
                problems.append(Problem((*path, "backends"), "must be a list of http://HOST:PORT"))
            else:
                for j, b in enumerate(backends):
                    try:
                        spec.backends.append(parse_backend(str(b)))
                    except ValueError as e:
                        problems.append(Problem((*path, "backends", j), str(e)))
        balance = r.get("balance")
        if balance is not None:
            why = check_balance(str(balance))
            if why:
                problems.append(Problem((*path, "balance"), why))
            else:
                spec.balance = str(balance)
        health = r.get("health", "/")
        if not isinstance(health, str) or not health.startswith("/"):
            problems.append(Problem((*path, "health"), "must be a path starting with /"))
        else:
            spec.health_path = health
        protocol = r.get("upstream_protocol", "http/1.1")
        if protocol not in UPSTREAM_PROTOCOLS:
            problems.append(Problem((*path, "upstream_protocol"), "must be http/1.1 or h2"))
        else:
            spec.upstream_protocol = protocol
        names = r.get("middlewares") or []
        if not isinstance(names, list):
            problems.append(Problem((*path, "middlewares"), "must be a list of middleware names"))
            names = []
        for j, n in enumerate(names):
            if not isinstance(n, str) or n not in declared:
                problems.append(
                    Problem((*path, "middlewares", j), f"{n!r} is not declared in middlewares:")
                )
            elif n in out.middlewares:  # (a declared one with problems is reported there)
                spec.middlewares.append(n)
        _check_resilience(r, path, spec, problems)
        out.routes.append(spec)
    _check_shared(routes, out.routes, problems)
    return problems


# Each resilience key: (the policy's field, the kind of value).
_BREAKER = {
    "failures": ("consecutive_failures", "count"),
    "failure_ratio": ("failure_ratio", "ratio"),
    "window": ("window_s", "duration"),
    "min_requests": ("min_requests", "count"),
    "open_for": ("open_base_s", "duration"),
    "backoff": ("open_multiplier", "number"),
    "open_max": ("open_max_s", "duration"),
    "probes": ("half_open_probes", "count"),
    "close_after": ("close_after", "count"),
}
_OUTLIER = {
    "failures": ("consecutive_5xx", "count"),
    "gateway_failures": ("consecutive_gateway_failures", "count"),
    "eject_for": ("base_ejection_s", "duration"),
    "eject_max": ("max_ejection_s", "duration"),
}
_RETRY = {
    "attempts": ("attempts", "count"),
    "on": ("on", "on"),
    "budget": ("budget_ratio", "number"),
    "min_per_s": ("min_per_s", "number"),
}
_RETRY_ON_HELP = "connect, reset, 502, 503, 504"


def _value(v: Any, kind: str) -> Any:
    """A resilience setting's value; ValueError saying why it is wrong."""
    if kind == "duration":
        ns = parse_duration_ns(v)
        if ns <= 0:
            raise ValueError("must be longer than 0")
        return ns / 1e9
    if kind == "on":
        items = v if isinstance(v, list) else [v]
        on: set[str | int] = set()
        for item in items:
            key: str | int = int(item) if str(item).isdigit() else str(item)
            if key not in RETRY_ON:
                raise ValueError(f"{item!r} cannot be retried: expected some of {_RETRY_ON_HELP}")
            on.add(key)
        return frozenset(on)
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise ValueError("must be a number")
    if kind == "count":
        if not isinstance(v, int) or v < 1:
            raise ValueError("must be a whole number >= 1")
    elif kind == "ratio":
        if not 0 < v <= 1:
            raise ValueError("must be a share from 0 (excluded) to 1, such as 0.5")
    elif v < 0:
        raise ValueError("must be 0 or more")
    return v


def _check_resilience(
    r: dict[str, Any], path: Path, spec: RouteSpec, problems: list[Problem]
) -> None:
    """The route's breaker:, outlier: and retry: into `spec`, each checked whole by its
    policy too (e.g. open_max below open_for)."""
    for name, keys in (("breaker", _BREAKER), ("outlier", _OUTLIER), ("retry", _RETRY)):
        section = r.get(name)
        if section is None:
            continue
        where: Path = (*path, name)
        if not isinstance(section, dict):
            problems.append(Problem(where, f"must be a mapping of {', '.join(keys)}"))
            continue
        given: dict[str, Any] = {}
        for k, v in section.items():
            if k not in keys:
                problems.append(Problem((*where, k), f"unknown key (expected {', '.join(keys)})"))
                continue
            attr, kind = keys[k]
            try:
                given[attr] = _value(v, kind)
            except ValueError as e:
                problems.append(Problem((*where, k), str(e)))
        try:
            make_policy(name, given)
        except ValueError as e:
            # Said in the file's words, not the policy's fields.
            why = str(e)
            for k, (attr, _) in sorted(keys.items(), key=lambda kv: -len(kv[1][0])):
                why = why.replace(attr, k)
            problems.append(Problem(where, why))
            continue
        setattr(spec, name, given)


def make_policy(name: str, given: dict[str, Any], **base: Any) -> Any:
    """The resilience policy `name` (breaker, outlier, retry) with the fields `given` over
    `base` and the defaults; ValueError when they do not go together."""
    fields = {**base, **given}
    if name == "breaker":
        if "open_max_s" not in given and fields.get("open_base_s", 0) > BreakerPolicy().open_max_s:
            fields["open_max_s"] = fields["open_base_s"]  # open_for alone raises the cap
        return BreakerPolicy(**fields)
    if name == "outlier":
        if (
            "max_ejection_s" not in given
            and fields.get("base_ejection_s", 0) > OutlierPolicy().max_ejection_s
        ):
            fields["max_ejection_s"] = fields["base_ejection_s"]
        return OutlierPolicy(**fields)
    return RetryPolicy(**fields)


def _check_shared(raw: list[Any], specs: list[RouteSpec], problems: list[Problem]) -> None:
    """Routes to the same service or backends share one cluster, so one set of resilience
    settings: a route that sets them differently from an earlier one is a problem."""
    first: dict[str, tuple[int, RouteSpec]] = {}
    i = 0
    for n, r in enumerate(raw):
        if not isinstance(r, dict):
            continue
        spec = specs[i]
        i += 1
        key = spec.service or ",".join(spec.backends)
        if not key:
            continue
        seen = first.setdefault(key, (n, spec))
        if seen[1] is spec:
            continue
        for name in ("breaker", "outlier", "retry"):
            if getattr(spec, name) != getattr(seen[1], name):
                problems.append(
                    Problem(
                        (*("routes", n), name),
                        f"differs from routes.{seen[0]}'s: both go to {key}, one cluster",
                    )
                )


_PASSIVE = ("failure_statuses", "max_ejection_percent", "panic_threshold")


def _check_passive(data: dict[str, Any], out: FileSettings, problems: list[Problem]) -> None:
    for k, v in _section(data, "passive", _PASSIVE, "setting", problems).items():
        if k == "failure_statuses":
            items = v if isinstance(v, list) else [v]
            try:
                out.passive[k] = parse_statuses(",".join(str(i) for i in items))
            except ValueError as e:
                problems.append(Problem(("passive", k), f"{e}: expected a list such as [502, 503]"))
        elif isinstance(v, bool) or not isinstance(v, int | float) or not 0 <= v <= 100:
            problems.append(Problem(("passive", k), "must be a percentage from 0 to 100"))
        else:
            out.passive[k] = float(v)


_TLS = ("certificates", "internal", "ca_dir", "default_name", "handshake_timeout", "max_names")
_HOST = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.\-]*[A-Za-z0-9])?")


def _check_tls(data: dict[str, Any], out: FileSettings, base: str, problems: list[Problem]) -> None:
    """The `tls:` section; relative file names are taken from the routes file's folder."""
    for k, v in _section(data, "tls", _TLS, "setting", problems).items():
        where: Path = ("tls", k)
        if k == "certificates":
            pairs = _check_certificates(v, base, where, problems)
            if pairs is not None:
                out.tls[k] = pairs
        elif k == "internal":
            if not isinstance(v, bool):
                problems.append(Problem(where, "must be true or false"))
            else:
                out.tls[k] = v
        elif k == "ca_dir":
            if not isinstance(v, str) or not v:
                problems.append(Problem(where, "must be a folder"))
            else:
                out.tls[k] = os.path.join(base, v)
        elif k == "default_name":
            if not isinstance(v, str) or not _HOST.fullmatch(v):
                problems.append(Problem(where, "must be a host name"))
            else:
                out.tls[k] = v.lower()
        elif k == "handshake_timeout":
            try:
                ns = parse_duration_ns(v)
            except ValueError as e:
                problems.append(Problem(where, str(e)))
                continue
            if ns <= 0:
                problems.append(Problem(where, "must be longer than 0"))
            else:
                out.tls[k] = ns / 1e9
        elif isinstance(v, bool) or not isinstance(v, int) or v < 1:
            problems.append(Problem(where, "must be a whole number >= 1"))
        else:
            out.tls[k] = v


def _check_certificates(
    v: Any, base: str, where: Path, problems: list[Problem]
) -> list[tuple[str, str]] | None:
    if not isinstance(v, list):
        problems.append(Problem(where, "must be a list of {cert: FILE, key: FILE}"))
        return None
    pairs = []
    for i, item in enumerate(v):
        if (
            not isinstance(item, dict)
            or set(item) != {"cert", "key"}
            or not all(isinstance(item[f], str) and item[f] for f in ("cert", "key"))
        ):
            problems.append(Problem((*where, i), "must be {cert: FILE, key: FILE}"))
            continue
        pairs.append((os.path.join(base, item["cert"]), os.path.join(base, item["key"])))
    return pairs


_ACCESS_LOG = ("path", "format", "sample")


def check_access_log(path: object, fmt: object, sample: object) -> AccessLogSpec:
    """The access log's settings; ValueError saying what is wrong (with the key's name)."""
    if not isinstance(path, str) or not path:
        raise ValueError("path: must be a file name or - for stdout")
    if fmt not in ACCESS_LOG_FORMATS:
        raise ValueError(f"format: {fmt!r}: expected {' or '.join(ACCESS_LOG_FORMATS)}")
    if isinstance(sample, bool) or not isinstance(sample, int | float) or not 0 < sample <= 1:
        raise ValueError("sample: must be a rate > 0 and <= 1 (0.1 keeps one line in ten)")
    return AccessLogSpec(path, str(fmt), float(sample))


def _check_access_log(data: dict[str, Any], out: FileSettings, problems: list[Problem]) -> None:
    if data.get("access_log") is None:
        return
    given = _section(data, "access_log", _ACCESS_LOG, "setting", problems)
    try:
        out.access_log = check_access_log(
            given.get("path"), given.get("format", "common"), given.get("sample", 1.0)
        )
    except ValueError as e:
        key, _, why = str(e).partition(": ")
        problems.append(Problem(("access_log", key), why))
