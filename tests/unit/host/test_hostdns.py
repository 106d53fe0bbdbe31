"""The host's forwarding written into a temporary root (dockmesh.host.hostdns): the facts read
from a root's /proc and /etc, files written whole and only when they differ, a file dockmesh
did not write never touched, resolv.conf kept aside and put back byte for byte. Restarting a
resolver is recorded here (tests/integration/test_hostdns.py runs the real dnsmasq)."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import pytest

from dockmesh.codecs.hostdns import HEADER, HostDnsError, HostFacts, Process, Restart
from dockmesh.host import hostdns
from dockmesh.host.hostdns import apply_host_dns, gather_facts, plan_host_dns, remove_host_dns

HOST = "nameserver 10.0.0.2\noptions timeout:1\n"


@pytest.fixture
def restarts(monkeypatch: pytest.MonkeyPatch) -> list[Restart]:
    done: list[Restart] = []

    def record(r: Restart, conf: str) -> str:
        done.append(r)
        return f"restart: {r.describe()}"

    monkeypatch.setattr(hostdns, "_restart", record)
    monkeypatch.setattr(hostdns, "_own_pid", lambda pid_file, conf: None)
    return done


def _proc(root: Path, pid: int, comm: str, *argv: str) -> None:
    d = root / "proc" / str(pid)
    d.mkdir(parents=True)
    (d / "comm").write_text(comm + "\n")
    (d / "cmdline").write_bytes(b"\0".join(a.encode() for a in argv) + b"\0")


def test_facts_are_read_from_the_roots_proc_and_etc(tmp_path: Path) -> None:
    _proc(tmp_path, 1, "systemd", "/sbin/init")
    _proc(tmp_path, 40, "systemd-resolve", "/lib/systemd/systemd-resolved")
    _proc(tmp_path, 41, "dnsmasq", "/usr/sbin/dnsmasq", "-7", "/etc/dnsmasq.d")
    (tmp_path / "proc" / "42").mkdir()  # ended meanwhile: no comm
    sbin = tmp_path / "usr" / "sbin"
    sbin.mkdir(parents=True)
    (sbin / "dnsmasq").write_text("")
    (sbin / "dnsmasq").chmod(0o755)
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "resolv.conf").symlink_to("../run/resolvconf/resolv.conf")
    f = gather_facts(tmp_path)
    assert f.systemd_is_init
    assert f.resolved == (Process(40, ("/lib/systemd/systemd-resolved",)),)
    assert f.dnsmasq == (Process(41, ("/usr/sbin/dnsmasq", "-7", "/etc/dnsmasq.d")),)
    assert f.dnsmasq_binary == str(sbin / "dnsmasq")
    assert f.resolv_conf_link == "../run/resolvconf/resolv.conf" and f.resolv_conf is None
    assert gather_facts(tmp_path / "empty") == HostFacts()


def test_apply_writes_once_restarts_once_and_remove_undoes_it(
    tmp_path: Path, restarts: list[Restart]
) -> None:
    facts = HostFacts(resolved=(Process(40, ("systemd-resolved",)),))
    plan = plan_host_dns("dockmesh", "127.0.0.1", 8600, root=tmp_path, facts=facts)
    dropin = tmp_path / "etc/systemd/resolved.conf.d/dockmesh.conf"
    anchor = tmp_path / "etc/dnssec-trust-anchors.d/dockmesh.negative"
    assert apply_host_dns(plan) == [
        f"wrote {dropin}",
        f"wrote {anchor}",
        "restart: restart pid 40 (systemd-resolved)",
    ]
    assert dropin.read_text().startswith(HEADER) and oct(dropin.stat().st_mode)[-3:] == "644"
    assert apply_host_dns(plan) == [
        f"{dropin}: already in place",
        f"{anchor}: already in place",
        "systemd-resolved: nothing changed, not restarted",
    ]
    assert len(restarts) == 1
    assert list(dropin.parent.iterdir()) == [dropin]  # no temporary file left
    assert remove_host_dns(tmp_path, facts=facts) == [
        f"removed {dropin}",
        f"removed {anchor}",
        "restart: restart pid 40 (systemd-resolved)",
    ]
    assert not dropin.exists() and not anchor.exists()
    assert remove_host_dns(tmp_path, facts=facts) == [
        "nothing to remove: dockmesh's host DNS forwarding is not set up"
    ]


def test_a_file_dockmesh_did_not_write_is_never_overwritten_nor_removed(
    tmp_path: Path, restarts: list[Restart]
) -> None:
    facts = HostFacts(dnsmasq=(Process(7, ("dnsmasq", "-7", f"{tmp_path}/etc/dnsmasq.d")),))
    rule = tmp_path / "etc/dnsmasq.d/dockmesh.conf"
    rule.parent.mkdir(parents=True)
    rule.write_text("server=/dockmesh/10.0.0.9\n")
    plan = plan_host_dns("dockmesh", "127.0.0.1", 8600, root=tmp_path, facts=facts)
    with pytest.raises(HostDnsError, match="exists and dockmesh did not write it"):
        apply_host_dns(plan)
    assert rule.read_text() == "server=/dockmesh/10.0.0.9\n" and not restarts
    assert remove_host_dns(tmp_path, facts=facts) == [
        f"{rule}: dockmesh did not write it, left as it is"
    ]
    assert rule.exists() and not restarts


def test_own_dnsmasq_replaces_resolv_conf_and_remove_puts_the_original_back_exactly(
    tmp_path: Path, restarts: list[Restart]
) -> None:
    resolv = tmp_path / "etc" / "resolv.conf"
    resolv.parent.mkdir()
    resolv.write_text(HOST)
    resolv.chmod(0o600)
    before = os.stat(resolv)
    facts = HostFacts(dnsmasq_binary="/usr/sbin/dnsmasq", resolv_conf=HOST)
    plan = plan_host_dns("dockmesh", "127.0.0.1", 8600, root=tmp_path, facts=facts)
    done = apply_host_dns(plan)
    orig = tmp_path / "etc" / "resolv.conf.dockmesh-orig"
    assert done[-2:] == [
        f"kept the host's {resolv} as {orig}",
        f"wrote {resolv} (the dnsmasq first, then the previous name servers)",
    ]
    assert resolv.read_text() == HEADER + "nameserver 127.0.0.1\nnameserver 10.0.0.2\n" + (
        "options timeout:1\n"
    )
    assert [r.kind for r in restarts] == ["own"]
    # applied again, from what is now on disk: nothing changes (the dnsmasq is started
    # again only because this test's stand-in says it is not running)
    now = replace(gather_facts(tmp_path), dnsmasq_binary="/usr/sbin/dnsmasq")
    again = plan_host_dns("dockmesh", "127.0.0.1", 8600, root=tmp_path, facts=now)
    assert again == plan
    assert apply_host_dns(again)[-1] == f"{resolv}: already in place"
    removed = remove_host_dns(tmp_path, facts=HostFacts())
    assert removed[0] == f"put the host's {resolv} back (from {orig})"
    assert resolv.read_text() == HOST and not orig.exists()
    after = os.stat(resolv)
    assert (after.st_ino, after.st_mode) == (before.st_ino, before.st_mode)
    assert sorted(p.name for p in (tmp_path / "etc").rglob("*") if p.is_file()) == ["resolv.conf"]


def test_a_kept_original_beside_a_foreign_resolv_conf_stops_apply(
    tmp_path: Path, restarts: list[Restart]
) -> None:
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "resolv.conf").write_text(HOST)
    (etc / "resolv.conf.dockmesh-orig").write_text("nameserver 10.0.0.3\n")
    facts = HostFacts(dnsmasq_binary="/usr/sbin/dnsmasq", resolv_conf=HOST)
    plan = plan_host_dns("dockmesh", "127.0.0.1", 8600, root=tmp_path, facts=facts)
    with pytest.raises(HostDnsError, match="which one is the host's"):
        apply_host_dns(plan)
    assert not (etc / "dnsmasq.d").exists() and not restarts
