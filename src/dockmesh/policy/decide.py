"""The model's verdict for one connection: the semantics of `dockmesh.policy`, as a function.
Pure. The compiled ruleset must agree with this for every pair (tests/unit/policy)."""

from __future__ import annotations

from dataclasses import dataclass

from dockmesh.model.policy import Policy, Rule, Verdict, selects
from dockmesh.model.topology import Container


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    # "rule" (then `rule` is its index in the policy), "network" (the network's default),
    # "default" (the policy's default), "none" (no policy applied).
    by: str
    rule: int | None = None
    network: str | None = None

    def text(self, policy: Policy | None) -> str:
        verb = "allows" if self.allowed else "denies"
        if self.by == "rule" and policy is not None and self.rule is not None:
            return f"rule {self.rule + 1} allows it: {policy.rules[self.rule].text()}"
        if self.by == "network":
            return f"no rule allows it; network {self.network}'s default {verb} it"
        if self.by == "default":
            return f"no rule allows it; the policy's default {verb} it"
        return "no policy is applied (Docker's rules only)"


def decide(
    policy: Policy | None,
    src: Container,
    dst: Container,
    network: str,
    protocol: str = "icmp",
    port: int | None = None,
) -> Decision:
    """The verdict for a connection from `src`'s address on `network` to `dst`'s address on
    the same network, for `protocol` (`tcp`, `udp`, `sctp`, `icmp`) and destination `port`.
    `protocol` "any" asks about some traffic at all: a rule with ports counts too."""
    if policy is None:
        return Decision(True, "none")
    for i, rule in enumerate(policy.rules):
        if _covers(rule, protocol, port) and (
            selects(rule.sources, src, network) and selects(rule.destinations, dst, network)
        ):
            return Decision(True, "rule", rule=i)
    own: Verdict | None = policy.network_default(network)
    if own is not None:
        return Decision(own == "allow", "network", network=network)
    return Decision(policy.default == "allow", "default")


def _covers(rule: Rule, protocol: str, port: int | None) -> bool:
    if protocol == "any":
        return True
    return rule.covers(protocol, port)
