"""The DNS answerer, pure: every kind of name and record, health, negative answers,
truncation, EDNS, the caches and their invalidation, and hostile bytes (hypothesis).

Every response is read back with dnspython: the tests check what a client would see."""

from __future__ import annotations

import struct

import dns.edns
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dockmesh.catalog.state import Catalog
from dockmesh.dns import wire
from dockmesh.dns.answer import Answerer, node_label
from dockmesh.model.catalog import CheckSpec, Instance
from dockmesh.model.topology import Attachment, Container, EngineInfo, Topology
from tests.unit.dns.helpers import Rd, ask, make_catalog, records


@pytest.fixture
def answerer() -> Answerer:
    return Answerer(make_catalog())


# --- names and records ------------------------------------------------------------------------


def test_a_records_are_the_passing_instances_only(answerer: Answerer) -> None:
    r = ask(answerer, "api.service.dockmesh", "A")
    assert r.rcode() == dns.rcode.NOERROR
    assert r.flags & dns.flags.AA
    assert sorted(records(r, Rd.A)) == ["10.0.0.1", "10.0.0.2", "10.0.0.3"]
    assert all(rrset.ttl == 0 for rrset in r.answer)


def test_srv_records_name_nodes_whose_addresses_come_along(answerer: Answerer) -> None:
    r = ask(answerer, "api.service.dockmesh", "SRV")
    assert sorted(records(r, Rd.SRV)) == [
        "1 1 8080 api-0.node.dockmesh.",
        "1 2 8080 api-1.node.dockmesh.",
        "1 3 8080 api-2.node.dockmesh.",
    ]
    extra = {rrset.name.to_text(): rrset[0].to_text() for rrset in r.additional}
    assert extra == {
        "api-0.node.dockmesh.": "10.0.0.1",
        "api-1.node.dockmesh.": "10.0.0.2",
        "api-2.node.dockmesh.": "10.0.0.3",
    }
    # The targets resolve on their own too (a client that got the SRV without the additionals).
    assert records(ask(answerer, "api-1.node.dockmesh", "A"), Rd.A) == ["10.0.0.2"]


@pytest.mark.parametrize(
    ("name", "rdtype", "want"),
    [
        ("_api._tcp.service.dockmesh", "SRV", {"api-0", "api-1", "api-2"}),
        ("_api._v1.service.dockmesh", "SRV", {"api-0", "api-1"}),
        ("v1.api.service.dockmesh", "SRV", {"api-0", "api-1"}),
        ("V2.API.service.consul", "SRV", {"api-2"}),
    ],
)
def test_rfc2782_and_tag_forms(answerer: Answerer, name: str, rdtype: str, want: set[str]) -> None:
    r = ask(answerer, name, rdtype)
    assert {t.split()[3].split(".")[0] for t in records(r, Rd.SRV)} == want


def test_tag_filters_a_records(answerer: Answerer) -> None:
    r = ask(answerer, "v1.api.service.dockmesh", "A")
    assert sorted(records(r, Rd.A)) == ["10.0.0.1", "10.0.0.2"]  # api-3 carries v1 but fails


def test_names_are_case_insensitive_and_the_question_keeps_its_case(answerer: Answerer) -> None:
    for name in ["API.Service.DockMesh.", "aPi.sErViCe.cOnSuL", "api.service.dockmesh."]:
        r = ask(answerer, name, "A")
        assert sorted(records(r, Rd.A)) == ["10.0.0.1", "10.0.0.2", "10.0.0.3"]
        assert r.question[0].name.to_text() == dns.name.from_text(name).to_text()
        assert r.answer[0].name == dns.name.from_text(name)


