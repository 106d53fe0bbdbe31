"""The host resolving the agent's domain: which resolver forwards it, and the files that say so.

Pure: the host's facts (gathered by `dockmesh.host.hostdns`) in, a plan out; the files' texts
rendered here, written there. Consul documents the same forwarding: a systemd-resolved
drop-in where resolved runs, else a dnsmasq rule.

- systemd-resolved runs: `/etc/systemd/resolved.conf.d/dockmesh.conf` with
  `DNS=SERVER:PORT` and `Domains=~DOMAIN` (a routing-only domain: only its names go there),
  the domain as a DNSSEC negative trust anchor, then resolved is restarted.
- a dnsmasq runs (and reads `/etc/dnsmasq.d`): the rule `server=/DOMAIN/SERVER#PORT` in
  `/etc/dnsmasq.d/dockmesh.conf`, then that dnsmasq is restarted (it reads `server=` lines only
  when it starts).
- dnsmasq is installed and none runs: the same rule, and dockmesh's own dnsmasq
  (`/etc/dockmesh/dnsmasq.conf`: listening on LISTEN, the host's previous name servers as its
  upstreams) which the host then uses: `/etc/resolv.conf` is kept as
  `/etc/resolv.conf.dockmesh-orig` and the new one names the dnsmasq first and the previous
  name servers after it, so that the host still resolves everything else when the dnsmasq is
  down, and so that Docker, which skips loopback name servers when it copies the host's file
  into containers, still finds the previous ones.
- neither: an error saying what to install.

Every file dockmesh writes starts with `HEADER`; a file without it is never overwritten or
removed.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from pathlib import PurePosixPath

from dockmesh.codecs.resolvconf import parse_resolv_conf

HEADER = "# Written by dockmesh (dockmesh agent host-dns); `--remove` takes it away.\n"

RESOLVED_DROPIN = "etc/systemd/resolved.conf.d/dockmesh.conf"
RESOLVED_NEGATIVE_ANCHOR = "etc/dnssec-trust-anchors.d/dockmesh.negative"
RESOLVED_STUB = "127.0.0.53"
DNSMASQ_RULE = "etc/dnsmasq.d/dockmesh.conf"
OWN_DNSMASQ_CONF = "etc/dockmesh/dnsmasq.conf"
OWN_UPSTREAM = "etc/dockmesh/resolv.upstream"
OWN_PID_FILE = "run/dockmesh/dnsmasq.pid"
RESOLV_CONF = "etc/resolv.conf"
RESOLV_CONF_ORIG = "etc/resolv.conf.dockmesh-orig"
DNSMASQ_CONF = "etc/dnsmasq.conf"
DNSMASQ_DIR = "etc/dnsmasq.d"

_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?")


class HostDnsInputError(ValueError):
    """A domain, server, port or listen address that cannot be used: one line saying which."""


class HostDnsError(Exception):
    """The host cannot forward the domain as it is (no resolver to configure, a file that is
    not dockmesh's in the way): one line saying what to do."""


def is_ours(text: str) -> bool:
    """Written by dockmesh: its header, as a `#` comment or (trust anchor files) a `;` one."""
    return text.startswith((HEADER, ";" + HEADER[1:]))


def check_domain(domain: str) -> str:
    """The domain as written into the files: lowercase, without the final dot."""
    d = domain.lower().removesuffix(".")
    if not d:
        raise HostDnsInputError(f"domain {domain!r}: empty")
    if len(d) > 253:
        raise HostDnsInputError(f"domain {domain[:40]!r}…: longer than 253 characters")
    for label in d.split("."):
        if not _LABEL.fullmatch(label):
            raise HostDnsInputError(
                f"domain {domain!r}: {label!r} is not a DNS label (letters, digits, '-' and "
                "'_', 1 to 63, not starting or ending with '-')"
            )
    return d


def check_server(server: str) -> str:
    """An IP address (resolved and dnsmasq both need one, not a name), as written."""
    try:
        ip = ipaddress.ip_address(server)
    except ValueError:
        raise HostDnsInputError(
            f"server {server!r}: not an IP address (the resolver forwards to an address)"
        ) from None
    if ip.is_unspecified or ip.is_multicast:
        raise HostDnsInputError(f"server {server!r}: not an address a resolver can ask")
    return str(ip)


def check_port(port: int, what: str = "port") -> int:
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise HostDnsInputError(f"{what} {port!r}: a number from 1 to 65535")
    return port


def hostport(server: str, port: int) -> str:
    return f"[{server}]:{port}" if ":" in server else f"{server}:{port}"


def render_resolved(domain: str, server: str, port: int) -> str:
    """`Domains=~DOMAIN` routes the domain's names (and only them) to this link's server.
    Nothing follows `#` in `DNS=`: resolved.conf(5) reads it as the server's name for
    DNS-over-TLS, not as a domain."""
    return f"{HEADER}[Resolve]\nDNS={hostport(server, port)}\nDomains=~{domain}\n"


def render_negative_anchor(domain: str) -> str:
    """The domain exempt from DNSSEC validation, as resolved's own list exempts `home.`,
    `internal.` and other private names: the agent's answers are unsigned, and the root
    proves the domain does not exist, so a validating resolved would call them bogus.
    Narrower than Consul's advice (`DNSSEC=false` for every name)."""
    return f"; {HEADER[2:]}{domain}\n"


def render_dnsmasq_rule(domain: str, server: str, port: int) -> str:
    return f"{HEADER}server=/{domain}/{server}#{port}\n"


def render_own_dnsmasq(root: PurePosixPath, listen: tuple[str, int]) -> str:
    """dockmesh's own dnsmasq: only on LISTEN, the previous name servers as upstreams, the
    rules of /etc/dnsmasq.d, its pid where `remove` finds it."""
    ip, port = listen
    return (
        f"{HEADER}"
        f"listen-address={ip}\n"
        f"port={port}\n"
        "bind-interfaces\n"
        f"resolv-file={root / OWN_UPSTREAM}\n"
        f"conf-dir={root / DNSMASQ_DIR},*.conf\n"
        f"pid-file={root / OWN_PID_FILE}\n"
        # Answers for the domain change as instances come and go: the agent's TTL rules.
        "cache-size=1000\n"
    )


def render_upstream(original: str, listen_ip: str) -> str:
    servers = [s for s in parse_resolv_conf(original).nameservers if s != listen_ip]
    return HEADER + "".join(f"nameserver {s}\n" for s in servers)


def render_resolv_conf(original: str, listen_ip: str) -> str:
    """The host's resolv.conf: the dnsmasq first, then the previous name servers, search
    and options as they were."""
    parsed = parse_resolv_conf(original)
    lines = [f"nameserver {listen_ip}"]
    lines += [f"nameserver {s}" for s in parsed.nameservers if s != listen_ip][:2]
    if parsed.search:
        lines.append("search " + " ".join(parsed.search))
    if parsed.options:
        lines.append("options " + " ".join(parsed.options))
    return HEADER + "".join(f"{line}\n" for line in lines)


@dataclass(frozen=True)
class Process:
    pid: int
    argv: tuple[str, ...]


@dataclass(frozen=True)
class HostFacts:
    """What the plan depends on, as read from the host."""

    systemd_is_init: bool = False
    resolved: tuple[Process, ...] = ()
    dnsmasq: tuple[Process, ...] = ()
    dnsmasq_binary: str | None = None
    dnsmasq_conf: str | None = None  # /etc/dnsmasq.conf's text
    resolv_conf: str | None = None
    resolv_conf_link: str | None = None  # where /etc/resolv.conf points when a symlink
    resolv_conf_orig: str | None = None  # the text dockmesh kept aside


@dataclass(frozen=True)
class PlannedFile:
    path: str
    text: str


@dataclass(frozen=True)
class Restart:
    """How the resolver takes the new files: `systemctl` (restart UNIT), `pid` (stop PROCESS
    and run its command line again: no init system to ask) or `own` (dockmesh's dnsmasq,
    started as ARGV, its pid in PID_FILE)."""

    kind: str
    unit: str = ""
    process: Process | None = None
    argv: tuple[str, ...] = ()
    pid_file: str = ""

    def describe(self) -> str:
        if self.kind == "systemctl":
            return f"systemctl restart {self.unit}"
        if self.kind == "pid" and self.process is not None:
            return f"restart pid {self.process.pid} ({' '.join(self.process.argv)})"
        return f"run {' '.join(self.argv)}"


@dataclass(frozen=True)
class HostDnsPlan:
    resolver: str  # "systemd-resolved" | "dnsmasq" | "dnsmasq (dockmesh's own)"
    domain: str
    server: str
    port: int
    files: tuple[PlannedFile, ...]
    restart: Restart
    # /etc/resolv.conf replaced (the original kept aside) when dockmesh runs the dnsmasq
    resolv_conf: PlannedFile | None = None
    resolv_conf_orig: str = ""
    notes: tuple[str, ...] = field(default=())

    def to_json(self) -> dict[str, object]:
        return {
            "resolver": self.resolver,
            "domain": self.domain,
            "server": self.server,
            "port": self.port,
            "files": [{"path": f.path, "text": f.text} for f in self.all_files()],
            "restart": self.restart.describe(),
            "notes": list(self.notes),
        }

    def all_files(self) -> tuple[PlannedFile, ...]:
        return self.files + ((self.resolv_conf,) if self.resolv_conf is not None else ())


def _reads_dnsmasq_d(proc: Process, conf: str | None, root: PurePosixPath) -> bool:
    """Whether this dnsmasq reads /etc/dnsmasq.d: its command line names it (Debian's init
    passes `-7 /etc/dnsmasq.d,...`), or its configuration file has a conf-dir to it."""
    where = str(root / DNSMASQ_DIR)
    if any(where in a for a in proc.argv):
        return True
    confs = [a.split("=", 1)[1] for a in proc.argv if a.startswith("--conf-file=")]
    confs += [b for a, b in zip(proc.argv, proc.argv[1:], strict=False) if a == "-C"]
    confs += [a[2:] for a in proc.argv if a.startswith("-C") and len(a) > 2]
    if confs and confs != [str(root / DNSMASQ_CONF)]:
        return False  # another file, not read here: say so rather than guess
    return conf is not None and any(
        line.strip().startswith("conf-dir=") and where in line for line in conf.splitlines()
    )


def plan(
    domain: str,
    server: str,
    port: int,
    facts: HostFacts,
    *,
    root: PurePosixPath = PurePosixPath("/"),
    listen: tuple[str, int] = ("127.0.0.1", 53),
) -> HostDnsPlan:
    """The files and the restart that make the host forward DOMAIN to SERVER:PORT."""
    d, s, p = check_domain(domain), check_server(server), check_port(port)
    listen_ip = check_server(listen[0])
    check_port(listen[1], "listen port")
    if facts.resolved:
        path = str(root / RESOLVED_DROPIN)
        restart = (
            Restart("systemctl", unit="systemd-resolved")
            if facts.systemd_is_init
            else Restart("pid", process=facts.resolved[0])
        )
        files: tuple[PlannedFile, ...] = (
            PlannedFile(path, render_resolved(d, s, p)),
            PlannedFile(str(root / RESOLVED_NEGATIVE_ANCHOR), render_negative_anchor(d)),
        )
        notes: tuple[str, ...] = ()
        if RESOLVED_STUB not in parse_resolv_conf(facts.resolv_conf or "").nameservers:
            notes = (
                f"{root / RESOLV_CONF} does not name resolved's stub {RESOLVED_STUB}: programs "
                "that read it themselves (Go, HAProxy's parse-resolv-conf, dig) do not ask "
                "resolved; link it to /run/systemd/resolve/stub-resolv.conf",
            )
        return HostDnsPlan("systemd-resolved", d, s, p, files, restart, notes=notes)
    rule = PlannedFile(str(root / DNSMASQ_RULE), render_dnsmasq_rule(d, s, p))
    conf_path = str(root / OWN_DNSMASQ_CONF)
    others = [q for q in facts.dnsmasq if f"--conf-file={conf_path}" not in q.argv]
    if others:
        proc = others[0]
        if not _reads_dnsmasq_d(proc, facts.dnsmasq_conf, root):
            raise HostDnsError(
                f"the dnsmasq running (pid {proc.pid}) does not read {root / DNSMASQ_DIR}: add "
                f"conf-dir={root / DNSMASQ_DIR}/,*.conf to its configuration, or add "
                f"server=/{d}/{s}#{p} to it yourself"
            )
        restart = (
            Restart("systemctl", unit="dnsmasq")
            if facts.systemd_is_init
            else Restart("pid", process=proc)
        )
        return HostDnsPlan("dnsmasq", d, s, p, (rule,), restart)
    if facts.dnsmasq_binary is None:
        raise HostDnsError(
            "neither systemd-resolved runs nor dnsmasq is installed: install one "
            f"(apt-get install dnsmasq), or forward {d} to {hostport(s, p)} in the host's "
            "resolver yourself"
        )
    restart = Restart(
        "own",
        argv=(facts.dnsmasq_binary, f"--conf-file={conf_path}"),
        pid_file=str(root / OWN_PID_FILE),
    )
    current = facts.resolv_conf or ""
    original = (
        facts.resolv_conf_orig
        if is_ours(current) and facts.resolv_conf_orig is not None
        else current
    )
    files = (
        rule,
        PlannedFile(str(root / OWN_UPSTREAM), render_upstream(original, listen_ip)),
        PlannedFile(conf_path, render_own_dnsmasq(root, (listen_ip, listen[1]))),
    )
    if listen[1] != 53:
        # resolv.conf cannot name a port: the host's resolver stays as it is.
        note = (
            f"the dnsmasq listens on {hostport(listen_ip, listen[1])}: resolv.conf cannot "
            "name a port, so /etc/resolv.conf is left as it is; point clients at it"
        )
        return HostDnsPlan("dnsmasq (dockmesh's own)", d, s, p, files, restart, notes=(note,))
    if facts.resolv_conf_link is not None:
        raise HostDnsError(
            f"{root / RESOLV_CONF} is a link to {facts.resolv_conf_link} (another program "
            f"keeps it): name {listen_ip} first in it there, or run systemd-resolved"
        )
    if not parse_resolv_conf(original).nameservers:
        raise HostDnsError(
            f"{root / RESOLV_CONF} names no name server: dnsmasq would have no upstream"
        )
    resolv = PlannedFile(str(root / RESOLV_CONF), render_resolv_conf(original, listen_ip))
    kept = (
        f"the host's {root / RESOLV_CONF} is kept as {root / RESOLV_CONF_ORIG} "
        "(--remove puts it back)"
    )
    return HostDnsPlan(
        "dnsmasq (dockmesh's own)",
        d,
        s,
        p,
        files,
        restart,
        resolv_conf=resolv,
        resolv_conf_orig=str(root / RESOLV_CONF_ORIG),
        notes=(kept,),
    )
