"""`%2F` in a request path is kept as the client sent it, through both lanes of a real
`dockmesh proxy`: normalisation does not decode it (it is data, not a separator: decoding it
would change what the path names), and routing sees it as no slash. A dot segment hidden
behind it is refused: an upstream that decodes `%2F` (busybox httpd, nginx serving files)
would resolve it, and `/p/..%2F..%2Fx` would leave `/p/` there."""

from __future__ import annotations

import http.client
import json
from pathlib import Path

from tests.integration.proxyenv import ProxyProc, backends, raw
from tests.integration.test_proxy_routes import ask

TARGETS = ("/a%2Fb", "/a%2fb/c", "/p/%2F/x?q=%2F", "/x/%2e%2e.%2Fy")
# What the upstream gets: `%2e` is an unreserved dot (decoded), `%2F`/`%2f` stay as sent.
FORWARDED = {"/x/%2e%2e.%2Fy": "/x/...%2Fy"}
# Dot segments behind an encoded slash: 400 on both lanes.
REFUSED = ("/p/..%2F..%2Fx", "/x/%2e%2e%2Fy", "/q/..%2Fp/x")


def test_an_encoded_slash_is_forwarded_as_sent_on_both_lanes(tmp_path: Path) -> None:
    with backends(1) as (b,):
        p = ProxyProc(tmp_path, "--backend", b.url)  # a lone catch-all: the fast lane
        c = http.client.HTTPConnection("127.0.0.1", p.port, timeout=10)
        try:
            for target in TARGETS:
                for _ in range(2):  # the second time, the head is the connection's last
                    c.request("GET", target)
                    r = c.getresponse()
                    doc = json.loads(r.read())
                    assert r.status == 200 and doc["path"] == FORWARDED.get(target, target)
                # The general reader (a field the fast lane leaves to it) agrees.
                status, doc2, out = ask(p.port, target, "Host: h", "Expect: nothing")
                assert status == 200 and doc2 is not None, out
                assert doc2["path"] == FORWARDED.get(target, target)
            for target in REFUSED:
                fast = raw(p.port, f"GET {target} HTTP/1.1\r\nHost: h\r\n\r\n".encode())
                assert fast.startswith(b"HTTP/1.1 400 "), (target, fast)
                status, _, out = ask(p.port, target, "Host: h", "Expect: nothing")
                assert status == 400, (target, out)
        finally:
            c.close()
            p.stop()


def test_routing_sees_an_encoded_slash_as_no_slash(tmp_path: Path) -> None:
    with backends(2) as (inside, other):
        cfg = tmp_path / "routes.yaml"
        cfg.write_text(
            "routes:\n"
            f"  - prefix: /p/\n    backends: [{inside.url}]\n"
            f"  - prefix: /\n    backends: [{other.url}]\n"
        )
        p = ProxyProc(tmp_path, "--config", str(cfg))
        try:
            for target, name in (
                ("/p%2Fsecret", other.name),
                ("/p%2fsecret", other.name),
                ("/p/a%2Fb", inside.name),
            ):
                status, doc, out = ask(p.port, target, "Host: h")
                assert status == 200 and doc is not None, (target, out)
                assert (doc["backend"], doc["path"]) == (name, target)
        finally:
            p.stop()
