"""`dockmesh report`: counters over a duration, the flows seen, and a connectivity round,
composed here because they come from two packages (observe and diagnose) that do not import
each other."""

from __future__ import annotations

import datetime
import time
from collections.abc import Mapping
from typing import Any

from rich.table import Table
from rich.text import Text

from dockmesh.model.topology import Topology


def gather_report(topo: Topology, duration_s: float) -> dict[str, object]:
    from dockmesh.host.netns import NamespaceGone, NetnsError, NetnsPool
    from dockmesh.observe.conntrack import dump, ensure_accounting
    from dockmesh.observe.counters import local_engines
    from dockmesh.observe.flows import aggregate
    from dockmesh.observe.rates import deltas
    from dockmesh.observe.report import build_report, connectivity_pairs
    from dockmesh.observe.sample import sample, targets

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
    results: dict[tuple[str, str], float | None] = {}
    by_source: dict[str, list[str]] = {}
    pids: dict[str, int] = {}
    for p in pairs:
        by_source.setdefault(p.src.id, []).append(p.address)
        if p.src.pid:
            pids[p.src.id] = p.src.pid
    from dockmesh.diagnose.latency import ping_many

    with NetnsPool(threads=2) as pool:
        for cid, addresses in by_source.items():
            try:
                got = ping_many(pool, pids[cid], addresses, timeout_s=1.0)
            except (NamespaceGone, NetnsError, OSError):
                got = dict.fromkeys(addresses)
            for address, rtt in got.items():
                results[(cid, address)] = rtt
    return build_report(
        timestamp, round(seconds, 3), topo, traffic, edges, results, pairs, accounting
    )


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
    bad = [c for c in doc["connectivity"] if not c["reachable"]]
    table.add_row(
        "connectivity",
        Text(
            f"{s['pairs_probed'] - len(bad)}/{s['pairs_probed']} pairs answer",
            style="red" if bad else "green",
        ),
    )
    for c in bad[:20]:
        table.add_row("", Text(f"{c['src']} → {c['dst']} ({c['address']} on {c['network']})"))
    return table
