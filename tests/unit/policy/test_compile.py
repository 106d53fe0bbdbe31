"""The compiler: golden rulesets, and the compiled verdict equal to the model's for every pair
of endpoints of random topologies under random policies."""

from __future__ import annotations

import ipaddress
import json
import os
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from dockmesh.model.policy import Policy, PortRange, Rule, Selector, parse_policy
from dockmesh.model.topology import Topology
from dockmesh.policy.compile import (
    HASH_TAG,
    compile_policy,
    document,
    element_delta,
    full_transaction,
    remove_transaction,
)
from dockmesh.policy.decide import decide
from dockmesh.policy.evaluate import Packet, evaluate
from tests.unit.topos import container, network, topology

GOLDEN = Path(__file__).parent / "golden"


def chapter() -> Topology:
    """The D2 layout: one network, gateway, api, an unlisted container; plus a second network."""
    return topology(
        [network("seg", "10.242.0.0/24"), network("other", "10.9.0.0/24")],
        [
            container("gw", {"seg": "10.242.0.2"}, {"dockmesh.service": "gateway"}),
            container("api", {"seg": ("10.242.0.3", "fd00::3")}, {"dockmesh.service": "api"}),
            container("oth", {"seg": "10.242.0.4", "other": "10.9.0.2"}),
            container("old", {"seg": "10.242.0.9"}, {"dockmesh.service": "api"}, state="exited"),
        ],
    )


def seg_policy() -> Policy:
    policy, problems = parse_policy(
        {
            "default": "allow",
            "networks": {"seg": {"default": "deny"}},
            "rules": [
                {
                    "from": {"service": "gateway"},
                    "to": {"service": "api"},
                    "ports": ["8080/tcp", "9000-9010/tcp", "icmp"],
                }
            ],
        }
    )
    assert policy is not None and not problems
    return policy


def golden(name: str, doc: Any) -> None:
    """`doc` equals the golden file `name`. A missing golden file fails like a different one:
    writing it here would pass whatever the compiler produced. DOCKMESH_UPDATE_GOLDEN=1
    (re)writes the files deliberately; review the diff before committing them."""
    path = GOLDEN / name
    text = json.dumps(doc, indent=1, sort_keys=True) + "\n"
    if os.environ.get("DOCKMESH_UPDATE_GOLDEN") == "1":
        path.write_text(text)
    how = "DOCKMESH_UPDATE_GOLDEN=1 pytest tests/unit/policy/test_compile.py writes it"
    assert path.exists(), f"golden file {path} is missing ({how})"
    assert text == path.read_text(), f"{name} differs from the golden file ({how})"


def test_golden_enforce() -> None:
    rs = compile_policy(seg_policy(), chapter(), "enforce", "dockmesh")
    golden("seg-enforce.json", document(full_transaction(rs)))


def test_golden_audit_default_deny() -> None:
    policy = Policy(
        "deny",
        (("other", "allow"),),
        (Rule((Selector(),), (Selector(network="seg"),), (PortRange("udp", 53, 53),)),),
    )
    rs = compile_policy(policy, chapter(), "audit", "dmtx")
    golden("deny-audit.json", document(full_transaction(rs)))


def test_golden_remove() -> None:
    golden("remove.json", document(remove_transaction("dockmesh")))


