"""The catalog's rules: indexes, topics, health aggregation, KV with cas, container sync."""

from __future__ import annotations

from typing import Any

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from dockmesh.catalog.state import Catalog, service_topic
from dockmesh.model.catalog import CheckSpec, Instance


def inst(iid: str, service: str = "web", **kw: Any) -> Instance:
    return Instance(iid, service, "10.0.0.1", 80, **kw)


def http_check(iid: str, **kw: Any) -> CheckSpec:
    return CheckSpec(f"service:{iid}", "h", "http", service_id=iid, http="http://x/", **kw)


def test_an_instance_with_a_check_is_not_passing_until_it_passes() -> None:
    c = Catalog()
    c.register(inst("a"), [http_check("a")], now=0)
    assert c.entries("web", passing=True) == []
    assert [e.status for e in c.entries("web")] == ["critical"]
    assert c.observe("service:a", "passing", "HTTP GET: 200 OK", now=1)
    assert [e.instance.id for e in c.entries("web", passing=True)] == ["a"]


def test_rise_and_fall_damp_flapping() -> None:
    c = Catalog()
    c.register(inst("a"), [http_check("a", rise=2, fall=3)], now=0)
    c.observe("service:a", "passing", "", 1)
    assert c.entries("web", passing=True) == []
    c.observe("service:a", "passing", "", 2)
    assert c.entries("web", passing=True)
    for t in (3, 4):
        c.observe("service:a", "critical", "", t)
        assert c.entries("web", passing=True)
    c.observe("service:a", "critical", "", 5)
    assert c.entries("web", passing=True) == []


def test_indexes_move_only_on_visible_change_and_per_topic() -> None:
    c = Catalog()
    assert c.register(inst("a"), [], 0)
    i = c.index
    assert not c.register(inst("a"), [], 1)
    assert c.index == i
    c.register(inst("b", "db"), [], 2)
    assert c.topic_index(service_topic("web")) == i
    assert c.topic_index(service_topic("db")) == c.index > i
    c.register(inst("c"), [http_check("c")], 3)
    before = c.index
    c.observe("service:c", "critical", "", 4)  # it already was: nothing a reader sees
    assert c.index == before


def test_reregistering_keeps_check_state_unless_the_check_changed() -> None:
    c = Catalog()
    c.register(inst("a"), [http_check("a")], 0)
    c.observe("service:a", "passing", "", 1)
    c.register(inst("a", tags=("v2",)), [http_check("a")], 2)
    assert c.entries("web", passing=True)
    c.register(inst("a", tags=("v2",)), [http_check("a", interval_s=1)], 3)
    assert c.entries("web", passing=True) == []


def test_ttl_expires_and_critical_instances_are_deregistered_after_their_time() -> None:
    c = Catalog()
    ttl = CheckSpec("t", "ttl", "ttl", service_id="a", ttl_s=5, deregister_critical_after_s=30)
    c.register(inst("a"), [ttl], 0)
    c.update_check("t", "passing", "ok", 1)
    assert c.entries("web", passing=True)
    assert c.next_deadline() == 6
    changed, gone = c.tick(7)
    assert changed and gone == [] and c.entries("web", passing=True) == []
    assert c.next_deadline() == 37
    _, gone = c.tick(37)
    assert gone == ["a"] and c.instance("a") is None


def test_kv_cas_keys_and_recurse() -> None:
    c = Catalog()
    assert c.kv_put("a/b", b"1", cas=0)
    assert not c.kv_put("a/b", b"2", cas=0)  # cas 0: only a new key
    idx = c.kv_get("a/b").modify_index  # type: ignore[union-attr]
    assert c.kv_put("a/b", b"2", cas=idx)
    assert not c.kv_put("a/b", b"3", cas=idx)
    c.kv_put("a/c/d", b"x")
    c.kv_put("b", b"y")
    assert c.kv_keys("a/", "/") == ["a/b", "a/c/"]
    assert [e.key for e in c.kv_list("a/")] == ["a/b", "a/c/d"]
    assert c.kv_delete("a/", recurse=True)
    assert c.kv_keys("") == ["b"]
    assert c.kv_get("a/b") is None and c.kv_index("a/b") == c.index


def test_container_sync_replaces_an_engines_instances_and_spares_manual_ones() -> None:
    c = Catalog()
    c.register(inst("manual"), [], 0)
    c.sync_containers("e1", [(inst("x", source="container", engine="e1"), [])], 1)
    c.sync_containers("e2", [(inst("y", source="container", engine="e2"), [])], 1)
    c.sync_containers("e1", [(inst("manual", source="container", engine="e1"), [])], 2)
    assert sorted(i.id for i in c.instances()) == ["manual", "y"]
    assert c.instance("manual").source == "api"  # type: ignore[union-attr]


class CatalogMachine(RuleBasedStateMachine):
    """Any sequence of operations keeps the catalog's books straight."""

    def __init__(self) -> None:
        super().__init__()
        self.c = Catalog()
        self.now = 0.0
        self.last_index = self.c.index

    ids = st.sampled_from(["a", "b", "c"])
    services = st.sampled_from(["web", "db"])

    @rule(iid=ids, service=services, checked=st.booleans())
    def register(self, iid: str, service: str, checked: bool) -> None:
        self.c.register(inst(iid, service), [http_check(iid)] if checked else [], self.now)

    @rule(iid=ids)
    def deregister(self, iid: str) -> None:
        self.c.deregister(iid)

    @rule(iid=ids, result=st.sampled_from(["passing", "warning", "critical"]))
    def observe(self, iid: str, result: Any) -> None:
        self.now += 1
        self.c.observe(f"service:{iid}", result, "", self.now)

    @rule(key=st.sampled_from(["k", "k/1", "j"]), cas=st.none() | st.integers(0, 20))
    def kv(self, key: str, cas: int | None) -> None:
        self.c.kv_put(key, b"v", cas=cas)

    @invariant()
    def books_balance(self) -> None:
        assert self.c.index >= self.last_index
        self.last_index = self.c.index
        for state in self.c.checks():
            assert state.spec.service_id is not None
            assert self.c.instance(state.spec.service_id) is not None
        listed = {e.instance.id for s in self.c.services() for e in self.c.entries(s)}
        assert listed == {i.id for i in self.c.instances()}
        for s in self.c.services():
            assert self.c.topic_index(service_topic(s)) <= self.c.index


CatalogMachine.TestCase.settings = settings(max_examples=60, deadline=None)
TestCatalogMachine = CatalogMachine.TestCase
