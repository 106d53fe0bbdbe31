"""`dockmesh convert`: a Compose file's equivalent, and every part left out named."""

from __future__ import annotations

from typing import Any

import yaml
from hypothesis import given
from hypothesis import strategies as st

from dockmesh.projectfile.convert import convert_compose
from dockmesh.projectfile.schema import parse_spec_partial
from dockmesh.projectfile.yamlpos import load_located

COMPOSE = """\
version: "3.9"
name: shop
services:
  db:
    image: postgres:16
    container_name: db
    restart: unless-stopped
    environment: ["POSTGRES_PASSWORD=${PW:-secret}"]
    volumes:
      - {type: volume, source: pgdata, target: /var/lib/postgresql/data}
      - {type: bind, source: ./init, target: /init, read_only: true}
      - {type: tmpfs, target: /run, tmpfs: {size: 64m}}
    healthcheck: {test: [CMD-SHELL, pg_isready], interval: 5s, start_interval: 1s}
    logging: {driver: json-file}
  web:
    build: .
    ports:
      - {target: 80, published: 8080, host_ip: 127.0.0.1}
      - {target: 53, protocol: udp}
      - "9000:9000"
    expose: ["80"]
    labels: [tier=web]
    networks: {back: {aliases: [www], priority: 10}}
    depends_on: {db: {condition: service_healthy, restart: true}}
    deploy: {replicas: 2, resources: {limits: {cpus: "0.5", memory: 128M}}}
networks:
  back:
    ipam: {config: [{subnet: 10.99.0.0/24, gateway: 10.99.0.1}]}
    driver_opts: {com.docker.network.driver.mtu: "1400"}
volumes:
  pgdata:
secrets:
  pw: {file: ./pw}
"""


def converted() -> tuple[dict[str, Any], list[str]]:
    located = load_located(COMPOSE)
    data, notes = convert_compose(located.data)
    return data, [".".join(map(str, n.path)) for n in notes]


def test_what_converts() -> None:
    data, _ = converted()
    assert data["project"] == "shop" and "version" not in data
    db, web = data["services"]["db"], data["services"]["web"]
    assert db["volumes"] == ["pgdata:/var/lib/postgresql/data", "./init:/init:ro"]
    assert db["tmpfs"] == ["/run:size=64m"]
    assert db["healthcheck"] == {"test": ["CMD-SHELL", "pg_isready"], "interval": "5s"}
    assert web["ports"] == ["127.0.0.1:8080:80", "53/udp", "9000:9000"]
    assert web["labels"] == {"tier": "web"}
    assert web["networks"] == {"back": {"aliases": ["www"]}}
    assert web["depends_on"] == {"db": {"condition": "service_healthy"}}
    assert web["image"] == "shop-web"
    assert data["networks"]["back"] == {
        "subnet": "10.99.0.0/24",
        "gateway": "10.99.0.1",
        "options": {"com.docker.network.driver.mtu": "1400"},
    }
    spec, problems, _ = parse_spec_partial(data)
    assert spec is not None and problems == []


def test_what_does_not_is_named() -> None:
    _, notes = converted()
    assert notes == [
        "services.db.container_name",
        "services.db.healthcheck.start_interval",
        "services.db.logging",
        "services.web.build",
        "services.web.expose",
        "services.web.networks.back.priority",
        "services.web.depends_on.db.restart",
        "services.web.image",
        "secrets",
    ]


KEYS = st.sampled_from(["image", "build", "foo", "ports", "logging", "x-a", "restart", "user"])


@given(st.dictionaries(st.sampled_from(["a", "b"]), st.dictionaries(KEYS, st.just("v"))))
def test_every_key_is_converted_or_named(services: dict[str, dict[str, str]]) -> None:
    data, notes = convert_compose({"services": services})
    named = {n.path for n in notes}
    for name, svc in services.items():
        for key in svc:
            kept = key in data["services"][name]
            assert kept or key.startswith("x-") or ("services", name, key) in named


# Any value where Compose expects a certain shape: a careless file, or one for another tool.
ANY = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(
            st.sampled_from(["a", "path", "target", "type", "size"]), inner, max_size=3
        )
    ),
    max_leaves=10,
)
SERVICE_KEYS = st.sampled_from(
    ["ports", "volumes", "env_file", "networks", "depends_on", "deploy", "healthcheck", "labels"]
)
NETWORK_KEYS = st.sampled_from(["ipam", "labels", "driver_opts", "driver"])