def test_ipv6_and_host_name_addresses(answerer: Answerer) -> None:
    assert records(ask(answerer, "web.service.dockmesh", "AAAA"), Rd.AAAA) == ["fd00::7"]
    r = ask(answerer, "web.service.dockmesh", "SRV")
    label = node_label("Web.1").decode()
    assert records(r, Rd.SRV) == [f"1 1 80 {label}.node.dockmesh."]
    assert records(r, Rd.AAAA, "additional") == ["fd00::7"]
    # A host name is the SRV target itself; there is no address to give for A.
    assert records(ask(answerer, "ext.service.dockmesh", "SRV"), Rd.SRV) == [
        "1 1 5432 db.example.net."
    ]
    r = ask(answerer, "ext.service.dockmesh", "A")
    assert (r.rcode(), r.answer) == (dns.rcode.NOERROR, [])


def test_node_labels_are_valid_and_distinct() -> None:
    assert node_label("api-1") == b"api-1"
    ids = ["Web.1", "web.1", "web-1", "a" * 80, "a" * 81, "ñ", "--", "x y"]
    labels = [node_label(i) for i in ids]
    assert len(set(labels)) == len(labels)
    for label in labels:
        assert 0 < len(label) <= 63
        assert all(ch in b"abcdefghijklmnopqrstuvwxyz0123456789-" for ch in label)


def test_apex_and_empty_non_terminals(answerer: Answerer) -> None:
    r = ask(answerer, "dockmesh", "SOA")
    assert records(r, Rd.SOA)[0].startswith("ns.dockmesh. hostmaster.dockmesh.")
    for name in ["service.dockmesh", "node.dockmesh", "container.dockmesh", "dockmesh"]:
        r = ask(answerer, name, "A")
        assert (r.rcode(), r.answer) == (dns.rcode.NOERROR, [])
        assert records(r, Rd.SOA, "authority")


def test_any_gives_every_record_of_the_name(answerer: Answerer) -> None:
    r = ask(answerer, "api.service.dockmesh", "ANY")
    assert len(records(r, Rd.A)) == 3
    assert len(records(r, Rd.SRV)) == 3


# --- negative answers -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "nosuch.service.dockmesh",
        "v9.api.service.dockmesh",
        "_api._v9.service.dockmesh",
        "nosuch.node.dockmesh",
        "a.b.node.dockmesh",
        "www.dockmesh",
        "nosuch.container.dockmesh",
        "x.service.consul",
    ],
)
def test_unknown_names_inside_the_domain_are_nxdomain_with_the_soa(
    answerer: Answerer, name: str
) -> None:
    r = ask(answerer, name, "A")
    assert r.rcode() == dns.rcode.NXDOMAIN
    assert r.flags & dns.flags.AA
    assert r.answer == []
    (soa,) = r.authority
    assert soa.rdtype == Rd.SOA
    assert soa.name == dns.name.from_text(name.rsplit(".", 1)[1])
    assert soa[0].minimum == 0  # negative answers are not cached longer than the TTL


def test_a_service_without_passing_instances_is_nxdomain() -> None:
    c = Catalog()
    failing = CheckSpec("chk", "http", "ttl", service_id="db-1", ttl_s=30)
    c.register(Instance("db-1", "db", "10.0.0.9", 5432), [failing], 0)
    r = ask(Answerer(c), "db.service.dockmesh")
    assert r.rcode() == dns.rcode.NXDOMAIN
    c.update_check("chk", "passing", "", 1)
    a = Answerer(c)
    assert records(ask(a, "db.service.dockmesh"), Rd.A) == ["10.0.0.9"]


@pytest.mark.parametrize("rdtype", ["AAAA", "TXT", "MX", "NS", "CNAME", "SOA", "PTR"])
def test_existing_name_without_that_type_is_noerror_and_empty(
    answerer: Answerer, rdtype: str
) -> None:
    r = ask(answerer, "api.service.dockmesh", rdtype)
    assert r.rcode() == dns.rcode.NOERROR
    assert r.answer == []
    assert records(r, Rd.SOA, "authority")


