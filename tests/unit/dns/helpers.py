"""Shared by the DNS unit tests: a catalog with every kind of instance, and asking an
answerer the way a client would (checking what every response must hold)."""

from __future__ import annotations

import dns.flags
import dns.message
import dns.rdatatype

from dockmesh.catalog.state import Catalog
from dockmesh.dns.answer import Answerer
from dockmesh.model.catalog import CheckSpec, Instance

Rd = dns.rdatatype.RdataType


def make_catalog() -> Catalog:
    """api: three passing instances (weights 1-3, tag v1 on the first two) and one whose check
    fails; web: an IPv6 instance; ext: an instance whose address is a host name."""
    c = Catalog()
    for i in range(3):
        tags = ("v1",) if i < 2 else ("v2",)
        c.register(Instance(f"api-{i}", "api", f"10.0.0.{i + 1}", 8080, tags, weight=i + 1), [], 0)
    failing = CheckSpec("chk-api-3", "http", "ttl", service_id="api-3", ttl_s=30)
    c.register(Instance("api-3", "api", "10.0.0.4", 8080, ("v1",)), [failing], 0)
    c.register(Instance("Web.1", "web", "fd00::7", 80), [], 0)
    c.register(Instance("ext-1", "ext", "db.example.net", 5432), [], 0)
    return c


def ask(
    answerer: Answerer,
    name: str,
    rdtype: str | Rd = "A",
    *,
    tcp: bool = False,
    **kwargs: object,
) -> dns.message.Message:
    q = dns.message.make_query(name, rdtype, **kwargs)  # type: ignore[arg-type]
    wire = answerer.answer(q.to_wire(), tcp)
    assert wire is not None
    r = dns.message.from_wire(wire)
    assert r.id == q.id
    assert r.flags & dns.flags.QR
    assert not r.flags & dns.flags.RA  # never recursion
    assert r.question == q.question  # echoed as sent, case included
    return r


def records(r: dns.message.Message, rdtype: Rd, section: str = "answer") -> list[str]:
    return [rd.to_text() for rrset in getattr(r, section) if rrset.rdtype == rdtype for rd in rrset]
