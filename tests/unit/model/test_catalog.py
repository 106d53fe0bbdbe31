"""The catalog's values (dockmesh.model.catalog): an instance is as healthy as its worst check,
maintenance above all, and a status nobody knows counts as critical."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from dockmesh.model.catalog import CheckSpec, Instance, worst

ORDER = ["passing", "warning", "critical", "maintenance"]


def test_the_worst_status_wins() -> None:
    assert worst([]) == "passing"
    assert worst(["passing", "warning"]) == "warning"
    assert worst(["warning", "critical", "passing"]) == "critical"
    assert worst(["critical", "maintenance"]) == "maintenance"
    assert worst(["passing", "unknown"]) == "critical"
    assert worst(["maintenance", "unknown"]) == "maintenance"


@given(st.lists(st.sampled_from(ORDER) | st.text(max_size=5)))
def test_worst_is_the_highest_rank_in_any_order(statuses: list[str]) -> None:
    rank = {s: i for i, s in enumerate(ORDER)}
    ranked = [rank.get(s, rank["critical"]) for s in statuses]
    assert worst(statuses) == (ORDER[max(ranked)] if statuses else "passing")
    assert worst(list(reversed(statuses))) == worst(statuses)


def test_defaults_are_consul_s() -> None:
    i = Instance("a", "api", "10.0.0.2", 80)
    assert (i.weight, i.source, i.tags, i.deregister_critical_after_s) == (1, "api", (), None)
    c = CheckSpec("c", "c", "http")
    assert (c.method, c.interval_s, c.timeout_s, c.initial_status) == ("GET", 10.0, 5.0, "critical")