@given(
    st.dictionaries(SERVICE_KEYS, ANY, max_size=4),
    st.dictionaries(NETWORK_KEYS, ANY | st.fixed_dictionaries({"config": ANY}), max_size=3),
)
def test_any_shape_converts_or_is_named_never_raises(
    svc: dict[str, Any], net: dict[str, Any]
) -> None:
    data, notes = convert_compose({"services": {"s": svc}, "networks": {"n": net}})
    yaml.safe_dump(data)  # what convert writes
    named = {n.path[:3] for n in notes}
    out = data["services"]["s"]
    for key, value in svc.items():
        if value in (None, [], {}):
            continue  # nothing to convert
        kept = key in out or (key == "volumes" and "tmpfs" in out)
        assert kept or ("services", "s", key) in named, key


def notes_of(text: str) -> tuple[dict[str, Any], list[str]]:
    data, notes = convert_compose(load_located(text).data)
    return data, [".".join(map(str, n.path)) + ": " + n.message for n in notes]


def test_long_syntax_fields_without_equivalent_are_named() -> None:
    data, notes = notes_of(
        "services:\n  w:\n    image: x\n"
        "    env_file: [{path: a.env, required: false}, {path: b.env, format: raw}]\n"
        "    ports: [{target: 80, published: 8080, mode: host, app_protocol: http}]\n"
        "    volumes: [{type: tmpfs, target: /t, read_only: true, tmpfs: {size: 1m, mode: 0700}}]\n"
        "networks:\n  n:\n    ipam: {config: [{subnet: 10.9.0.0/24, foo: 1}, 5]}\n"
    )
    w = data["services"]["w"]
    assert w["env_file"] == ["a.env", "b.env"]
    assert w["ports"] == ["8080:80"] and w["tmpfs"] == ["/t:size=1m"]
    assert data["networks"]["n"] == {"subnet": "10.9.0.0/24"}
    assert [n.split(":")[0] for n in notes] == [
        "services.w.env_file.0.required",
        "services.w.env_file.1.format",
        "services.w.ports.0.app_protocol",
        "services.w.ports.0.mode",
        "services.w.volumes.0",
        "networks.n.ipam.config.0",
        "networks.n.ipam.config.1",
    ]
    assert "missing one is an error" in notes[0]
    assert "mode, read_only" in notes[4]


def test_a_value_of_another_shape_is_kept_for_dockmesh_to_judge() -> None:
    # Once: a string's characters became ports, and an int crashed the command.
    data, notes = notes_of(
        "services:\n  w:\n    image: x\n    ports: '80'\n    volumes: 5\n"
        "    networks: {a: [x]}\n    depends_on: {db: 5}\n    deploy: 3\n"
    )
    w = data["services"]["w"]
    assert w["ports"] == "80" and w["volumes"] == 5 and w["networks"] == {"a": ["x"]}
    assert w["depends_on"] == {"db": {"condition": "service_started"}}
    assert [n.split(":")[0] for n in notes] == ["services.w.depends_on.db", "services.w.deploy"]


DEEP_KEYS = st.sampled_from(
    ["services", "networks", "volumes", "name", "s", "ports", "env_file", "depends_on",
     "deploy", "resources", "limits", "healthcheck", "ipam", "config", "aux_addresses",
     "target", "type", "tmpfs", "condition", "path", "external", "disable", "aliases"]
)  # fmt: skip
DEEP = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=4),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(DEEP_KEYS, inner, max_size=4),
    max_leaves=25,
)


@given(st.dictionaries(DEEP_KEYS, DEEP, max_size=4))
def test_any_document_converts_without_raising(doc: dict[str, Any]) -> None:
    data, _ = convert_compose(doc)
    yaml.safe_dump(data)


def test_short_volume_modes_without_equivalent_are_named_and_left_out() -> None:
    # Left in, the file convert wrote was refused by `up`: "the mode 'z' is not ro or rw".
    data, notes = notes_of(
        "services:\n  w:\n    image: x\n"
        "    volumes: ['./a:/a:z', './b:/b:ro,Z', 'db:/d:nocopy', './c:/c:ro', '/anon']\n"
    )
    assert data["services"]["w"]["volumes"] == [
        "./a:/a",
        "./b:/b:ro",
        "db:/d",
        "./c:/c:ro",
        "/anon",
    ]
    assert notes == [
        "services.w.volumes.0: not converted: the mode z",
        "services.w.volumes.1: not converted: the mode Z",
        "services.w.volumes.2: not converted: the mode nocopy",
    ]
