"""HTTP routes declared on a container, as Traefik users write them: the `dockmesh.http.*`
labels, the same values carried in the catalog instance's Meta, and what they mean. Pure:
text in, a route (or None) and the problems found out; decoding never raises.

    dockmesh.http.host: shop.test, www.shop.test   # one or several host names; none: any host
    dockmesh.http.path: /api                       # a path prefix; default /
    dockmesh.http.strip_prefix: true               # or false, or a prefix (/api/v1) to remove
    dockmesh.http.middlewares: auth, gzip          # named in the proxy's routes file
    dockmesh.http.port: 8080                       # the port to send to; default dockmesh.port

A container declares a route when it has a host or a path label. The agent copies the labels
into its instance's Meta under keys Consul allows (letters, digits, `-`, `_`): `http-host`,
`http-path`, `http-strip-prefix`, `http-middlewares`, `http-port`; the proxy reads them there,
so a service registered through the HTTP API with the same Meta is routed as well.

Host names are matched without their port, lower-case; a path prefix is compared with the
request's normalised path, so a prefix must itself be normal (no `.`/`..` segments, no `//`,
no escapes) or it could never match. `strip_prefix: true` removes the path prefix before
the request is forwarded (`/api/users` → `/users`, `/api` → `/`); a Traefik-style provider
suffix on a middleware's name (`auth@file`) is accepted and dropped.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from dockmesh.model.labels import (
    HTTP_PREFIX,
    LABEL_HTTP_HOST,
    LABEL_HTTP_MIDDLEWARES,
    LABEL_HTTP_PATH,
    LABEL_HTTP_PORT,
    LABEL_HTTP_STRIP_PREFIX,
)

FIELDS = ("host", "path", "strip_prefix", "middlewares", "port")
LABEL_KEYS = {
    "host": LABEL_HTTP_HOST,
    "path": LABEL_HTTP_PATH,
    "strip_prefix": LABEL_HTTP_STRIP_PREFIX,
    "middlewares": LABEL_HTTP_MIDDLEWARES,
    "port": LABEL_HTTP_PORT,
}
META_KEYS = {
    "host": "http-host",
    "path": "http-path",
    "strip_prefix": "http-strip-prefix",
    "middlewares": "http-middlewares",
    "port": "http-port",
}
MAX_PATH = 1024
MAX_HOSTS = 32

_HOST_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?")
_MIDDLEWARE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}")
_TRUE = ("true", "yes", "1", "on")
_FALSE = ("false", "no", "0", "off", "")


@dataclass(frozen=True, slots=True, order=True)
class HttpRoute:
    """What a container asks the proxy for."""

    hosts: tuple[str, ...] = ()  # lower-case, without ports; empty: any host
    path: str = "/"
    strip: str | None = None  # the prefix removed before forwarding; None: none
    middlewares: tuple[str, ...] = ()
    port: int | None = None  # None: the instance's registered port


def host_problem(host: str) -> str | None:
    """None when `host` is a host name routes can match, else why not."""
    if ":" in host:
        return f"{host!r}: a host name without a port (the port is the proxy's listener's)"
    if "*" in host:
        return f"{host!r}: wildcards are not supported: list every host name"
    if len(host) > 253 or not all(_HOST_LABEL.fullmatch(p) for p in host.split(".")):
        return (
            f"{host!r} is not a host name (letters, digits, '-' and '_' between dots, "
            "each part at most 63 characters)"
        )
    return None


def path_problem(path: str) -> str | None:
    """None when `path` is a usable route prefix: it starts with `/` and is in the normal
    form requests are matched in."""
    if not path.startswith("/"):
        return f"{path!r}: a path starts with '/'"
    if len(path) > MAX_PATH:
        return f"a path of at most {MAX_PATH} characters (this one has {len(path)})"
    if not path.isascii() or not path.isprintable() or any(c.isspace() for c in path):
        return f"{path!r}: printable ASCII without spaces only"
    if "?" in path or "#" in path:
        return f"{path!r}: a path prefix, without a query ('?') or fragment ('#')"
    if "%" in path:
        return f"{path!r}: no percent-escapes in a route's path"
    segments = path.split("/")[1:]
    if any(s in (".", "..") for s in segments) or "//" in path:
        return f"{path!r}: not a normalised path (no '.' or '..' segments, no '//')"
    return None


def decode(values: Mapping[str, str], key: Mapping[str, str]) -> tuple[HttpRoute | None, list[str]]:
    """The route `values` (field → text) declare, None when they declare none or something is
    wrong; and the problems, each naming the field by `key` (its label or Meta key)."""
    given = {f: values[f] for f in FIELDS if f in values}
    if not given:
        return None, []
    problems: list[str] = []
    if "host" not in given and "path" not in given:
        names = ", ".join(key[f] for f in given)
        return None, [f"{names} without {key['host']} or {key['path']}: no route"]
    hosts: list[str] = []
    if "host" in given:
        for h in given["host"].split(","):
            h = h.strip().lower().removesuffix(".")
            if not h or h in hosts:
                continue
            why = host_problem(h)
            if why:
                problems.append(f"{key['host']}: {why}")
            hosts.append(h)
        if not hosts:
            problems.append(f"{key['host']} is empty: give host names, or remove it")
        elif len(hosts) > MAX_HOSTS:
            problems.append(f"{key['host']}: at most {MAX_HOSTS} host names")
    path = given.get("path", "/").strip() or "/"
    why = path_problem(path)
    if why:
        problems.append(f"{key['path']}: {why}")
    strip: str | None = None
    text = given.get("strip_prefix", "false").strip()
    if text.lower() in _TRUE:
        strip = path if path != "/" else None
    elif text.lower() in _FALSE:
        strip = None
    elif text.startswith("/"):
        why = path_problem(text)
        if why:
            problems.append(f"{key['strip_prefix']}: {why}")
        strip = text if text != "/" else None
    else:
        problems.append(
            f"{key['strip_prefix']}={text!r}: expected true, false or a path prefix such as /api"
        )
    middlewares: list[str] = []
    for m in given.get("middlewares", "").split(","):
        m = m.strip()
        if not m:
            continue
        name, at, provider = m.partition("@")
        if at and provider != "file":
            problems.append(
                f"{key['middlewares']}: {m!r}: middlewares come from the proxy's routes file "
                "(no @provider, or @file)"
            )
            continue
        if not _MIDDLEWARE.fullmatch(name):
            problems.append(f"{key['middlewares']}: {m!r} is not a middleware's name")
            continue
        if name not in middlewares:
            middlewares.append(name)
    port: int | None = None
    if "port" in given:
        t = given["port"].strip()
        if t.isascii() and t.isdigit() and 1 <= int(t) <= 65535:
            port = int(t)
        else:
            problems.append(f"{key['port']}={given['port']!r}: expected a port from 1 to 65535")
    if problems:
        return None, problems
    return HttpRoute(tuple(hosts), path, strip, tuple(middlewares), port), []


def decode_fields(values: Mapping[str, str]) -> tuple[HttpRoute | None, list[str]]:
    """The route given field by field (a project file's `expose:`): problems name the field."""
    return decode(values, {f: f for f in FIELDS})


def decode_labels(labels: Mapping[str, str]) -> tuple[HttpRoute | None, list[str]]:
    """The route a container's labels declare (problems name the labels). An unknown
    `dockmesh.http.*` label is a problem too: a misspelt one would be silently ignored."""
    values = {f: labels[k] for f, k in LABEL_KEYS.items() if k in labels}
    route, problems = decode(values, LABEL_KEYS)
    unknown = sorted(
        k for k in labels if k.startswith(HTTP_PREFIX) and k not in LABEL_KEYS.values()
    )
    if unknown:
        known = ", ".join(LABEL_KEYS.values())
        problems = [*(f"{k}: unknown label (expected {known})" for k in unknown), *problems]
    return route, problems


def decode_meta(meta: Mapping[str, str]) -> tuple[HttpRoute | None, list[str]]:
    """The route an instance's Meta declares (problems name the Meta keys)."""
    values = {f: meta[k] for f, k in META_KEYS.items() if k in meta}
    return decode(values, META_KEYS)


def meta_of_labels(labels: Mapping[str, str]) -> dict[str, str]:
    """The `dockmesh.http.*` labels as Meta entries, as written (the proxy decodes them:
    its log says what is wrong with them, where the routes are)."""
    return {META_KEYS[f]: labels[k] for f, k in LABEL_KEYS.items() if k in labels}


def encode_labels(route: HttpRoute) -> dict[str, str]:
    """The labels that declare `route` (`decode_labels` gives it back)."""
    out = {LABEL_HTTP_PATH: route.path}
    if route.hosts:
        out[LABEL_HTTP_HOST] = ",".join(route.hosts)
    if route.strip is not None:
        out[LABEL_HTTP_STRIP_PREFIX] = "true" if route.strip == route.path else route.strip
    if route.middlewares:
        out[LABEL_HTTP_MIDDLEWARES] = ",".join(route.middlewares)
    if route.port is not None:
        out[LABEL_HTTP_PORT] = str(route.port)
    return out
