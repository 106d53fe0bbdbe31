"""Names scoped per project, and one instance per ID: the catalog's rules over any mix of
projects, claims and both orders of a container and a registration."""

from __future__ import annotations

from typing import Any

import dns.rcode
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from dockmesh.catalog.containers import collision_of, derive, derive_all
from dockmesh.catalog.state import Catalog, IdTaken, service_topic
from dockmesh.dns.answer import Answerer
from dockmesh.model.catalog import META_PROJECT, META_SHORT_NAME, CheckSpec, Instance
from dockmesh.model.topology import Attachment, Container, EngineInfo, Network, Topology
from tests.unit.dns.helpers import Rd, ask, records


def inst(
    iid: str,
    service: str = "api",
    project: str | None = None,
    claims: bool = False,
    address: str = "10.0.0.1",
    **kw: Any,
) -> Instance:
    meta = {META_PROJECT: project} if project else {}
    if claims:
        meta[META_SHORT_NAME] = "true"
    return Instance(iid, service, address, 80, meta=meta, **kw)


def ids(instances: list[Instance]) -> list[str]:
    return [i.id for i in instances]


# --- names --------------------------------------------------------------------------------


def test_a_scoped_name_is_its_projects_and_a_shared_short_name_is_nobodys() -> None:
    c = Catalog()
    c.register(inst("a1", project="a"), [], 0)
    assert ids(c.members("api")) == ["a1"]  # one project: the short name is unambiguous
    c.register(inst("b1", project="b"), [], 0)
    c.register(inst("b2", project="b"), [], 0)
    c.register(inst("hand"), [], 0)  # of no project: the short name always has it
    assert ids(c.members("api.a")) == ["a1"]
    assert ids(c.members("api.b")) == ["b1", "b2"]
    assert ids(c.members("api")) == ["hand"]
    assert ids(c.members("api.c")) == [] and ids(c.members("nope.a")) == []
    [clash] = c.collisions()
    assert (clash.service, clash.projects, clash.owner) == ("api", ("a", "b"), None)
    assert "answers none of them" in clash.warning() and "api.a, api.b" in clash.warning()
    assert c.service_names() == ["api", "api.a", "api.b"]
    assert c.services() == {"api": []}  # Consul's list: the catalog's own names


def test_an_explicit_name_claims_the_short_name_unless_two_claim_it() -> None:
    c = Catalog()
    c.register(inst("a1", project="a", claims=True), [], 0)
    c.register(inst("b1", project="b"), [], 0)
    assert ids(c.members("api")) == ["a1"]
    assert c.collisions()[0].owner == "a"
    assert "project a's only" in c.collisions()[0].warning()
    c.register(inst("b1", project="b", claims=True), [], 0)
    assert ids(c.members("api")) == [] and c.collisions()[0].owner is None


def test_a_service_literally_named_as_a_scoped_name_never_takes_the_projects_place() -> None:
    # Any container's label or any registration may name its service `api.b`: answering it
    # for `api.b` hid project b's own instances from its gateway and DNS, silently.
    c = Catalog()
    c.register(inst("a1", project="b"), [], 0)
    c.register(inst("x", service="api.b"), [], 0)  # a service literally named so
    assert ids(c.members("api.b")) == ["a1"]
    [said] = c.shadowed()
    assert "'api.b' is project b's scoped name" in said and "not x" in said
    c.register(inst("y", service="api.b", project="evil"), [], 0)  # from another project too
    assert ids(c.members("api.b")) == ["a1"]
    c.deregister("a1")  # the project has none: the literal name is all there is
    assert ids(c.members("api.b")) == ["x", "y"] and c.shadowed() == []
    assert ids(c.members("api.b.evil")) == ["y"]


def test_a_projects_change_wakes_its_scoped_name_and_the_short_one() -> None:
    c = Catalog()
    c.register(inst("a1", project="a"), [], 0)
    before = (c.topic_index(service_topic("api.a")), c.topic_index(service_topic("api.b")))
    c.register(inst("b1", project="b"), [], 0)
    assert c.topic_index(service_topic("api.b")) == c.index
    assert c.topic_index(service_topic("api")) == c.index  # the short name changed meaning
    assert c.topic_index(service_topic("api.a")) == before[0]  # a's answer did not change
    c.deregister("a1")
    assert c.topic_index(service_topic("api.a")) == c.index


