"""dig against the DNS server for what Consul's DNS also answers: PTR (`dig -x`), NS with a
target that resolves, and the datacenter in a name (the agent's, never another's)."""

from __future__ import annotations

import pytest

from tests.integration.test_dns import Served, dig, served, short

__all__ = ["served"]  # the fixture, shared with test_dns
pytestmark = pytest.mark.integration


def named(s: Served) -> Served:
    s.lt.call(lambda: s.server.answerer.set_node("agent-1", "east", "127.0.0.1"))
    return s


def test_dig_x_names_the_instance_and_the_name_resolves_back(served: Served) -> None:
    s = named(served)
    assert short(s.port, "-x", "10.77.0.2") == ["api-1.node.east.dockmesh."]
    assert short(s.port, "api-1.node.east.dockmesh") == ["10.77.0.2"]
    assert short(s.port, "-x", "10.77.0.2", "+tcp") == ["api-1.node.east.dockmesh."]
    assert short(s.port, "-x", "127.0.0.1") == ["agent-1.node.east.dockmesh."]
    out = dig(s.port, "-x", "10.77.9.9")  # nobody's address: not ours to deny
    assert "status: REFUSED" in out


def test_ns_and_its_target_resolve(served: Served) -> None:
    s = named(served)
    out = dig(s.port, "dockmesh", "NS")
    assert "status: NOERROR" in out and "flags: qr aa rd;" in out
    lines = [" ".join(line.split()) for line in out.splitlines()]
    assert "dockmesh. 0 IN NS agent-1.node.east.dockmesh." in lines
    assert "agent-1.node.east.dockmesh. 0 IN A 127.0.0.1" in lines  # the glue
    assert short(s.port, "consul", "NS") == ["agent-1.node.east.consul."]
    assert short(s.port, "agent-1.node.east.consul") == ["127.0.0.1"]
    assert short(s.port, "ns.dockmesh") == ["127.0.0.1"]


def test_the_agents_datacenter_answers_and_another_is_nxdomain(served: Served) -> None:
    s = named(served)
    want = ["10.77.0.1", "10.77.0.2", "10.77.0.3"]
    assert short(s.port, "api.service.east.dockmesh") == want
    assert short(s.port, "v1.api.service.EAST.consul", "+tcp") == want
    assert short(s.port, "api.service.east.dc.dockmesh") == want
    for name in ("api.service.west.dockmesh", "api.service.dc1.dockmesh"):
        out = dig(s.port, name)
        assert "status: NXDOMAIN" in out and "ANSWER: 0" in out
