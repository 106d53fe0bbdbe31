"""Consul's request bodies → the catalog's values. Pure: bytes in, values or an `ApiError` out.

What Consul accepts, dockmesh accepts, with these rules:

- Field names match case-insensitively and with or without underscores, as Consul's decoder
  does: python-consul sends `name`, `id`, `check`; the Go client `Name`, `ID`, `Check`;
  config-file style `deregister_critical_service_after` works too.
- A field dockmesh does not act on (`EnableTagOverride`, `TaggedAddresses`, `Connect`,
  `Kind`, a check's `Header`, `Body`, `TLSSkipVerify`, …) is accepted and ignored. A field of
  the wrong type is refused, as Go's decoder refuses it.
- A check kind dockmesh cannot run (script, Docker exec, gRPC, H2PING, alias, OS service,
  UDP) is refused with a reason: accepting it would leave a check that stays critical
  forever for no visible cause.
- A check ID already held by another instance is refused (Consul would move the check; in
  dockmesh a check belongs to the instance that registered it).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import urlsplit

from dockmesh.api.errors import ApiError, bad_request, not_found, shown
from dockmesh.model.catalog import CheckKind, CheckSpec, Instance, Status
from dockmesh.model.durations import parse_duration_ns

MAX_JSON_BYTES = 1 << 20  # a registration is a few hundred bytes; a megabyte is abuse
MAX_OUTPUT_CHARS = 4096  # Consul's check_output_max_size
MAX_NAME_CHARS = 256
MAX_WEIGHT = 65535  # an SRV record's weight is 16 bits
DEFAULT_TIMEOUT_S = 10.0  # Consul's default for HTTP and TCP checks
# Consul clamps intervals to 1 s; dockmesh allows faster probes but not a busy loop.
MIN_INTERVAL_S = 0.1

# Consul's service metadata rules (structs.ValidateServiceMetadata).
META_MAX_PAIRS = 64
META_KEY_MAX = 128
META_VALUE_MAX = 512
_META_KEY = re.compile(r"[A-Za-z0-9_-]+")
_HTTP_METHOD = re.compile(r"[A-Za-z]{1,16}")

_UNSUPPORTED_KINDS = {
    "args": "script",
    "scriptargs": "script",
    "script": "script",
    "dockercontainerid": "Docker exec",
    "grpc": "gRPC",
    "h2ping": "H2PING",
    "aliasnode": "alias",
    "aliasservice": "alias",
    "osservice": "OS service",
    "udp": "UDP",
}


@dataclass(frozen=True, slots=True)
class Registration:
    """`PUT /v1/agent/service/register` decoded: the instance and its checks."""

    instance: Instance
    checks: tuple[CheckSpec, ...]


@dataclass(frozen=True, slots=True)
class CheckUpdate:
    """`PUT /v1/agent/check/update/<id>` decoded."""

    status: Status
    output: str


# --- decoding --------------------------------------------------------------------------------


def decode_json(body: bytes) -> Any:
    """A request body as JSON, or Consul's 400 "Request decode failed". Never raises anything
    else, whatever the bytes (deep nesting, huge numbers, NaN, bad UTF-8)."""
    if len(body) > MAX_JSON_BYTES:
        raise ApiError(413, f"Request body too large: {len(body)} bytes, max {MAX_JSON_BYTES}")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise bad_request("Request decode failed: the body is not UTF-8") from None
    if not text.strip():
        raise bad_request("Request decode failed: empty body")
    try:
        return json.loads(text, parse_constant=_refuse_constant)
    except RecursionError:
        raise bad_request("Request decode failed: JSON nested too deeply") from None
    except ValueError as e:  # JSONDecodeError, and int() of thousands of digits
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise bad_request(f"Request decode failed: {first}") from None


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _fields(value: Any, what: str) -> dict[str, Any]:
    """An object's fields keyed the way Consul matches them: lower case, no underscores or
    dashes. `null` is an empty object, as Go decodes it."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise bad_request(f"Request decode failed: {what} must be an object")
    return {k.replace("_", "").replace("-", "").lower(): v for k, v in value.items()}


def _str(f: Mapping[str, Any], key: str, what: str, default: str = "") -> str:
    v = f.get(key)
    if v is None:
        return default
    if not isinstance(v, str):
        raise bad_request(f"Request decode failed: {what} must be a string, not {shown(v)}")
    return v


