"""The probes behind HTTP and TCP checks, sent from the checked instance's network namespace.

A check with `netns_pid` is probed the way a peer on the instance's network would reach it:
the socket is made inside that pid's network namespace (`dockmesh.host.netns`) and then
driven by the agent's event loop. So internal and overlay networks work, and a server bound
only to 127.0.0.1 inside its container correctly fails a check on its network address.

HTTP is a minimal HTTP/1.1 client: one request with `Connection: close`, the status line and
headers read with bounded line lengths and counts, at most `body_limit` bytes of body kept
for the check's output. Outputs read like Consul's (`HTTP GET <url>: 200 OK Output: ok`,
`TCP connect <host:port>: Success`). Time limits are the caller's (the runner wraps each probe
in the check's timeout), so a probe here only ever ends by itself or by cancellation.

Host names are resolved with the host's resolver, also for probes run in a container's
namespace: the host cannot use a container's resolver (its /etc/resolv.conf is in the
container's mount namespace). Checks derived from containers name an address, never a name.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import socket
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import NamedTuple
from urllib.parse import urlsplit

from dockmesh.host.netns import NetnsError, NetnsPool
from dockmesh.host.pidwatch import shown_here
from dockmesh.model.catalog import CheckSpec, Status

LINE_LIMIT = 8192  # bytes of one status or header line
MAX_HEADERS = 100
BODY_LIMIT = 4096  # Consul's default check_output_max_size
USER_AGENT = "dockmesh health check"


class Result(NamedTuple):
    status: Status
    output: str


Probe = Callable[[CheckSpec], Awaitable[Result]]


class MalformedResponse(Exception):
    """The peer's bytes are not an HTTP/1.x response."""


@dataclass(frozen=True, slots=True)
class Response:
    code: int
    reason: str
    body: bytes


def describe(spec: CheckSpec) -> str:
    """What a check does, as its outputs begin: `HTTP GET <url>`, `TCP connect <host:port>`."""
    if spec.kind == "http":
        return f"HTTP {spec.method.upper() or 'GET'} {spec.http}"
    if spec.kind == "tcp":
        return f"TCP connect {spec.tcp}"
    return f"{spec.kind} check {spec.id}"


def http_status(code: int) -> Status:
    """Consul's rule: 2xx passing, 429 Too Many Requests warning, anything else critical."""
    if 200 <= code < 300:
        return "passing"
    if code == 429:
        return "warning"
    return "critical"


@dataclass(frozen=True, slots=True)
class HttpTarget:
    tls: bool
    host: str
    port: int
    target: str  # the request target: path and query
    host_header: str


def http_target(url: str) -> HttpTarget:
    """Raises ValueError with a reason for what cannot be requested."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"unsupported scheme {parts.scheme!r} (http or https)")
    host = parts.hostname
    if not host:
        raise ValueError("no host in the URL")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    if any(c in target for c in "\r\n ") or any(c in host for c in "\r\n /"):
        raise ValueError("the URL has characters a request line cannot carry")
    netloc = parts.netloc.rpartition("@")[2]
    return HttpTarget(parts.scheme == "https", host, port, target, netloc)


def tcp_target(text: str) -> tuple[str, int]:
    """`host:port` or `[v6]:port` → (host, port); ValueError with a reason."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{text!r} is not host:port")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