@pytest.mark.parametrize(
    "name",
    # A reverse name is answered only for an address dockmesh handed out (test_answer_consul).
    ["example.com", "dockmesh.example.com", "service.dockmesh.evil", "9.9.9.10.in-addr.arpa"],
)
def test_names_outside_the_domains_are_refused(answerer: Answerer, name: str) -> None:
    r = ask(answerer, name, "A")
    assert r.rcode() == dns.rcode.REFUSED
    assert not r.flags & dns.flags.AA
    assert (r.answer, r.authority) == ([], [])


def test_a_refusal_says_which_domains_are_served_when_the_client_speaks_edns() -> None:
    """RFC 8914's Extended DNS Error 20 (Not Authoritative), for people reading dig's output;
    without EDNS there is nowhere to put it (RFC 6891: no OPT in the response)."""
    a = Answerer(make_catalog(), domains=("dockmesh", "mesh.internal"))
    for tcp in (False, True):
        for _ in range(2):  # built, then from the caches
            r = ask(a, "www.example.com", "A", use_edns=0, tcp=tcp)
            assert r.rcode() == dns.rcode.REFUSED
            (option,) = r.options
            assert isinstance(option, dns.edns.EDEOption)
            assert option.code == dns.edns.EDECode.NOT_AUTHORITATIVE
            assert option.text is not None
            assert "dockmesh." in option.text and "mesh.internal." in option.text
    r = ask(a, "www.example.com", "A")
    assert r.rcode() == dns.rcode.REFUSED
    assert r.edns < 0
    # Names of ours, and zone transfers, carry no such option.
    assert ask(a, "api.service.dockmesh", "A", use_edns=0).options == ()
    assert ask(a, "nosuch.service.dockmesh", "A", use_edns=0).options == ()


def test_an_extended_error_text_is_cut_at_a_character() -> None:
    option = wire.ede(20, "é" * 300)
    assert len(option) == 6 + 400
    parsed = dns.edns.option_from_wire(dns.edns.OptionType.EDE, option, 4, len(option) - 4)
    assert isinstance(parsed, dns.edns.EDEOption)
    assert parsed.text == "é" * 200


def test_other_domains_are_configurable() -> None:
    a = Answerer(make_catalog(), domains=("mesh.internal",))
    assert len(records(ask(a, "api.service.mesh.internal"), Rd.A)) == 3
    assert ask(a, "api.service.dockmesh").rcode() == dns.rcode.REFUSED
    assert ask(a, "api.service.internal").rcode() == dns.rcode.REFUSED


@pytest.mark.parametrize("domains", [(), (".",), ("dockmesh", "")])
def test_the_root_is_never_a_domain_of_ours(domains: tuple[str, ...]) -> None:
    with pytest.raises(ValueError, match="domain"):
        Answerer(make_catalog(), domains=domains)


def test_zone_transfers_and_other_classes_are_refused(answerer: Answerer) -> None:
    assert ask(answerer, "dockmesh", "AXFR", tcp=True).rcode() == dns.rcode.REFUSED
    assert ask(answerer, "dockmesh", "IXFR", tcp=True).rcode() == dns.rcode.REFUSED
    q = dns.message.make_query("api.service.dockmesh", "A", rdclass="CH")
    out = answerer.answer(q.to_wire())
    assert out is not None
    assert dns.message.from_wire(out).rcode() == dns.rcode.REFUSED


def test_ttl_is_configurable() -> None:
    a = Answerer(make_catalog(), ttl=5)
    r = ask(a, "api.service.dockmesh", "SRV")
    assert {rrset.ttl for rrset in (*r.answer, *r.additional)} == {5}
    r = ask(a, "nosuch.service.dockmesh")
    assert r.authority[0].ttl == 5
    assert r.authority[0][0].minimum == 5


# --- containers from the topology -------------------------------------------------------------


