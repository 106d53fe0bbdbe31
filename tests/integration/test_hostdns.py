"""Real balancers over the agent's SRV records: HAProxy (`server-template` + `resolvers`) asking
the agent, then HAProxy and Caddy (`dynamic srv`) through the host's resolver once
`dockmesh agent host-dns` forwards the domain to the agent.

The host's own resolver is never touched: `host-dns` configures a temporary root (its
/etc/resolv.conf, dnsmasq.d, dockmesh's own dnsmasq on a loopback address of its own, port
53), and the clients run in a mount namespace of their own where that resolv.conf is bind
mounted over /etc/resolv.conf. Nothing leaves the machine: loopback, and the test's own
network and containers.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from dockmesh.codecs.hostdns import HostFacts, Process
from dockmesh.host.hostdns import apply_host_dns, plan_host_dns, remove_host_dns
from tests.integration.conftest import dockmesh, free_subnets
from tests.integration.test_agent import AgentProc, free_port

HAPROXY = "/usr/sbin/haproxy"

if not os.access(HAPROXY, os.X_OK):  # pragma: no cover - the machine's set-up
    pytest.skip("HAProxy is not installed (apt-get install haproxy)", allow_module_level=True)


def wait_for(
    pred: Callable[[], bool], limit: float, what: str, why: Callable[[], str] | None = None
) -> float:
    """Seconds until PRED holds; else an AssertionError saying WHAT (and WHY's account)."""
    t = time.monotonic()
    while time.monotonic() - t < limit:
        if pred():
            return time.monotonic() - t
        time.sleep(0.1)
    said = f"\n{why()}" if why is not None else ""
    raise AssertionError(f"{what}: not reached in {limit:g}s{said}")


def log_tail(log: Path, lines: int = 30) -> str:
    """The last LINES lines a spawned process wrote (what a failure shows)."""
    try:
        text = log.read_text(errors="replace")
    except OSError as e:
        return f"({log}: {e})"
    return f"--- {log.name}:\n" + "\n".join(text.splitlines()[-lines:])


class Backends:
    """Three toolbox web servers labelled for discovery, each answering /id with its name."""

    def __init__(self, api: Any, prefix: str) -> None:
        self.api, self.prefix = api, prefix
        self.service = f"{prefix}web"
        (subnet,) = free_subnets(api, 1)
        net = f"{prefix}_net"
        api.create_network(net, ipam={"Config": [{"Subnet": subnet}]})
        labels = {
            "dockmesh.service": self.service,
            "dockmesh.port": "8080",
            "dockmesh.check.http": "/health",
            "dockmesh.check.interval": "1s",
        }
        self.ids: dict[str, str] = {}
        for i in (1, 2, 3):
            name = f"{prefix}-w{i}"
            cid = api.create_container(
                "dockmesh/toolbox:latest",
                name=name,
                hostname=name,
                labels=labels,
                host_config=api.create_host_config(network_mode=net),
            )["Id"]
            api.start(cid)
            self.ids[name] = cid

    def names(self, *numbers: int) -> set[str]:
        return {f"{self.prefix}-w{i}" for i in numbers}

    def fail_check(self, i: int) -> None:
        subprocess.run(
            ["docker", "exec", f"{self.prefix}-w{i}", "rm", "-f", "/www/health"], check=True
        )

    def stop(self, i: int) -> None:
        self.api.stop(self.ids[f"{self.prefix}-w{i}"], timeout=0)


def seen(url: str, n: int = 9) -> collections.Counter[str]:
    """Which backend answered each of N requests (`-` for an error status)."""
    got: collections.Counter[str] = collections.Counter()
    for _ in range(n):
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                got[r.read().decode().split()[0]] += 1
        except urllib.error.HTTPError as e:
            got[f"-{e.code}"] += 1
        except OSError:
            got["-"] += 1
    return got


class Spawned:
    """A process of the test (HAProxy, Caddy), stopped by its pid at the end."""

    def __init__(self, argv: list[str], log: Path, env: dict[str, str] | None = None) -> None:
        self.log = log
        self.proc = subprocess.Popen(
            argv,
            stdout=log.open("ab"),
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )

    def stop(self) -> None:
        if self.proc.poll() is None:
            # Its own session: `unshare` and the balancer it execs are one process.
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)


@pytest.fixture
def spawn() -> Iterator[Callable[..., Spawned]]:
    started: list[Spawned] = []

    def start(argv: list[str], log: Path, env: dict[str, str] | None = None) -> Spawned:
        s = Spawned(argv, log, env)
        started.append(s)
        return s

    yield start
    for s in started:
        s.stop()


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[AgentProc]:
    a = AgentProc(tmp_path)
    a.start()
    yield a
    if a.proc is not None and a.proc.poll() is None:
        a.proc.kill()
        a.proc.wait()


