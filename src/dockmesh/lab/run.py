"""The lab's shell: carries out what `plan` decides with `ip`, `nft`, `nsenter`, `dockerd`,
`etcd`, the docker CLI and the agent, and keeps the state file true after every step, so that
`lab down` (also after a failed `lab up`) removes exactly what was made.

Processes are started in their own sessions and stopped by the pid the state file holds,
only when that pid's command line still names this lab's directories (a pid reused by
another process is left alone): SIGTERM, then SIGKILL after a timeout.
"""

from __future__ import annotations

import contextlib
import fcntl
import http.client
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from dockmesh.engine.unixhttp import UnixGets
from dockmesh.errors import UsageError
from dockmesh.host.netns import NetnsError, NetnsPool
from dockmesh.lab.plan import (
    API_PORT,
    DATA_ROOT,
    ETCD_CLIENT_PORT,
    NETNS_ETC,
    RUN_ROOT,
    SWARM_PORT,
    EtcdPlan,
    HostPlan,
    LabPlan,
    LabPlanError,
    Partition,
    Target,
    agent_argv,
    agent_env,
    check_partition,
    dockerd_argv,
    enter,
    etcd_argv,
    lab_dir,
    link_commands,
    parse_subnet,
    partition_ruleset,
    pick_subnet,
    plan_lab,
    resolv_conf,
    state_file,
    swarm_pool,
)
from dockmesh.lab.state import LabState, LabStateError, parse_state

log = logging.getLogger(__name__)

Progress = Callable[[str], None]
DEFAULT_IMAGES = ("dockmesh/toolbox", "dockmesh/python")
ENGINE_TIMEOUT_S = 60.0
AGENT_TIMEOUT_S = 45.0
ETCD_TIMEOUT_S = 30.0


class LabError(Exception):
    """A lab step failed (exit 1): the message names the step and the log to read."""


def _quiet(_: str) -> None:
    return None


def state_path(name: str) -> str:
    return state_file(name)


def load(name: str) -> LabState | None:
    """The lab named `name`, or None when none is up. LabStateError for a file that is not a
    lab's state."""
    path = state_path(name)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return None
    state = parse_state(data, path)
    if state.name != name:
        # Its plan would be another lab's: `lab down` would remove that one.
        raise LabStateError(f"{path}: the state of lab {state.name!r}, not of {name!r}")
    return state


def require(name: str) -> LabState:
    state = load(name)
    if state is None:
        raise UsageError(f"no lab {name!r} is up (dockmesh lab up --hosts N)")
    return state


@contextlib.contextmanager
def _locked(name: str) -> Iterator[None]:
    """The lab's state held for one read-change-write: `lab stop etcd@1`, `@2` and `@3` run
    at once each wrote back the state it had read, and the last one put back the others'
    pids. Never held while a process is awaited (that can take a minute)."""
    if not os.path.exists(state_path(name)):
        yield  # no lab: `require` says so, and no lock file is left behind
        return
    path = state_path(name) + ".lock"
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except FileNotFoundError:  # `lab down` removed the folder meanwhile
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _save(state: LabState) -> None:
    path = state_path(state.name)
    tmp = f"{path}.tmp"
    with open(tmp, "wb") as f:
        f.write(state.dumps())
    os.replace(tmp, path)


def _sh(argv: Sequence[str], *, input: bytes | None = None, timeout: float = 120) -> str:
    try:
        done = subprocess.run(list(argv), input=input, capture_output=True, timeout=timeout)
    except FileNotFoundError:
        raise LabError(f"{argv[0]} is not installed (scripts/setup.sh installs it)") from None
    except subprocess.TimeoutExpired:
        raise LabError(f"{' '.join(argv[:4])} …: no answer within {timeout:.0f} s") from None
    if done.returncode != 0:
        why = (done.stderr or done.stdout).decode(errors="replace").strip().splitlines()
        raise LabError(f"{' '.join(argv[:6])} …: {why[-1] if why else f'exit {done.returncode}'}")
    return done.stdout.decode(errors="replace")


