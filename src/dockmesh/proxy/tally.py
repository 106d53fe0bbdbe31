"""What the proxy answered, counted: kept as plain Python numbers on the request path and
turned into Prometheus metrics only when /metrics is scraped (`admin`): prometheus-client's
own Counter and Histogram take a lock per update, which on the request path would cost more
than the rest of a request's bookkeeping together. Pure.

Named a tally: "stats" also named the diagnostics' latency statistics, and "counters" names the
interfaces' byte counters (`observe`); these are running counts of what the proxy did.
"""

from __future__ import annotations

from bisect import bisect_left as _bucket

LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip


class Tally:
    """One worker's running counts: responses sent to clients by status, with the latency of
    each timed exchange in a histogram (`LATENCY_BUCKETS`, upper bounds, plus one bucket past
    the last); requests tried again, by reason; requests answered by the proxy itself before
    any upstream, by reason; client connections open now and in all. Only ever incremented
    (but `connections`, which is a gauge); the admin endpoint reads them, and with several
    workers adds every worker's up."""

    __slots__ = (
        "access_log",
        "buffered_bytes",
        "closed",
        "connections",
        "connections_total",
        "latency_counts",
        "latency_sum",
        "rejected",
        "responses",
        "retries",
    )

    def __init__(self) -> None:
        self.responses: dict[int, int] = {}
        self.latency_counts = [0] * (len(LATENCY_BUCKETS) + 1)
        self.latency_sum = 0.0
        self.retries: dict[str, int] = {}
        self.rejected: dict[str, int] = {}  # requests refused before any upstream (400, 503…)
        self.connections = 0
        self.connections_total = 0
        # The access log's lines by outcome (written, dropped, sampled_out): copied from it
        # by the server's sweep, not counted per request here.
        self.access_log: dict[str, int] = {}
        # Client connections the proxy closed to protect the others, by reason (memory,
        # memory_idle, connections_idle, client_send_timeout).
        self.closed: dict[str, int] = {}
        # Bytes held for clients at the last sweep (a gauge).
        self.buffered_bytes = 0

    def observe(self, status: int, latency_s: float) -> None:
        """A response to a request, `latency_s` after its head was read."""
        try:
            self.responses[status] += 1
        except KeyError:
            self.responses[status] = 1
        self.latency_counts[_bucket(LATENCY_BUCKETS, latency_s)] += 1
        self.latency_sum += latency_s

    def responded(self, status: int) -> None:
        """A response of the proxy's own outside any timed exchange (a refusal)."""
        self.responses[status] = self.responses.get(status, 0) + 1

    def retried(self, reason: str) -> None:
        self.retries[reason] = self.retries.get(reason, 0) + 1

    def reject(self, reason: str) -> None:
        self.rejected[reason] = self.rejected.get(reason, 0) + 1

    def closed_for(self, reason: str) -> None:
        self.closed[reason] = self.closed.get(reason, 0) + 1
