"""A Compose file → the equivalent dockmesh.yaml. Pure: loaded data in, data and notes out.

What has a dockmesh equivalent is written in dockmesh's form (long syntaxes made short,
`name:` → `project:`, `ipam.config` → `subnet`/`gateway`…); what has none is left out and
named in a note at its path, never dropped silently. Variables (`${VAR}`) are kept as written:
dockmesh substitutes them as Compose does.
"""

from __future__ import annotations

import re
from typing import Any

from dockmesh.projectfile.problems import Path, Problem

_SAME = [
    "image", "command", "entrypoint", "environment", "hostname", "restart", "user",
    "working_dir", "cap_add", "cap_drop", "tmpfs", "init", "mem_limit", "cpus",
    "stop_signal", "stop_grace_period",
]  # fmt: skip
_LEFT_OUT = {
    "expose": "not needed: containers on one network reach each other's ports",
    "container_name": "dockmesh names containers <project>-<service>-<n>",
    "build": "build the image first (docker build -t NAME), then name it in image:",
}


def convert_compose(data: Any) -> tuple[dict[str, Any], list[Problem]]:
    notes: list[Problem] = []
    if not isinstance(data, dict):
        return {}, [Problem((), "a Compose file is a mapping (services, networks, volumes)")]
    out: dict[str, Any] = {}
    for key, value in data.items():
        path: Path = (key,)
        if key == "version" or key.startswith("x-"):
            continue  # obsolete; anchors are already merged where they were used
        if key == "name":
            if isinstance(value, str) and re.fullmatch(r"[a-z0-9][a-z0-9_-]*", value):
                out["project"] = value
            else:
                notes.append(Problem(path, f"{value!r} is not a project name dockmesh takes"))
        elif key == "services" and isinstance(value, dict):
            out["services"] = {
                n: _service(n, s, (key, n), notes, data.get("name")) for n, s in value.items()
            }
        elif key == "networks" and isinstance(value, dict):
            out["networks"] = {n: _network(v, (key, n), notes) for n, v in value.items()}
        elif key == "volumes" and isinstance(value, dict):
            out["volumes"] = {n: _volume(v, (key, n), notes) for n, v in value.items()}
        else:
            notes.append(Problem(path, "not converted: dockmesh has no equivalent"))
    return out, notes


def _service(name: str, svc: Any, base: Path, notes: list[Problem], project: Any) -> dict[str, Any]:
    if not isinstance(svc, dict):
        notes.append(Problem(base, "not converted: a service is a mapping"))
        return {}
    out: dict[str, Any] = {}
    for key, value in svc.items():
        path: Path = (*base, key)
        if key.startswith("x-"):
            continue
        if key in _SAME:
            out[key] = value
        elif key == "env_file":
            out[key] = _env_files(value, path, notes)
        elif key == "labels":
            out[key] = _mapping(value)
        elif key == "networks":
            out[key] = _attachments(value, path, notes)
        elif key == "network_mode":
            if value in ("host", "none"):
                out[key] = value
            else:
                notes.append(Problem(path, f"not converted: network_mode {value!r}"))
        elif key == "ports" and isinstance(value, list):
            out[key] = [_port(p, (*path, i), notes) for i, p in enumerate(value)]
            out[key] = [p for p in out[key] if p is not None]
        elif key == "volumes" and isinstance(value, list):
            _mounts(value, path, notes, out)
        elif key in ("ports", "volumes"):
            out[key] = value  # not a list: kept as written, for dockmesh to say what is wrong
        elif key == "healthcheck":
            out[key] = _healthcheck(value, path, notes)
        elif key == "depends_on":
            out[key] = _depends_on(value, path, notes)
        elif key == "deploy":
            _deploy(value, path, notes, out)
        elif key in _LEFT_OUT:
            notes.append(Problem(path, f"not converted: {_LEFT_OUT[key]}"))
        else:
            notes.append(Problem(path, "not converted: dockmesh has no equivalent"))
    if "image" not in out:
        image = f"{project}-{name}" if isinstance(project, str) else name
        out = {"image": image, **out}
        notes.append(Problem((*base, "image"), f"no image: written as {image!r}; build it so"))
    return out


def _env_files(value: Any, path: Path, notes: list[Problem]) -> Any:
    """`[a.env, {path: b.env}]` → `[a.env, b.env]`. Compose's `required: false` (a missing
    file is skipped) and `format:` have no equivalent: dockmesh reads every file named."""
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list):
        return value
    out: list[Any] = []
    for i, f in enumerate(value):
        if not isinstance(f, dict):
            out.append(f)
            continue
        for k in sorted(set(f) - {"path"}):
            why = "dockmesh reads every env_file (a missing one is an error)"
            why = why if k == "required" else "dockmesh has no equivalent"
            notes.append(Problem((*path, i, k), f"not converted: {why}"))
        if "path" in f:
            out.append(f["path"])
        else:
            notes.append(Problem((*path, i), "not converted: an env_file without path"))
    return out


