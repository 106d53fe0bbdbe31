"""The network report (pure): which pairs to probe, and the report document from what was
measured. The shell (`dockmesh report`) takes the samples, dumps conntrack, asks the applied
policy's analysis what each pair should do and sends the probes (all at once); the
timestamp, every measurement and every verdict come in as values.

A pair that does not answer is not simply "unreachable": when the analysis said the policy
(or Docker's icc) drops it, it is `denied`, with the rule or default that decides it; only a
pair expected to answer that does not is `unreachable`, and one expected to be dropped that
answers is `unexpected` (both are mismatches, as in `matrix`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from dockmesh.model.topology import Container, Topology
from dockmesh.observe.counters import readable
from dockmesh.observe.flows import Edge
from dockmesh.observe.rates import Delta


@dataclass(frozen=True, slots=True)
class Expected:
    """What the analysis says of a pair: whether it answers, and why (the rule or default
    that decides, or the first step that stops it)."""

    reachable: bool
    reason: str


@dataclass(frozen=True, slots=True)
class Pair:
    network: str
    src: Container
    dst: Container
    address: str


def connectivity_pairs(topo: Topology, local: frozenset[str], per_network: int = 50) -> list[Pair]:
    """On every network, each running container probes the next one (a ring, in name
    order): n probes for n containers rather than n², and every container both sends and
    answers one. At most `per_network` probes per network."""
    pairs: list[Pair] = []
    for n in topo.networks:
        eps = [
            (c, a)
            for c, a in ((topo.container(ep.container_id), ep.ipv4) for ep in topo.endpoints_of(n))
            if c is not None and a and readable(c, local)
        ]
        if len(eps) < 2:
            continue
        for i, (c, _) in enumerate(eps[:per_network]):
            nxt, address = eps[(i + 1) % len(eps)]
            if nxt.id != c.id and address is not None:
                pairs.append(Pair(n.name, c, nxt, address))
    return pairs


def build_report(
    timestamp: str,
    duration_s: float,
    topo: Topology,
    traffic: Sequence[Delta],
    edges: Sequence[Edge],
    results: Mapping[tuple[str, str], float | None],
    pairs: Sequence[Pair],
    accounting: str,
    expected: Mapping[tuple[str, str], Expected] | None = None,
    details: Mapping[tuple[str, str], str] | None = None,
    probe_s: float | None = None,
) -> dict[str, object]:
    """`{"timestamp", "topology", "traffic", "connectivity", ...}` (docs/cli.md, "dockmesh
    report"), with the flows seen and a summary. `results` maps (source container id,
    address) to the round trip in ms, None for no answer; `expected` the same keys to the
    analysis' verdict (a pair without one is expected to answer), `details` to what the probe
    saw; `probe_s` how long the probes took."""
    connectivity: list[dict[str, object]] = []
    for p in pairs:
        key = (p.src.id, p.address)
        rtt = results.get(key)
        want = (expected or {}).get(key)
        connectivity.append(
            {
                "network": p.network,
                "src": p.src.name,
                "dst": p.dst.name,
                "address": p.address,
                "reachable": rtt is not None,
                "rtt_ms": None if rtt is None else round(rtt, 4),
                "expected": None if want is None else want.reachable,
                "status": status(rtt is not None, want),
                "reason": "" if want is None else want.reason,
                "detail": (details or {}).get(key, ""),
            }
        )
    total_rx = sum(d.counts["rx_bytes"] for d in traffic)
    total_tx = sum(d.counts["tx_bytes"] for d in traffic)
    return {
        "timestamp": timestamp,
        "duration_s": duration_s,
        "topology": topo.to_json(),
        "traffic": [d.to_json(duration_s) for d in traffic],
        "flows": [e.to_json() for e in edges],
        "connectivity": connectivity,
        "summary": {
            "containers": len(topo.containers),
            "running": sum(1 for c in topo.containers if c.running),
            "networks": len(topo.networks),
            "rx_bytes": total_rx,
            "tx_bytes": total_tx,
            "flow_edges": len(edges),
            "pairs_probed": len(connectivity),
            "pairs_unreachable": sum(1 for c in connectivity if not c["reachable"]),
            "pairs_denied": sum(1 for c in connectivity if c["status"] == "denied"),
            "pairs_mismatched": sum(
                1 for c in connectivity if c["status"] in ("unreachable", "unexpected")
            ),
            "conntrack_accounting": accounting,
            "connectivity_s": None if probe_s is None else round(probe_s, 3),
        },
    }


def status(answered: bool, want: Expected | None) -> str:
    """`reachable` (answered, as expected), `denied` (no answer, and the analysis says the
    policy or Docker drops it), `unreachable` (no answer, expected one: a fault), or
    `unexpected` (answered, though the analysis says it is dropped: a hole)."""
    should = want is None or want.reachable
    if answered:
        return "reachable" if should else "unexpected"
    return "unreachable" if should else "denied"
