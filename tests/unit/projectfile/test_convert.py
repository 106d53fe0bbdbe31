"""`dockmesh convert`: a Compose file's equivalent, and every part left out named."""

from __future__ import annotations

from typing import Any

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
