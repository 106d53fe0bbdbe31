"""Which cluster a request goes to, and the key a consistent-hash balancer reads from it. Pure:
a request head in, a cluster (or a key) out.

Routes are tried in their order; the first whose host (when it names one) equals the request's
host without its port (an absolute-form target's authority, else Host), and whose prefix
starts the request's path (normalised by the reader: `paths`), wins. A lone catch-all route
needs no routing at all (`single`), and when its cluster hashes on nothing either, the
common request shape may take the server's fast lane (`fast`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from dockmesh.proxy import http1
from dockmesh.proxy.cluster import Cluster
from dockmesh.proxy.settings import Route


def strip_prefix(target: bytes, prefix: bytes) -> bytes:
    """`target` without `prefix` in front, still origin-form: `/api/x?q` → `/x?q`, `/api` →
    `/`, `/api?q` → `/?q` (as Traefik's StripPrefix)."""
    rest = target[len(prefix) :]
    return rest if rest.startswith(b"/") else b"/" + rest


class KeyReader:
    """Reads the consistent-hash key of a request: a header (`NAME`), a cookie
    (`cookie:NAME`) or the client's IP (`ip`)."""

    def __init__(self, spec: str) -> None:
        self.kind = "header"
        name = spec
        if spec.lower() in ("ip", "client_ip", "source_ip"):
            self.kind = "ip"
        elif spec.lower().startswith("cookie:"):
            self.kind = "cookie"
            name = spec[7:]
        if self.kind == "cookie":
            self.pattern = re.compile(
                rb"^cookie:[^\r]*?(?:^|[ ;:])" + re.escape(name.encode()) + rb"=([^;\r]*)",
                re.IGNORECASE | re.MULTILINE,
            )
        else:
            self.pattern = re.compile(
                rb"^" + re.escape(name.encode()) + rb":[ \t]*([^\r]*?)[ \t]*\r\n",
                re.IGNORECASE | re.MULTILINE,
            )

    def key(self, head: bytes, client_ip: bytes) -> bytes | None:
        if self.kind == "ip":
            return client_ip
        m = self.pattern.search(head)
        return m.group(1) if m else None


class Router:
    """The routes of one proxy and the hash keys of its clusters (cluster name → spec)."""

    def __init__(self, routes: Sequence[Route], hash_keys: Mapping[str, str]) -> None:
        self.routes = list(routes)
        first = self.routes[0] if len(self.routes) == 1 else None
        self.single: Cluster[Any] | None = None
        self.single_route: Route | None = None
        if first is not None and first.host is None and first.prefix == b"/" and not first.strip:
            self.single = first.cluster
            self.single_route = first
        self.key_readers = {n: KeyReader(s) for n, s in hash_keys.items()}
        # The cluster of the single catch-all route, when requests need no routing, hash key
        # or middleware: then the common request shape takes the fast lane.
        self.fast = (
            self.single if not self.key_readers and (first is None or first.chain is None) else None
        )

    @property
    def clusters(self) -> list[Cluster[Any]]:
        seen: dict[str, Cluster[Any]] = {}
        for r in self.routes:
            seen.setdefault(r.cluster.name, r.cluster)
        return list(seen.values())

    def route(self, req: http1.RequestHead) -> Cluster[Any] | None:
        r = self.match(req)
        return r.cluster if r is not None else None

    def match(self, req: http1.RequestHead) -> Route | None:
        """The route the request takes, or None."""
        if self.single_route is not None:
            return self.single_route
        host = (req.host or b"").lower()
        host = host[: host.find(b"]") + 1] if host.startswith(b"[") else host.partition(b":")[0]
        if host[-1:] == b".":
            host = host[:-1]  # a fully qualified name is the same host (as SNI's is)
        # The reader made the target origin-form (an absolute-form's authority became
        # `host`) and normalised its path: a prefix cannot be escaped by dot segments.
        path = req.target
        for r in self.routes:
            if (r.host is None or r.host == host) and path.startswith(r.prefix):
                if r.strip is not None and path.startswith(r.strip):
                    req.target = strip_prefix(path, r.strip)
                    req.retarget = True
                return r
        return None

    def key(self, cluster: Cluster[Any], head: bytes, client_ip: bytes) -> bytes | None:
        """The hash key of the request whose head is `head`, when its cluster hashes."""
        reader = self.key_readers.get(cluster.name)
        return reader.key(head, client_ip) if reader is not None else None