def container(
    name: str, *addresses: tuple[str | None, str | None], state: str = "running"
) -> Container:
    atts = tuple(Attachment(f"n{i}", f"net{i}", v4, v6) for i, (v4, v6) in enumerate(addresses))
    cid = (name.encode().hex() * 64)[:64]
    return Container(cid, name, "local", "img", state, attachments=atts)


def topology(version: int, *containers: Container) -> Topology:
    return Topology(version, (EngineInfo("local", "unix:///x"),), (), containers)


def test_container_names_answer_every_address_of_a_running_container() -> None:
    holder: list[Topology | None] = [None]
    a = Answerer(Catalog(), lambda: holder[0])
    assert ask(a, "web.container.dockmesh").rcode() == dns.rcode.NXDOMAIN  # no topology yet
    holder[0] = topology(
        1,
        container("Web", ("172.18.0.2", None), ("172.19.0.5", "fd00::5")),
        container("old", ("172.18.0.9", None), state="exited"),
    )
    r = ask(a, "web.container.dockmesh")
    assert sorted(records(r, Rd.A)) == ["172.18.0.2", "172.19.0.5"]
    assert records(ask(a, "WEB.container.consul", "AAAA"), Rd.AAAA) == ["fd00::5"]
    r = ask(a, "old.container.dockmesh")  # known but not running: no data, not NXDOMAIN
    assert (r.rcode(), r.answer) == (dns.rcode.NOERROR, [])
    web_id = topology(1, container("Web")).containers[0].id
    assert len(records(ask(a, f"{web_id[:12]}.container.dockmesh"), Rd.A)) == 2
    # A new topology is seen at the next question: nobody has to announce it.
    holder[0] = topology(2, container("web", ("172.18.0.3", None)))
    assert records(ask(a, "web.container.dockmesh"), Rd.A) == ["172.18.0.3"]
    assert ask(a, "old.container.dockmesh").rcode() == dns.rcode.NXDOMAIN


def test_container_answers_never_enter_the_exact_cache() -> None:
    a = Answerer(Catalog(), lambda: topology(1, container("web", ("172.18.0.2", None))))
    ask(a, "web.container.dockmesh")
    ask(a, "web.container.dockmesh")
    assert a.udp_exact == {}
    ask(a, "api.service.dockmesh")
    assert len(a.udp_exact) == 1


# --- truncation and EDNS ----------------------------------------------------------------------


def big_catalog(n: int) -> Catalog:
    c = Catalog()
    for i in range(n):
        c.register(
            Instance(f"big-instance-{i:03}", "big", f"10.1.{i // 250}.{i % 250 + 1}", 80), [], 0
        )
    return c


def test_udp_without_edns_truncates_at_512_bytes_and_tcp_gets_everything() -> None:
    a = Answerer(big_catalog(40))
    q = dns.message.make_query("big.service.dockmesh", "A")
    udp = a.answer(q.to_wire())
    assert udp is not None
    assert len(udp) <= 512
    r = dns.message.from_wire(udp)
    assert r.flags & dns.flags.TC
    assert 0 < len(records(r, Rd.A)) < 40
    tcp = a.answer(q.to_wire(), tcp=True)
    assert tcp is not None
    r = dns.message.from_wire(tcp)
    assert not r.flags & dns.flags.TC
    assert len(records(r, Rd.A)) == 40


@pytest.mark.parametrize(
    ("payload", "fits"), [(512, False), (1232, True), (4096, True), (100, False)]
)
def test_edns_payload_size_sets_the_udp_limit(payload: int, fits: bool) -> None:
    a = Answerer(big_catalog(40))  # 40 A records: 38 + 40 * 16 = 678 bytes
    q = dns.message.make_query("big.service.dockmesh", "A", use_edns=0, payload=payload)
    out = a.answer(q.to_wire())
    assert out is not None
    assert len(out) <= max(payload, 512)
    r = dns.message.from_wire(out)
    assert r.edns == 0  # an OPT answers an OPT
    assert r.payload == 4096
    assert bool(r.flags & dns.flags.TC) != fits
    assert (len(records(r, Rd.A)) == 40) == fits


