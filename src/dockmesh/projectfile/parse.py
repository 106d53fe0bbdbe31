"""Small parsers for values in dockmesh.yaml: durations, port mappings, commands, template
variables, image references and HTTP check paths. Each raises ValueError (or returns the
problem) with a message fit for the user; what they accept is what the engine accepts."""

from __future__ import annotations

import ipaddress
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass

from dockmesh.model.config import PortMapping
from dockmesh.model.durations import parse_duration_ns

__all__ = [
    "RESTART_POLICIES",
    "TEMPLATE_VARIABLES",
    "PortMapping",
    "VolumeMount",
    "http_path_problem",
    "image_reference_problem",
    "is_host_path",
    "parse_bytes",
    "parse_cpus",
    "parse_duration_ns",
    "parse_port",
    "parse_restart",
    "parse_volume",
    "split_command",
    "substitute",
    "template_names",
]


def _port(text: str, what: str) -> int:
    # [0-9], not \d or isdigit(): those take Arabic-Indic and full-width digits too.
    if not re.fullmatch(r"[0-9]{1,5}", text):
        raise ValueError(f"{what} {text!r} is not a port number")
    n = int(text)
    if not 1 <= n <= 65535:
        raise ValueError(f"{what} {n} is outside 1-65535")
    return n


def parse_port(spec: str | int) -> PortMapping:
    """`8080`, `18080:8080`, `127.0.0.1:18080:8080`, `127.0.0.1::8080`, `[::1]:80:80`, `/udp`."""
    if isinstance(spec, bool):
        raise ValueError(f"{spec!r} is not a port mapping")
    if isinstance(spec, int):
        return PortMapping(_port(str(spec), "container port"))
    text = spec.strip()
    body, _, proto = text.partition("/")
    proto = proto or "tcp"
    if proto not in ("tcp", "udp", "sctp"):
        raise ValueError(f"protocol {proto!r} is not tcp, udp or sctp")
    host_ip: str | None = None
    if body.startswith("["):
        end = body.find("]")
        if end < 0 or body[end + 1 : end + 2] != ":":
            raise ValueError(f"{spec!r}: malformed IPv6 host address")
        host_ip, body = body[1:end], body[end + 2 :]
        parts = body.split(":")
        if len(parts) != 2:
            raise ValueError(f"{spec!r}: expected [IP]:HOST_PORT:CONTAINER_PORT")
        host, cont = parts
    else:
        parts = body.split(":")
        if len(parts) == 1:
            host, cont = "", parts[0]
        elif len(parts) == 2:
            host, cont = parts
        elif len(parts) == 3:
            host_ip, host, cont = parts
        else:
            raise ValueError(f"{spec!r}: expected [IP:]HOST_PORT:CONTAINER_PORT")
    if host_ip == "":
        host_ip = None
    if host_ip is not None:
        try:
            addr = ipaddress.ip_address(host_ip)
        except ValueError:
            raise ValueError(f"{spec!r}: host address {host_ip!r} is not an IP address") from None
        if isinstance(addr, ipaddress.IPv6Address) and addr.scope_id is not None:
            raise ValueError(f"{spec!r}: the engine takes no zone index (%…) in a host address")
        host_ip = str(addr)  # one spelling per address, so that equal bindings compare equal
    return PortMapping(
        _port(cont, "container port"),
        proto,
        host_ip,
        _port(host, "host port") if host else None,
    )


# --- commands and templates -----------------------------------------------------------------

TEMPLATE_VARIABLES = ("replica", "service", "project", "name")
# A name between double braces. `{{.Name}}` (a Go template, say in a command that calls
# `docker inspect -f`) is not one of ours and stays as written.
_TEMPLATE = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")


def template_names(text: str) -> list[str]:
    """The template variables `text` uses, in order, each once."""
    return list(dict.fromkeys(m.group(1) for m in _TEMPLATE.finditer(text)))


def substitute(text: str, values: Mapping[str, str]) -> str:
    """`text` with each `{{ name }}` of `values` replaced; others are left as written."""
    return _TEMPLATE.sub(lambda m: values.get(m.group(1), m.group(0)), text)


def split_command(text: str) -> list[str]:
    """A command line → its argv, as a POSIX shell would split it (without expanding)."""
    try:
        return shlex.split(text)
    except ValueError as e:
        if "quotation" in str(e):
            raise ValueError("unbalanced quote: a quote is opened and never closed") from None
        raise ValueError("a trailing backslash escapes nothing") from None


# --- image references -----------------------------------------------------------------------

# Docker's reference grammar (distribution/reference, as the 20.10 engine applies it).
_ALNUM = r"[a-z0-9]+"
_COMPONENT = re.compile(rf"{_ALNUM}(?:(?:[._]|__|-+){_ALNUM})*")
_DOMAIN_PART = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = re.compile(rf"{_DOMAIN_PART}(?:\.{_DOMAIN_PART})*(?::[0-9]+)?")
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_DIGEST_HEX = {"sha256": 64, "sha384": 96, "sha512": 128}
_NAME_MAX = 255
_FORM = "[registry[:port]/]name[:tag][@sha256:digest]"