def _mapping(value: Any) -> Any:
    """`[a=1, b]` → `{a: "1", b: ""}`; a mapping as it is."""
    if isinstance(value, list):
        return {k: v for k, _, v in (str(x).partition("=") for x in value)}
    return value


def _attachments(value: Any, path: Path, notes: list[Problem]) -> Any:
    if not isinstance(value, dict):
        return value
    out: dict[str, Any] = {}
    for net, attach in value.items():
        if attach is not None and not isinstance(attach, dict):
            out[net] = attach  # kept as written, for dockmesh to say what is wrong
            continue
        kept: dict[str, Any] = {}
        for k, v in (attach or {}).items():
            if k in ("aliases", "ipv4_address", "ipv6_address"):
                kept[k] = v
            else:
                notes.append(Problem((*path, net, k), "not converted: dockmesh has no equivalent"))
        out[net] = kept or None
    return out


def _port(p: Any, path: Path, notes: list[Problem]) -> Any:
    if not isinstance(p, dict):
        return p
    target, published = p.get("target"), p.get("published")
    for k in sorted(set(p) - {"target", "published", "host_ip", "protocol"}):
        notes.append(Problem((*path, k), "not converted: dockmesh has no equivalent"))
    if target is None:
        notes.append(Problem(path, "not converted: a port without target"))
        return None
    text = str(target)
    if published is not None:
        text = f"{published}:{text}"
        if p.get("host_ip"):
            ip = str(p["host_ip"])
            text = f"[{ip}]:{text}" if ":" in ip else f"{ip}:{text}"
    elif p.get("host_ip"):
        ip = str(p["host_ip"])
        text = f"[{ip}]::{target}" if ":" in ip else f"{ip}::{target}"
    proto = p.get("protocol")
    return f"{text}/{proto}" if proto and proto != "tcp" else text


def _mounts(value: list[Any], path: Path, notes: list[Problem], out: dict[str, Any]) -> None:
    mounts: list[str] = []
    tmpfs: list[str] = []
    for i, m in enumerate(value):
        if not isinstance(m, dict):
            mounts.append(_short_mount(str(m), (*path, i), notes))
            continue
        kind, source, target = m.get("type"), m.get("source"), m.get("target")
        if kind == "tmpfs" and target:
            options = m.get("tmpfs") or {}
            if not isinstance(options, dict):
                notes.append(Problem((*path, i, "tmpfs"), "not converted: not a mapping"))
                options = {}
            size = options.get("size")
            tmpfs.append(f"{target}:size={size}" if size else str(target))
            left = [*(set(m) - {"type", "target", "tmpfs"}), *(set(options) - {"size"})]
            if left:
                what = ", ".join(sorted(map(str, left)))
                notes.append(Problem((*path, i), f"not converted: {what}"))
        elif kind in ("volume", "bind") and target:
            mode = ":ro" if m.get("read_only") else ""
            mounts.append(f"{source}:{target}{mode}" if source else str(target))
            extra = set(m) - {"type", "source", "target", "read_only"}
            if extra:
                what = ", ".join(sorted(extra))
                notes.append(Problem((*path, i), f"not converted: {what}"))
        else:
            notes.append(Problem((*path, i), f"not converted: a {kind} mount"))
    if mounts:
        out["volumes"] = mounts
    if tmpfs:
        have = out.get("tmpfs") or []
        out["tmpfs"] = [*([have] if isinstance(have, str) else have), *tmpfs]


def _short_mount(text: str, path: Path, notes: list[Problem]) -> str:
    """`SRC:DST[:MODE]` with the modes dockmesh has no equivalent for (SELinux's z and Z,
    nocopy, macOS's cached/delegated/consistent) taken out and named: left in, the file that
    convert wrote was refused by `up`."""
    parts = text.split(":")
    if len(parts) != 3 or not parts[2] or "/" in parts[2]:
        return text
    modes = parts[2].split(",")
    kept = [m for m in modes if m in ("ro", "rw")]
    dropped = [m for m in modes if m not in ("ro", "rw")]
    if dropped:
        notes.append(Problem(path, f"not converted: the mode {','.join(dropped)}"))
    return ":".join(parts[:2] + ([",".join(kept)] if kept else []))


def _healthcheck(value: Any, path: Path, notes: list[Problem]) -> Any:
    if not isinstance(value, dict):
        return value
    if value.get("disable") is True:
        return {"test": ["NONE"]}
    out: dict[str, Any] = {}
    for k, v in value.items():
        if k in ("test", "interval", "timeout", "retries", "start_period"):
            out[k] = v
        elif k != "disable":
            notes.append(Problem((*path, k), "not converted: dockmesh has no equivalent"))
    return out