def test_the_udp_limit_is_capped_by_max_udp_payload() -> None:
    a = Answerer(big_catalog(200), max_udp_payload=1232)
    q = dns.message.make_query("big.service.dockmesh", "A", use_edns=0, payload=65000)
    out = a.answer(q.to_wire())
    assert out is not None
    assert len(out) <= 1232
    assert dns.message.from_wire(out).flags & dns.flags.TC


def test_srv_drops_the_additional_section_before_answers_without_tc() -> None:
    a = Answerer(big_catalog(8))  # SRV records 8 * 50 bytes fit in 512, their targets do not
    q = dns.message.make_query("big.service.dockmesh", "SRV")
    out = a.answer(q.to_wire())
    assert out is not None
    r = dns.message.from_wire(out)
    assert len(out) <= 512
    assert len(records(r, Rd.SRV)) == 8
    assert r.additional == []
    assert not r.flags & dns.flags.TC  # the targets can be asked for one by one
    tcp = a.answer(q.to_wire(), tcp=True)
    assert tcp is not None
    assert len(dns.message.from_wire(tcp).additional) == 8


def test_edns_do_bit_is_echoed_and_options_are_ignored(answerer: Answerer) -> None:
    cookie = dns.edns.GenericOption(dns.edns.OptionType.COOKIE, b"12345678")
    r = ask(answerer, "api.service.dockmesh", use_edns=0, want_dnssec=True, options=[cookie])
    assert r.ednsflags & dns.flags.DO
    assert r.options == ()
    assert len(records(r, Rd.A)) == 3
    # Queries with options vary per query (cookies): they stay out of the exact cache.
    assert answerer.udp_exact == {}


def test_unknown_edns_version_is_badvers(answerer: Answerer) -> None:
    r = ask(answerer, "api.service.dockmesh", use_edns=1)
    assert r.rcode() == dns.rcode.BADVERS
    assert r.edns == 0


# --- the caches ---------------------------------------------------------------------------------


def test_id_is_patched_and_rd_cd_echoed_from_the_exact_cache(answerer: Answerer) -> None:
    q = dns.message.make_query("api.service.dockmesh", "A")
    rotations = {(answerer.answer(q.to_wire()) or b"")[2:] for _ in range(3)}
    assert len(rotations) == 3
    assert len(answerer.udp_exact) == 1
    for qid in (0, 1, 0xBEEF, 0xFFFF):
        q.id = qid
        out = answerer.answer(q.to_wire())
        assert out is not None
        assert struct.unpack("!H", out[:2])[0] == qid
        assert out[2:] in rotations  # only the ID differs
    for flags in (0, dns.flags.RD, dns.flags.CD, dns.flags.RD | dns.flags.CD):
        q.flags = flags
        for _ in range(2):  # the second comes from the exact cache
            r = dns.message.from_wire(answerer.answer(q.to_wire()) or b"")
            assert r.flags & (dns.flags.RD | dns.flags.CD) == flags
            assert r.flags & dns.flags.AA


def test_a_records_rotate_between_responses(answerer: Answerer) -> None:
    firsts = [records(ask(answerer, "api.service.dockmesh"), Rd.A)[0] for _ in range(6)]
    assert firsts[:3] == ["10.0.0.1", "10.0.0.2", "10.0.0.3"]
    assert firsts[3:] == firsts[:3]


def test_answers_follow_the_catalog_after_invalidate() -> None:
    c = make_catalog()
    a = Answerer(c)
    assert len(records(ask(a, "api.service.dockmesh"), Rd.A)) == 3
    c.deregister("api-1")
    a.invalidate()
    assert sorted(records(ask(a, "api.service.dockmesh"), Rd.A)) == ["10.0.0.1", "10.0.0.3"]
    c.update_check("chk-api-3", "passing", "", 1)
    a.invalidate()
    assert len(records(ask(a, "api.service.dockmesh"), Rd.A)) == 3
    for i in range(3):
        c.deregister(f"api-{i}")
    c.deregister("api-3")
    a.invalidate()
    assert ask(a, "api.service.dockmesh").rcode() == dns.rcode.NXDOMAIN