def image_reference_problem(ref: str) -> str | None:
    """Why the engine would refuse `ref` as an image reference, or None."""
    if not ref:
        return "must not be empty"
    if not ref.isascii() or not ref.isprintable() or " " in ref:
        return f"{ref!r}: an image reference has no spaces, control or non-ASCII characters"
    name, at, digest = ref.partition("@")
    if at:
        algo, colon, hexpart = digest.partition(":")
        size = _DIGEST_HEX.get(algo)
        if not colon or size is None or not re.fullmatch(f"[0-9a-f]{{{size}}}", hexpart):
            return f"{ref!r}: a digest is sha256: and 64 lowercase hexadecimal digits"
    cut = name.rfind(":")
    if cut > name.rfind("/"):
        name, tag = name[:cut], name[cut + 1 :]
        if not _TAG.fullmatch(tag):
            return (
                f"{ref!r}: the tag {tag!r} is not valid (letters, digits, '_', '.', '-'; "
                "at most 128, not starting with '.' or '-')"
            )
    if len(name) > _NAME_MAX:
        return f"{ref!r}: the repository name is longer than {_NAME_MAX} characters"
    first, slash, rest = name.partition("/")
    # As the engine splits it: the first part is a registry only when it looks like a host.
    if slash and ("." in first or ":" in first or first == "localhost"):
        if not _DOMAIN.fullmatch(first):
            return f"{ref!r}: {first!r} is not a valid registry host[:port]"
        path = rest
    else:
        path = name
    for component in path.split("/"):
        if _COMPONENT.fullmatch(component):
            continue
        if component and _COMPONENT.fullmatch(component.lower()):
            return f"{ref!r}: repository names are lowercase ({path.lower()!r})"
        if not component:
            return f"{ref!r}: the repository name has an empty part (expected {_FORM})"
        return f"{ref!r}: {component!r} is not a valid repository name part (expected {_FORM})"
    return None


# --- HTTP checks ----------------------------------------------------------------------------


def http_path_problem(path: str) -> str | None:
    """Why `path` is not a request target a check can send as written, or None."""
    if not path.startswith("/"):
        return f"{path!r}: a path starts with '/'"
    if not all("!" <= ch <= "~" for ch in path):
        return (
            f"{path!r}: a request path is printable ASCII without spaces "
            "(percent-encode the rest, e.g. %20)"
        )
    return None


# --- volumes, sizes, restart policies ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class VolumeMount:
    """One entry of a service's `volumes:`: a named volume (`kind` "volume", `source` the
    file's name for it; "" for an anonymous one) or a bind mount (`kind` "bind", `source` a
    host path as written)."""

    kind: str
    source: str
    target: str
    read_only: bool = False


def is_host_path(source: str) -> bool:
    """A bind mount's source, as Compose tells it from a volume's name."""
    return source.startswith(("/", "./", "../", "~")) or source in (".", "..", "~")


def parse_volume(text: str) -> VolumeMount:
    """`NAME:/path[:ro|rw]`, `./dir:/path[:ro|rw]`, `/host:/path[:ro|rw]` or `/path` alone
    (an anonymous volume)."""
    parts = text.split(":")
    if len(parts) > 3 or not all(parts):
        raise ValueError(
            f"{text!r}: expected NAME:/path, ./dir:/path or /path, with :ro or :rw after it"
        )
    mode = "rw"
    if len(parts) == 3:
        mode = parts.pop()
        if mode not in ("ro", "rw"):
            raise ValueError(f"{text!r}: the mode {mode!r} is not ro or rw")
    elif len(parts) == 2 and parts[1] in ("ro", "rw"):
        raise ValueError(f"{text!r}: a mode needs a source and a target: NAME:/path:{parts[1]}")
    if len(parts) == 1:
        source, target = "", parts[0]
    else:
        source, target = parts
    if not target.startswith("/"):
        raise ValueError(f"{text!r}: the path in the container {target!r} must be absolute")
    kind = "bind" if is_host_path(source) else "volume"
    return VolumeMount(kind, source, target, mode == "ro")


_SIZE = re.compile(r"([0-9]+)\s*([bkmg]?)b?", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


def parse_bytes(value: str | int) -> int:
    """A size as Compose writes it: `536870912`, `512m`, `1g`, `64k`, `512mb`."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a size")
    if isinstance(value, int):
        return value
    m = _SIZE.fullmatch(value.strip())
    if m is None:
        raise ValueError(f"{value!r} is not a size (a number of bytes, or with k, m or g: 512m)")
    return int(m.group(1)) * _SIZE_UNITS[m.group(2).lower()]


def parse_cpus(value: float | int | str) -> float:
    """`cpus: 0.5` (or "0.5"): the share of CPUs the container may use."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a number of CPUs")
    if isinstance(value, str):
        if not re.fullmatch(r"[0-9]+(\.[0-9]+)?|\.[0-9]+", value.strip()):
            raise ValueError(f"{value!r} is not a number of CPUs (like 0.5 or 2)")
        value = float(value)
    return float(value)


RESTART_POLICIES = ("no", "always", "on-failure", "unless-stopped")


def parse_restart(text: str) -> tuple[str, int]:
    """`no`, `always`, `unless-stopped`, `on-failure` or `on-failure:N` → (name, retries)."""
    name, colon, count = text.partition(":")
    if name not in RESTART_POLICIES:
        raise ValueError(
            f"{text!r}: a restart policy is no, always, on-failure[:N] or unless-stopped"
        )
    if not colon:
        return name, 0
    if name != "on-failure":
        raise ValueError(f"{text!r}: only on-failure takes a count (on-failure:3)")
    if not re.fullmatch(r"[0-9]{1,9}", count):
        raise ValueError(f"{text!r}: the count after on-failure: is a whole number")
    return name, int(count)
