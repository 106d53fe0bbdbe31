"""The policy as values: reading either kind of file, every problem with its path."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dockmesh.model.policy import (
    Policy,
    PortRange,
    Scope,
    Selector,
    parse_policy,
    parse_port_range,
    parse_selector_arg,
    policy_file_problems,
    policy_file_section,
    policy_from_json,
)
from tests.outcomes import Outcomes
from tests.spoil import spoiled
from tests.unit.topos import container


def test_interface_example_in_a_topology_file_uses_short_names() -> None:
    section = {
        "default": "allow",
        "networks": {"backend": {"default": "deny"}},
        "rules": [
            {"from": {"service": "gateway"}, "to": {"service": "api"}, "ports": ["8080/tcp"]},
            {"from": {"service": "api"}, "to": {"network": "database"}, "ports": ["5432/tcp"]},
        ],
    }
    scope = Scope("demo", frozenset({"backend", "database"}), frozenset({"gateway", "api"}))
    policy, problems = parse_policy(section, scope, ("policy",))
    assert problems == []
    assert policy is not None
    assert policy.networks == (("demo_backend", "deny"),)
    r0, r1 = policy.rules
    assert r0.sources == (Selector(service="gateway", project="demo"),)
    assert r0.ports == (PortRange("tcp", 8080, 8080),)
    assert r1.destinations == (Selector(network="demo_database"),)


def test_policy_file_alone_keeps_engine_names() -> None:
    doc = {
        "policy": {
            "networks": {"acc1seg": {"default": "deny"}},
            "rules": [
                {"from": {"service": "gateway"}, "to": {"service": "api"}, "ports": ["8080/tcp"]}
            ],
        }
    }
    section, base, is_topology = policy_file_section(doc)
    assert (base, is_topology) == (("policy",), False)
    policy, problems = parse_policy(section, None, base)
    assert problems == [] and policy is not None
    assert policy.networks == (("acc1seg", "deny"),)
    assert policy.rules[0].sources == (Selector(service="gateway"),)


def test_bare_section_at_the_top_is_a_policy_file() -> None:
    assert policy_file_section({"default": "deny"}) == ({"default": "deny"}, (), False)
    assert policy_file_section({"project": "x", "services": {}})[2] is True


def problems_of(section: Any, scope: Scope | None = None) -> list[tuple[tuple[Any, ...], str]]:
    return parse_policy(section, scope, ("policy",))[1]


def test_problems_name_their_paths() -> None:
    found = problems_of(
        {
            "default": "maybe",
            "networks": {"backend": {"default": "nope"}, "x": {}},
            "rules": [
                {"from": {"servce": "a"}, "to": {}, "ports": ["80/tcpx"]},
                {"to": {"service": ""}},
                {"from": {}, "to": {}, "ports": [], "extra": 1},
                "nonsense",
            ],
            "what": 1,
        }
    )
    paths = {p for p, _ in found}
    assert ("policy", "default") in paths
    assert ("policy", "networks", "backend", "default") in paths
    assert ("policy", "networks", "x", "default") in paths
    assert ("policy", "rules", 0, "from", "servce") in paths
    assert ("policy", "rules", 0, "ports", 0) in paths
    assert ("policy", "rules", 1, "from") in paths
    assert ("policy", "rules", 1, "to", "service") in paths
    assert ("policy", "rules", 2, "ports") in paths
    assert ("policy", "rules", 2, "extra") in paths
    assert ("policy", "rules", 3) in paths
    assert ("policy", "what") in paths


def test_unknown_short_names_in_a_topology_file() -> None:
    scope = Scope("demo", frozenset({"backend"}), frozenset({"api"}))
    found = problems_of(
        {
            "networks": {"frontend": {"default": "deny"}},
            "rules": [{"from": {"service": "web"}, "to": {"network": "db"}}],
        },
        scope,
    )
    assert [(p, m.split(" (")[0]) for p, m in found] == [
        (("policy", "networks", "frontend"), "unknown network 'frontend'"),
        (("policy", "rules", 0, "from", "service"), "unknown service 'web'"),
        (("policy", "rules", 0, "to", "network"), "unknown network 'db'"),
    ]
    # Naming another project's service is not checked against this file.
    assert (
        problems_of({"rules": [{"from": {"service": "web", "project": "other"}, "to": {}}]}, scope)
        == []
    )


def test_port_forms() -> None:
    assert parse_port_range(8080) == PortRange("tcp", 8080, 8080)
    assert parse_port_range("53/udp") == PortRange("udp", 53, 53)
    assert parse_port_range("9000-9100/sctp") == PortRange("sctp", 9000, 9100)
    assert parse_port_range("icmp") == PortRange("icmp")
    assert parse_port_range("tcp") == PortRange("tcp")
    for bad in ("0", "70000", "10-5", "80/icmp", "x", True, None, "80/tcp/udp"):
        assert isinstance(parse_port_range(bad), str), bad


def test_selector_matching_uses_every_service_label() -> None:
    api = container(
        "p-api-1", {"n": "10.0.0.2"}, {"dockmesh.spec.service": "api", "dockmesh.project": "p"}
    )
    comp = container(
        "c-api-1",
        {"n": "10.0.0.3"},
        {"com.docker.compose.service": "api", "com.docker.compose.project": "c"},
    )
    cat = container("x", {"n": "10.0.0.4"}, {"dockmesh.service": "api", "team": "web"})
    s = Selector(service="api")
    assert all(s.matches(c) for c in (api, comp, cat))
    assert Selector(service="api", project="p").matches(api)
    assert not Selector(service="api", project="p").matches(comp)
    assert Selector(labels=(("team", "web"),)).matches(cat)
    assert Selector(labels=(("team", None),)).matches(cat)
    assert not Selector(labels=(("team", "db"),)).matches(cat)
    assert Selector(network="n").matches_endpoint(cat, "n")
    assert not Selector(network="n").matches_endpoint(cat, "m")


def test_selector_arguments() -> None:
    assert parse_selector_arg("label=team=web") == Selector(labels=(("team", "web"),))
    assert parse_selector_arg("network=demo_backend") == Selector(network="demo_backend")
    assert isinstance(parse_selector_arg("colour=red"), str)
    assert isinstance(parse_selector_arg("service="), str)


NAMES = st.sampled_from(["a", "b", "c.d", "x-1"])
SELECTORS = st.fixed_dictionaries(
    {},
    optional={
        "service": NAMES,
        "container": NAMES,
        "network": NAMES,
        "project": NAMES,
        "label": st.sampled_from(["k=v", "k", ["k=v", "j"]]),
    },
)
SECTIONS = st.fixed_dictionaries(
    {},
    optional={
        "default": st.sampled_from(["allow", "deny"]),
        "networks": st.dictionaries(
            NAMES, st.fixed_dictionaries({"default": st.sampled_from(["allow", "deny"])})
        ),
        "rules": st.lists(
            st.fixed_dictionaries(
                {"from": st.one_of(SELECTORS, st.lists(SELECTORS, min_size=1)), "to": SELECTORS},
                optional={
                    "ports": st.lists(
                        st.sampled_from([80, "53/udp", "1-1024/tcp", "icmp", "udp"]), min_size=1
                    )
                },
            ),
            max_size=4,
        ),
    },
)


@given(SECTIONS)
def test_valid_sections_read_clean_and_round_trip(section: dict[str, Any]) -> None:
    policy, problems = parse_policy(section)
    assert problems == [] and policy is not None
    assert policy_from_json(policy.to_json()) == policy


_ANY_DOCUMENT = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(
            st.sampled_from(
                ["default", "rules", "networks", "from", "to", "ports", "service", "label", "x"]
            ),
            inner,
            max_size=4,
        )
    ),
    max_leaves=20,
)


def test_any_document_gives_a_policy_or_located_problems() -> None:
    """Valid sections, valid sections with one part changed or removed, and any document: a
    policy, or problems located under `policy`."""
    seen = Outcomes()

    @given(st.one_of(SECTIONS, spoiled(SECTIONS), _ANY_DOCUMENT))
    def run(data: Any) -> None:
        policy, problems = parse_policy(data, None, ("policy",))
        seen("problems" if problems else "policy")
        assert policy is not None or problems
        for path, message in problems:
            assert path[0] == "policy" and message
        if not problems:
            assert isinstance(policy, Policy)

    run()
    # Measured over 8 runs: policy 44-67%, but once 23% in the full suite on a busy machine
    # (hypothesis mutates the examples it has, so the shares move together).
    seen.require(policy=0.15, problems=0.2)


def test_a_topology_files_policy_problems_have_their_lines() -> None:
    from tests.unit.helpers import problems_of as file_problems

    text = (
        "project: demo\n"
        "networks:\n"
        "  backend: {}\n"
        "services:\n"
        "  api: {image: dockmesh/toolbox, networks: [backend]}\n"
        "policy:\n"
        "  networks: {front: {default: deny}}\n"
        "  rules:\n"
        "    - from: {service: gw}\n"
        "      to: {service: api}\n"
        "      ports: [8080/tcp, 99999]\n"
    )
    assert file_problems(text) == [
        "f:7: policy.networks.front: unknown network 'front' (this file's networks: backend)",
        "f:9: policy.rules.0.from.service: unknown service 'gw' (services: api)",
        "f:11: policy.rules.0.ports.1: 99999: ports are 1 to 65535",
    ]
    assert file_problems(text.split("policy:")[0] + "policy: {default: deny}\n") == []


# --- a file that is not a policy is not "allow everything"; selectors without a value -------


@pytest.mark.parametrize(
    ("doc", "problem"),
    [
        (None, ((), "is not a policy")),
        ({}, ((), "is empty")),
        ({"foo": 1}, (("foo",), "unknown key")),
        ({"polcy": {"default": "deny"}}, (("polcy",), "unknown key")),
        ({"policy": None}, (("policy",), "is empty")),
        ({"policy": {}}, (("policy",), "is empty")),
        ({"policy": {"default": "deny"}, "extra": 1}, (("extra",), "unknown key")),
        ({"project": "x", "services": {"a": {}}}, ((), "without a policy: section")),
        ({"project": "x", "services": {}, "policy": None}, (("policy",), "is empty")),
    ],
)
def test_not_a_policy(doc: Any, problem: tuple[tuple[str, ...], str]) -> None:
    found = policy_file_problems(doc)
    assert any(p == problem[0] and problem[1] in m for p, m in found), found


@pytest.mark.parametrize(
    "doc",
    [
        {"default": "deny"},
        {"networks": {"backend": {"default": "deny"}}},
        {"rules": []},
        {"policy": {"default": "allow"}},
        {"project": "x", "services": {}, "policy": {"default": "deny"}},
    ],
)
def test_a_policy(doc: Any) -> None:
    assert policy_file_problems(doc) == []


@pytest.mark.parametrize("text", ["service=", "container=", "network= ", "label="])
def test_an_empty_selector_value_is_said_clearly(text: str) -> None:
    got = parse_selector_arg(text)
    assert isinstance(got, str) and "needs a value" in got


def test_a_selector_with_a_value_parses() -> None:
    assert parse_selector_arg("container=x") == Selector(container="x")


@pytest.mark.parametrize(
    ("cidr", "words"),
    [
        ("10.0.0.1/8", "host bits are set (the network is 10.0.0.0/8; one address is 10.0.0.1)"),
        ("::ffff:10.0.0.1", "IPv4-mapped"),
        ("::ffff:10.0.0.0/104", "IPv4-mapped"),
        ("fe80::1%eth0/64", "zone"),
        ("10.0.0.0/33", "is not an address"),
    ],
)
def test_a_cidr_the_kernel_would_read_otherwise_is_refused(cidr: str, words: str) -> None:
    section = {"rules": [{"from": {"cidr": cidr}, "to": {"world": True}}]}
    policy, problems = parse_policy(section, None, ("policy",))
    assert policy is None or problems
    assert [p for p in problems if p[0][-1] == "cidr" and words in p[1]], problems


@pytest.mark.parametrize("cidr", ["10.0.0.0/8", "10.0.0.7", "::/0", "0.0.0.0/0", "fd00::/8"])
def test_a_plain_cidr_is_taken(cidr: str) -> None:
    section = {"rules": [{"from": {"cidr": cidr}, "to": {"world": True}}]}
    policy, problems = parse_policy(section, None, ("policy",))
    assert problems == [] and policy is not None
