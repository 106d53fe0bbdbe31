"""The model's verdict for one connection: the semantics of `dockmesh.policy`, as a function.
Pure. The compiled ruleset must agree with this for every pair (tests/unit/policy)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from dockmesh.model.policy import Policy, Rule, Selector, Verdict
from dockmesh.model.topology import Container


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    # "rule" (then `rule` is its index in the policy: an allow rule, or a deny rule when
    # `allowed` is False), "network" (the network's default),
    # "default" (the policy's default), "none" (no policy applied).
    by: str
    rule: int | None = None
    network: str | None = None

    def text(self, policy: Policy | None) -> str:
        verb = "allows" if self.allowed else "denies"
        if self.by == "rule" and policy is not None and self.rule is not None:
            return f"rule {self.rule + 1} {verb} it: {policy.rules[self.rule].text()}"
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
    family: int = 4,
) -> Decision:
    """The verdict for a connection from `src`'s address on `network` to `dst`'s address on
    the same network, for `protocol` (`tcp`, `udp`, `sctp`, `icmp`) and destination `port`,
    over IPv4 or IPv6 (`family`: which of the endpoints' addresses a `cidr` must cover).
    `protocol` "any" asks about some traffic at all: a rule with ports counts too. A deny
    rule that covers the connection wins over any allow rule (for "any": a deny rule with
    ports denies only some of the traffic, so it does not decide)."""
    if policy is None:
        return Decision(True, "none")
    for action in ("deny", "allow"):
        for i, rule in enumerate(policy.rules):
            if rule.action != action:
                continue
            if action == "deny" and protocol == "any" and rule.ports:
                continue
            if _covers(rule, protocol, port) and (
                _side(rule.sources, src, network, family)
                and _side(rule.destinations, dst, network, family)
            ):
                return Decision(action == "allow", "rule", rule=i)
    own: Verdict | None = policy.network_default(network)
    if own is not None:
        return Decision(own == "allow", "network", network=network)
    return Decision(policy.default == "allow", "default")


def _side(side: Sequence[Selector], c: Container, network: str, family: int) -> bool:
    """Whether the side chooses `c`'s endpoint on `network`: by what it is, or (a `cidr`)
    by its address of that family there. `world` never covers a container's address."""
    for s in side:
        if s.matches_endpoint(c, network):
            return True
        if s.cidr is not None:
            for a in c.attachments:
                if a.network == network:
                    address = a.ipv4 if family == 4 else a.ipv6
                    if address and s.covers_address(address):
                        return True
    return False


def _covers(rule: Rule, protocol: str, port: int | None) -> bool:
    if protocol == "any":
        return True
    return rule.covers(protocol, port)


def decide_published(
    policy: Policy | None,
    src: Container,
    dst: Container,
    protocol: str,
    port: int | None,
    family: int = 4,
) -> Decision:
    """The verdict for `src` reaching a port `dst` publishes on the host (through Docker's
    proxy, from the host's address): as `src` reaching `dst` itself. On a network they share,
    that network's rules and default; on none, the rules without a network and the policy's
    default."""
    theirs = {a.network_id for a in dst.attachments}
    shared = [a.network for a in src.attachments if a.network_id in theirs]
    return decide(policy, src, dst, shared[0] if shared else "", protocol, port, family)