projects = st.sampled_from([None, "a", "b", "c"])
members = st.lists(st.tuples(st.sampled_from(["api", "web"]), projects, st.booleans()), max_size=8)


@settings(max_examples=300, deadline=None)
@given(members)
def test_names_never_merge_projects(spec: list[tuple[str, str | None, bool]]) -> None:
    c = Catalog()
    made = [inst(f"i{n}", svc, p, claims) for n, (svc, p, claims) in enumerate(spec)]
    for i in made:
        c.register(i, [], 0)
    collided = {x.service: x for x in c.collisions()}
    for svc in ("api", "web"):
        mine = [i for i in made if i.service == svc]
        owners = {i.project for i in mine} - {None}
        short = c.members(svc)
        # The short name never answers two projects at once …
        assert len({i.project for i in short} - {None}) <= 1
        # … answers everything while at most one project has it, and is a collision else.
        assert (svc in collided) == (len(owners) >= 2)
        if len(owners) <= 1:
            assert ids(short) == sorted(i.id for i in mine)
        else:
            claimers = {i.project for i in mine if i.project and i.claims_short_name}
            owner = claimers.pop() if len(claimers) == 1 else None
            assert collided[svc].owner == owner
            assert ids(short) == sorted(
                i.id for i in mine if i.project is None or i.project == owner
            )
        for p in owners:  # a scoped name is exactly its project's instances
            want = sorted(i.id for i in mine if i.project == p)
            assert ids(c.members(f"{svc}.{p}")) == want
            assert f"{svc}.{p}" in c.service_names()


def test_dns_answers_the_scoped_names_and_refuses_to_merge_the_short_one() -> None:
    c = Catalog()
    c.register(inst("a1", project="a", address="10.0.1.1"), [], 0)
    c.register(inst("b1", project="b", address="10.0.2.1"), [], 0)
    c.register(inst("b2", project="b", address="10.0.2.2", tags=("v1",)), [], 0)
    dns_ = Answerer(c)
    assert records(ask(dns_, "api.a.service.dockmesh"), Rd.A) == ["10.0.1.1"]
    assert sorted(records(ask(dns_, "API.B.service.consul"), Rd.A)) == ["10.0.2.1", "10.0.2.2"]
    srv = ask(dns_, "api.b.service.dockmesh", "SRV")
    assert sorted(r.split()[2] for r in records(srv, Rd.SRV)) == ["80", "80"]
    assert records(ask(dns_, "v1.api.b.service.dockmesh"), Rd.A) == ["10.0.2.2"]
    assert ask(dns_, "api.service.dockmesh").rcode() == dns.rcode.NXDOMAIN
    assert ask(dns_, "api.c.service.dockmesh").rcode() == dns.rcode.NXDOMAIN
    c.deregister("a1")
    dns_.catalog_changed(c)
    assert sorted(records(ask(dns_, "api.service.dockmesh"), Rd.A)) == ["10.0.2.1", "10.0.2.2"]


def test_dns_never_merges_a_look_alike_into_a_projects_scoped_name() -> None:
    # DNS does not tell `Shop` from `shop`: a label's project `Shop` or a service spelled
    # `API.shop` answered under project shop's `api.shop.service` with shop's own instances.
    c = Catalog()
    c.register(inst("s1", project="shop", address="10.0.1.1"), [], 0)
    c.register(inst("evil", project="Shop", address="10.6.6.6"), [], 0)
    c.register(inst("evil2", service="API.shop", address="10.6.6.7"), [], 0)
    dns_ = Answerer(c)
    assert records(ask(dns_, "api.shop.service.dockmesh"), Rd.A) == ["10.0.1.1"]
    assert records(ask(dns_, "API.SHOP.service.dockmesh"), Rd.A) == ["10.0.1.1"]
    assert ask(dns_, "api.service.dockmesh").rcode() == dns.rcode.NXDOMAIN  # two projects
    c.deregister("s1")
    dns_.catalog_changed(c)  # only the look-alike project is left: it is all there is
    assert records(ask(dns_, "api.shop.service.dockmesh"), Rd.A) == ["10.6.6.6"]
    c.register(inst("x1", service="Web", address="10.0.3.1"), [], 0)
    c.register(inst("x2", service="web", address="10.0.3.2"), [], 0)
    dns_.catalog_changed(c)  # one service to Consul, in any case: both answer
    assert sorted(records(ask(dns_, "web.service.dockmesh"), Rd.A)) == ["10.0.3.1", "10.0.3.2"]


