"""Containers → instances: the right address, Docker's health, compose services, warnings."""

from __future__ import annotations

from typing import Any

from dockmesh.catalog.containers import derive
from dockmesh.model.topology import Attachment, Container, PortBinding


def ctr(labels: dict[str, str], nets: dict[str, str] | None = None, **kw: Any) -> Container:
    atts = tuple(
        Attachment(f"id-{n}", n, ipv4=ip) for n, ip in (nets or {"n1": "10.1.0.5"}).items()
    )
    return Container(
        "c" * 64,
        "app-1",
        "local",
        "img",
        kw.pop("state", "running"),
        pid=42,
        attachments=atts,
        labels=labels,
        **kw,
    )


LABELS = {"dockmesh.service": "api", "dockmesh.port": "8080"}


def test_the_only_network_gives_the_address() -> None:
    d, w = derive(ctr(LABELS), "local")
    assert w == [] and d is not None
    assert (d.instance.id, d.instance.address, d.instance.port) == ("app-1", "10.1.0.5", 8080)
    assert d.checks == ()


def test_several_networks_need_the_label_and_are_never_guessed() -> None:
    nets = {"front": "10.1.0.5", "back": "10.2.0.5"}
    d, w = derive(ctr(LABELS, nets), "local")
    assert d is None and "set dockmesh.network" in w[0]
    d, w = derive(ctr({**LABELS, "dockmesh.network": "back"}, nets), "local")
    assert d is not None and d.instance.address == "10.2.0.5" and d.instance.network == "back"
    d, w = derive(ctr({**LABELS, "dockmesh.network": "nope"}, nets), "local")
    assert d is None and "is not one of its networks" in w[0]


def test_checks_run_in_the_containers_namespace_on_its_address() -> None:
    d, _ = derive(
        ctr({**LABELS, "dockmesh.check.http": "/health", "dockmesh.check.interval": "1s"}), "local"
    )
    assert d is not None
    (check,) = d.checks
    assert (check.kind, check.http, check.interval_s, check.netns_pid) == (
        "http",
        "http://10.1.0.5:8080/health",
        1.0,
        42,
    )
    d, _ = derive(ctr({**LABELS, "dockmesh.check.tcp": "true"}), "local")
    assert d is not None and d.checks[0].tcp == "10.1.0.5:8080"


def test_dockers_healthcheck_decides_while_it_is_there() -> None:
    for health, status in (
        ("healthy", "passing"),
        ("starting", "critical"),
        ("unhealthy", "critical"),
    ):
        d, _ = derive(ctr(LABELS, health=health), "local")
        assert d is not None and d.checks[0].kind == "docker"
        assert d.checks[0].initial_status == status


def test_stopped_or_unlabelled_containers_do_not_register() -> None:
    assert derive(ctr(LABELS, state="exited"), "local")[0] is None
    assert derive(ctr({}), "local") == (None, [])
    d, w = derive(ctr({"dockmesh.service": "api", "dockmesh.port": "http"}), "local")
    assert d is None and w


def test_compose_services_with_one_port_register_when_asked() -> None:
    labels = {"com.docker.compose.service": "web", "com.docker.compose.project": "shop"}
    c = ctr(labels, ports=(PortBinding(80, "tcp", None, None),))
    assert derive(c, "local")[0] is None
    d, _ = derive(c, "local", register_compose=True)
    assert d is not None and (d.instance.service, d.instance.port, d.instance.tags) == (
        "web",
        80,
        ("shop",),
    )
    two = ctr(
        labels, ports=(PortBinding(80, "tcp", None, None), PortBinding(443, "tcp", None, None))
    )
    assert derive(two, "local", register_compose=True)[0] is None


def test_other_engines_prefix_the_id() -> None:
    c = ctr(LABELS)
    from dataclasses import replace

    d, _ = derive(replace(c, engine="h2"), "local")
    assert d is not None and d.instance.id == "h2.app-1"


def test_the_http_route_labels_ride_in_the_meta_and_bad_ones_are_warned_about() -> None:
    http = {"dockmesh.http.host": "Shop.test", "dockmesh.http.path": "/api"}
    d, w = derive(ctr({**LABELS, **http}), "local")
    assert w == [] and d is not None
    assert d.instance.meta["http-host"] == "Shop.test"  # as written: the proxy decodes it
    assert d.instance.meta["http-path"] == "/api"
    d, w = derive(ctr({**LABELS, "dockmesh.http.path": "api"}), "local")
    assert d is not None  # registered all the same: its DNS name needs no route
    assert w == ["app-1: dockmesh.http.path: 'api': a path starts with '/': not routed"]
    d, w = derive(ctr({"dockmesh.http.path": "/"}), "local")
    assert d is None and "needs dockmesh.service and dockmesh.port" in w[0]
