"""The drop logs as Prometheus metrics: `dockmesh_policy_drops_total{rule, src, dst, verdict}`,
packets the applied policy dropped (verdict `drop`) or would have dropped in audit mode
(`would_drop`) per rule and source and destination container (an address when no container
holds it). The agent reads the drop logs every `POLL_S` seconds — more often than a flow is
forgotten, so the counts are exact — into a `DropTally`, which bounds the series (past
`droplog.MAX_SERIES`, new pairs count under `_other`)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from dockmesh.model.topology import Topology
from dockmesh.policy.compile import LOG_TIMEOUT_S, Ruleset
from dockmesh.policy.droplog import MAX_SERIES, DropTally, describe, name_flow, parse_flows

POLL_S = 5.0
assert POLL_S < LOG_TIMEOUT_S  # a flow is read at least once before it is forgotten


class DropCounter(Collector):
    """Counts what the drop logs show (`observe`, from the agent's poll) and serves it."""

    def __init__(self, max_series: int = MAX_SERIES) -> None:
        self._tally = DropTally(max_series)
        self._lock = threading.Lock()

    def observe(self, doc: Any, rs: Ruleset, topo: Topology | None) -> None:
        """One reading: `doc` is `nft -j list table` of `rs`'s table."""
        flows = parse_flows(doc, rs.table)
        logs = describe(rs.logs)

        def who(address: str) -> str | None:
            holders = topo.attachments_at(address) if topo is not None else ()
            return ",".join(sorted({c.name for c, _ in holders})) or None

        with self._lock:
            self._tally.observe(flows, lambda f: name_flow(f, logs, who, rs.mode == "audit"))

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        drops = CounterMetricFamily(
            "dockmesh_policy_drops",
            "Packets the applied policy dropped (verdict drop) or would drop in audit mode "
            "(would_drop), per rule and source and destination container; pairs past the "
            f"first {self._tally.max_series} are counted under src and dst _other.",
            labels=["rule", "src", "dst", "verdict"],
        )
        with self._lock:
            totals = dict(self._tally.totals)
        for (rule, src, dst, verdict), n in sorted(totals.items()):
            drops.add_metric([rule, src, dst, verdict], n)
        series = GaugeMetricFamily(
            "dockmesh_policy_drop_series", "Series of dockmesh_policy_drops_total (capped)."
        )
        series.add_metric([], len(totals))
        yield drops
        yield series


def read_drop_logs(
    list_table: Callable[[str], Any | None], rs: Ruleset | None
) -> tuple[Any, Ruleset] | None:
    """The listing to count, or None when the ruleset in force has no drop logs."""
    if rs is None or not rs.logs:
        return None
    doc = list_table(rs.table)
    return None if doc is None else (doc, rs)
