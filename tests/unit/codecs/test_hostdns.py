"""The host forwarding the agent's domain (dockmesh.codecs.hostdns): which resolver is chosen
from the host's facts, the files' exact texts, and any domain, server or port either planned
(and written into the files as given) or refused in one line naming what is wrong."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import replace
from pathlib import PurePosixPath

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dockmesh.codecs.hostdns import (
    HEADER,
    HostDnsError,
    HostDnsInputError,
    HostFacts,
    Process,
    is_ours,
    plan,
    render_dnsmasq_rule,
    render_resolved,
)
from dockmesh.codecs.resolvconf import parse_resolv_conf
from tests.outcomes import Outcomes

HOST = "nameserver 10.0.0.2\nsearch lan\noptions timeout:1\n"
DNSMASQ = "/usr/sbin/dnsmasq"
RESOLVED = HostFacts(resolved=(Process(40, ("/lib/systemd/systemd-resolved",)),))


def test_systemd_resolved_gets_a_drop_in_with_a_routing_only_domain() -> None:
    p = plan("dockmesh", "127.0.0.1", 8600, RESOLVED)
    assert p.resolver == "systemd-resolved"
    dropin, anchor = p.files
    assert dropin.path == "/etc/systemd/resolved.conf.d/dockmesh.conf"
    assert dropin.text == HEADER + "[Resolve]\nDNS=127.0.0.1:8600\nDomains=~dockmesh\n"
    # unsigned answers for a name the root says does not exist: exempt from DNSSEC
    assert anchor.path == "/etc/dnssec-trust-anchors.d/dockmesh.negative"
    assert anchor.text.startswith("; Written by dockmesh") and anchor.text.endswith("\ndockmesh\n")
    assert is_ours(anchor.text)
    # no systemd as PID 1: the resolver's own pid and command line
    assert p.restart.kind == "pid" and p.restart.process == RESOLVED.resolved[0]
    under_systemd = plan("dockmesh", "::1", 53, replace(RESOLVED, systemd_is_init=True))
    assert under_systemd.restart.describe() == "systemctl restart systemd-resolved"
    assert "DNS=[::1]:53\n" in under_systemd.files[0].text
    assert p.resolv_conf is None


def test_resolved_says_when_resolv_conf_bypasses_its_stub() -> None:
    stub = replace(RESOLVED, resolv_conf="nameserver 127.0.0.53\noptions edns0 trust-ad\n")
    assert plan("dockmesh", "127.0.0.1", 8600, stub).notes == ()
    direct = replace(RESOLVED, resolv_conf=HOST)
    (note,) = plan("dockmesh", "127.0.0.1", 8600, direct).notes
    assert note.startswith("/etc/resolv.conf does not name resolved's stub 127.0.0.53")


def test_a_running_dnsmasq_that_reads_dnsmasq_d_gets_the_rule_and_a_restart() -> None:
    proc = Process(7, ("/usr/sbin/dnsmasq", "-x", "/run/dnsmasq.pid", "-7", "/etc/dnsmasq.d,.bak"))
    p = plan("Dockmesh.", "127.0.0.1", 8600, HostFacts(dnsmasq=(proc,), dnsmasq_binary=DNSMASQ))
    assert p.resolver == "dnsmasq"
    assert [(f.path, f.text) for f in p.files] == [
        ("/etc/dnsmasq.d/dockmesh.conf", HEADER + "server=/dockmesh/127.0.0.1#8600\n")
    ]
    assert p.restart.process == proc and p.resolv_conf is None
    # read through /etc/dnsmasq.conf's conf-dir
    quiet = Process(8, ("dnsmasq",))
    conf = "conf-dir=/etc/dnsmasq.d/,*.conf\n"
    assert plan("d", "127.0.0.1", 1, HostFacts(dnsmasq=(quiet,), dnsmasq_conf=conf)).files
    # neither: refused, saying what to add (a file another configuration reads is not known)
    with pytest.raises(HostDnsError, match=r"pid 8\) does not read /etc/dnsmasq.d: add conf-dir"):
        plan("d", "127.0.0.1", 1, HostFacts(dnsmasq=(quiet,)))
    other = Process(9, ("dnsmasq", "-C", "/srv/my.conf"))
    with pytest.raises(HostDnsError, match="pid 9"):
        plan("d", "127.0.0.1", 1, HostFacts(dnsmasq=(other,), dnsmasq_conf=conf))


def test_resolved_wins_over_dnsmasq_and_nothing_at_all_says_what_to_install() -> None:
    both = HostFacts(resolved=RESOLVED.resolved, dnsmasq=(Process(7, ("dnsmasq",)),))
    assert plan("dockmesh", "127.0.0.1", 8600, both).resolver == "systemd-resolved"
    with pytest.raises(HostDnsError, match=r"^neither systemd-resolved runs nor dnsmasq is "):
        plan("dockmesh", "127.0.0.1", 8600, HostFacts(resolv_conf=HOST))


def test_installed_dnsmasq_none_running_dockmesh_runs_it_and_the_host_uses_it() -> None:
    p = plan("dockmesh", "127.0.0.1", 8600, HostFacts(dnsmasq_binary=DNSMASQ, resolv_conf=HOST))
    assert p.resolver == "dnsmasq (dockmesh's own)"
    texts = {f.path: f.text for f in p.all_files()}
    assert texts["/etc/dockmesh/resolv.upstream"] == HEADER + "nameserver 10.0.0.2\n"
    assert (
        "listen-address=127.0.0.1\nport=53\nbind-interfaces\n"
        in texts["/etc/dockmesh/dnsmasq.conf"]
    )
    assert "conf-dir=/etc/dnsmasq.d,*.conf\n" in texts["/etc/dockmesh/dnsmasq.conf"]
    # the dnsmasq first, the previous name server after it (Docker skips loopback ones, and
    # the host still resolves the rest when the dnsmasq is down); search and options kept
    assert texts["/etc/resolv.conf"] == HEADER + (
        "nameserver 127.0.0.1\nnameserver 10.0.0.2\nsearch lan\noptions timeout:1\n"
    )
    assert p.resolv_conf_orig == "/etc/resolv.conf.dockmesh-orig"
    assert p.restart.argv == (DNSMASQ, "--conf-file=/etc/dockmesh/dnsmasq.conf")
    # applied once already: the plan reads the kept original, not its own file
    again = HostFacts(
        dnsmasq=(Process(5, (DNSMASQ, "--conf-file=/etc/dockmesh/dnsmasq.conf")),),
        dnsmasq_binary=DNSMASQ,
        resolv_conf=texts["/etc/resolv.conf"],
        resolv_conf_orig=HOST,
    )
    assert plan("dockmesh", "127.0.0.1", 8600, again) == p


def test_own_dnsmasq_on_another_port_leaves_resolv_conf_and_paths_follow_the_root() -> None:
    root = PurePosixPath("/tmp/t")
    facts = HostFacts(dnsmasq_binary=DNSMASQ, resolv_conf=HOST)
    p = plan("dockmesh", "127.0.0.1", 8600, facts, root=root, listen=("127.0.0.9", 5353))
    assert p.resolv_conf is None and "resolv.conf cannot name a port" in p.notes[0]
    assert all(f.path.startswith("/tmp/t/etc/") for f in p.files)
    assert "pid-file=/tmp/t/run/dockmesh/dnsmasq.pid\n" in p.files[2].text
    with pytest.raises(HostDnsError, match=re.escape("is a link to ../run/resolvconf/resolv.conf")):
        plan(
            "d",
            "127.0.0.1",
            1,
            HostFacts(
                dnsmasq_binary=DNSMASQ,
                resolv_conf=HOST,
                resolv_conf_link="../run/resolvconf/resolv.conf",
            ),
        )
    with pytest.raises(HostDnsError, match="names no name server"):
        plan("d", "127.0.0.1", 1, HostFacts(dnsmasq_binary=DNSMASQ, resolv_conf="# empty\n"))


def test_the_header_marks_dockmeshs_files() -> None:
    assert is_ours(render_resolved("d", "127.0.0.1", 1))
    assert is_ours(render_dnsmasq_rule("d", "127.0.0.1", 1))
    assert not is_ours("[Resolve]\nDNS=10.0.0.1\n") and not is_ours("# " + HEADER)


labels = st.from_regex(r"[a-z0-9_]([a-z0-9_-]{0,20}[a-z0-9_])?", fullmatch=True)
good_domains = st.lists(labels, min_size=1, max_size=4).map(".".join)
any_domains = st.one_of(good_domains, st.text(max_size=30), good_domains.map(str.upper))
good_servers = st.one_of(
    # its simplest address is 0.0.0.0, which bad_servers holds already
    st.ip_addresses().filter(lambda ip: not ip.is_unspecified and not ip.is_multicast).map(str),
    st.sampled_from(["127.0.0.1", "::1", "10.0.0.2", "fd00::53"]),
)
bad_servers = st.one_of(
    st.sampled_from(["localhost", "0.0.0.0", "::", "224.0.0.1", "1.2.3", "[::1]", ""]),
    st.text(max_size=12),
)
servers = st.one_of(good_servers, bad_servers)
ports = st.one_of(st.integers(1, 65535), st.integers(-5, 70000), st.booleans())
facts = st.sampled_from(
    [
        RESOLVED,
        HostFacts(dnsmasq=(Process(7, ("dnsmasq", "-7", "/etc/dnsmasq.d")),)),
        HostFacts(dnsmasq_binary=DNSMASQ, resolv_conf=HOST),
    ]
)


def test_any_input_is_planned_into_the_files_as_given_or_refused_in_one_line() -> None:
    seen = Outcomes()

    @settings(max_examples=400)
    @given(domain=any_domains, server=servers, port=ports, facts=facts)
    def run(domain: str, server: str, port: int, facts: HostFacts) -> None:
        try:
            p = plan(domain, server, port, facts)
        except HostDnsInputError as e:
            message = str(e)
            assert "\n" not in message and message.split()[0] in ("domain", "server", "port")
            seen(f"refused {message.split()[0]}")
            return
        seen("planned")
        d = domain.lower().removesuffix(".")
        ip = ipaddress.ip_address(server)
        assert p.domain == d and p.port == port and not isinstance(port, bool)
        assert not ip.is_unspecified and not ip.is_multicast
        text = p.files[0].text
        if p.resolver == "systemd-resolved":
            written = text.split("DNS=")[1].split("\n")[0]
            assert f"Domains=~{d}\n" in text and p.files[1].text.endswith(f"\n{d}\n")
            assert written in (f"{ip}:{port}", f"[{ip}]:{port}")
        else:
            assert text.endswith(f"server=/{d}/{ip}#{port}\n")
        for f in p.all_files():
            assert is_ours(f.text) and f.text.endswith("\n")
        if p.resolv_conf is not None:
            assert parse_resolv_conf(p.resolv_conf.text).nameservers[0] == "127.0.0.1"

    run()
    seen.require(planned=0.15, **{"refused domain": 0.05, "refused server": 0.05})
    assert seen.seen["refused port"] > 0