def test_seg_verdicts() -> None:
    topo, policy = chapter(), seg_policy()
    rs = compile_policy(policy, topo)

    def verdict(s: str, d: str, proto: str = "tcp", port: int | None = 8080) -> str:
        return evaluate(rs, Packet(s, d, proto, port)).verdict

    assert verdict("10.242.0.2", "10.242.0.3") == "accept"  # gateway → api:8080
    assert verdict("10.242.0.2", "10.242.0.3", port=9005) == "accept"
    assert verdict("10.242.0.2", "10.242.0.3", "icmp", None) == "accept"
    assert verdict("10.242.0.2", "10.242.0.3", port=22) == "drop"
    assert verdict("10.242.0.3", "10.242.0.2") == "drop"  # api → gateway
    assert verdict("10.242.0.4", "10.242.0.3") == "drop"  # unlisted → api
    assert verdict("10.242.0.4", "10.242.0.2") == "drop"
    assert verdict("10.242.0.77", "10.242.0.3") == "drop"  # a container nobody has seen yet
    assert verdict("10.9.0.2", "10.9.0.3") == "accept"  # another network: default allow
    # Return traffic and published ports are not the policy's.
    assert (
        evaluate(rs, Packet("10.242.0.3", "10.242.0.2", "tcp", 40000, "established")).verdict
        == "accept"
    )
    assert (
        evaluate(rs, Packet("10.242.0.4", "10.242.0.3", "tcp", 8080, dnat=True)).verdict == "accept"
    )
    # The stopped api container's address is in no set.
    assert "10.242.0.9" not in rs.set("s1_4").elements  # type: ignore[union-attr]
    assert rs.set("n0_4").elements == frozenset({"10.242.0.0/24"})  # type: ignore[union-attr]


def test_audit_drops_nothing_but_marks_it() -> None:
    rs = compile_policy(seg_policy(), chapter(), "audit")
    out = evaluate(rs, Packet("10.242.0.3", "10.242.0.2", "tcp", 8080))
    assert out.verdict == "accept" and out.audited


def test_structure_depends_on_the_policy_alone() -> None:
    topo = chapter()
    a = compile_policy(seg_policy(), topo)
    moved = topology(
        [network("seg", "10.242.0.0/24")],
        [container("api", {"seg": "10.242.0.50"}, {"dockmesh.service": "api"})],
    )
    b = compile_policy(seg_policy(), moved)
    assert a.structure_hash == b.structure_hash and a.rules == b.rules
    delta = element_delta(a.elements(), b)
    assert delta is not None
    verbs = [next(iter(c)) for c in delta]
    assert verbs == sorted(verbs, key=lambda v: v != "delete")  # deletions first
    assert compile_policy(seg_policy(), topo, "audit").structure_hash != a.structure_hash
    assert element_delta(a.elements(), compile_policy(Policy("deny"), topo)) is None
    assert element_delta(a.elements(), a) == []


# --- the compiled ruleset agrees with the model ------------------------------------------------

SERVICES = ["a", "b", "c"]
LABELS = st.fixed_dictionaries(
    {},
    optional={
        "dockmesh.service": st.sampled_from(SERVICES),
        "com.docker.compose.service": st.sampled_from(SERVICES),
        "dockmesh.project": st.sampled_from(["p", "q"]),
        "team": st.sampled_from(["x", "y"]),
    },
)
NETS = ["n0", "n1", "n2"]


@st.composite
def topologies(draw: st.DrawFn) -> Topology:
    nets = [
        network(n, f"10.{i}.0.0/24" if i < 2 or draw(st.booleans()) else None)
        for i, n in enumerate(NETS)
    ]
    count = draw(st.integers(0, 7))
    cs = []
    for k in range(count):
        on: dict[str, str | tuple[str, str | None]] = {}
        for i, n in enumerate(NETS):
            if draw(st.booleans()):
                v4 = f"10.{i}.0.{k + 2}" if nets[i].ipam else f"10.99.{i}.{k + 2}"
                v6 = f"fd00:{i}::{k + 2}" if draw(st.booleans()) else None
                on[n] = (v4, v6)
        state = draw(st.sampled_from(["running", "running", "exited"]))
        cs.append(container(f"c{k}", on, draw(LABELS), state=state))
    return topology(nets, cs)