def _docker(url: str, *args: str, timeout: float = 120) -> str:
    return _sh(["docker", "-H", url, *args], timeout=timeout)


# --- processes ----------------------------------------------------------------------------------


def _marker(name: str) -> tuple[str, str]:
    return (lab_dir(RUN_ROOT, name) + "/", lab_dir(DATA_ROOT, name) + "/")


def _argv(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().decode(errors="replace").split("\0")[:-1] or [""]
    except OSError:
        return []


def _cmdline(pid: int) -> str:
    return " ".join(_argv(pid))


# The programs the lab starts, and those its engines start (containerd and its shims outlive
# a dockerd that was killed); the pid the lab records runs `ip netns exec` → `unshare` → `sh`
# → the program, each exec'ing the next. A process naming the lab's directories that is none
# of them is a user's (`tail -F` of a lab log, an editor on its state file): never signalled.
_PROGRAMS = frozenset({"dockerd", "containerd", "etcd", "ip", "unshare"})
_HOSTNAME_SH = ["sh", "-c", 'hostname "$0" && exec "$@"']


def _lab_program(argv: Sequence[str]) -> bool:
    prog = os.path.basename(argv[0]) if argv else ""
    if prog in _PROGRAMS or prog.startswith("containerd-shim"):
        return True
    if prog == "nsenter" and len(argv) > 2 and argv[1].startswith("--net="):
        # An agent, engine or etcd between its start and its exec (nsenter enters the host's
        # namespace first): taken for dead then, `lab up` said "the agent … exited".
        return _lab_program(argv[2:])
    if prog.startswith("python"):
        return list(argv[1:4]) == ["-m", "dockmesh", "agent"]
    return [prog, *argv[1:3]] == _HOSTNAME_SH


def _ours(pid: int, name: str, settle: bool = True) -> bool:
    """`pid` is alive and still one of this lab's processes (not a reused pid, not a user's
    process that names a lab path). `settle`: an empty command line (a process in the middle
    of an exec) is read again for up to 0.2 s before it counts as none of the lab's."""
    argv = _argv(pid)
    deadline = time.monotonic() + 0.2
    while settle and argv in ([], [""]) and os.path.exists(f"/proc/{pid}"):
        if time.monotonic() > deadline:
            break
        time.sleep(0.005)
        argv = _argv(pid)
    if not argv or not _lab_program(argv):
        return False
    line = " ".join(argv)
    try:
        with open(f"/proc/{pid}/stat") as f:
            if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                return False
    except (OSError, IndexError):
        return False
    return any(m in line for m in _marker(name))


# The processes this command started, by pid: whether one still runs is known exactly from its
# `Popen` (set by the reaping thread), never guessed from /proc: while a process execs (nsenter
# → python, sh → dockerd) its command line reads empty for a moment, and on a loaded machine
# `lab up`/`lab start` took that moment for an exit ("the agent of host2 … exited").
_children: dict[int, subprocess.Popen[bytes]] = {}
_log_starts: dict[int, int] = {}  # where each one's lines begin in its (appended) log


def _running(pid: int, name: str) -> bool:
    """Whether the lab's process `pid` runs: exactly, for one this command started; else by
    its command line (`_ours`)."""
    child = _children.get(pid)
    if child is not None:
        return child.returncode is None
    return _ours(pid, name)


def _how_it_ended(pid: int) -> str:
    """ " (exit N)" or " (killed by SIGX)" for a process this command started and that ended;
    "" otherwise."""
    child = _children.get(pid)
    rc = None if child is None else child.returncode
    if rc is None:
        return ""
    if rc < 0:
        with contextlib.suppress(ValueError):
            return f" (killed by {signal.Signals(-rc).name})"
        return f" (killed by signal {-rc})"
    return f" (exit {rc})"


def _spawn(argv: Sequence[str], logfile: str, env: dict[str, str] | None = None) -> int:
    os.makedirs(os.path.dirname(logfile), exist_ok=True)
    with open(logfile, "ab") as out:
        start = out.seek(0, os.SEEK_END)
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, **(env or {})},
        )
    # While this process lives, a thread reaps the child if it ends, so it never lingers as a
    # zombie that still looks alive; a daemon thread, so that the command can exit meanwhile.
    threading.Thread(target=proc.wait, name=f"lab-reap-{proc.pid}", daemon=True).start()
    _children[proc.pid] = proc
    _log_starts[proc.pid] = start
    return proc.pid