# --- containers -----------------------------------------------------------------------------


def ctr(name: str, labels: dict[str, str], nets: dict[str, str], cid: str = "") -> Container:
    atts = tuple(Attachment(f"id-{n}", n, ipv4=ip) for n, ip in nets.items())
    return Container(
        cid or name * 4, name, "local", "img", "running", attachments=atts, labels=labels
    )


COMPOSE = {
    "dockmesh.service": "api",
    "dockmesh.port": "80",
    "com.docker.compose.project": "shop",
    "com.docker.compose.service": "api",
}
COMPOSE_NETS = (
    Network(
        "id-shop_side",
        "shop_side",
        "local",
        "bridge",
        labels={"com.docker.compose.network": "side", "com.docker.compose.project": "shop"},
    ),
    Network(
        "id-custom-name",
        "custom-name",
        "local",
        "bridge",
        labels={"com.docker.compose.network": "back", "com.docker.compose.project": "shop"},
    ),
    Network(
        "id-other_back",
        "other_back",
        "local",
        "bridge",
        labels={"com.docker.compose.network": "back", "com.docker.compose.project": "other"},
    ),
)


def topo(*containers: Container, networks: tuple[Network, ...] = ()) -> Topology:
    return Topology(1, (EngineInfo("local", "unix://x"),), networks, containers)


@pytest.mark.parametrize(
    ("network", "address"),
    [
        ("side", "10.1.0.2"),  # the file's own name
        ("shop_side", "10.1.0.2"),  # the engine's, still
        ("back", "10.2.0.2"),  # a network with its own `name:`, found by its Compose labels
    ],
)
def test_compose_network_labels_take_the_files_own_names(network: str, address: str) -> None:
    nets = {"shop_side": "10.1.0.2", "custom-name": "10.2.0.2", "other_back": "10.3.0.2"}
    c = ctr("shop-api-1", {**COMPOSE, "dockmesh.network": network}, nets)
    found, warnings = derive_all(topo(c, networks=COMPOSE_NETS), "local", "local")
    assert warnings == [] and [d.instance.address for d in found] == [address]
    assert found[0].instance.project == "shop"


def test_a_dockmesh_projects_short_network_name_and_a_missing_one() -> None:
    labels = {"dockmesh.service": "api", "dockmesh.port": "80", "dockmesh.project": "p"}
    nets = {"p_front": "10.1.0.2", "p_back": "10.2.0.2"}
    d, _ = derive(ctr("p-api-1", {**labels, "dockmesh.network": "back"}, nets), "local")
    assert d is not None and d.instance.network == "p_back"
    d, w = derive(ctr("p-api-1", {**labels, "dockmesh.network": "side"}, nets), "local")
    assert d is None and "'side' is not one of its networks" in w[0]


def test_the_project_and_the_claim_are_in_the_instances_meta() -> None:
    labels = {"dockmesh.service": "api", "dockmesh.port": "80", "dockmesh.project": "p"}
    d, _ = derive(ctr("p-api-1", {**labels, "dockmesh.short-name": "true"}, {"n": "10.0.0.2"}), "l")
    assert d is not None and d.instance.meta[META_PROJECT] == "p" and d.instance.claims_short_name
    d, w = derive(ctr("x", {**labels, "dockmesh.short-name": "maybe"}, {"n": "10.0.0.2"}), "l")
    assert d is not None and not d.instance.claims_short_name and "short-name" in w[0]


def test_a_containers_collision_is_found_from_the_topology_alone() -> None:
    a = ctr("a-api-1", {**COMPOSE, "com.docker.compose.project": "a"}, {"n": "10.0.0.2"})
    b = ctr("b-api-1", {**COMPOSE, "com.docker.compose.project": "b"}, {"n": "10.0.0.3"})
    web = ctr("web", {**COMPOSE, "dockmesh.service": "web"}, {"n": "10.0.0.4"})
    t = topo(a, b, web)
    clash = collision_of(t, a)
    assert clash is not None and clash.projects == ("a", "b")
    assert collision_of(t, web) is None