def _depends_on(value: Any, path: Path, notes: list[Problem]) -> Any:
    if not isinstance(value, dict):
        return value
    out: dict[str, Any] = {}
    for dep, spec in value.items():
        if spec is not None and not isinstance(spec, dict):
            notes.append(
                Problem((*path, dep), "not converted: a dependency is a mapping (condition:)")
            )
            spec = None
        condition = (spec or {}).get("condition", "service_started")
        if condition not in ("service_started", "service_healthy"):
            notes.append(
                Problem((*path, dep, "condition"), f"not converted: {condition} (started instead)")
            )
            condition = "service_started"
        for k in sorted(set(spec or {}) - {"condition"}):
            notes.append(Problem((*path, dep, k), "not converted: dockmesh has no equivalent"))
        out[dep] = {"condition": condition}
    return out


def _deploy(value: Any, path: Path, notes: list[Problem], out: dict[str, Any]) -> None:
    if not isinstance(value, dict):
        notes.append(Problem(path, "not converted: deploy is a mapping"))
        return
    kept: dict[str, Any] = {}
    for k, v in value.items():
        if k == "replicas":
            kept[k] = v
        elif k == "resources" and isinstance(v, dict):
            limits = v.get("limits") or {}
            if not isinstance(limits, dict):
                notes.append(Problem((*path, k, "limits"), "not converted: not a mapping"))
                limits = {}
            taken = {x: limits[x] for x in ("cpus", "memory") if x in limits}
            if taken:
                kept["resources"] = {"limits": taken}
            for x in sorted(set(limits) - set(taken)):
                notes.append(Problem((*path, k, "limits", x), "not converted"))
            for x in sorted(set(v) - {"limits"}):
                notes.append(Problem((*path, k, x), "not converted: dockmesh has no equivalent"))
        else:
            notes.append(Problem((*path, k), "not converted: dockmesh has no equivalent"))
    if kept:
        out["deploy"] = kept


def _network(value: Any, path: Path, notes: list[Problem]) -> Any:
    if not isinstance(value, dict):
        return value
    out: dict[str, Any] = {}
    for k, v in value.items():
        if k in ("driver", "internal", "attachable", "enable_ipv6"):
            out[k] = v
        elif k == "labels":
            out[k] = _mapping(v)
        elif k == "driver_opts":
            out["options"] = v
        elif k == "ipam" and isinstance(v, dict):
            configs = v.get("config") or []
            if not isinstance(configs, list):
                notes.append(Problem((*path, k, "config"), "not converted: not a list"))
                configs = []
            for i, c in enumerate(configs):
                known = ("subnet", "gateway", "ip_range", "aux_addresses")
                extra = sorted(map(str, set(c) - set(known))) if isinstance(c, dict) else []
                if not isinstance(c, dict) or extra:
                    what = ", ".join(extra) if extra else "not a mapping"
                    notes.append(Problem((*path, k, "config", i), f"not converted: {what}"))
            for field in ("subnet", "gateway", "ip_range"):
                found = [c[field] for c in configs if isinstance(c, dict) and c.get(field)]
                if found:
                    out[field] = found[0] if len(found) == 1 else found
            aux: dict[str, Any] = {}
            for i, c in enumerate(configs):
                got = c.get("aux_addresses") if isinstance(c, dict) else None
                if isinstance(got, dict):
                    aux.update(got)
                elif got is not None:
                    at = (*path, k, "config", i, "aux_addresses")
                    notes.append(Problem(at, "not converted: not a mapping"))
            if aux:
                out["aux_addresses"] = aux
            for x in sorted(set(v) - {"config"}):
                notes.append(Problem((*path, k, x), "not converted: dockmesh has no equivalent"))
        elif k.startswith("x-"):
            continue
        else:
            notes.append(Problem((*path, k), "not converted: dockmesh has no equivalent"))
    return out or None


def _volume(value: Any, path: Path, notes: list[Problem]) -> Any:
    if not isinstance(value, dict):
        return value
    out: dict[str, Any] = {}
    for k, v in value.items():
        if k in ("driver", "driver_opts"):
            out[k] = v
        elif k == "labels":
            out[k] = _mapping(v)
        elif k in ("external", "name"):
            notes.append(
                Problem(
                    (*path, k),
                    f"not converted: dockmesh makes and uses its own <project>_{path[-1]}, "
                    "not an existing volume",
                )
            )
        elif not k.startswith("x-"):
            notes.append(Problem((*path, k), "not converted: dockmesh has no equivalent"))
    return out or None
