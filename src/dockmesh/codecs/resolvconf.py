"""resolv.conf as a resolver reads it (resolv(5)). Pure: text in, a value out; a line it
cannot read is skipped."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ResolvConf:
    nameservers: tuple[str, ...] = ()
    search: tuple[str, ...] = ()
    options: tuple[str, ...] = ()

    def to_json(self) -> dict[str, list[str]]:
        return {
            "nameservers": list(self.nameservers),
            "search": list(self.search),
            "options": list(self.options),
        }


def parse_resolv_conf(text: str) -> ResolvConf:
    """resolv(5): `nameserver`, `search` (the last of `search`/`domain` wins, as glibc does)
    and `options`; comments start with '#' or ';'."""
    servers: list[str] = []
    search: tuple[str, ...] = ()
    options: list[str] = []
    for line in text.splitlines():
        f = line.split()
        if not f or f[0].startswith(("#", ";")):
            continue
        if f[0] == "nameserver" and len(f) > 1:
            servers.append(f[1])
        elif f[0] == "search":
            search = tuple(f[1:])
        elif f[0] == "domain" and len(f) > 1:
            search = (f[1],)
        elif f[0] == "options":
            options.extend(f[1:])
    return ResolvConf(tuple(servers), search, tuple(options))
