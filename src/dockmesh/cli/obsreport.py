"""`dockmesh report`: counters over a duration, the flows seen, and a connectivity round,
composed here because they come from two packages (observe and diagnose) that do not import
each other."""

from __future__ import annotations

import datetime
import time
from collections.abc import Mapping, Sequence
from typing import Any, cast

from rich.table import Table
from rich.text import Text

from dockmesh.model.topology import Topology
from dockmesh.observe.report import Expected, Pair


def gather_report(
    topo: Topology, duration_s: float, timeout_s: float = 1.0, table: str | None = None
) -> dict[str, object]:
    from dockmesh.cli.policy import _table, applied_policy, policy_staleness
    from dockmesh.diagnose.sweep import Probe, sweep_confirmed
    from dockmesh.host.netns import NetnsPool
    from dockmesh.observe.conntrack import dump, ensure_accounting
    from dockmesh.observe.counters import local_engines
    from dockmesh.observe.flows import aggregate
    from dockmesh.observe.rates import deltas
    from dockmesh.observe.report import build_report, connectivity_pairs
    from dockmesh.observe.sample import sample, targets

    table_name = _table(table)  # a bad name is refused before anything is measured
    timestamp = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    accounting = ensure_accounting()
    readable = targets(topo)
    before = sample(readable)
    time.sleep(duration_s)
    after = sample(readable)
    seconds = after.taken_at - before.taken_at
    traffic = deltas(before.containers, after.containers)
    edges = aggregate(dump(), topo)
    # After the second sample, so the probes are not counted as the containers' traffic.
    pairs = connectivity_pairs(topo, local_engines(topo))
    policy, note = applied_policy(table_name)
    expected = expectations(topo, policy, note, pairs, policy_staleness(table_name, topo))
    probes = [Probe((p.src.id, p.address), p.src.pid, p.address) for p in pairs]
    # All at once, as `matrix` probes: a pair the policy drops costs one shared timeout,
    # not a timeout each. A probe that disagrees with the analysis is tried again before
    # it counts (a lost echo on a busy machine is not a fault).
    started = time.perf_counter()
    with NetnsPool(threads=2) as pool:
        seen = sweep_confirmed(
            pool,
            probes,
            {k: e.reachable for k, e in expected.items()},
            timeout_s=timeout_s,
        )
    probe_s = time.perf_counter() - started
    results: dict[tuple[str, str], float | None] = {}
    details: dict[tuple[str, str], str] = {}
    for probe in probes:
        o = seen[probe.key]
        key = cast(tuple[str, str], probe.key)
        results[key] = (o.latency_ms or 0.0) if o.ok else None
        details[key] = o.detail
    return build_report(
        timestamp,
        round(seconds, 3),
        topo,
        traffic,
        edges,
        results,
        pairs,
        accounting,
        expected=expected,
        details=details,
        probe_s=probe_s,
    )


def expectations(
    topo: Topology, policy: Any, note: str, pairs: Sequence[Pair], stale: str = ""
) -> dict[tuple[str, str], Expected]:
    """What the analysis (`why`'s) says of each pair's ping on the pair's own network: the
    step that stops it (the policy's rule or default, Docker's icc), or what lets it
    through. `stale`: why the kernel's table may not be the policy's (then every reason
    says so)."""
    from dockmesh.policy.decide import decide
    from dockmesh.policy.reach import ICC_OPTION, Observations, analyze

    observed = Observations(policy_note=note, policy_stale=stale)
    out: dict[tuple[str, str], Expected] = {}
    for p in pairs:
        a = analyze(topo, policy, p.src.name, p.dst.name, None, observed, with_dns=False)
        stop = next((st for st in a.steps if not st.ok and st.check != "dns"), None)
        said = next((st for st in a.steps if st.check == "policy"), None)
        reason = stop.detail if stop is not None else (said.detail if said is not None else "")
        verdict = Expected(a.reachable, reason)
        net = topo.network(p.network)
        if a.network not in (None, p.network) and net is not None:
            # The analysis follows the shared network that lets it through; this pair's
            # probe goes to DST's address on another one, decided there.
            icc = str(net.options.get(ICC_OPTION, "true")).lower() != "false"
            d = decide(policy, p.src, p.dst, p.network, "icmp")
            if net.driver == "bridge" and not icc:
                verdict = Expected(
                    False,
                    f"enable_icc=false on {p.network}: Docker drops traffic between its containers",
                )
            else:
                text = f"{d.text(policy)} (ping (ICMP) on {p.network})"
                if stale:
                    text += f"; but {stale}: the kernel may decide otherwise"
                verdict = Expected(d.allowed, text)
        out[(p.src.id, p.address)] = verdict
    return out


def report_summary(doc: Mapping[str, Any]) -> Table:
    s = doc["summary"]
    table = Table(title=f"network report {doc['timestamp']}", title_justify="left")
    table.add_column("")
    table.add_column("")
    table.add_row(
        "containers", f"{s['running']} running of {s['containers']} on {s['networks']} networks"
    )
    table.add_row(
        f"traffic ({doc['duration_s']} s)",
        f"rx {s['rx_bytes']} B, tx {s['tx_bytes']} B over {len(doc['traffic'])} interfaces",
    )
    table.add_row("flows", f"{s['flow_edges']} edges (accounting {s['conntrack_accounting']})")
    for e in doc["flows"][:10]:
        table.add_row("", Text(f"{e['src']} → {e['dst']} {e['port']}/{e['proto']} {e['bytes']} B"))
    conn = doc["connectivity"]
    wrong = [c for c in conn if c.get("status") in ("unreachable", "unexpected")]
    denied = [c for c in conn if c.get("status") == "denied"]
    answered = sum(1 for c in conn if c["reachable"])
    said = f"{answered}/{s['pairs_probed']} pairs answer"
    if denied:
        said += f"; {len(denied)} denied as the policy says"
    if wrong:
        said += f"; {len(wrong)} not as expected"
    table.add_row("connectivity", Text(said, style="red" if wrong else "green"))
    for c in wrong[:20]:
        where = f"{c['src']} → {c['dst']} ({c['address']} on {c['network']})"
        if c["status"] == "unexpected":
            line = f"{where}: answers, but expected dropped: {c['reason']}"
        else:
            line = f"{where}: unreachable ({c.get('detail') or 'no reply'}); expected to answer"
            if c.get("reason"):
                line += f": {c['reason']}"
        table.add_row("", Text(line, style="red"))
    for c in denied[:20]:
        table.add_row(
            "", Text(f"{c['src']} → {c['dst']} on {c['network']}: denied: {c['reason']}", "dim")
        )
    if len(denied) > 20:
        table.add_row("", Text(f"… and {len(denied) - 20} more denied", "dim"))
    return table
