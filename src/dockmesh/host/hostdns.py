"""The host resolving the agent's domain: the facts read from the machine, the files written
and the resolver restarted (the decisions are `dockmesh.codecs.hostdns`'s).

Every path is under `root` (`/` on a host; a temporary tree in tests). Processes are the
machine's own (`/proc`): systemd need not be PID 1, so a resolver that no init system keeps is
restarted by its pid and its own command line.

Files are written whole by rename; a file dockmesh did not write (no `HEADER`) is never
overwritten or removed; applying what is already in place changes nothing and restarts
nothing.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path, PurePosixPath

from dockmesh.codecs.hostdns import (
    DNSMASQ_CONF,
    DNSMASQ_RULE,
    OWN_DNSMASQ_CONF,
    OWN_PID_FILE,
    OWN_UPSTREAM,
    RESOLV_CONF,
    RESOLV_CONF_ORIG,
    RESOLVED_DROPIN,
    RESOLVED_NEGATIVE_ANCHOR,
    HostDnsError,
    HostDnsInputError,
    HostDnsPlan,
    HostFacts,
    PlannedFile,
    Process,
    Restart,
    is_ours,
    plan,
)

__all__ = [
    "HostDnsError",
    "HostDnsInputError",
    "HostDnsPlan",
    "apply_host_dns",
    "gather_facts",
    "plan_host_dns",
    "remove_host_dns",
]

PROC = Path("/proc")


def _read(path: Path) -> str | None:
    try:
        return path.read_text(errors="replace")
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError):
        return None


def _processes(proc: Path, name: str) -> tuple[Process, ...]:
    found = []
    for d in proc.glob("[0-9]*"):
        if (_read(d / "comm") or "").strip() != name:
            continue
        try:
            raw = (d / "cmdline").read_bytes()
        except OSError:
            continue  # ended meanwhile
        argv = tuple(a.decode(errors="replace") for a in raw.split(b"\0") if a)
        if argv:
            found.append(Process(int(d.name), argv))
    return tuple(sorted(found, key=lambda p: p.pid))


def _dnsmasq_binary(root: Path) -> str | None:
    for where in ("usr/sbin", "usr/bin", "sbin", "bin"):
        if os.access(root / where / "dnsmasq", os.X_OK):
            return str(root / where / "dnsmasq")
    return shutil.which("dnsmasq") if root == Path("/") else None


def gather_facts(root: Path = Path("/"), proc: Path | None = None) -> HostFacts:
    """What `plan` needs, read from ROOT (processes from ROOT/proc unless PROC is given)."""
    proc = proc if proc is not None else root / "proc"
    resolv = root / RESOLV_CONF
    link = os.readlink(resolv) if resolv.is_symlink() else None
    return HostFacts(
        systemd_is_init=(_read(proc / "1" / "comm") or "").strip() == "systemd",
        resolved=_processes(proc, "systemd-resolve"),  # comm is cut to 15 characters
        dnsmasq=_processes(proc, "dnsmasq"),
        dnsmasq_binary=_dnsmasq_binary(root),
        dnsmasq_conf=_read(root / DNSMASQ_CONF),
        resolv_conf=_read(resolv),
        resolv_conf_link=link,
        resolv_conf_orig=_read(root / RESOLV_CONF_ORIG),
    )


def plan_host_dns(
    domain: str,
    server: str,
    port: int,
    *,
    root: Path = Path("/"),
    listen: tuple[str, int] = ("127.0.0.1", 53),
    facts: HostFacts | None = None,
) -> HostDnsPlan:
    """How this host would forward DOMAIN to SERVER:PORT (nothing is changed). Raises
    `HostDnsInputError` for bad input, `HostDnsError` when no resolver can be configured."""
    if facts is None:
        facts = gather_facts(root)
    return plan(domain, server, port, facts, root=PurePosixPath(root), listen=listen)


def write_atomically(path: Path, text: str) -> None:
    """PATH holds TEXT, or what it held before, never half of it (written beside, synced,
    then renamed over it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.dockmesh-tmp")
    with tmp.open("w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    tmp.chmod(0o644)
    os.replace(tmp, path)


def _refuse_foreign(files: tuple[PlannedFile, ...]) -> None:
    for f in files:
        path = Path(f.path)
        if path.is_symlink():
            raise HostDnsError(f"{path} is a link that dockmesh did not make: left as it is")
        text = _read(path)
        if text is not None and not is_ours(text):
            raise HostDnsError(
                f"{path} exists and dockmesh did not write it: left as it is (move it away, "
                "or put its forwarding there yourself)"
            )


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (ended, not yet reaped by its parent) counts as ended.
    return (_read(PROC / str(pid) / "stat") or "").split(") ")[-1][:1] not in ("Z", "X")


def _stop(pid: int, timeout: float = 5.0) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while _alive(pid):
        if time.monotonic() > deadline:
            raise HostDnsError(f"pid {pid} did not stop within {timeout:g}s of SIGTERM")
        time.sleep(0.02)


def _run(argv: tuple[str, ...] | list[str]) -> None:
    proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=30)
    if proc.returncode != 0:
        why = " ".join((proc.stderr or proc.stdout).split()) or f"exit {proc.returncode}"
        raise HostDnsError(f"{' '.join(argv)}: {why}")


def _start_detached(argv: tuple[str, ...]) -> int:
    """A resolver that stays in the foreground, started again away from this process."""
    p = subprocess.Popen(
        list(argv),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    return p.pid


def _own_pid(pid_file: Path, conf: str) -> int | None:
    """The pid of dockmesh's own dnsmasq when its pid file names a live dnsmasq run with
    dockmesh's configuration (a pid file can outlive its process, and pids are reused)."""
    text = (_read(pid_file) or "").strip()
    if not text.isdigit():
        return None
    pid = int(text)
    try:
        argv = (PROC / str(pid) / "cmdline").read_bytes().split(b"\0")
    except OSError:
        return None
    if f"--conf-file={conf}".encode() not in argv or not _alive(pid):
        return None
    return pid


def _restart(r: Restart, conf: str) -> str:
    if r.kind == "systemctl":
        _run(("systemctl", "restart", r.unit))
        return f"restarted {r.unit} (systemctl restart {r.unit})"
    if r.kind == "pid" and r.process is not None:
        _stop(r.process.pid)
        argv = r.process.argv
        foreground = {"-k", "--keep-in-foreground", "-d", "--no-daemon"} & set(argv)
        if Path(argv[0]).name == "dnsmasq" and not foreground:
            _run(argv)  # it goes to the background itself once it listens
        else:
            _start_detached(argv)
        return f"restarted {Path(argv[0]).name}: stopped pid {r.process.pid}, ran {' '.join(argv)}"
    old = _own_pid(Path(r.pid_file), conf)
    if old is not None:
        _stop(old)
    Path(r.pid_file).parent.mkdir(parents=True, exist_ok=True)
    _run((r.argv[0], "--test", *r.argv[1:]))
    _run(r.argv)
    new = _own_pid(Path(r.pid_file), conf)
    was = f" (was pid {old})" if old is not None else ""
    return f"started dnsmasq pid {new}{was}: {' '.join(r.argv)}"


def apply_host_dns(plan: HostDnsPlan) -> list[str]:
    """Writes the plan's files and restarts the resolver when one changed (or dockmesh's own
    dnsmasq is not running). Returns what was done, one line each."""
    _refuse_foreign(plan.files)
    lines: list[str] = []
    if plan.resolv_conf is not None:
        _check_resolv_conf(plan.resolv_conf, Path(plan.resolv_conf_orig))
    changed = False
    for f in plan.files:
        path = Path(f.path)
        if _read(path) == f.text:
            lines.append(f"{path}: already in place")
            continue
        write_atomically(path, f.text)
        lines.append(f"wrote {path}")
        changed = True
    conf = next((f.path for f in plan.files if f.path.endswith(OWN_DNSMASQ_CONF)), "")
    own_down = plan.restart.kind == "own" and _own_pid(Path(plan.restart.pid_file), conf) is None
    if changed or own_down:
        try:
            lines.append(_restart(plan.restart, conf))
        except HostDnsError as e:
            raise HostDnsError(f"{e} (the files are written; --remove takes them away)") from e
    else:
        lines.append(f"{plan.resolver}: nothing changed, not restarted")
    if plan.resolv_conf is not None:
        lines += _write_resolv_conf(plan.resolv_conf, Path(plan.resolv_conf_orig))
    return lines


def _check_resolv_conf(f: PlannedFile, orig: Path) -> None:
    path = Path(f.path)
    if path.is_symlink():
        raise HostDnsError(f"{path} is a link (another program keeps it): left as it is")
    current = _read(path)
    if current is not None and not is_ours(current) and orig.exists():
        raise HostDnsError(
            f"{orig} exists but {path} is not dockmesh's: which one is the host's? "
            f"remove {orig} if {path} is"
        )


def _write_resolv_conf(f: PlannedFile, orig: Path) -> list[str]:
    """The host's resolv.conf replaced after the dnsmasq answers, the original kept aside
    byte for byte (by rename: its owner, mode and times too)."""
    path = Path(f.path)
    current = _read(path)
    if current == f.text:
        return [f"{path}: already in place"]
    lines = []
    if current is not None and not is_ours(current):
        os.link(path, orig)  # fails when it exists: never lose an original
        lines.append(f"kept the host's {path} as {orig}")
    write_atomically(path, f.text)
    lines.append(f"wrote {path} (the dnsmasq first, then the previous name servers)")
    return lines


def _restart_of(unit: str, process: Process, facts: HostFacts) -> Restart:
    if facts.systemd_is_init:
        return Restart("systemctl", unit=unit)
    return Restart("pid", process=process)


def remove_host_dns(root: Path = Path("/"), *, facts: HostFacts | None = None) -> list[str]:
    """Removes what `apply_host_dns` wrote (only files carrying dockmesh's header), puts the
    host's resolv.conf back, stops dockmesh's dnsmasq and restarts a resolver whose
    configuration lost a file. Idempotent."""
    if facts is None:
        facts = gather_facts(root)
    r = PurePosixPath(root)
    conf = str(r / OWN_DNSMASQ_CONF)
    lines: list[str] = []
    removed: set[str] = set()
    resolv, orig = root / RESOLV_CONF, root / RESOLV_CONF_ORIG
    current = _read(resolv)
    if current is not None and is_ours(current) and not resolv.is_symlink():
        if orig.exists():
            os.replace(orig, resolv)
            lines.append(f"put the host's {resolv} back (from {orig})")
        else:
            lines.append(f"{resolv} is dockmesh's but {orig} is gone: left as it is")
    own = _own_pid(root / OWN_PID_FILE, conf)
    if own is not None:
        _stop(own)
        lines.append(f"stopped dockmesh's dnsmasq (pid {own})")
    ours = (RESOLVED_DROPIN, RESOLVED_NEGATIVE_ANCHOR, DNSMASQ_RULE, OWN_DNSMASQ_CONF, OWN_UPSTREAM)
    for rel in ours:
        path = root / rel
        text = _read(path)
        if text is None:
            continue
        if not is_ours(text) or path.is_symlink():
            lines.append(f"{path}: dockmesh did not write it, left as it is")
            continue
        path.unlink()
        removed.add(rel)
        lines.append(f"removed {path}")
    with contextlib.suppress(FileNotFoundError):
        (root / OWN_PID_FILE).unlink()
    if RESOLVED_DROPIN in removed and facts.resolved:
        lines.append(_restart(_restart_of("systemd-resolved", facts.resolved[0], facts), conf))
    others = [q for q in facts.dnsmasq if f"--conf-file={conf}" not in q.argv and q.pid != own]
    if DNSMASQ_RULE in removed and others:
        lines.append(_restart(_restart_of("dnsmasq", others[0], facts), conf))
    return lines or ["nothing to remove: dockmesh's host DNS forwarding is not set up"]
