"""What Consul's DNS answers besides services and nodes: PTR for the addresses dockmesh hands
out, NS for its domains (with a target that resolves), and the datacenter in a name."""

from __future__ import annotations

import dns.flags
import dns.name
import dns.rcode
import dns.rdataclass
import dns.reversename
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dockmesh.dns.answer import Answerer
from tests.unit.dns.helpers import Rd, ask, make_catalog, records


@pytest.fixture
def answerer() -> Answerer:
    a = Answerer(make_catalog())
    a.set_node("agent-1", "east", "10.9.0.1")
    return a


def test_ptr_names_the_instance_as_its_node_in_the_agents_datacenter(answerer: Answerer) -> None:
    r = ask(answerer, "1.0.0.10.in-addr.arpa", "PTR")
    assert r.rcode() == dns.rcode.NOERROR and r.flags & dns.flags.AA
    assert records(r, Rd.PTR) == ["api-0.node.east.dockmesh."]
    # The name it gives resolves back to the address.
    assert records(ask(answerer, "api-0.node.east.dockmesh", "A"), Rd.A) == ["10.0.0.1"]
    # Health aside, like node names: api-3's check fails, its address is still its name.
    assert records(ask(answerer, "4.0.0.10.in-addr.arpa", "PTR"), Rd.PTR) == [
        "api-3.node.east.dockmesh."
    ]


def test_ptr_for_ipv6_and_for_the_agents_own_address(answerer: Answerer) -> None:
    v6 = dns.reversename.from_address("fd00::7").to_text()
    (target,) = records(ask(answerer, v6, "PTR"), Rd.PTR)
    assert target.endswith(".node.east.dockmesh.") and target.startswith("web-1-")
    assert records(ask(answerer, target, "AAAA"), Rd.AAAA) == ["fd00::7"]
    own = ask(answerer, "1.0.9.10.in-addr.arpa", "PTR")
    assert records(own, Rd.PTR) == ["agent-1.node.east.dockmesh."]


@pytest.mark.parametrize(
    "name",
    [
        "9.9.9.10.in-addr.arpa",  # an address nobody has
        "0.0.10.in-addr.arpa",  # a partial reverse name: a zone, not an address
        "in-addr.arpa",
        "300.0.0.10.in-addr.arpa",
        "x.0.0.10.in-addr.arpa",
        "1.0.0.0.ip6.arpa",
    ],
)
def test_other_reverse_names_are_refused_not_claimed(answerer: Answerer, name: str) -> None:
    r = ask(answerer, name, "PTR")
    assert r.rcode() == dns.rcode.REFUSED
    assert (r.answer, r.authority) == ([], [])


def test_a_known_reverse_name_has_no_other_records(answerer: Answerer) -> None:
    r = ask(answerer, "1.0.0.10.in-addr.arpa", "A")
    assert r.rcode() == dns.rcode.NOERROR and r.answer == [] and r.authority == []
    assert records(ask(answerer, "1.0.0.10.in-addr.arpa", "ANY"), Rd.PTR) == [
        "api-0.node.east.dockmesh."
    ]


def test_ptr_follows_the_catalog(answerer: Answerer) -> None:
    from dockmesh.model.catalog import Instance

    assert ask(answerer, "9.9.9.10.in-addr.arpa", "PTR").rcode() == dns.rcode.REFUSED
    answerer.catalog.register(Instance("late", "late", "10.9.9.9", 1), [], 0)
    answerer.catalog_changed(answerer.catalog)
    assert records(ask(answerer, "9.9.9.10.in-addr.arpa", "PTR"), Rd.PTR) == [
        "late.node.east.dockmesh."
    ]


@pytest.mark.parametrize("domain", ["dockmesh", "consul"])
def test_ns_names_the_agents_node_with_glue_and_ns_resolves(
    answerer: Answerer, domain: str
) -> None:
    r = ask(answerer, domain, "NS")
    assert r.rcode() == dns.rcode.NOERROR and r.flags & dns.flags.AA
    assert records(r, Rd.NS) == [f"agent-1.node.east.{domain}."]
    glue = {rrset.name.to_text(): rrset[0].to_text() for rrset in r.additional}
    assert glue == {f"agent-1.node.east.{domain}.": "10.9.0.1"}
    # The target resolves on its own, and so does the SOA's primary server name.
    assert records(ask(answerer, f"agent-1.node.east.{domain}", "A"), Rd.A) == ["10.9.0.1"]
    (soa,) = records(ask(answerer, domain, "SOA"), Rd.SOA)
    assert soa.startswith(f"ns.{domain}. ")
    assert records(ask(answerer, f"ns.{domain}", "A"), Rd.A) == ["10.9.0.1"]
    assert ask(answerer, domain, "ANY").get_rrset(
        "answer", dns.name.from_text(domain), dns.rdataclass.IN, Rd.NS
    )


def test_ns_below_the_apex_is_no_data(answerer: Answerer) -> None:
    r = ask(answerer, "api.service.dockmesh", "NS")
    assert r.rcode() == dns.rcode.NOERROR and r.answer == []
    assert records(r, Rd.SOA, "authority")


@pytest.mark.parametrize(
    "name",
    [
        "api.service.east.dockmesh",
        "API.Service.EAST.dockmesh",
        "v1.api.service.east.consul",
        "_api._tcp.service.east.dockmesh",
        "api.service.east.dc.dockmesh",
    ],
)
def test_the_agents_own_datacenter_answers_like_no_datacenter(
    answerer: Answerer, name: str
) -> None:
    plain = ask(answerer, name.lower().replace(".east.dc", "").replace(".east", ""), "A")
    r = ask(answerer, name, "A")
    assert r.rcode() == dns.rcode.NOERROR
    assert sorted(records(r, Rd.A)) == sorted(records(plain, Rd.A)) != []


@pytest.mark.parametrize(
    "name",
    [
        "api.service.west.dockmesh",
        "api.service.dc1.dockmesh",  # the default is not this agent's datacenter
        "api-0.node.west.dockmesh",
        "api.service.west.dc.consul",
    ],
)
def test_another_datacenter_is_nxdomain_never_this_ones_data(answerer: Answerer, name: str) -> None:
    r = ask(answerer, name, "A")
    assert r.rcode() == dns.rcode.NXDOMAIN and r.answer == []
    assert records(r, Rd.SOA, "authority")


def test_the_default_datacenter_is_dc1() -> None:
    a = Answerer(make_catalog())
    assert records(ask(a, "api-1.node.dc1.dockmesh", "A"), Rd.A) == ["10.0.0.2"]
    assert records(ask(a, "dockmesh", "NS"), Rd.NS) == ["dockmesh.node.dc1.dockmesh."]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.from_regex(r"[a-z0-9-]{1,8}", fullmatch=True), min_size=1, max_size=6))
def test_any_reverse_like_name_is_an_answer_never_an_error(labels: list[str]) -> None:
    a = Answerer(make_catalog())
    for suffix in ("in-addr.arpa", "ip6.arpa"):
        r = ask(a, ".".join([*labels, suffix]), "PTR")
        assert r.rcode() in (dns.rcode.NOERROR, dns.rcode.REFUSED)
    assert a.errors == 0