def haproxy_config(port: int, service: str, resolvers: str) -> str:
    """What the README shows: no health check of HAProxy's own, so what drops an instance is
    the agent's SRV answer alone."""
    return f"""global
    log stderr format short local0 info
defaults
    mode http
    timeout connect 2s
    timeout client 10s
    timeout server 10s
resolvers dockmesh
    {resolvers}
    accepted_payload_size 1232
    hold valid 1s
    hold obsolete 0s
    timeout resolve 1s
    timeout retry 1s
frontend web
    bind 127.0.0.1:{port}
    default_backend {service}
backend {service}
    balance roundrobin
    server-template web 5 _{service}._tcp.service.dockmesh resolvers dockmesh resolve-prefer ipv4 init-addr none
"""


def only(got: collections.Counter[str], names: set[str]) -> bool:
    return set(got) == names


def test_haproxy_balances_over_the_agents_srv_records_and_drops_failing_and_stopped(
    api: Any, prefix: str, agent: AgentProc, toolbox: str, tmp_path: Path, spawn: Any
) -> None:
    b = Backends(api, prefix)
    port = free_port()
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(haproxy_config(port, b.service, f"nameserver agent 127.0.0.1:{agent.dns_port}"))
    subprocess.run([HAPROXY, "-c", "-q", "-f", str(cfg)], check=True)
    spawn([HAPROXY, "-f", str(cfg)], tmp_path / "haproxy.log")
    url = f"http://127.0.0.1:{port}/id"
    wait_for(lambda: only(seen(url), b.names(1, 2, 3)), 30, "HAProxy balancing over all three")
    got = seen(url, 9)
    assert got == dict.fromkeys(b.names(1, 2, 3), 3), got  # round robin: each in turn
    b.fail_check(2)
    b.stop(3)
    wait_for(lambda: only(seen(url), b.names(1)), 30, "the failing and the stopped dropped")
    assert seen(url, 20) == {f"{prefix}-w1": 20}  # no request lost to a dropped instance
    log = (tmp_path / "haproxy.log").read_text()
    assert "entry removed from SRV record" in log, log