def _stop_pids(pids: Iterable[int], name: str, timeout: float, sig: int = signal.SIGTERM) -> None:
    """Signals each of this lab's `pids`, waits up to `timeout` for all, then SIGKILLs the
    rest (and waits for them to go)."""
    live = [p for p in pids if _ours(p, name)]
    for p in live:
        with contextlib.suppress(ProcessLookupError):
            os.kill(p, sig)
    deadline = time.monotonic() + timeout
    while live and time.monotonic() < deadline:
        time.sleep(0.05)
        live = [p for p in live if _ours(p, name)]
    for p in live:
        with contextlib.suppress(ProcessLookupError):
            os.kill(p, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while live and time.monotonic() < deadline:
        time.sleep(0.05)
        live = [p for p in live if _ours(p, name)]
    # Dead is not gone: until init reaps it, a killed dockerd is a zombie its successor's
    # pidfile check takes for a running daemon ("pid file found, ensure docker is not
    # running"), so `lab kill engine@…` then `lab start` failed. Wait for the reaping too.
    dead = [p for p in pids if _zombie(p)]
    deadline = time.monotonic() + 5
    while dead and time.monotonic() < deadline:
        time.sleep(0.05)
        dead = [p for p in dead if _zombie(p)]


def _zombie(pid: int) -> bool:
    """Whether PID is a process that has ended and is not reaped yet."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(") ", 1)[1][:1] == "Z"
    except (OSError, IndexError):
        return False


def _stray_pids(name: str) -> list[int]:
    """Processes still naming this lab's directories: the containers' shims, which outlive
    a dockerd that was killed."""
    me = os.getpid()
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != me and _ours(int(entry), name, settle=False):
            found.append(int(entry))
    return found


# --- probes ---------------------------------------------------------------------------------------


def _engine_info(host: HostPlan, timeout: float = 3.0) -> dict[str, Any] | None:
    gets = UnixGets(host.sock, timeout=timeout)
    try:
        info = gets.get_json("/info")
    except Exception:
        return None
    finally:
        gets.close()
    return info if isinstance(info, dict) else None


def swarm_role(info: dict[str, Any]) -> str:
    swarm = info.get("Swarm") or {}
    if swarm.get("LocalNodeState") != "active":
        return "none"
    return "manager" if swarm.get("ControlAvailable") else "worker"


def _http_in_ns(
    pool: NetnsPool, pid: int, host: str, port: int, method: str, path: str, body: bytes | None
) -> tuple[int, bytes] | None:
    def ask() -> tuple[int, bytes]:
        conn = http.client.HTTPConnection(host, port, timeout=2)
        try:
            conn.request(method, path, body=body)
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

    try:
        return pool.run(pid, ask)
    except (OSError, http.client.HTTPException, NetnsError):
        return None


def _agent_ok(pool: NetnsPool, state: LabState, host: HostPlan) -> bool:
    pid = state.pids.get(f"agent@{host.name}")
    if pid is None or not _running(pid, state.name):
        return False
    got = _http_in_ns(pool, pid, "127.0.0.1", API_PORT, "GET", "/v1/status/leader", None)
    return got is not None and got[0] == 200


def _etcd_health(pool: NetnsPool, state: LabState, member: EtcdPlan) -> dict[str, Any]:
    pid = state.pids.get(f"etcd@{member.name}")
    doc: dict[str, Any] = {
        "name": member.name,
        "address": member.address,
        "running": False,
        "healthy": False,
        "leader": False,
    }
    if pid is None or not _running(pid, state.name):
        return doc
    doc["running"] = True
    got = _http_in_ns(pool, pid, member.address, ETCD_CLIENT_PORT, "GET", "/health", None)
    if got is not None and got[0] == 200:
        with contextlib.suppress(ValueError):
            doc["healthy"] = json.loads(got[1]).get("health") == "true"
    got = _http_in_ns(
        pool, pid, member.address, ETCD_CLIENT_PORT, "POST", "/v3/maintenance/status", b"{}"
    )
    if got is not None and got[0] == 200:
        with contextlib.suppress(ValueError, AttributeError):
            st = json.loads(got[1])
            doc["leader"] = str(st.get("leader")) == str(st.get("header", {}).get("member_id"))
    return doc


def status(name: str) -> dict[str, Any]:
    state = require(name)
    plan = state.plan()
    with NetnsPool(threads=4) as pool, ThreadPoolExecutor(max_workers=8) as ex:

        def host_doc(h: HostPlan) -> dict[str, Any]:
            info = _engine_info(h)
            return {
                "name": h.name,
                "address": h.address,
                "engine": h.url,
                "engine_ok": info is not None,
                "swarm_role": swarm_role(info) if info is not None else "unknown",
                "agent_ok": _agent_ok(pool, state, h),
                "netns": h.netns,
            }

        hosts = list(ex.map(host_doc, plan.hosts))
        etcd = list(ex.map(lambda e: _etcd_health(pool, state, e), plan.etcd))
    return {
        "name": state.name,
        "subnet": state.subnet,
        "shared_store": state.shared_store,
        "hosts": hosts,
        "etcd": etcd,
        "partitions": [str(p) for p in state.partitions],
    }


# --- up -------------------------------------------------------------------------------------------


def agent_has_store(python: str) -> bool:
    """Whether this dockmesh's agent can share a catalog (`--store`, `--node`): the one place
    that decides if the lab's agents are started with the lab's etcd as their store."""
    try:
        done = subprocess.run(
            [python, "-m", "dockmesh", "agent", "--help"], capture_output=True, timeout=60
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    text = done.stdout.decode(errors="replace")
    return "--store" in text and "--node" in text


def _routes() -> list[str]:
    out = _sh(["ip", "-4", "route", "show", "table", "all"])
    return [line.split()[0] for line in out.splitlines() if line.split()]


def _wait(
    what: str,
    ok: Callable[[], bool],
    timeout: float,
    alive: Callable[[], bool],
    log: str = "",
    pid: int = 0,
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ok():
            return
        if not alive():
            if ok():  # (it answered as it was looked at)
                return
            raise LabError(f"{what} exited{_how_it_ended(pid)}{_last_words(log, pid)}")
        time.sleep(0.1)
    raise LabError(f"{what} did not answer within {timeout:.0f} s{_last_words(log, pid)}")


def _last_words(log: str, pid: int = 0) -> str:
    """The end of a process's log, for the error that removes the lab (and the log with it):
    of what `pid` wrote, when this command started it (the log is appended to, and the last
    run's lines are not this one's)."""
    if not log:
        return ""
    start = _log_starts.get(pid, 0)
    try:
        with open(log, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(start, f.tell() - 2048))
            lines = f.read().decode(errors="replace").strip().splitlines()[-3:]
    except OSError:
        return ""
    if not lines:
        return "; it wrote nothing to its log" if pid in _log_starts else ""
    return "; its log ends: " + " | ".join(x.strip()[:300] for x in lines)


def _start_engine(state: LabState, host: HostPlan) -> None:
    for d in (host.data_root, host.exec_root):
        os.makedirs(d, exist_ok=True)
    state.pids[f"engine@{host.name}"] = _spawn(dockerd_argv(host), host.log)


def _wait_engine(state: LabState, host: HostPlan) -> None:
    pid = state.pids[f"engine@{host.name}"]
    _wait(
        f"dockerd of {host.name} (see {host.log})",
        lambda: os.path.exists(host.sock) and _engine_info(host, timeout=5) is not None,
        ENGINE_TIMEOUT_S,
        lambda: _running(pid, state.name),
        host.log,
        pid,
    )


def _start_etcd(state: LabState, plan: LabPlan, member: EtcdPlan) -> None:
    os.makedirs(os.path.dirname(member.data_dir), exist_ok=True)
    state.pids[f"etcd@{member.name}"] = _spawn(etcd_argv(member, plan), member.log)


def _wait_etcd(state: LabState, members: Sequence[EtcdPlan]) -> None:
    with NetnsPool(threads=2) as pool:
        for m in members:
            pid = state.pids[f"etcd@{m.name}"]
            _wait(
                f"etcd {m.name} (see {m.log})",
                lambda m=m: _etcd_health(pool, state, m)["healthy"],  # type: ignore[misc]
                ETCD_TIMEOUT_S,
                lambda pid=pid: _running(pid, state.name),  # type: ignore[misc]
                m.log,
                pid,
            )


def _start_agent(state: LabState, plan: LabPlan, host: HostPlan) -> None:
    os.makedirs(f"{host.agent_dir}/policy", exist_ok=True)
    argv = agent_argv(host, plan, sys.executable, state.shared_store)
    state.pids[f"agent@{host.name}"] = _spawn(argv, host.agent_log, agent_env(host))


def _wait_agents(state: LabState, hosts: Sequence[HostPlan]) -> None:
    with NetnsPool(threads=2) as pool:
        for h in hosts:
            pid = state.pids[f"agent@{h.name}"]
            _wait(
                f"the agent of {h.name} (see {h.agent_log})",
                lambda h=h: _agent_ok(pool, state, h),  # type: ignore[misc]
                AGENT_TIMEOUT_S,
                lambda pid=pid: _running(pid, state.name),  # type: ignore[misc]
                h.agent_log,
                pid,
            )


def _swarm(plan: LabPlan) -> None:
    first, rest = plan.hosts[0], plan.hosts[1:]
    _docker(
        first.url, "swarm", "init",
        "--advertise-addr", first.address,
        "--listen-addr", f"{first.address}:{SWARM_PORT}",
        "--default-addr-pool", swarm_pool(plan),
        "--default-addr-pool-mask-length", "24",
    )  # fmt: skip
    tokens = {
        role: _docker(first.url, "swarm", "join-token", "-q", role).strip()
        for role in ("manager", "worker")
    }

    def join(h: HostPlan) -> None:
        _docker(
            h.url, "swarm", "join",
            "--token", tokens[h.role],
            "--advertise-addr", h.address,
            "--listen-addr", f"{h.address}:{SWARM_PORT}",
            f"{first.address}:{SWARM_PORT}",
        )  # fmt: skip

    # Managers one at a time (raft adds one member at a time); workers all at once.
    for h in rest:
        if h.role == "manager":
            join(h)
    with ThreadPoolExecutor(max_workers=8) as ex:
        list(ex.map(join, [h for h in rest if h.role == "worker"]))


def _present_images(wanted: Sequence[str]) -> list[str]:
    have = []
    for ref in wanted:
        done = subprocess.run(["docker", "image", "inspect", ref], capture_output=True)
        if done.returncode == 0:
            have.append(ref)
    return have


def _load_images(state: LabState, plan: LabPlan, images: Sequence[str]) -> None:
    """Copies `images` from the machine's engine ($DOCKER_HOST, else the local socket) into
    every lab engine: one `docker save`, then a `docker load` per engine, all at once."""
    if not images:
        return
    tar = f"{plan.data_dir}/images.tar"
    state.files.append(tar)
    _sh(["docker", "save", "-o", tar, *images], timeout=300)
    with ThreadPoolExecutor(max_workers=len(plan.hosts)) as ex:
        list(ex.map(lambda h: _docker(h.url, "load", "-q", "-i", tar, timeout=300), plan.hosts))
    os.remove(tar)
    state.files.remove(tar)


def up(
    name: str,
    hosts: int,
    etcd: int = 1,
    managers: int = 1,
    subnet: str | None = None,
    images: Sequence[str] | None = None,
    progress: Progress = _quiet,
) -> LabState:
    """Brings a lab up; on any failure, tears down what it made and raises."""
    t0 = time.monotonic()
    try:
        net = str(parse_subnet(subnet)) if subnet else None
        plan = plan_lab(name, net or "10.251.0.0/24", hosts, etcd, managers)
        swarm_pool(plan)
    except LabPlanError as e:
        raise UsageError(str(e)) from None
    need = ["ip", "nsenter", "dockerd", "docker", "nft"] + (["etcd"] if etcd else [])
    missing = [t for t in need if shutil.which(t) is None]
    if missing:
        raise LabError(f"not installed: {', '.join(missing)} (scripts/setup.sh installs them)")
    os.makedirs(plan.run_dir, exist_ok=True)
    try:
        fd = os.open(plan.state_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        raise UsageError(
            f"a lab named {name!r} is up (dockmesh lab down first, or --name for another)"
        ) from None
    os.close(fd)
    if net is None:
        net = str(pick_subnet(_routes()))
        plan = plan_lab(name, net, hosts, etcd, managers)
    state = LabState(name, net, hosts, etcd, managers, dirs=[plan.run_dir])
    _save(state)
    try:
        _up(state, plan, images, progress)
    except BaseException:
        progress("failed: removing what was made")
        down(name)
        raise
    state.up_seconds = round(time.monotonic() - t0, 1)
    _save(state)
    return state


def _share(run_dir: str) -> None:
    """Makes the lab's run directory a shared mount (as iproute2 makes /run/netns one), so the
    namespaces an engine mounts under its exec-root later (an overlay's, made anew when a
    host's first member starts again) reach the mount namespaces `lab exec` makes too; an
    agent run there could not enter them otherwise. Best effort: without it (no mount), only
    namespaces mounted before `lab exec` are seen."""
    for cmd in (["mount", "--bind", run_dir, run_dir], ["mount", "--make-shared", run_dir]):
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=False)
        if done.returncode != 0:
            log.warning("lab: %s: %s", " ".join(cmd), done.stderr.strip())
            return


def _up(state: LabState, plan: LabPlan, images: Sequence[str] | None, progress: Progress) -> None:
    _share(plan.run_dir)
    with ThreadPoolExecutor(max_workers=4) as side:
        store_check = side.submit(agent_has_store, sys.executable)
        wanted = side.submit(
            _present_images, list(images if images is not None else DEFAULT_IMAGES)
        )
        if not os.path.isdir(NETNS_ETC):
            os.makedirs(NETNS_ETC)
            state.dirs.append(NETNS_ETC)
        os.makedirs(plan.data_dir, exist_ok=True)
        state.dirs.append(plan.data_dir)
        for ns in plan.netns:
            _sh(["ip", "netns", "add", ns])
            state.netns.append(ns)
        _save(state)
        for argv in link_commands(plan):
            _sh(argv)
        for h in plan.hosts:
            os.makedirs(h.resolv_dir, exist_ok=True)
            state.dirs.append(h.resolv_dir)
            with open(f"{h.resolv_dir}/resolv.conf", "w") as f:
                f.write(resolv_conf(h))
        progress(f"namespaces and switch on {plan.subnet}")
        for h in plan.hosts:
            _start_engine(state, h)
        for m in plan.etcd:
            _start_etcd(state, plan, m)
        _save(state)
        for h in plan.hosts:
            _wait_engine(state, h)
        progress(f"{len(plan.hosts)} engines answer")
        state.images = wanted.result()
        loading = side.submit(_load_images, state, plan, state.images)
        _swarm(plan)
        progress(
            f"swarm: {sum(h.role == 'manager' for h in plan.hosts)} manager(s), "
            f"{sum(h.role == 'worker' for h in plan.hosts)} worker(s)"
        )
        if plan.etcd:
            _wait_etcd(state, plan.etcd)
            progress(f"etcd: {len(plan.etcd)} member(s) healthy")
        state.shared_store = store_check.result() and bool(plan.etcd)
        for h in plan.hosts:
            _start_agent(state, plan, h)
        _save(state)
        _wait_agents(state, plan.hosts)
        progress(
            f"{len(plan.hosts)} agents answer"
            + (" (sharing the catalog through etcd)" if state.shared_store else "")
        )
        loading.result()
        progress(f"images loaded: {', '.join(state.images) or 'none'}")
        _save(state)


# --- down -----------------------------------------------------------------------------------------


def _mounts_under(prefixes: Sequence[str]) -> list[str]:
    try:
        with open("/proc/self/mountinfo") as f:
            lines = f.read().splitlines()
    except OSError:
        return []
    points = []
    for line in lines:
        parts = line.split()
        if len(parts) > 4:
            mp = parts[4].encode().decode("unicode_escape")
            if any(mp == p or mp.startswith(p + "/") for p in prefixes):
                points.append(mp)
    return sorted(set(points), key=len, reverse=True)


def _kill_containers(host: HostPlan) -> None:
    if not os.path.exists(host.sock):
        return
    with contextlib.suppress(LabError):
        ids = _docker(host.url, "ps", "-q", timeout=10).split()
        if ids:
            _docker(host.url, "kill", *ids, timeout=20)


def _subtrees(dirs: Sequence[str]) -> list[str]:
    """`dirs`, each split into its entries (a data dir into its hosts' trees), so that the
    removal runs in parallel."""
    parts: list[str] = []
    for d in dirs:
        try:
            parts += [os.path.join(d, e) for e in os.listdir(d)]
        except OSError:
            continue
    return parts


def _remove_tree(path: str) -> None:
    subprocess.run(["rm", "-rf", "--one-file-system", "--", path], capture_output=True, check=False)


def down(name: str, progress: Progress = _quiet) -> bool:
    """Removes the lab named `name`; False when there was none."""
    try:
        state = load(name)
    except LabStateError:
        raise
    if state is None:
        return False
    by_kind: dict[str, list[int]] = {"agent": [], "engine": [], "etcd": []}
    for key, pid in state.pids.items():
        by_kind.setdefault(key.partition("@")[0], []).append(pid)
    _stop_pids(by_kind.pop("agent"), name, timeout=5)
    progress("agents stopped")
    # A dockerd that stops waits 10 s for each container that ignores SIGTERM (a shell or
    # `sleep` as pid 1): the lab's containers are killed first, all engines at once.
    with ThreadPoolExecutor(max_workers=8) as ex:
        list(ex.map(_kill_containers, state.plan().hosts))
    _stop_pids([p for ps in by_kind.values() for p in ps], name, timeout=30)
    progress("engines and etcd stopped")
    _stop_pids(_stray_pids(name), name, timeout=0, sig=signal.SIGKILL)
    state.pids.clear()
    progress("processes stopped")
    plan_dirs = [d for d in state.dirs if d != NETNS_ETC]
    for mp in _mounts_under(plan_dirs):
        subprocess.run(["umount", "-l", mp], capture_output=True, check=False)
    for ns in reversed(state.netns):
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)
    progress("namespaces removed")
    for f in state.files:
        with contextlib.suppress(OSError):
            os.remove(f)
    # The engines' data roots hold every image layer unpacked: `rm -rf` on each at once,
    # which is several times quicker than one rmtree after another.
    trees = [d for d in state.dirs if d != NETNS_ETC]
    with ThreadPoolExecutor(max_workers=4) as ex:
        list(ex.map(_remove_tree, _subtrees(trees)))
    for d in reversed(trees):
        shutil.rmtree(d, ignore_errors=True)
    if NETNS_ETC in state.dirs:
        with contextlib.suppress(OSError):
            os.rmdir(NETNS_ETC)  # only when empty: another lab or tool may use it meanwhile
    for f in (state_path(name), state_path(name) + ".lock"):
        with contextlib.suppress(OSError):
            os.remove(f)
    with contextlib.suppress(OSError):
        os.rmdir(lab_dir(RUN_ROOT, name))
    for root in (RUN_ROOT, DATA_ROOT):
        with contextlib.suppress(OSError):
            os.rmdir(root)  # only when no other lab (or test lab) uses it
    progress("directories removed")
    return True


# --- exec, failures -------------------------------------------------------------------------------


def exec_argv(state: LabState, host: str, cmd: Sequence[str]) -> tuple[list[str], dict[str, str]]:
    """The command line and environment that run `cmd` in `host`'s namespace, with its
    engine as DOCKER_HOST and its agent's DNS in /etc/resolv.conf (`ip netns exec` mounts the
    lab's /etc/netns/<ns>/resolv.conf there)."""
    try:
        h = state.plan().host(host)
    except LabPlanError as e:
        raise UsageError(str(e)) from None
    env = {**os.environ, "DOCKER_HOST": h.url}
    return ["ip", "netns", "exec", h.netns, *cmd], env


def _apply_partitions(state: LabState) -> None:
    plan = state.plan()
    _sh(
        enter(plan.switch, ["nft", "-f", "-"]),
        input=partition_ruleset(plan, state.partitions).encode(),
    )


def partition(name: str, host: str, peer: str = "") -> Partition:
    with _locked(name):
        state = require(name)
        try:
            part = check_partition(state.plan(), Partition(host, peer))
        except LabPlanError as e:
            raise UsageError(str(e)) from None
        if part not in state.partitions:
            state.partitions.append(part)
        _apply_partitions(state)
        _save(state)
    return part


def heal(name: str) -> int:
    with _locked(name):
        state = require(name)
        n = len(state.partitions)
        state.partitions = []
        _apply_partitions(state)
        _save(state)
    return n


def _target(state: LabState, target: Target) -> HostPlan | EtcdPlan:
    plan = state.plan()
    try:
        return (
            plan.etcd_member(target.member) if target.kind == "etcd" else plan.host(target.member)
        )
    except LabPlanError as e:
        raise UsageError(str(e)) from None


def stop(name: str, target: Target, sig: int = signal.SIGTERM, timeout: float = 30) -> bool:
    """Stops one of the lab's processes (SIGKILL at once with `sig`=SIGKILL); False when it
    was not running."""
    with _locked(name):
        state = require(name)
        _target(state, target)
        pid = state.pids.pop(str(target), None)
        _save(state)
    running = pid is not None and _ours(pid, name)
    if pid is not None and running:
        _stop_pids([pid], name, timeout=0 if sig == signal.SIGKILL else timeout, sig=sig)
    return running


def start(name: str, target: Target) -> int:
    """Starts one of the lab's processes again and waits until it answers; its pid."""
    with _locked(name):
        state = require(name)
        member = _target(state, target)
        pid = state.pids.get(str(target))
        if pid is not None and _ours(pid, name):
            raise UsageError(f"{target} is running (pid {pid})")
        plan = state.plan()
        if isinstance(member, EtcdPlan):
            _start_etcd(state, plan, member)
        elif target.kind == "engine":
            _start_engine(state, member)
        else:
            _start_agent(state, plan, member)
        _save(state)
    if isinstance(member, EtcdPlan):
        _wait_etcd(state, [member])
    elif target.kind == "engine":
        _wait_engine(state, member)
    else:
        _wait_agents(state, [member])
    return state.pids[str(target)]
