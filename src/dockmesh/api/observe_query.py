"""The questions another host's command line asks this agent about its own containers
(`/v1/dockmesh/stats`, `/v1/dockmesh/doctor`, `/v1/dockmesh/flows`), parsed from the raw
query string. Pure: bytes in, a question out, or an `ApiError` 400 whose reason is one line.

A container is named as Docker names one: a name (`[a-zA-Z0-9][a-zA-Z0-9_.-]*`, a leading `/`
allowed as the engine reports it) or an id; nothing else reaches the topology's lookup. The
work a question may cost is bounded here: a few containers at once, and a doctor's waits
under a few seconds.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from urllib.parse import unquote_to_bytes

from dockmesh.api.errors import bad_request, shown

MAX_QUERY_BYTES = 16 * 1024
MAX_NAME = 255
MAX_CONTAINERS = 64  # names in one stats question
DOCTOR_TIMEOUT_S = 1.0
MAX_DOCTOR_TIMEOUT_S = 5.0
MIN_DOCTOR_TIMEOUT_S = 0.05
FLOWS_BY = ("container", "service")
_NAME = re.compile(r"/?[A-Za-z0-9][A-Za-z0-9_.-]*")
_KNOWN = {
    "stats": frozenset({"container"}),
    "doctor": frozenset({"container", "timeout"}),
    "flows": frozenset({"by"}),
}


@dataclass(frozen=True, slots=True)
class StatsQuestion:
    containers: tuple[str, ...]  # empty: every container of the agent's engines


@dataclass(frozen=True, slots=True)
class DoctorQuestion:
    container: str
    timeout_s: float


@dataclass(frozen=True, slots=True)
class FlowsQuestion:
    by: str


def _pairs(raw: bytes, kind: str) -> list[tuple[str, bytes]]:
    """`a=1&b=2` → [("a", b"1"), ("b", b"2")], values still bytes (decoded by whoever knows
    what they must be). An unknown parameter is refused: it would ask a question this agent
    does not answer."""
    if len(raw) > MAX_QUERY_BYTES:
        raise bad_request(f"the query string is longer than {MAX_QUERY_BYTES} bytes")
    out: list[tuple[str, bytes]] = []
    for part in raw.split(b"&"):
        if not part:
            continue
        key_raw, _, value = part.partition(b"=")
        key_bytes = unquote_to_bytes(key_raw.replace(b"+", b" "))
        try:
            key = key_bytes.decode("ascii")
        except UnicodeDecodeError:
            raise bad_request(f"unknown parameter {shown(key_bytes)}") from None
        if key not in _KNOWN[kind]:
            raise bad_request(f"unknown parameter {shown(key)}")
        out.append((key, unquote_to_bytes(value.replace(b"+", b" "))))
    return out


def container_name(value: bytes) -> str:
    """A container's name or id from a client's bytes, or a 400 saying why not."""
    if not value:
        raise bad_request("container: empty")
    if len(value) > MAX_NAME + 1:
        raise bad_request(f"container: longer than {MAX_NAME} characters")
    try:
        text = value.decode("ascii")
    except UnicodeDecodeError:
        raise bad_request(f"container {shown(value)}: not a container name or id") from None
    if not _NAME.fullmatch(text):
        raise bad_request(f"container {shown(text)}: not a container name or id")
    return text.removeprefix("/")


def _one(pairs: list[tuple[str, bytes]], key: str) -> bytes | None:
    values = [v for k, v in pairs if k == key]
    if len(values) > 1:
        raise bad_request(f"{key}: given {len(values)} times")
    return values[0] if values else None


def parse_stats(raw: bytes) -> StatsQuestion:
    pairs = _pairs(raw, "stats")
    if len(pairs) > MAX_CONTAINERS:
        raise bad_request(f"container: at most {MAX_CONTAINERS} in one question")
    names = tuple(dict.fromkeys(container_name(v) for _, v in pairs))
    return StatsQuestion(names)


def parse_timeout(value: bytes) -> float:
    """`1.5` or `1.5s` (seconds) within the doctor's bounds."""
    text = value.decode("ascii", "replace").removesuffix("s")
    try:
        seconds = float(text)
    except ValueError:
        raise bad_request(f"timeout {shown(value)}: not a number of seconds") from None
    if not math.isfinite(seconds) or not (MIN_DOCTOR_TIMEOUT_S <= seconds <= MAX_DOCTOR_TIMEOUT_S):
        raise bad_request(
            f"timeout {shown(value)}: from {MIN_DOCTOR_TIMEOUT_S:g} to "
            f"{MAX_DOCTOR_TIMEOUT_S:g} seconds"
        )
    return seconds


def parse_doctor(raw: bytes) -> DoctorQuestion:
    pairs = _pairs(raw, "doctor")
    name = _one(pairs, "container")
    if name is None:
        raise bad_request("container: missing (?container=NAME)")
    timeout = _one(pairs, "timeout")
    return DoctorQuestion(
        container_name(name), DOCTOR_TIMEOUT_S if timeout is None else parse_timeout(timeout)
    )


def parse_flows(raw: bytes) -> FlowsQuestion:
    by = _one(_pairs(raw, "flows"), "by")
    if by is None:
        return FlowsQuestion("container")
    text = by.decode("ascii", "replace")
    if text not in FLOWS_BY:
        raise bad_request(f"by {shown(by)}: 'container' or 'service'")
    return FlowsQuestion(text)