@pytest.fixture
def forwarded(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A temporary root whose host DNS `dockmesh agent host-dns` configures: dnsmasq found
    where the root's /usr/sbin has it, the host's resolv.conf naming a loopback server, and a
    loopback address of the test's own for dockmesh's dnsmasq. Undone at the end, on failure
    too."""
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "usr" / "sbin").mkdir(parents=True)
    dnsmasq = shutil.which("dnsmasq")
    if dnsmasq is None:
        pytest.skip("dnsmasq is not installed (apt-get install dnsmasq-base)")
    (root / "usr" / "sbin" / "dnsmasq").symlink_to(dnsmasq)
    (root / "etc" / "resolv.conf").write_text("nameserver 127.0.0.1\noptions timeout:1\n")
    listen = f"127.{random.randrange(64, 250)}.{random.randrange(1, 250)}.53"
    try:
        yield root, listen
    finally:
        # dockmesh's dnsmasq (found by its pid file and checked by its command line) stopped,
        # the files removed, the root's resolv.conf put back
        remove_host_dns(root, facts=HostFacts())


def in_root_resolver(root: Path, argv: list[str]) -> list[str]:
    """ARGV run with ROOT's resolv.conf as its /etc/resolv.conf (a mount namespace of its own,
    private: the host's file is untouched)."""
    inner = 'mount --bind "$0" /etc/resolv.conf && exec "$@"'
    return [
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        inner,
        str(root / "etc" / "resolv.conf"),
        *argv,
    ]


def start_caddy(
    spawn: Any, caddy: str, tmp_path: Path, root: Path, service: str, dns_port: int
) -> str:
    """Caddy listening (three ports tried: see `_start_caddy`); its URL of `/id`."""
    for _ in range(3):
        url = _start_caddy(spawn, caddy, tmp_path, root, service, dns_port)
        if url is not None:
            return url
    raise AssertionError("Caddy found no free port in three tries")


def _start_caddy(
    spawn: Any, caddy: str, tmp_path: Path, root: Path, service: str, dns_port: int
) -> str | None:
    """Caddy 2.6 as the README shows it: `dynamic srv` asking the agent for the SRV records;
    the targets' addresses it then asks the host's resolver (ROOT's resolv.conf)."""
    port = free_port()
    caddyfile = tmp_path / "Caddyfile"
    caddyfile.write_text(
        f"""{{
\tadmin off
}}
http://127.0.0.1:{port} {{
\treverse_proxy {{
\t\tdynamic srv _{service}._tcp.service.dockmesh {{
\t\t\tresolvers 127.0.0.1:{dns_port}
\t\t\trefresh 1s
\t\t}}
\t}}
}}
"""
    )
    xdg = {"XDG_DATA_HOME": str(tmp_path / "xdg"), "XDG_CONFIG_HOME": str(tmp_path / "xdg")}
    run = [caddy, "run", "--config", str(caddyfile), "--adapter", "caddyfile"]
    log = tmp_path / "caddy.log"
    start = log.stat().st_size if log.exists() else 0
    proc = spawn(in_root_resolver(root, run), log, xdg)
    # The port was free when asked, yet another worker's socket can take it before Caddy binds
    # (a race of the test's, not the product's): Caddy then exits; the caller picks another.
    wait_for(
        lambda: proc.proc.poll() is not None or listening(port),
        30,
        "Caddy listening",
        lambda: log_tail(log),
    )
    if proc.proc.poll() is not None:
        if "address already in use" in log.read_text(errors="replace")[start:]:
            return None
        raise AssertionError(f"Caddy exited ({proc.proc.returncode})\n{log_tail(log)}")
    return f"http://127.0.0.1:{port}/id"


def listening(port: int) -> bool:
    """Whether something accepts connections on 127.0.0.1:PORT."""
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_through_the_hosts_resolver_haproxy_caddy_and_libc_reach_the_instances(
    api: Any,
    prefix: str,
    agent: AgentProc,
    toolbox: str,
    tmp_path: Path,
    spawn: Any,
    forwarded: tuple[Path, str],
) -> None:
    root, listen = forwarded
    original = (root / "etc" / "resolv.conf").read_bytes()
    b = Backends(api, prefix)
    args = [
        "agent",
        "host-dns",
        "--root",
        str(root),
        "--listen",
        f"{listen}:53",
        "--dns",
        f"127.0.0.1:{agent.dns_port}",
    ]
    done = dockmesh(*args, "--json", check=True)
    doc = json.loads(done.stdout)
    assert doc["resolver"] == "dnsmasq (dockmesh's own)"
    rule = root / "etc" / "dnsmasq.d" / "dockmesh.conf"
    assert rule.read_text().endswith(f"server=/dockmesh/127.0.0.1#{agent.dns_port}\n")
    assert (root / "etc" / "resolv.conf.dockmesh-orig").read_bytes() == original
    assert (root / "etc" / "resolv.conf").read_text().splitlines()[1:] == [
        f"nameserver {listen}",
        "nameserver 127.0.0.1",
        "options timeout:1",
    ]
    # again: nothing changes, nothing restarts
    again = json.loads(dockmesh(*args, "--json", check=True).stdout)["done"]
    assert "dnsmasq (dockmesh's own): nothing changed, not restarted" in again, again
    assert all(line.endswith("already in place") for line in again if "/" in line), again
    wait_for(
        lambda: len(agent.get(f"/v1/health/service/{b.service}?passing")[1]) == 3,
        30,
        "three passing",
    )
    # libc (getent) resolves an SRV target through the host's resolver: the dnsmasq
    target = f"{prefix}-w1.node.dockmesh"
    out = subprocess.run(
        in_root_resolver(root, ["getent", "hosts", target]),
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert out.returncode == 0 and target in out.stdout, out

    # HAProxy reading the host's resolv.conf (parse-resolv-conf)
    hport = free_port()
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(haproxy_config(hport, b.service, "parse-resolv-conf"))
    spawn(in_root_resolver(root, [HAPROXY, "-f", str(cfg)]), tmp_path / "haproxy.log")
    hurl = f"http://127.0.0.1:{hport}/id"
    wait_for(lambda: only(seen(hurl), b.names(1, 2, 3)), 30, "HAProxy via the forwarder")

    # Caddy: SRV from the agent, targets through the host's resolver
    caddy = shutil.which("caddy")
    curl = None
    if caddy is not None:
        curl = start_caddy(spawn, caddy, tmp_path, root, b.service, agent.dns_port)
        caddy_log = tmp_path / "caddy.log"
        wait_for(
            lambda: only(seen(curl), b.names(1, 2, 3)),
            30,
            "Caddy via the forwarder",
            lambda: f"{seen(curl)}\n{log_tail(caddy_log)}",
        )

    b.fail_check(2)
    b.stop(3)
    wait_for(lambda: only(seen(hurl), b.names(1)), 30, "HAProxy drops the failing and stopped")
    if curl is not None:
        wait_for(
            lambda: only(seen(curl), b.names(1)),
            30,
            "Caddy drops the failing and stopped",
            lambda: f"{seen(curl)}\n{log_tail(caddy_log)}",
        )

    removed = dockmesh("agent", "host-dns", "--remove", "--root", str(root), check=True).stdout
    assert "stopped dockmesh's dnsmasq" in removed, removed
    assert (root / "etc" / "resolv.conf").read_bytes() == original
    assert not rule.exists() and not (root / "etc" / "resolv.conf.dockmesh-orig").exists()
    gone = dockmesh("agent", "host-dns", "--remove", "--root", str(root), check=True).stdout
    assert gone.startswith("nothing to remove"), gone


def test_caddy_without_the_forwarding_cannot_reach_the_srv_targets(
    api: Any,
    prefix: str,
    agent: AgentProc,
    toolbox: str,
    tmp_path: Path,
    spawn: Any,
    forwarded: tuple[Path, str],
) -> None:
    """The failure the forwarding is for: Caddy gets the SRV answer from the agent, then
    asks the host's resolver for the targets, which knows nothing of the domain: 502."""
    caddy = shutil.which("caddy")
    if caddy is None:
        pytest.skip("Caddy is not installed (apt-get install caddy)")
    root, _ = forwarded
    b = Backends(api, prefix)
    url = start_caddy(spawn, caddy, tmp_path, root, b.service, agent.dns_port)
    last: list[collections.Counter[str]] = []

    def answers_502() -> bool:
        last[:] = [seen(url, 3)]
        return last[0] == {"-502": 3}

    try:
        wait_for(answers_502, 30, "Caddy answering 502")
    except AssertionError as e:
        tail = (tmp_path / "caddy.log").read_text()[-2000:]
        raise AssertionError(f"{e}; it answered {dict(last[0])}; its log ends:\n{tail}") from None
    log = (tmp_path / "caddy.log").read_text()
    assert f"lookup {prefix}-w" in log, log


def ended(pid: int) -> bool:
    """Gone, or a zombie its parent has not reaped yet."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(") ", 1)[1][:1] in ("Z", "X")


def test_a_running_dnsmasq_gets_the_rule_and_is_restarted_by_its_pid(
    agent: AgentProc, tmp_path: Path
) -> None:
    """No init system to ask (systemd is not PID 1 here): the host's dnsmasq, stopped by its
    pid and run again with its own command line, forwards the domain; `--remove` restarts it
    without the rule. The "host's" dnsmasq is one this test starts, on a loopback port."""
    dnsmasq = shutil.which("dnsmasq")
    if dnsmasq is None:
        pytest.skip("dnsmasq is not installed (apt-get install dnsmasq-base)")
    root = tmp_path / "root"
    (root / "etc" / "dnsmasq.d").mkdir(parents=True)
    pid_file = tmp_path / "dnsmasq.pid"
    port = free_port()
    argv = (
        dnsmasq,
        f"--conf-dir={root}/etc/dnsmasq.d,*.conf",
        "--listen-address=127.0.0.1",
        f"--port={port}",
        "--bind-interfaces",
        "--no-resolv",
        "--no-hosts",
        f"--pid-file={pid_file}",
    )
    subprocess.run(argv, check=True, timeout=20)

    def running() -> Process:
        pid = int(pid_file.read_text())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        assert tuple(a.decode() for a in cmdline if a) == argv
        return Process(pid, argv)

    def ask() -> list[str]:
        out = subprocess.run(
            [
                "dig",
                "+short",
                "+time=1",
                "+tries=1",
                "@127.0.0.1",
                "-p",
                str(port),
                "ns.dockmesh",
                "A",
            ],
            capture_output=True,
            text=True,
            timeout=10,
        )
        return out.stdout.split()

    try:
        first = running()
        assert ask() == []  # the domain is not forwarded yet
        facts = HostFacts(dnsmasq=(first,), dnsmasq_binary=dnsmasq)
        plan = plan_host_dns("dockmesh", "127.0.0.1", agent.dns_port, root=root, facts=facts)
        assert plan.resolver == "dnsmasq"
        done = apply_host_dns(plan)
        assert done[0] == f"wrote {root}/etc/dnsmasq.d/dockmesh.conf"
        assert done[1].startswith(f"restarted dnsmasq: stopped pid {first.pid}, ran "), done
        second = running()
        assert second.pid != first.pid and ended(first.pid)
        assert ask() == ["127.0.0.1"]  # the agent's own address, through the dnsmasq
        assert apply_host_dns(plan)[-1] == "dnsmasq: nothing changed, not restarted"
        assert running() == second
        removed = remove_host_dns(root, facts=HostFacts(dnsmasq=(second,)))
        assert removed[0] == f"removed {root}/etc/dnsmasq.d/dockmesh.conf"
        assert removed[1].startswith(f"restarted dnsmasq: stopped pid {second.pid}")
        assert running().pid != second.pid and ask() == []
    finally:
        if pid_file.exists():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid_file.read_text()), signal.SIGTERM)
