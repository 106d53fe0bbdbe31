"""The report's verdict per probed pair (dockmesh.cli.obsreport.expectations): what the
policy analysis says of a ping on the pair's own network, with the rule, default or Docker
setting that decides it."""

from __future__ import annotations

from dockmesh.cli.obsreport import expectations
from dockmesh.model.policy import Policy, parse_policy
from dockmesh.observe.report import connectivity_pairs
from tests.unit.topos import container, network, topology

LOCAL = frozenset({"local"})


def policy(doc: dict[str, object]) -> Policy:
    got, problems = parse_policy(doc)
    assert got is not None and not problems
    return got


def test_a_pair_the_network_default_denies_says_so_and_an_allowed_one_names_its_rule() -> None:
    topo = topology(
        [network("seg", "10.0.0.0/24")],
        [container(n, {"seg": f"10.0.0.{i + 2}"}) for i, n in enumerate("abc")],
    )
    pol = policy(
        {
            "networks": {"seg": {"default": "deny"}},
            "rules": [{"from": {"container": "a"}, "to": {"container": "b"}}],
        }
    )
    pairs = connectivity_pairs(topo, LOCAL)
    got = expectations(topo, pol, "policy enforced", pairs)
    by_pair = {(p.src.name, p.dst.name): got[(p.src.id, p.address)] for p in pairs}
    assert by_pair[("a", "b")].reachable and "rule 1 allows it" in by_pair[("a", "b")].reason
    for pair in (("b", "c"), ("c", "a")):
        assert not by_pair[pair].reachable
        assert "network seg's default denies it" in by_pair[pair].reason


def test_no_policy_expects_an_answer_and_docker_s_icc_is_a_denial() -> None:
    topo = topology(
        [network("open", "10.1.0.0/24"), network("quiet", "10.2.0.0/24", icc=False)],
        [
            container("a", {"open": "10.1.0.2", "quiet": "10.2.0.2"}),
            container("b", {"open": "10.1.0.3", "quiet": "10.2.0.3"}),
        ],
    )
    pairs = connectivity_pairs(topo, LOCAL)
    got = expectations(topo, None, "no policy applied", pairs)
    for p in pairs:
        e = got[(p.src.id, p.address)]
        if p.network == "open":
            assert e.reachable, e
        else:
            # The analysis of a→b follows "open" (it lets the ping through); the probe on
            # "quiet" targets b's address there, where Docker drops it.
            assert not e.reachable and "enable_icc=false on quiet" in e.reason, e


def test_each_pair_is_judged_on_its_own_network() -> None:
    topo = topology(
        [network("shut", "10.3.0.0/24"), network("open", "10.4.0.0/24")],
        [
            container("a", {"shut": "10.3.0.2", "open": "10.4.0.2"}),
            container("b", {"shut": "10.3.0.3", "open": "10.4.0.3"}),
        ],
    )
    pol = policy({"networks": {"shut": {"default": "deny"}}})
    pairs = connectivity_pairs(topo, LOCAL)
    got = expectations(topo, pol, "policy enforced", pairs)
    verdicts = {(p.network, p.src.name): got[(p.src.id, p.address)] for p in pairs}
    assert verdicts[("open", "a")].reachable and verdicts[("open", "b")].reachable
    assert not verdicts[("shut", "a")].reachable and not verdicts[("shut", "b")].reachable
    assert "shut" in verdicts[("shut", "a")].reason
