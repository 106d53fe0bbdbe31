"""The model's verdict for one connection (dockmesh.policy.decide), the semantics the policy's
docstring states: allows add up in any order, a network's default before the policy's, a
rule's ports, a selector's network, and the sentence `why` prints for each. (The compiled
ruleset agrees with it for every pair: tests/unit/policy/test_compile.py.)"""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from dockmesh.model.policy import Policy, PortRange, Rule, Selector, Verdict
from dockmesh.policy.decide import Decision, decide
from tests.unit.topos import container

WEB = container("web", {"front": "10.0.0.2", "back": "10.1.0.2"}, {"dockmesh.service": "web"})
API = container("api", {"back": "10.1.0.3"}, {"dockmesh.service": "api"})
WEB_TO_API_80 = Rule(
    (Selector(service="web"),), (Selector(service="api"),), (PortRange("tcp", 80, 80),)
)


def test_no_policy_is_docker_s_rules_only() -> None:
    d = decide(None, WEB, API, "back", "tcp", 80)
    assert d == Decision(True, "none")
    assert d.text(None) == "no policy is applied (Docker's rules only)"


def test_a_rule_allows_its_ports_and_nothing_else() -> None:
    policy = Policy(default="deny", rules=(WEB_TO_API_80,))
    allowed = decide(policy, WEB, API, "back", "tcp", 80)
    assert allowed == Decision(True, "rule", rule=0)
    assert allowed.text(policy).startswith("rule 1 allows it: ")
    assert not decide(policy, WEB, API, "back", "tcp", 81).allowed
    assert not decide(policy, WEB, API, "back", "udp", 80).allowed
    assert not decide(policy, API, WEB, "back", "tcp", 80).allowed  # rules have a direction
    assert decide(policy, WEB, API, "back", "any").allowed  # some traffic at all


def test_a_network_s_default_comes_before_the_policy_s() -> None:
    policy = Policy(default="allow", networks=(("back", "deny"),))
    d = decide(policy, WEB, API, "back", "tcp", 80)
    assert d == Decision(False, "network", network="back")
    assert d.text(policy) == "no rule allows it; network back's default denies it"
    other = decide(policy, WEB, WEB, "front", "tcp", 80)
    assert other == Decision(True, "default")
    assert other.text(policy) == "no rule allows it; the policy's default allows it"


def test_a_selector_s_network_chooses_the_address_on_that_network_only() -> None:
    on_front = Rule((Selector(service="web", network="front"),), (Selector(),))
    policy = Policy(default="deny", rules=(on_front,))
    assert decide(policy, WEB, WEB, "front").allowed
    assert not decide(policy, WEB, API, "back").allowed


rules = st.lists(
    st.builds(
        Rule,
        st.sampled_from([(Selector(service="web"),), (Selector(),), (Selector(service="api"),)]),
        st.sampled_from([(Selector(service="api"),), (Selector(network="back"),)]),
        st.sampled_from([(), (PortRange("tcp", 80, 80),), (PortRange("udp"),)]),
    ),
    max_size=4,
)


@given(
    rules,
    st.sampled_from(["allow", "deny"]),
    st.sampled_from([(), (("back", "deny"),), (("back", "allow"),)]),
    st.sampled_from([("tcp", 80), ("tcp", 22), ("udp", 53), ("icmp", None), ("any", None)]),
    st.randoms(use_true_random=False),
)
def test_allows_add_up_in_any_order(
    rs: list[Rule],
    default: Verdict,
    networks: tuple[tuple[str, Verdict], ...],
    probe: tuple[str, int | None],
    rng: random.Random,
) -> None:
    policy = Policy(default=default, networks=networks, rules=tuple(rs))
    shuffled = list(rs)
    rng.shuffle(shuffled)
    again = Policy(default=default, networks=networks, rules=tuple(shuffled))
    verdict = decide(policy, WEB, API, "back", *probe).allowed
    assert decide(again, WEB, API, "back", *probe).allowed == verdict
    # One more rule never takes an allow away.
    more = Policy(default=default, networks=networks, rules=(*rs, WEB_TO_API_80))
    assert decide(more, WEB, API, "back", *probe).allowed >= verdict
