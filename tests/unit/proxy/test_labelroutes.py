"""The containers' routes as a table: deterministic, a bad declaration costs only its own
route, conflicts resolved by name and reported."""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from dockmesh.proxy.labelroutes import CatalogInstance, LabelRoute, build_table


def inst(
    iid: str,
    service: str = "web",
    project: str | None = "shop",
    passing: bool = True,
    address: str = "10.0.0.1",
    port: int = 8080,
    **http: str,
) -> CatalogInstance:
    # `http_port` is the http-port field (`port` is the registered one).
    meta = {f"http-{k.removeprefix('http_').replace('_', '-')}": v for k, v in http.items()}
    if project is not None:
        meta["project"] = project
    return CatalogInstance(iid, service, address, port, tuple(sorted(meta.items())), passing)


def test_a_route_per_host_with_the_passing_instances_as_members() -> None:
    table = build_table(
        [
            inst("a", host="shop.test,www.shop.test", path="/", address="10.0.0.1"),
            inst("b", host="shop.test,www.shop.test", path="/", address="10.0.0.2"),
            inst("c", host="shop.test,www.shop.test", path="/", address="10.0.0.3", passing=False),
            inst("d", service="api", host="shop.test", path="/api", strip_prefix="true", port=9000),
        ],
        {"shop"},
        set(),
    )
    assert table.routes == [
        LabelRoute("shop.test", "/api", "api.shop", "/api"),
        LabelRoute("shop.test", "/", "web.shop"),
        LabelRoute("www.shop.test", "/", "web.shop"),
    ]
    assert table.members == {
        "web.shop": {"10.0.0.1:8080": 1, "10.0.0.2:8080": 1},
        "api.shop": {"10.0.0.1:9000": 1},
    }
    assert table.problems == [] and table.conflicts == []


def test_only_the_projects_asked_for_and_the_http_port_label() -> None:
    table = build_table(
        [
            inst("a", path="/", port=8080, http_port="8081"),
            inst("b", project="other", path="/other"),
            inst("c", project=None, path="/none"),
        ],
        {"shop"},
        set(),
    )
    assert [r.prefix for r in table.routes] == ["/"]
    assert table.members == {"web.shop": {"10.0.0.1:8081": 1}}
    every = build_table([inst("b", project="other", path="/o"), inst("c", project=None, path="/n")],
                        None, set())  # fmt: skip
    assert {r.cluster for r in every.routes} == {"web.other", "web"}


def test_a_bad_label_costs_its_own_route_only_and_says_why() -> None:
    table = build_table(
        [
            inst("good", path="/good"),
            inst("bad", service="api", host="bad host", path="/"),
            inst("mw", service="admin", path="/admin", middlewares="auth,nope"),
        ],
        {"shop"},
        {"auth"},
    )
    assert [r.cluster for r in table.routes] == ["web.shop"]
    assert len(table.problems) == 2
    assert table.problems[0].startswith("api.shop (bad): http-host: 'bad host' is not a host")
    assert table.problems[1] == (
        "admin.shop (mw): middleware 'nope' is not declared in the routes file "
        "(declared: auth): not routed"
    )


def test_two_services_on_one_host_and_path_the_first_by_name_wins_and_it_is_said() -> None:
    table = build_table(
        [inst("z", service="zeta", host="a.test", path="/"), inst("y", service="alpha",
                                                                host="a.test", path="/")],
        {"shop"},
        set(),
    )  # fmt: skip
    assert table.routes == [LabelRoute("a.test", "/", "alpha.shop")]
    assert table.conflicts == [
        "a.test/ is claimed by alpha.shop, zeta.shop: alpha.shop serves it (first by name)"
    ]


