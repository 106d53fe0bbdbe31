"""The composition root's wiring: settings, clusters and routes from the flags and the routes
file; a service route without the agent's URL refused before anything starts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dockmesh.proxy.cluster import Cluster
from dockmesh.proxy.config import FileSettings, RouteSpec
from dockmesh.proxy.run import ProxyOptions, build_settings, identity, reload_file, run_proxy
from dockmesh.proxy.server import PortServed, check_port_free, reuseport_socket
from dockmesh.resilience.passive import PassivePolicy


def test_backends_from_the_flags_make_one_catch_all_route() -> None:
    settings, made = build_settings(
        ProxyOptions(listen=("127.0.0.1", 0), backends=["10.0.0.1:80", "10.0.0.2:80"])
    )
    (route,) = settings.routes
    assert route.host is None and route.prefix == b"/"
    ((cluster, spec),) = made
    assert route.cluster is cluster and spec.health_path == "/"
    assert sorted(cluster.upstreams) == ["10.0.0.1:80", "10.0.0.2:80"]
    assert cluster.balance == "round_robin" and settings.hash_keys == {}


def test_a_routes_file_and_a_service() -> None:
    file = FileSettings(
        routes=[
            RouteSpec(
                name="api", service="api", host="api.test", prefix="/v1", balance="hash:X-User"
            ),
            RouteSpec(name="route1", backends=["10.0.0.1:80"], prefix="/static"),
            RouteSpec(name="api", service="api", prefix="/v2"),  # the same cluster again
        ],
        timeouts={"connect": 1.5, "pool_idle": 3.0},
        limits={"max_connections": 7, "max_header_bytes": 4096, "max_connections_per_upstream": 9},
    )
    settings, made = build_settings(
        ProxyOptions(
            listen=("127.0.0.1", 0), service="web", agent="http://a:1", balance="p2c", file=file
        )
    )
    assert [(r.cluster.name, r.host, r.prefix) for r in settings.routes] == [
        ("api", b"api.test", b"/v1"),
        ("route1", None, b"/static"),
        ("api", None, b"/v2"),
        ("web", None, b"/"),
    ]
    assert settings.routes[0].cluster is settings.routes[2].cluster
    assert [c.name for c, _ in made] == ["api", "route1", "web"]
    assert [c.balance for c, _ in made] == ["hash:X-User", "p2c", "p2c"]
    assert settings.hash_keys == {"api": "X-User"}
    assert settings.timeouts.connect_s == 1.5 and settings.timeouts.pool_idle_s == 3.0
    assert settings.limits.max_client_connections == 7
    assert settings.limits.max_head_bytes == 4096
    assert settings.limits.max_connections_per_upstream == 9
    # A service's members come from the agent: none until it answers.
    assert made[2][0].upstreams == {}


def test_a_service_route_needs_the_agents_url() -> None:
    with pytest.raises(ValueError, match="agent"):
        run_proxy(ProxyOptions(listen=("127.0.0.1", 0), service="web"))


def test_a_reload_keeps_the_clusters_it_still_has_with_their_health() -> None:
    """A cluster the new file still names (same members, balance and check) is the same
    object, so its health and its discovery carry over; the others are made anew, and
    `known` forgets what the file no longer has."""
    a = RouteSpec(name="a", backends=["10.0.0.1:80"], prefix="/a")
    b = RouteSpec(name="b", backends=["10.0.0.2:80"], prefix="/b")
    opts = ProxyOptions(listen=("127.0.0.1", 0), file=FileSettings(routes=[a, b]))
    known: dict[str, Cluster[Any]] = {}
    _, first = build_settings(opts, known)
    ca, cb = (c for c, _ in first)
    ca.upstreams["10.0.0.1:80"].healthy = False
    c = RouteSpec(name="c", backends=["10.0.0.3:80"], prefix="/c")
    opts.file = FileSettings(routes=[c, a])
    settings, again = build_settings(opts, known)
    cc, ca2 = (cl for cl, _ in again)
    assert ca2 is ca and not ca2.upstreams["10.0.0.1:80"].healthy
    assert cc is not cb and [r.cluster for r in settings.routes] == [cc, ca]
    assert set(map(id, known.values())) == {id(ca), id(cc)}


def test_a_port_another_process_serves_is_refused_even_with_so_reuseport() -> None:
    other = reuseport_socket("127.0.0.1", 0)
    try:
        port = other.getsockname()[1]
        with pytest.raises(PortServed, match=f"127.0.0.1:{port} is already served"):
            check_port_free("127.0.0.1", port)
    finally:
        other.close()
    check_port_free("127.0.0.1", port)  # free again


def test_passive_health_from_the_flags_and_the_file() -> None:
    settings, _ = build_settings(ProxyOptions(listen=("127.0.0.1", 0), backends=["10.0.0.1:80"]))
    passive = settings.routes[0].cluster.passive
    assert passive.failure_statuses == frozenset({502, 503, 504})
    assert passive.max_ejection_percent == 50 and passive.panic_threshold_percent == 50
    file = FileSettings(passive={"max_ejection_percent": 20.0})
    settings, _ = build_settings(
        ProxyOptions(
            listen=("127.0.0.1", 0),
            backends=["10.0.0.1:80"],
            file=file,
            passive={"failure_statuses": frozenset({500}), "max_ejection_percent": 90.0},
        )
    )
    passive = settings.routes[0].cluster.passive
    assert passive.failure_statuses == frozenset({500})  # the flag
    assert passive.max_ejection_percent == 20  # the file wins over the flag
    assert settings.routes[0].cluster.outlier.policy.max_ejection_percent == 20


def test_a_reload_to_a_file_start_up_would_refuse_keeps_the_running_routes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """`routes: []` (say, a file half written by a template tool) is "nothing to proxy to" at
    start-up; on SIGHUP it answered every request 404 until the next reload."""
    cfg = tmp_path / "routes.yaml"
    cfg.write_text("routes: []\n")
    opts = ProxyOptions(listen=("127.0.0.1", 0), config_path=str(cfg))
    assert reload_file(opts) is None
    assert "has no routes: keeping the running configuration" in caplog.text
    # Beside --backend or routes the containers declare, the file may well have no routes.
    opts.follow_labels = True
    file = reload_file(opts)
    assert file is not None and file.routes == []
    opts.follow_labels = False
    opts.backends = ["10.0.0.1:80"]
    file = reload_file(opts)
    assert file is not None and file.routes == []
    cfg.write_text("routes:\n  - backends: [http://10.0.0.1:80]\n")
    opts.backends = []
    file = reload_file(opts)
    assert file is not None and len(file.routes) == 1


def test_a_served_ipv6_port_is_named_as_a_listen_address_is_written() -> None:
    try:
        other = reuseport_socket("::1", 0)
    except OSError:
        pytest.skip("no IPv6 on this host")
    try:
        port = other.getsockname()[1]
        with pytest.raises(PortServed, match=rf"^\[::1\]:{port} is already served"):
            check_port_free("::1", port)
    finally:
        other.close()


def test_container_routes_come_after_the_files_and_keep_their_clusters() -> None:
    from dockmesh.proxy.labelroutes import CatalogInstance, build_table
    from dockmesh.proxy.run import LabelState, declared_middlewares

    def found(*paths: str) -> list[CatalogInstance]:
        return [
            CatalogInstance(
                f"c{i}", "web", f"10.0.0.{i}", 8080,
                (("http-path", p), ("http-strip-prefix", "true"), ("project", "shop")),
            )
            for i, p in enumerate(paths, 1)
        ]  # fmt: skip

    opts = ProxyOptions(
        listen=("127.0.0.1", 0),
        agent="http://127.0.0.1:8500",
        file=FileSettings(routes=[RouteSpec(name="r0", backends=["10.9.9.9:80"], prefix="/f")]),
        follow_labels=True,
        projects=frozenset({"shop"}),
    )
    known: dict[str, Cluster[Any]] = {}
    labels = LabelState(opts)
    labels.table = labels.build(found("/app"))
    settings, made = build_settings(opts, known, labels.table)
    labels.place(made)
    assert [(r.prefix, r.strip) for r in settings.routes] == [(b"/f", None), (b"/app", b"/app")]
    web = settings.routes[1].cluster
    assert web.name == "web.shop" and sorted(web.upstreams) == ["10.0.0.1:8080"]
    # Scaled: the same routes, members only; relabelled: a new table, the same cluster.
    labels.table = labels.build(found("/app", "/app"))
    labels.set_members()
    assert sorted(web.upstreams) == ["10.0.0.1:8080", "10.0.0.2:8080"]
    labels.table = labels.build(found("/app", "/shop"))
    settings, made = build_settings(opts, known, labels.table)
    labels.place(made)
    assert [r.prefix for r in settings.routes] == [b"/f", b"/shop", b"/app"]
    assert settings.routes[1].cluster is web and settings.routes[2].cluster is web
    assert declared_middlewares(opts.file) == frozenset()
    assert build_table(found("/x"), {"other"}, set()).routes == []


def test_tls_from_the_flags_and_the_file_and_what_does_not_make_a_whole() -> None:
    from dockmesh.proxy.config import TlsSpec
    from dockmesh.proxy.run import route_hosts, tls_spec
    from dockmesh.proxy.tls import TlsError

    opts = ProxyOptions(listen=None, tls_listen=("127.0.0.1", 0), tls={"internal": True})
    assert tls_spec(opts) == TlsSpec(internal=True)
    # The file's keys win over the flags'.
    opts.file = FileSettings(
        routes=[RouteSpec(name="r", backends=["10.0.0.1:80"], host="app.test")],
        tls={"ca_dir": "/x", "internal": False, "certificates": [("c", "k")]},
    )
    assert tls_spec(opts) == TlsSpec(certificates=[("c", "k")], ca_dir="/x")
    assert route_hosts(build_settings(opts)[0]) == ["app.test"]
    with pytest.raises(TlsError, match="needs certificates"):
        tls_spec(ProxyOptions(listen=None, tls_listen=("127.0.0.1", 0)))
    with pytest.raises(TlsError, match="no TLS listener"):
        tls_spec(ProxyOptions(listen=("127.0.0.1", 0), tls={"internal": True}))
    assert tls_spec(ProxyOptions(listen=("127.0.0.1", 0))) is None


def test_a_routes_resilience_settings_make_its_cluster_and_a_change_makes_it_anew() -> None:
    spec = RouteSpec(
        name="a",
        backends=["10.0.0.1:80"],
        breaker={"consecutive_failures": 2, "open_base_s": 45.0},
        outlier={"consecutive_5xx": 9},
        retry={"attempts": 1, "on": frozenset({"connect"})},
    )
    opts = ProxyOptions(listen=("127.0.0.1", 0), file=FileSettings(routes=[spec]))
    known: dict[str, Cluster[Any]] = {}
    _, made = build_settings(opts, known)
    c = made[0][0]
    assert c.breaker_policy.consecutive_failures == 2 and c.breaker_policy.open_max_s == 45.0
    assert c.outlier.policy.consecutive_5xx == 9
    assert c.outlier.policy.max_ejection_percent == 50  # passive's, as before
    assert c.retry.attempts == 1 and c.retry.on == frozenset({"connect"})
    up = c.upstreams["10.0.0.1:80"]
    assert up.breaker.policy is c.breaker_policy
    # The same settings again (a set built in another order too): the same cluster.
    same = RouteSpec(
        name="a",
        backends=["10.0.0.1:80"],
        breaker={"open_base_s": 45.0, "consecutive_failures": 2},
        outlier={"consecutive_5xx": 9},
        retry={"on": frozenset(["connect"]), "attempts": 1},
    )
    opts.file = FileSettings(routes=[same])
    _, again = build_settings(opts, known)
    assert again[0][0] is c
    # Another breaker: another cluster.
    opts.file = FileSettings(routes=[RouteSpec(name="a", backends=["10.0.0.1:80"])])
    _, changed = build_settings(opts, known)
    assert changed[0][0] is not c and changed[0][0].breaker_policy.consecutive_failures == 5


@given(st.permutations([500, 502, 503, 504, 510, 518, 526]))
def test_a_policys_identity_does_not_follow_the_order_its_set_was_built_in(
    order: list[int],
) -> None:
    base = PassivePolicy(failure_statuses=frozenset([500, 502, 503, 504, 510, 518, 526]))
    other = PassivePolicy(failure_statuses=frozenset(order))
    assert identity(other) == identity(base)