def test_caches_are_bounded() -> None:
    a = Answerer(make_catalog(), cache_entries=10)
    for i in range(50):
        ask(a, f"n{i}.service.dockmesh")
    assert len(a.udp_exact) <= 10
    assert len(a._prepared) <= 10


def test_counters_by_rcode(answerer: Answerer) -> None:
    ask(answerer, "api.service.dockmesh")
    ask(answerer, "api.service.dockmesh")
    ask(answerer, "nosuch.service.dockmesh")
    ask(answerer, "example.com")
    assert answerer.answer(b"\x00") is None
    assert answerer.queries_by_rcode() == {"NOERROR": 2, "NXDOMAIN": 1, "REFUSED": 1}
    assert answerer.dropped == 1


# --- malformed and unusual packets --------------------------------------------------------------


def header(qid: int = 0x1234, flags: int = 0x0100, counts: tuple[int, ...] = (1, 0, 0, 0)) -> bytes:
    return struct.pack("!HH4H", qid, flags, *counts)


QUESTION = b"\x03api\x07service\x08dockmesh\x00\x00\x01\x00\x01"


@pytest.mark.parametrize(
    ("packet", "rcode"),
    [
        (header(counts=(0, 0, 0, 0)), dns.rcode.FORMERR),
        (header(counts=(2, 0, 0, 0)) + QUESTION + QUESTION, dns.rcode.FORMERR),
        (header() + QUESTION[:-2], dns.rcode.FORMERR),
        (header() + b"\x03api", dns.rcode.FORMERR),
        (header() + QUESTION + b"junk", dns.rcode.FORMERR),
        (header(counts=(1, 0, 0, 1)) + QUESTION + b"\x00\x00\x29", dns.rcode.FORMERR),
        (header(flags=0x2100) + QUESTION, dns.rcode.NOTIMP),  # NOTIFY
        (header(flags=0x2800) + QUESTION, dns.rcode.NOTIMP),  # UPDATE
        (header() + b"\x40" + b"x" * 64 + b"\x00\x00\x01\x00\x01", dns.rcode.FORMERR),
    ],
)
def test_malformed_queries_get_a_header_only_answer(packet: bytes, rcode: int) -> None:
    out = Answerer(make_catalog()).answer(packet)
    assert out is not None
    r = dns.message.from_wire(out)
    assert (r.id, r.rcode()) == (0x1234, rcode)
    assert r.flags & dns.flags.QR


@pytest.mark.parametrize(
    "packet", [b"", b"\x12", b"\x12\x34\x01\x00\x00\x01", header(flags=0x8100) + QUESTION]
)
def test_unreadable_packets_and_responses_are_dropped(packet: bytes) -> None:
    assert Answerer(make_catalog()).answer(packet) is None


def test_a_compressed_question_name_is_read_by_dnspython() -> None:
    # The question's name as a pointer to itself is a loop: FORMERR, not a hang.
    assert (
        dns.message.from_wire(
            Answerer(make_catalog()).answer(header() + b"\xc0\x0c\x00\x01\x00\x01") or b""
        ).rcode()
        == dns.rcode.FORMERR
    )


def test_a_query_with_more_records_goes_through_dnspython(answerer: Answerer) -> None:
    q = dns.message.make_query("api.service.dockmesh", "A", use_edns=0)
    q.answer.append(dns.rrset.from_text("x.dockmesh.", 0, "IN", "A", "10.0.0.1"))
    out = answerer.answer(q.to_wire())
    r = dns.message.from_wire(out or b"")
    assert len(records(r, Rd.A)) == 3
    assert answerer.udp_exact == {}  # unusual queries are not keyed by their bytes


