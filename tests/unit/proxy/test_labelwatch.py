"""What the label watch reads of the agent's answers: health entries as instances, and the
scoped service names of the projects it follows."""

from __future__ import annotations

from dockmesh.proxy.labelroutes import instances_from_health
from dockmesh.proxy.labelwatch import wanted


def test_health_entries_and_names_to_follow() -> None:
    doc = [
        {
            "Node": {"Address": "127.0.0.1"},
            "Service": {"ID": "c1", "Service": "web", "Address": "10.0.0.1", "Port": 8080,
                        "Meta": {"project": "shop", "http-path": "/"}, "Weights": {"Passing": 3}},
            "Checks": [{"Status": "passing"}, {"Status": "critical"}],
        },
        {"Service": {"ID": "c2", "Service": "web", "Port": 8080}, "Node": {"Address": "10.1.1.1"}},
        {"Service": "nonsense"},
        "nonsense",
    ]  # fmt: skip
    got = instances_from_health(doc)
    assert [(i.id, i.address, i.passing, i.weight, i.project) for i in got] == [
        ("c1", "10.0.0.1", False, 3, "shop"),
        ("c2", "10.1.1.1", True, 1, None),
    ]
    services = {
        "1": {"Service": "web", "Meta": {"project": "shop"}},
        "2": {"Service": "api", "Meta": {"project": "shop"}},
        "3": {"Service": "web", "Meta": {"project": "other"}},
        "4": {"Service": "consul", "Meta": {}},
        "5": {"Service": "", "Meta": {}},
        "6": "nonsense",
    }
    assert wanted(services, {"shop"}) == {"web.shop", "api.shop"}
    assert wanted(services, None) == {"web.shop", "api.shop", "web.other", "consul"}
    assert wanted("nonsense", None) == set()