def request_bytes(method: str, t: HttpTarget) -> bytes:
    head = (
        f"{method} {t.target} HTTP/1.1\r\n"
        f"Host: {t.host_header}\r\n"
        f"User-Agent: {USER_AGENT}\r\n"
        "Accept: text/plain, text/*, */*\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode("latin-1")


async def _line(reader: asyncio.StreamReader) -> bytes:
    try:
        line = await reader.readuntil(b"\n")
    except asyncio.IncompleteReadError as e:
        raise MalformedResponse("the connection closed before the headers ended") from e
    except asyncio.LimitOverrunError as e:
        raise MalformedResponse("a status or header line is too long") from e
    return line.rstrip(b"\r\n")


async def read_response(
    reader: asyncio.StreamReader, body_limit: int = BODY_LIMIT, *, head: bool = False
) -> Response:
    """Reads one response: the status, and the first `body_limit` bytes of the body (the rest
    is never read). `head`: the request was HEAD, so no body follows."""
    status = await _line(reader)
    parts = status.split(None, 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
        raise MalformedResponse(f"not an HTTP/1.x status line: {status[:80]!r}")
    code = int(parts[1])
    if not 100 <= code <= 999:
        raise MalformedResponse(f"status code {code} out of range")
    reason = parts[2].decode("latin-1").strip() if len(parts) == 3 else ""
    length: int | None = None
    chunked = False
    for _ in range(MAX_HEADERS + 1):
        line = await _line(reader)
        if not line:
            break
        name, sep, value = line.partition(b":")
        if not sep:
            raise MalformedResponse(f"not a header line: {line[:80]!r}")
        key = name.strip().lower()
        if key == b"content-length":
            if not value.strip().isdigit():
                raise MalformedResponse("bad Content-Length")
            length = int(value.strip())
        elif key == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
    else:
        raise MalformedResponse(f"more than {MAX_HEADERS} header lines")
    if head or code in (204, 304) or 100 <= code < 200:
        return Response(code, reason, b"")
    if chunked:
        body = await _read_chunked(reader, body_limit)
    elif length is not None:
        body = await _read_at_most(reader, min(length, body_limit))
    else:
        body = await _read_at_most(reader, body_limit)
    return Response(code, reason, body)


async def _read_at_most(reader: asyncio.StreamReader, n: int) -> bytes:
    """Up to `n` bytes; fewer when the peer closes first (enough for an output)."""
    data = b""
    while len(data) < n:
        more = await reader.read(n - len(data))
        if not more:
            break
        data += more
    return data


async def _read_chunked(reader: asyncio.StreamReader, limit: int) -> bytes:
    data = b""
    while len(data) < limit:
        size_line = (await _line(reader)).split(b";", 1)[0].strip()
        try:
            size = int(size_line, 16)
        except ValueError:
            raise MalformedResponse(f"bad chunk size {size_line[:20]!r}") from None
        if size == 0:
            break
        data += await _read_at_most(reader, min(size, limit - len(data)))
        if len(data) >= limit:
            break
        await _line(reader)  # the CRLF closing the chunk
    return data


def _output(desc: str, r: Response) -> str:
    text = f"{desc}: {r.code} {r.reason}".rstrip()
    body = r.body.decode("utf-8", "replace").strip()
    return f"{text} Output: {body}" if body else text


class Prober:
    """Sends the probes of HTTP and TCP checks; `await prober(spec)` → Result.

    Failures are results (critical with the reason), never exceptions, except cancellation.
    """

    def __init__(
        self,
        netns: NetnsPool,
        body_limit: int = BODY_LIMIT,
        shown_here: Callable[[int, str], bool] = shown_here,
    ) -> None:
        self._netns = netns
        self._body_limit = body_limit
        self._tls: ssl.SSLContext | None = None
        self._shown_here = shown_here

    async def __call__(self, spec: CheckSpec) -> Result:
        desc = describe(spec)
        pid, container = spec.netns_pid, spec.netns_container
        if pid is not None and container and not self._shown_here(pid, container):
            # Its engine is on another host (or the pid was reused): entering that pid's
            # namespace would check something else. Each host's agent checks its own.
            return Result(
                "critical",
                f"{desc}: the container's process (pid {pid}) is not on this machine: its "
                "namespace cannot be entered (the agent of its own host checks it)",
            )
        try:
            if spec.kind == "http":
                return await self._http(spec, desc)
            if spec.kind == "tcp":
                return await self._tcp(spec, desc)
            return Result("critical", f"{desc}: {spec.kind} checks are not probed")
        except NetnsError as e:  # the container is gone, or its namespace is out of reach
            return Result("critical", f"{desc}: {e}")
        except MalformedResponse as e:
            return Result("critical", f"{desc}: malformed response: {e}")
        except ValueError as e:
            return Result("critical", f"{desc}: {e}")
        except OSError as e:
            return Result("critical", f"{desc}: {e.strerror or e}")

    async def _connect(self, pid: int | None, host: str, port: int) -> socket.socket:
        family, address = await _resolve(host, port)
        sock = await self._netns.asocket(pid, family, socket.SOCK_STREAM)
        try:
            await asyncio.get_running_loop().sock_connect(sock, address)
        except OSError as e:
            sock.close()
            # asyncio words its own message ("Connect call failed ..."): the kernel's is clearer.
            reason = os.strerror(e.errno) if e.errno else str(e)
            raise OSError(e.errno, f"connect to {host}:{port}: {reason}") from e
        except BaseException:
            sock.close()
            raise
        return sock

    async def _tcp(self, spec: CheckSpec, desc: str) -> Result:
        host, port = tcp_target(spec.tcp or "")
        sock = await self._connect(spec.netns_pid, host, port)
        sock.close()
        return Result("passing", f"{desc}: Success")

    async def _http(self, spec: CheckSpec, desc: str) -> Result:
        t = http_target(spec.http or "")
        method = spec.method.upper() or "GET"
        sock = await self._connect(spec.netns_pid, t.host, t.port)
        tls = self._tls_context() if t.tls else None
        try:
            reader, writer = await asyncio.open_connection(
                sock=sock,
                limit=LINE_LIMIT,
                ssl=tls,
                server_hostname=t.host if tls is not None else None,
            )
        except BaseException:
            sock.close()
            raise
        try:
            writer.write(request_bytes(method, t))
            response = await read_response(reader, self._body_limit, head=method == "HEAD")
        finally:
            # Abort, not close: nothing more is owed to the peer and the fd goes at once.
            writer.transport.abort()
        return Result(http_status(response.code), _output(desc, response))

    def _tls_context(self) -> ssl.SSLContext:
        if self._tls is None:
            self._tls = ssl.create_default_context()
        return self._tls


async def _resolve(host: str, port: int) -> tuple[int, tuple[str, int]]:
    with contextlib.suppress(ValueError):
        ip = ipaddress.ip_address(host)
        return (socket.AF_INET6 if ip.version == 6 else socket.AF_INET), (host, port)
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    if not infos:
        raise OSError(None, f"{host}: no address")
    family, _, _, _, address = infos[0]
    return family, (str(address[0]), int(address[1]))