# --- hypothesis -------------------------------------------------------------------------------

FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def check_response(query: bytes, out: bytes | None) -> dns.message.Message | None:
    if out is None:
        return None
    r = dns.message.from_wire(out)
    assert r.id == struct.unpack("!H", query[:2])[0]
    assert r.flags & dns.flags.QR
    assert not r.flags & dns.flags.RA
    return r


@FUZZ
@given(st.binary(max_size=600))
def test_any_bytes_get_a_well_formed_response_or_none(packet: bytes) -> None:
    a = Answerer(make_catalog())
    for tcp in (False, True):
        check_response(packet, a.answer(packet, tcp))
    assert a.errors == 0


LABEL = st.one_of(
    st.sampled_from(
        [
            "api",
            "API",
            "web",
            "ext",
            "v1",
            "_api",
            "_tcp",
            "_v1",
            "service",
            "node",
            "container",
            "dockmesh",
            "consul",
            "api-1",
            "x",
        ]
    ),
    st.text(st.characters(codec="ascii", exclude_characters="."), min_size=1, max_size=20),
    st.binary(min_size=1, max_size=63).map(lambda b: b.decode("latin-1")),
)
DOMAIN = st.sampled_from(["dockmesh", "consul", "DockMesh", "example.com", ""])


@st.composite
def queries(draw: st.DrawFn) -> bytes:
    labels = draw(st.lists(LABEL, max_size=4))
    domain = draw(DOMAIN)
    try:
        name = dns.name.Name(
            [*(x.encode("latin-1") for x in labels), *([domain.encode()] if domain else []), b""]
        )
    except dns.name.NameTooLong:
        name = dns.name.root
    rdtype = Rd.make(
        draw(st.sampled_from([1, 2, 5, 6, 12, 15, 16, 28, 33, 41, 251, 252, 253, 255, 65280]))
    )
    rdclass = dns.rdataclass.RdataClass.make(draw(st.sampled_from([1, 3, 254, 255, 4])))
    edns = draw(st.sampled_from([-1, 0, 1]))
    q = dns.message.make_query(
        name,
        rdtype,
        rdclass,
        use_edns=edns,
        payload=draw(st.integers(0, 65535)),
        want_dnssec=draw(st.booleans()),
    )
    q.id = draw(st.integers(0, 0xFFFF))
    q.flags = draw(st.integers(0, 0xFFFF)) & ~0xF80F  # any of the non-opcode, non-QR bits
    return q.to_wire()


@FUZZ
@given(queries(), st.booleans())
def test_any_valid_query_gets_a_parseable_response_with_its_question(
    query: bytes, tcp: bool
) -> None:
    a = Answerer(make_catalog())
    q = dns.message.from_wire(query)
    for _ in range(2):  # the second from the caches
        out = a.answer(query, tcp)
        r = check_response(query, out)
        assert r is not None
        assert out is not None
        if not tcp:
            assert len(out) <= max(512, min(q.payload, 4096)) if q.edns >= 0 else len(out) <= 512
        if r.rcode() != dns.rcode.FORMERR:
            assert r.question == q.question
            assert r.question[0].name.labels == q.question[0].name.labels  # case kept
    assert a.errors == 0


@FUZZ
@given(queries(), st.lists(st.tuples(st.integers(0, 600), st.integers(0, 255)), max_size=4))
def test_damaged_queries_never_raise(query: bytes, damage: list[tuple[int, int]]) -> None:
    packet = bytearray(query)
    for at, value in damage:
        if at < len(packet):
            packet[at] = value
    a = Answerer(make_catalog())
    check_response(bytes(packet), a.answer(bytes(packet)))
    check_response(bytes(packet), a.answer(bytes(packet), True))
    assert a.errors == 0