SELECTOR = st.builds(
    Selector,
    service=st.sampled_from([None, None, *SERVICES]),
    container=st.sampled_from([None, None, None, "c0", "c1"]),
    network=st.sampled_from([None, None, *NETS]),
    labels=st.sampled_from([(), (), (("team", "x"),), (("team", None),)]),
    project=st.sampled_from([None, None, "p"]),
)
PORTS = st.lists(
    st.sampled_from(
        [
            PortRange("tcp", 80, 80),
            PortRange("tcp", 8000, 8100),
            PortRange("udp", 53, 53),
            PortRange("icmp"),
            PortRange("sctp"),
        ]
    ),
    max_size=3,
    unique=True,
).map(tuple)
POLICIES = st.builds(
    Policy,
    default=st.sampled_from(["allow", "deny"]),
    networks=st.dictionaries(st.sampled_from(NETS), st.sampled_from(["allow", "deny"])).map(
        lambda d: tuple(sorted(d.items()))
    ),
    rules=st.lists(
        st.builds(
            Rule,
            st.lists(SELECTOR, min_size=1, max_size=2, unique=True).map(tuple),
            st.lists(SELECTOR, min_size=1, max_size=2, unique=True).map(tuple),
            PORTS,
        ),
        max_size=4,
    ).map(tuple),
)
PROBES = [
    ("tcp", 80),
    ("tcp", 8050),
    ("tcp", 22),
    ("udp", 53),
    ("udp", 54),
    ("icmp", None),
    ("sctp", 9),
]


@settings(max_examples=300, deadline=None)
@given(topologies(), POLICIES)
def test_compiled_verdict_equals_the_model_for_every_pair(topo: Topology, policy: Policy) -> None:
    rs = compile_policy(policy, topo)
    audit = compile_policy(policy, topo, "audit")
    running = [c for c in topo.containers if c.running]
    for s in running:
        for d in running:
            if s is d:
                continue
            for sa in s.attachments:
                da = d.attachment(sa.network_id)
                if da is None:
                    continue
                for fam in ("ipv4", "ipv6"):
                    saddr, daddr = getattr(sa, fam), getattr(da, fam)
                    if saddr is None or daddr is None:
                        continue
                    for proto, port in PROBES:
                        model = decide(policy, s, d, sa.network, proto, port).allowed
                        packet = Packet(saddr, daddr, proto, port)
                        out = evaluate(rs, packet)
                        assert (out.verdict == "accept") == model, (
                            s.name,
                            d.name,
                            sa.network,
                            fam,
                            proto,
                            port,
                            out.rule,
                        )
                        assert evaluate(audit, packet).verdict == "accept"
                        assert evaluate(audit, packet).audited == (not model)


@settings(max_examples=100, deadline=None)
@given(topologies(), topologies(), POLICIES)
def test_element_delta_turns_one_ruleset_into_the_other(
    t1: Topology, t2: Topology, policy: Policy
) -> None:
    a, b = compile_policy(policy, t1), compile_policy(policy, t2)
    live = {k: set(v) for k, v in a.elements().items()}
    delta = element_delta(a.elements(), b)
    assert delta is not None
    for cmd in delta:
        ((verb, body),) = cmd.items()
        el = body["element"]
        items = {
            e if isinstance(e, str) else f"{e['prefix']['addr']}/{e['prefix']['len']}"
            for e in el["elem"]
        }
        if verb == "delete":
            assert items <= live[el["name"]]
            live[el["name"]] -= items
        else:
            assert not items & live[el["name"]]
            live[el["name"]] |= items
    assert {k: frozenset(v) for k, v in live.items()} == b.elements()
    # Interval sets never hold overlapping elements (nft refuses them).
    for s in b.sets:
        nets = [ipaddress.ip_network(e) for e in s.elements]
        for i, x in enumerate(nets):
            assert not any(x.overlaps(y) for y in nets[i + 1 :])


def test_the_compiled_table_carries_the_marker() -> None:
    topo = topology([network("n", "10.0.0.0/24")], [container("a", {"n": "10.0.0.2"})])
    rs = compile_policy(Policy(), topo, "enforce", "t")
    rules = [c["add"]["rule"] for c in full_transaction(rs) if "rule" in c.get("add", {})]
    assert rules[0]["comment"].startswith(HASH_TAG)