def _bool(f: Mapping[str, Any], key: str, what: str) -> bool:
    v = f.get(key)
    if v is None:
        return False
    if not isinstance(v, bool):
        raise bad_request(f"Request decode failed: {what} must be true or false")
    return v


def _int(f: Mapping[str, Any], key: str, what: str, default: int = 0) -> int:
    v = f.get(key)
    if v is None:
        return default
    # Go decodes 8080.0 into an int but not 8080.5, and never true or "8080".
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    if isinstance(v, bool) or not isinstance(v, int):
        raise bad_request(f"Request decode failed: {what} must be an integer, not {shown(v)}")
    return v


def _str_list(f: Mapping[str, Any], key: str, what: str) -> tuple[str, ...]:
    v = f.get(key)
    if v is None:
        return ()
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise bad_request(f"Request decode failed: {what} must be a list of strings")
    return tuple(v)


def _name(text: str, what: str) -> str:
    """Names and IDs end up in URLs, DNS answers and the store: bounded, no control bytes."""
    if len(text) > MAX_NAME_CHARS:
        raise bad_request(f"{what} is longer than {MAX_NAME_CHARS} characters")
    if not text.isprintable():
        raise bad_request(f"{what} {shown(text)} contains control characters")
    return text


def duration_s(value: Any, what: str) -> float | None:
    """A Consul duration field: a Go duration string (`10s`, `1m30s`, `0`) or a number of
    nanoseconds (Go's `time.Duration` in JSON). None when absent or empty."""
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise bad_request(f"Invalid check: {what} must be a duration like 10s, not {shown(value)}")
    if isinstance(value, (int, float)):
        if not math.isfinite(value) or value < 0 or value > 2**63 - 1:
            raise bad_request(f"Invalid check: {what} {shown(value)} is not a duration")
        return float(value) / 1e9
    if not isinstance(value, str):
        raise bad_request(f"Invalid check: {what} must be a duration like 10s, not {shown(value)}")
    if value.strip() == "0":
        return 0.0
    try:
        return parse_duration_ns(value) / 1e9
    except ValueError:
        raise bad_request(
            f"Invalid check: {what} {shown(value)} is not a duration (e.g. 10s, 500ms, 1m30s)"
        ) from None


def _status(text: str) -> Status:
    if text not in ("passing", "warning", "critical"):
        raise bad_request(f"Invalid check status: {shown(text)}")
    return cast(Status, text)


# --- services --------------------------------------------------------------------------------


