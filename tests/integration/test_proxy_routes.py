"""`dockmesh proxy` routes cannot be bypassed: an absolute-form target routes (and is forwarded)
by its own authority, dot segments and encoded dots cannot leave a prefix, and a client's
X-Forwarded-* / Forwarded fields reach the upstream only from a trusted proxy."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.proxyenv import Backend, ProxyProc, ask_raw, backends, vhost_proxy


def ask(port: int, target: str, *fields: str) -> tuple[int, dict[str, Any] | None, bytes]:
    """(status, the backend's echo or None, the raw response) of one request on its own
    connection."""
    head = f"GET {target} HTTP/1.1\r\n" + "".join(f"{f}\r\n" for f in fields)
    return ask_raw(port, (head + "Connection: close\r\n\r\n").encode())


@pytest.fixture
def vhosts(tmp_path: Path) -> Iterator[tuple[ProxyProc, Backend, Backend]]:
    with vhost_proxy(tmp_path) as v:
        yield v


def test_an_absolute_form_target_routes_by_its_authority_and_goes_upstream_consistent(
    vhosts: tuple[ProxyProc, Backend, Backend],
) -> None:
    proxy, admin, p = vhosts
    # Host says public, the target says admin.internal: the target wins (RFC 9112 §3.2.2),
    # and the upstream gets an origin-form target with Host set to the authority.
    status, doc, out = ask(proxy.port, "http://admin.internal/p/x?q=1", "Host: public")
    assert status == 200 and doc is not None, out
    assert doc["backend"] == admin.name and doc["path"] == "/p/x?q=1"
    assert doc["headers"]["host"] == "admin.internal"
    assert doc["headers"]["x-forwarded-host"] == "admin.internal"
    # An authority no route allows is not routed by the Host beside it.
    hits = p.hits
    status, _, out = ask(proxy.port, "http://nobody.test/p/x", "Host: public")
    assert status == 404, out
    assert p.hits == hits
    # A plain request still routes by Host.
    status, doc, out = ask(proxy.port, "/p/x", "Host: public")
    assert status == 200 and doc is not None and doc["backend"] == p.name, out


def test_dot_segments_and_encoded_dots_cannot_leave_a_prefix(
    vhosts: tuple[ProxyProc, Backend, Backend],
) -> None:
    proxy, admin, p = vhosts
    for target in (
        "/p/../admin",
        "/p/%2e%2e/admin",
        "/p/%2E%2E/admin",
        "/p/.%2e/admin",
        "/p//../x",
    ):
        status, _, out = ask(proxy.port, target, "Host: public")
        assert status == 404, (target, out)
    for target in ("/../x", "/p/../../x", "/p/%zz"):
        status, _, out = ask(proxy.port, target, "Host: public")
        assert status == 400, (target, out)
    assert p.hits == 0 and admin.hits == 0
    # What was matched is what is forwarded: the upstream cannot resolve it elsewhere.
    status, doc, out = ask(proxy.port, "/p/./a/b/../%7Euser//c?x=/../y", "Host: public")
    assert status == 200 and doc is not None, out
    assert doc["backend"] == p.name and doc["path"] == "/p/a/~user/c?x=/../y"


SPOOFED = (
    "X-Forwarded-For: 10.9.8.7",
    "X-Forwarded-Proto: https",
    "X-Forwarded-Host: admin.internal",
    "Forwarded: for=10.9.8.7;proto=https",
)


def test_client_forwarded_fields_are_replaced_unless_the_peer_is_trusted(tmp_path: Path) -> None:
    with backends(1) as (b,):
        plain = ProxyProc(tmp_path, "--backend", b.url)
        try:
            status, doc, out = ask(plain.port, "/x", "Host: public", *SPOOFED)
            assert status == 200 and doc is not None, out
            h = doc["headers"]
            assert h["x-forwarded-for"] == "127.0.0.1"
            assert h["x-forwarded-proto"] == "http"
            assert h["x-forwarded-host"] == "public"
            assert "forwarded" not in h
        finally:
            plain.stop()
        cfg = tmp_path / "trusted.yaml"
        cfg.write_text(f"trusted_proxies: [127.0.0.0/8]\nroutes:\n  - backends: [{b.url}]\n")
        trusting = ProxyProc(tmp_path, "--config", str(cfg))
        try:
            status, doc, out = ask(trusting.port, "/x", "Host: public", *SPOOFED)
            assert status == 200 and doc is not None, out
            h = doc["headers"]
            assert h["x-forwarded-for"] == "10.9.8.7, 127.0.0.1"
            assert h["forwarded"] == "for=10.9.8.7;proto=https"
        finally:
            trusting.stop()
