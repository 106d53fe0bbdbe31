"""Probe durations land in the histogram by the check's kind and the result's status."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from dockmesh.health.metrics import ProbeDurations
from dockmesh.health.probe import Result
from dockmesh.model.catalog import CheckSpec


def test_each_result_is_counted_by_kind_and_status() -> None:
    registry = CollectorRegistry()
    durations = ProbeDurations(registry)
    http = CheckSpec("c1", "web", "http", http="/health")
    tcp = CheckSpec("c2", "db", "tcp", tcp="10.0.0.2:5432")
    durations.observe(http, Result("passing", "HTTP 200"), 0.004)
    durations.observe(http, Result("passing", "HTTP 200"), 0.3)
    durations.observe(tcp, Result("critical", "refused"), 2.0)

    def sample(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, labels)

    base = "dockmesh_check_duration_seconds"
    assert sample(f"{base}_count", kind="http", status="passing") == 2
    assert sample(f"{base}_bucket", kind="http", status="passing", le="0.005") == 1
    assert sample(f"{base}_count", kind="tcp", status="critical") == 1
    assert sample(f"{base}_sum", kind="tcp", status="critical") == 2.0