def _meta(value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise bad_request("Request decode failed: Meta must be an object of strings")
    if len(value) > META_MAX_PAIRS:
        raise bad_request(f"Invalid Service Meta: more than {META_MAX_PAIRS} key/value pairs")
    for k, v in value.items():
        if not k:
            raise bad_request("Invalid Service Meta: Key cannot be blank")
        if len(k) > META_KEY_MAX:
            raise bad_request(f"Invalid Service Meta: Key is too long (limit: {META_KEY_MAX})")
        if not _META_KEY.fullmatch(k):
            raise bad_request(f"Invalid Service Meta: Key {shown(k)} contains invalid characters")
        if k.startswith("consul-"):
            raise bad_request("Invalid Service Meta: Key prefix 'consul-' is reserved")
        if len(v) > META_VALUE_MAX:
            raise bad_request(f"Invalid Service Meta: Value is too long (limit: {META_VALUE_MAX})")
    return dict(value)


def _weight(value: Any) -> int:
    w = _fields(value, "Weights")
    if not w:
        return 1
    passing = _int(w, "passing", "Weights.Passing", 1)
    warning = _int(w, "warning", "Weights.Warning", 1)
    if not 1 <= passing <= MAX_WEIGHT:
        raise bad_request(f"Invalid Weights: Passing must be between 1 and {MAX_WEIGHT}")
    if not 0 <= warning <= MAX_WEIGHT:
        raise bad_request(f"Invalid Weights: Warning must be between 0 and {MAX_WEIGHT}")
    return passing


def parse_registration(body: bytes) -> Registration:
    """`PUT /v1/agent/service/register`'s body → the instance and its checks, as Consul
    would register them (check IDs `service:<id>`, `service:<id>:<n>` when several)."""
    f = _fields(decode_json(body), "the body")
    name = _name(_str(f, "name", "Name"), "Name")
    if not name:
        raise bad_request("Missing service name")
    service_id = _name(_str(f, "id", "ID") or name, "ID")
    address = _str(f, "address", "Address")
    if len(address) > MAX_NAME_CHARS or any(c.isspace() for c in address):
        raise bad_request(f"Invalid Address {shown(address)}")
    port = _int(f, "port", "Port")
    if not 0 <= port <= 65535:
        raise bad_request(f"Invalid Port {port}: must be between 0 and 65535")
    tags = _str_list(f, "tags", "Tags")
    meta = _meta(f.get("meta"))
    weight = _weight(f.get("weights"))
    _bool(f, "enabletagoverride", "EnableTagOverride")

    raw_checks: list[dict[str, Any]] = []
    single = _fields(f.get("check"), "Check")
    if any(v not in (None, "", 0, False, [], {}) for v in single.values()):
        raw_checks.append(single)
    many = f.get("checks")
    if many is not None:
        if not isinstance(many, list):
            raise bad_request("Request decode failed: Checks must be a list of objects")
        raw_checks += [_fields(c, "each of Checks") for c in many]

    checks: list[CheckSpec] = []
    for n, c in enumerate(raw_checks, start=1):
        default_id = f"service:{service_id}" + (f":{n}" if len(raw_checks) > 1 else "")
        checks.append(
            _check(c, default_id, f"Service '{name}' check", service_id, name_required=False)
        )
    ids = [c.id for c in checks]
    for cid in ids:
        if ids.count(cid) > 1:
            raise bad_request(f"Invalid check: duplicate CheckID {shown(cid)}")

    after = [c.deregister_critical_after_s for c in checks if c.deregister_critical_after_s]
    instance = Instance(
        id=service_id,
        service=name,
        address=address,
        port=port,
        tags=tags,
        meta=meta,
        weight=weight,
        source="api",
        deregister_critical_after_s=min(after) if after else None,
    )
    return Registration(instance, tuple(checks))


# --- checks ----------------------------------------------------------------------------------


def _check(
    f: Mapping[str, Any],
    default_id: str,
    default_name: str,
    service_id: str | None,
    name_required: bool,
) -> CheckSpec:
    for key, unsupported in _UNSUPPORTED_KINDS.items():
        if f.get(key) not in (None, "", [], {}):
            raise bad_request(
                f"Invalid check: {unsupported} checks are not supported by dockmesh"
                " (use HTTP, TCP or TTL)"
            )
    name = _name(_str(f, "name", "Name"), "check Name")
    if name_required and not name:
        raise bad_request("Missing check name")
    check_id = _name(_str(f, "checkid", "CheckID") or _str(f, "id", "ID"), "CheckID")
    http = _str(f, "http", "HTTP")
    tcp = _str(f, "tcp", "TCP")
    ttl_s = duration_s(f.get("ttl"), "TTL")
    interval_s = duration_s(f.get("interval"), "Interval")
    timeout_s = duration_s(f.get("timeout"), "Timeout")
    deregister_s = duration_s(
        f.get("deregistercriticalserviceafter"), "DeregisterCriticalServiceAfter"
    )
    kinds = [k for k, set_ in (("HTTP", http), ("TCP", tcp), ("TTL", ttl_s)) if set_]
    if len(kinds) > 1:
        raise bad_request(f"Invalid check: one of HTTP, TCP or TTL, not {' and '.join(kinds)}")
    if interval_s and ttl_s:
        raise bad_request("Invalid check: Interval and TTL cannot both be specified")
    kind: CheckKind
    if http or tcp:
        kind = "http" if http else "tcp"
        if not interval_s:
            raise bad_request("Invalid check: Interval must be > 0 for HTTP or TCP checks")
        if http:
            _check_url(http)
        else:
            _check_host_port(tcp)
    elif ttl_s:
        kind = "ttl"
    else:
        raise bad_request("Invalid check: TTL must be > 0 for TTL checks (or give HTTP or TCP)")

    method = _str(f, "method", "Method") or "GET"
    if not _HTTP_METHOD.fullmatch(method):
        raise bad_request(f"Invalid check: Method {shown(method)} is not an HTTP method")
    header = f.get("header")
    if header is not None and not (
        isinstance(header, dict)
        and all(isinstance(v, list) and all(isinstance(x, str) for x in v) for v in header.values())
    ):
        raise bad_request("Request decode failed: Header must map names to lists of strings")
    _bool(f, "tlsskipverify", "TLSSkipVerify")
    rise = _int(f, "successbeforepassing", "SuccessBeforePassing")
    fall = _int(f, "failuresbeforecritical", "FailuresBeforeCritical")
    if rise < 0 or fall < 0 or rise > 1000 or fall > 1000:
        raise bad_request(
            "Invalid check: SuccessBeforePassing and FailuresBeforeCritical are 0..1000"
        )
    status_text = _str(f, "status", "Status")
    initial = _status(status_text) if status_text else "critical"

    return CheckSpec(
        id=check_id or (name if name_required else default_id),
        name=name or default_name,
        kind=kind,
        service_id=service_id,
        http=http or None,
        tcp=tcp or None,
        method=method.upper(),
        interval_s=max(interval_s or 10.0, MIN_INTERVAL_S),
        timeout_s=timeout_s or DEFAULT_TIMEOUT_S,
        ttl_s=ttl_s,
        rise=max(1, rise),
        fall=max(1, fall),
        deregister_critical_after_s=deregister_s or None,
        initial_status=initial,
        notes=_str(f, "notes", "Notes"),
    )


def _check_url(url: str) -> None:
    try:
        parts = urlsplit(url)
        port_ok = parts.port is None or parts.port > 0
    except ValueError:
        port_ok = False
        parts = None
    if (
        parts is None
        or parts.scheme not in ("http", "https")
        or not parts.hostname
        or not port_ok
        or any(c.isspace() or ord(c) < 0x20 for c in url)
    ):
        raise bad_request(f"Invalid check: HTTP {shown(url)} is not an http:// or https:// URL")


def _check_host_port(text: str) -> None:
    host, sep, port = text.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    ok = (
        sep
        and host
        and not any(c.isspace() for c in host)
        and port.isascii()
        and port.isdigit()
        and 0 < int(port) <= 65535
    )
    if not ok:
        raise bad_request(f"Invalid check: TCP {shown(text)} is not host:port")


def parse_check_registration(body: bytes) -> CheckSpec:
    """`PUT /v1/agent/check/register`'s body (ID defaults to Name). dockmesh keeps checks on
    instances only, so ServiceID is required (Consul also allows node checks)."""
    f = _fields(decode_json(body), "the body")
    service_id = _str(f, "serviceid", "ServiceID")
    spec = _check(f, "", "", service_id or None, name_required=True)
    if not service_id:
        raise bad_request("Invalid check: dockmesh keeps only service checks: give a ServiceID")
    return spec


def parse_check_update(body: bytes) -> CheckUpdate:
    """`PUT /v1/agent/check/update/<id>`: `{"Status": "passing", "Output": "…"}`."""
    f = _fields(decode_json(body), "the body")
    status = _status(_str(f, "status", "Status"))
    return CheckUpdate(status, clip_output(_str(f, "output", "Output")))


def clip_output(text: str) -> str:
    """Consul keeps at most 4 KiB of a check's output."""
    return text if len(text) <= MAX_OUTPUT_CHARS else text[:MAX_OUTPUT_CHARS]


def merge_checks(
    new: Sequence[CheckSpec], existing: Sequence[CheckSpec], replace_existing: bool
) -> list[CheckSpec]:
    """Re-registering an instance keeps the checks it had that the new definition does not
    name, unless `?replace-existing-checks` (Consul's rule)."""
    if replace_existing:
        return list(new)
    named = {c.id for c in new}
    return list(new) + [c for c in existing if c.id not in named]


def check_owner_conflict(
    checks: Sequence[CheckSpec], owner_of: Mapping[str, str | None], instance_id: str
) -> None:
    """Refuses a check ID that another instance holds (`owner_of`: check id → instance id)."""
    for c in checks:
        owner = owner_of.get(c.id)
        if c.id in owner_of and owner != instance_id:
            raise bad_request(
                f"Invalid check: CheckID {shown(c.id)} belongs to service {shown(owner)}"
            )


def ttl_not_found(check_id: str) -> ApiError:
    """Consul's answer to a TTL update for a check that is unknown or not a TTL check."""
    return not_found(f"CheckID {json.dumps(check_id)[:80]} does not have associated TTL")
