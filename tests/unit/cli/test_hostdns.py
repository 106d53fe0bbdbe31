"""`dockmesh agent host-dns` as a user runs it against a temporary root: `--print` changes
nothing, bad input is one line and exit 2, no resolver to configure is exit 1 saying what to
install; `agent` alone still runs the agent (a group with a default)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dockmesh", "agent", "host-dns", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_print_and_errors(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "resolv.conf").write_text("nameserver 10.0.0.2\n")
    sbin = tmp_path / "usr" / "sbin"
    sbin.mkdir(parents=True)
    (sbin / "dnsmasq").write_text("")
    (sbin / "dnsmasq").chmod(0o755)
    p = run("--root", str(tmp_path), "--dns", "127.0.0.1:18600", "--print", "--json")
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    assert doc["resolver"] == "dnsmasq (dockmesh's own)"
    assert [f["path"] for f in doc["files"]][-1] == f"{tmp_path}/etc/resolv.conf"
    assert sorted(x.name for x in (tmp_path / "etc").iterdir()) == ["resolv.conf"]
    bad = run("--root", str(tmp_path), "--domain", "-x", "--print")
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "domain '-x'" in bad.stderr
    bad = run("--root", str(tmp_path), "--dns", "localhost:53", "--print")
    assert bad.returncode == 2 and "server 'localhost': not an IP address" in bad.stderr
    (sbin / "dnsmasq").unlink()
    none = run("--root", str(tmp_path), "--print")
    assert none.returncode == 1 and "apt-get install dnsmasq" in none.stderr, none.stderr


def test_agent_without_a_subcommand_is_still_the_agent() -> None:
    p = subprocess.run(
        [sys.executable, "-m", "dockmesh", "agent", "--api", "nonsense"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 2 and "--api 'nonsense'" in p.stderr, p.stderr


def install(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dockmesh", "agent", "install", "--print", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_agent_install_host_dns_plans_before_anything_is_installed() -> None:
    """`agent install --host-dns` plans the forwarding first: with --print it shows the plan
    after the docker run line (and under host_dns in JSON); an agent with no DNS to forward
    to is one line and exit 2, before anything is installed."""
    p = install("--host-dns", "--json")
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    assert "docker_run" in doc and doc["host_dns"]["domain"] == "dockmesh"
    assert doc["host_dns"]["server"] == "127.0.0.1"
    p = install("--host-dns")
    assert p.returncode == 0, p.stderr
    assert p.stdout.index("docker run") < p.stdout.index("--host-dns")
    bad = install("--host-dns", "--dns", "off")
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1, bad.stderr
    assert "--dns is off" in bad.stderr
    # Listening everywhere: the host asks the agent on loopback.
    p = install("--host-dns", "--dns", "0.0.0.0:8600", "--json")
    assert json.loads(p.stdout)["host_dns"]["server"] == "127.0.0.1"
