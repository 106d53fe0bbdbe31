"""How long health probes take, as a Prometheus histogram by kind and result: the runner's
`on_result` hook feeds it."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Histogram

from dockmesh.health.probe import Result
from dockmesh.model.catalog import CheckSpec

BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class ProbeDurations:
    """`dockmesh_check_duration_seconds{kind, status}`, registered on `registry`; pass
    `observe` to `HealthRunner(on_result=...)`."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._histogram = Histogram(
            "dockmesh_check_duration_seconds",
            "Health check probes by kind and result.",
            ["kind", "status"],
            registry=registry,
            buckets=BUCKETS,
        )

    def observe(self, spec: CheckSpec, result: Result, seconds: float) -> None:
        self._histogram.labels(spec.kind, result.status).observe(seconds)