# --- one instance per ID ---------------------------------------------------------------------


def container(iid: str, engine: str = "e") -> Instance:
    return inst(iid, source="container", engine=engine, container=iid, address="10.0.0.9")


def test_a_registration_over_a_containers_id_is_refused() -> None:
    c = Catalog()
    c.sync_containers("e", [(container("web-1"), [])], 0)
    with pytest.raises(IdTaken, match="container 'web-1'"):
        c.register(inst("web-1", source="api"), [], 1)
    assert c.instance("web-1") == container("web-1")


def test_a_container_whose_id_a_registration_holds_waits_and_says_so() -> None:
    c = Catalog()
    c.register(inst("web-1", source="api"), [], 0)
    assert not c.sync_containers("e", [(container("web-1"), [])], 1)
    assert c.instance("web-1").source == "api"  # type: ignore[union-attr]
    [why] = c.refusals()
    assert "web-1: not registered" in why and "PUT /v1/agent/service/deregister/web-1" in why
    assert c.deregister("web-1", 2)
    assert c.instance("web-1") == container("web-1") and c.refusals() == []
    # A container that goes while it waits is no longer said to wait.
    c.register(inst("web-2", source="api"), [], 3)
    c.sync_containers("e", [(container("web-1"), []), (container("web-2"), [])], 3)
    assert len(c.refusals()) == 1
    c.sync_containers("e", [(container("web-1"), [])], 4)
    assert c.refusals() == []


class IdMachine(RuleBasedStateMachine):
    """Containers and registrations with the same IDs, in any order: every ID someone wants
    is in the catalog, held by whoever came first, and the other one is refused (an API
    registration: `IdTaken`) or listed in `refusals` — never hidden without a word."""

    def __init__(self) -> None:
        super().__init__()
        self.c = Catalog()
        self.now = 0.0
        self.containers: dict[str, set[str]] = {"e1": set(), "e2": set()}
        self.registered: set[str] = set()

    iids = st.sampled_from(["x", "y", "z"])
    engines = st.sampled_from(["e1", "e2"])

    def _sync(self, engine: str) -> None:
        self.now += 1
        wanted: list[tuple[Instance, list[CheckSpec]]] = [
            (container(i, engine), []) for i in sorted(self.containers[engine])
        ]
        self.c.sync_containers(engine, wanted, self.now)

    @rule(iid=iids, engine=engines)
    def container_starts(self, iid: str, engine: str) -> None:
        other = "e2" if engine == "e1" else "e1"
        if iid in self.containers[other]:
            return  # instance ids are unique across engines (another engine prefixes them)
        self.containers[engine].add(iid)
        self._sync(engine)

    @rule(iid=iids, engine=engines)
    def container_stops(self, iid: str, engine: str) -> None:
        self.containers[engine].discard(iid)
        self._sync(engine)

    @rule(iid=iids)
    def register(self, iid: str) -> None:
        self.now += 1
        held = self.c.instance(iid)
        try:
            self.c.register(inst(iid, source="api"), [], self.now)
        except IdTaken:
            assert held is not None and held.source == "container"
            return
        self.registered.add(iid)

    @rule(iid=iids)
    def deregister(self, iid: str) -> None:
        held = self.c.instance(iid)
        if held is not None and held.source == "api":
            self.now += 1
            self.c.deregister(iid, self.now)
            self.registered.discard(iid)

    @invariant()
    def nobody_is_hidden_without_a_word(self) -> None:
        refused = " ".join(self.c.refusals())
        for engine, iids in self.containers.items():
            for iid in iids:
                held = self.c.instance(iid)
                assert held is not None
                if held.source == "container":
                    assert held.engine == engine
                else:
                    assert iid in self.registered and f"{iid}: not registered" in refused
        for iid in self.registered:
            held = self.c.instance(iid)
            assert held is not None and held.source == "api"
        live = {i for iids in self.containers.values() for i in iids}
        assert len(self.c.refusals()) == len(live & self.registered)


TestIds = IdMachine.TestCase
TestIds.settings = settings(max_examples=150, stateful_step_count=30, deadline=None)
