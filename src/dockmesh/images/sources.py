"""Which Debian mirror and suite this machine installs from, read from its apt sources.
Pure parsers plus one reader; no mirror host is ever written into the project."""

from __future__ import annotations

import glob
import re
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class AptSource:
    uri: str
    suites: tuple[str, ...]
    components: tuple[str, ...]


def parse_deb822(text: str) -> list[AptSource]:
    """`*.sources` files: stanzas of `Key: value` separated by blank lines."""
    out: list[AptSource] = []
    for stanza in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        key = None
        for line in stanza.splitlines():
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            if line[0].isspace() and key is not None:
                fields[key] += " " + line.strip()
                continue
            k, sep, v = line.partition(":")
            if sep:
                key = k.strip().lower()
                fields[key] = v.strip()
        if "deb" not in fields.get("types", "").split() or fields.get("enabled", "yes") == "no":
            continue
        for uri in fields.get("uris", "").split():
            out.append(
                AptSource(
                    uri,
                    tuple(fields.get("suites", "").split()),
                    tuple(fields.get("components", "").split()),
                )
            )
    return out


def parse_sources_list(text: str) -> list[AptSource]:
    """One-line `deb [opts] URI SUITE COMPONENTS…` entries."""
    out: list[AptSource] = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line.startswith("deb "):
            continue
        parts = line.split()[1:]
        if parts and parts[0].startswith("["):
            while parts and not parts[0].endswith("]"):
                parts.pop(0)
            parts = parts[1:]
        if len(parts) >= 2:
            out.append(AptSource(parts[0], (parts[1],), tuple(parts[2:])))
    return out


def pick_mirror(sources: list[AptSource], suite: str) -> str | None:
    """The first source that carries `suite` itself (not -updates or -security)."""
    for s in sources:
        if suite in s.suites and s.uri.startswith(("http://", "https://", "file:")):
            return s.uri.rstrip("/")
    return None


def os_codename(os_release: str) -> str | None:
    for line in os_release.splitlines():
        if line.startswith("VERSION_CODENAME="):
            return line.partition("=")[2].strip().strip('"') or None
    return None


def machine_mirror() -> tuple[str, str]:
    """(mirror URI, suite) of this machine. Raises LookupError when apt has none."""
    try:
        with open("/etc/os-release") as f:
            suite = os_codename(f.read()) or "bookworm"
    except OSError:
        suite = "bookworm"
    sources: list[AptSource] = []
    for path in sorted(glob.glob("/etc/apt/sources.list.d/*.sources")):
        with open(path) as f:
            sources += parse_deb822(f.read())
    for path in ["/etc/apt/sources.list", *sorted(glob.glob("/etc/apt/sources.list.d/*.list"))]:
        try:
            with open(path) as f:
                sources += parse_sources_list(f.read())
        except OSError:
            continue
    mirror = pick_mirror(sources, suite)
    if mirror is None:
        raise LookupError(f"no apt source for suite {suite!r} in /etc/apt (sources.list{{,.d}})")
    return mirror, suite