def test_a_relabel_by_replacement_keeps_both_routes_until_the_old_instance_goes() -> None:
    old = inst("old", host="a.test", path="/", address="10.0.0.1")
    new = inst("new", host="a.test,b.test", path="/", address="10.0.0.2")
    both = build_table([old, new], {"shop"}, set())
    assert [(r.host, r.prefix) for r in both.routes] == [("a.test", "/"), ("b.test", "/")]
    assert both.members["web.shop"] == {"10.0.0.1:8080": 1, "10.0.0.2:8080": 1}
    after = build_table([new], {"shop"}, set())
    assert after.shape() == both.shape()  # the same routes: no rebuild, members only
    assert after.members["web.shop"] == {"10.0.0.2:8080": 1}
    # Options the instances disagree on while replaced: most instances win, then order.
    a = inst("a", path="/api", strip_prefix="true")
    b = inst("b", path="/api", address="10.0.0.2")
    c = inst("c", path="/api", address="10.0.0.3")
    assert build_table([a, b, c], {"shop"}, set()).routes[0].strip is None
    assert build_table([a, c], {"shop"}, set()).routes[0].strip is None
    assert build_table([a, c], {"shop"}, set()).problems == []


instances = st.lists(
    st.builds(
        inst,
        iid=st.text("abcdef", min_size=1, max_size=3),
        service=st.sampled_from(["web", "api", "admin"]),
        project=st.sampled_from(["shop", "other", None]),
        passing=st.booleans(),
        address=st.sampled_from(["10.0.0.1", "10.0.0.2", "fd00::1"]),
        host=st.sampled_from(["a.test", "b.test,a.test", "bad host", "C.test"]),
        path=st.sampled_from(["/", "/api", "/api/v1", "api", "/a/../b"]),
        strip_prefix=st.sampled_from(["true", "false", "/api", "x"]),
        middlewares=st.sampled_from(["", "auth", "nope"]),
    ),
    max_size=8,
)


@given(instances, st.randoms(use_true_random=False), st.sampled_from([None, {"shop"}]))
def test_the_table_is_deterministic_unique_and_ordered(
    found: list[CatalogInstance], rnd: random.Random, projects: set[str] | None
) -> None:
    table = build_table(found, projects, {"auth"})
    shuffled = list(found)
    rnd.shuffle(shuffled)
    again = build_table(shuffled, projects, {"auth"})
    # Duplicated ids: the first seen is kept, so compare only where ids are unique.
    if len({i.id for i in found}) == len(found):
        assert again == table
    rules = [(r.host, r.prefix) for r in table.routes]
    assert len(rules) == len(set(rules))
    # Host routes before catch-alls, longer prefixes first: a more specific route is never
    # hidden behind a shorter one of the same host.
    for i, r in enumerate(table.routes):
        for later in table.routes[i + 1 :]:
            if r.host == later.host:
                assert len(r.prefix) >= len(later.prefix)
            assert not (r.host is None and later.host is not None)
    for r in table.routes:
        assert r.cluster in table.members
        assert all(m in {"auth"} for m in r.middlewares)


def test_a_project_cannot_take_a_host_another_project_serves() -> None:
    """One proxy for two projects: `blog`'s containers label themselves `shop`'s host, once
    with a service named to sort first (`a.blog` < `web.shop`) and once with a longer path
    under it. Neither may take `shop`'s traffic (credentials posted to /login among it): a
    host two projects claim is served by none, and said; the others are unaffected."""
    shop = inst("s1", service="web", project="shop", host="shop.test", path="/")
    same = inst("b1", service="a", project="blog", host="shop.test", path="/")
    deeper = inst("b2", service="web", project="blog", host="shop.test", path="/login")
    own = inst("b3", service="web", project="blog", host="blog.test", path="/")
    table = build_table([shop, same, deeper, own], {"shop", "blog"}, set())
    assert [r for r in table.routes if r.host == "shop.test"] == []
    assert any("shop.test is claimed by the projects blog, shop" in c for c in table.conflicts)
    assert [(r.host, r.cluster) for r in table.routes] == [("blog.test", "web.blog")]
    # Followed alone, shop keeps its host.
    alone = build_table([shop, same, deeper, own], {"shop"}, set())
    assert [(r.host, r.cluster) for r in alone.routes] == [("shop.test", "web.shop")]
