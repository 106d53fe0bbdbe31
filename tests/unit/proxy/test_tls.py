"""The TLS listeners' contexts, by handshakes in memory (no socket): SNI picks the file
certificate that names the host, `tls internal` mints a leaf only for the routes' hosts (and
keeps at most `max_names` in memory), TLS 1.1 is refused, ALPN offers what the proxy speaks;
and a TLS client connection says `X-Forwarded-Proto: https` or goes to the handler of the
protocol ALPN chose."""

from __future__ import annotations

import asyncio
import datetime as dt
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from dockmesh.pki.ca import Ca, init_ca
from dockmesh.proxy.config import TlsSpec
from dockmesh.proxy.server import Proxy, TlsClientConn, negotiated_protocol
from dockmesh.proxy.settings import ProxySettings, Route
from dockmesh.proxy.tls import Edge, TlsError
from dockmesh.testing.transport import FakeTransport
from tests.unit.proxy import rig

NOW = dt.datetime(2026, 12, 5, 8, 0, tzinfo=dt.UTC)


def handshake(
    server_ctx: ssl.SSLContext,
    name: str | None,
    cafile: Path | None = None,
    alpn: list[str] | None = None,
    max_version: ssl.TLSVersion | None = None,
) -> tuple[ssl.SSLObject, ssl.SSLObject]:
    """A client and the server's side after a handshake through memory; ssl.SSLError when it
    fails."""
    client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if cafile is not None:
        client_ctx.load_verify_locations(cafile)
    else:
        client_ctx.check_hostname = False
        client_ctx.verify_mode = ssl.CERT_NONE
    if max_version is not None:
        # TLS 1.1 is what an old client offers: allowed on this side, to see the server refuse.
        client_ctx.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
        client_ctx.maximum_version = max_version
        client_ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    if alpn:
        client_ctx.set_alpn_protocols(alpn)
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    client = client_ctx.wrap_bio(c_in, c_out, server_hostname=name)
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    done = [False, False]
    for _ in range(20):
        for i, (side, out, peer_in) in enumerate(((client, c_out, s_in), (server, s_out, c_in))):
            if not done[i]:
                try:
                    side.do_handshake()
                    done[i] = True
                except ssl.SSLWantReadError:
                    pass
            peer_in.write(out.read())
        if all(done):
            return client, server
    raise AssertionError("the handshake did not finish")


def served_name(client: ssl.SSLObject) -> str:
    der = client.getpeercert(binary_form=True)
    assert der is not None
    cert = x509.load_der_x509_certificate(der)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return str(san.get_values_for_type(x509.DNSName)[0])


def write_leaf(ca: Ca, name: str, where: Path) -> tuple[str, str]:
    cert, key = ca.issue_leaf(name, NOW)
    c, k = where / f"{name}.crt", where / f"{name}.key"
    c.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    k.write_bytes(key)
    return str(c), str(k)


@pytest.fixture
def ca(tmp_path: Path) -> Ca:
    return init_ca(tmp_path / "ca", dt.datetime.now(dt.UTC))


def test_sni_picks_the_file_certificate_that_names_the_host(ca: Ca, tmp_path: Path) -> None:
    files = [write_leaf(ca, n, tmp_path) for n in ("a.test", "b.test")]
    edge = Edge(TlsSpec(certificates=files), [])
    for name in ("a.test", "b.test", "B.Test"):
        client, _ = handshake(edge.context, name, ca.cert_path)
        assert served_name(client) == name.lower()
    # No SNI (an address in the URL), or the address as SNI (wrk): the first file's.
    client, _ = handshake(edge.context, None)
    assert served_name(client) == "a.test"
    sslobj = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).wrap_bio(
        ssl.MemoryBIO(), ssl.MemoryBIO(), server_side=True
    )
    assert edge._sni(sslobj, "127.0.0.1", None) is None
    assert sslobj.context is edge.config.files.contexts[0]
    with pytest.raises(ssl.SSLError):
        handshake(edge.context, "c.test")
    assert edge.refused == 1


def test_internal_mints_only_for_the_routes_hosts_and_keeps_a_bounded_number(
    ca: Ca,
) -> None:
    edge = Edge(
        TlsSpec(internal=True, ca_dir=str(ca.dir), max_names=2),
        ["one.test", "two.test", "three.test", "10.0.0.1"],
        clock=lambda: NOW,
    )
    leaves = ca.dir / "leaves"
    for name in ("one.test", "two.test", "three.test", "one.test"):
        client, _ = handshake(edge.context, name, ca.cert_path)
        assert served_name(client) == name
        assert len(edge.leaves) <= 2
    assert sorted(p.name for p in leaves.iterdir()) == [
        "one.test.pem", "three.test.pem", "two.test.pem",
    ]  # fmt: skip
    for name in ("evil.test", "one.test.evil.test", "one_test", "admin.internal"):
        with pytest.raises(ssl.SSLError):
            handshake(edge.context, name)
    assert edge.refused == 4
    assert len(list(leaves.iterdir())) == 3
    # No SNI (clients send none for an address): the first route host's leaf.
    for sent in (None, "10.0.0.1"):
        client, _ = handshake(edge.context, sent)
        assert served_name(client) == "one.test"


def test_an_internal_edge_with_no_name_to_issue_for_is_refused(ca: Ca) -> None:
    with pytest.raises(TlsError, match="no route names a host"):
        Edge(TlsSpec(internal=True, ca_dir=str(ca.dir)), ["10.0.0.1"])
    edge = Edge(TlsSpec(internal=True, ca_dir=str(ca.dir), default_name="localhost"), [])
    client, _ = handshake(edge.context, None)
    assert served_name(client) == "localhost"


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1_1 is deprecated")
def test_tls_1_1_is_refused_and_1_2_and_1_3_are_served(ca: Ca, tmp_path: Path) -> None:
    edge = Edge(TlsSpec(certificates=[write_leaf(ca, "a.test", tmp_path)]), [])
    with pytest.raises(ssl.SSLError):
        handshake(edge.context, "a.test", max_version=ssl.TLSVersion.TLSv1_1)
    for version in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
        client, _ = handshake(edge.context, "a.test", ca.cert_path, max_version=version)
        assert client.version() == {"TLSv1_2": "TLSv1.2", "TLSv1_3": "TLSv1.3"}[version.name]


def test_alpn_offers_h2_only_once_something_speaks_it(ca: Ca, tmp_path: Path) -> None:
    spec = TlsSpec(certificates=[write_leaf(ca, "a.test", tmp_path)])
    plain = Edge(spec, [])
    client, server = handshake(plain.context, "a.test", alpn=["h2", "http/1.1"])
    assert server.selected_alpn_protocol() == "http/1.1"
    both = Edge(spec, [], alpn=["h2", "http/1.1"])
    client, server = handshake(both.context, "a.test", alpn=["h2", "http/1.1"])
    assert client.selected_alpn_protocol() == "h2"


def test_a_bad_update_keeps_what_runs(ca: Ca, tmp_path: Path) -> None:
    good = write_leaf(ca, "a.test", tmp_path)
    edge = Edge(TlsSpec(certificates=[good]), [])
    with pytest.raises(TlsError, match=r"missing\.crt"):
        edge.update(TlsSpec(certificates=[(str(tmp_path / "missing.crt"), good[1])]), [])
    other = write_leaf(ca, "b.test", tmp_path)
    with pytest.raises(TlsError, match=r"b\.test\.crt with"):
        edge.update(TlsSpec(certificates=[(other[0], good[1])]), [])
    with pytest.raises(TlsError, match="default_name"):
        edge.update(TlsSpec(certificates=[other], default_name="nothing.test"), [])
    client, _ = handshake(edge.context, "a.test", ca.cert_path)
    assert served_name(client) == "a.test"
    client, _ = handshake(edge.context, None)
    assert served_name(client) == "a.test"
    edge.update(TlsSpec(certificates=[other]), [])
    client, _ = handshake(edge.context, "b.test", ca.cert_path)
    assert served_name(client) == "b.test"


# --- the client connection on a TLS listener -------------------------------------------------


class TlsTransport(FakeTransport):
    def __init__(self, proxy: Proxy, alpn: str | None) -> None:
        super().__init__(proxy.flush)
        self.alpn = alpn

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "ssl_object":
            return self

        return super().get_extra_info(name, default)

    def selected_alpn_protocol(self) -> str | None:
        return self.alpn


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    lp = asyncio.new_event_loop()
    yield lp
    lp.close()


def test_a_tls_client_says_https_on_both_lanes(loop: asyncio.AbstractEventLoop) -> None:
    c = rig.cluster()
    for routes in ([Route(cluster=c)], [Route(cluster=c, host=b"h.test")]):  # fast, general
        proxy = Proxy(ProxySettings(routes=routes), loop)
        rig.pool(proxy, c)
        conn = TlsClientConn(proxy)
        conn.connection_made(cast(Any, TlsTransport(proxy, "http/1.1")))
        conn.data_received(rig.REQUEST)
        assert conn.up is not None
        sent = rig.transport(conn.up.transport).out.pop()
        assert b"X-Forwarded-Proto: https\r\n" in sent
        assert b"X-Forwarded-Proto: http\r\n" not in sent
        conn.up.data_received(rig.RESPONSE)
        assert b"200 OK" in rig.out(conn.transport)
    plain = rig.setup(loop)[2]
    plain.data_received(rig.REQUEST)
    assert plain.up is not None
    assert b"X-Forwarded-Proto: http\r\n" in rig.transport(plain.up.transport).out.pop()


def test_a_protocol_alpn_chose_goes_to_its_handler(loop: asyncio.AbstractEventLoop) -> None:
    proxy, _, _ = rig.setup(loop)
    taken: list[object] = []
    proxy.alpn["h2"] = lambda p, t: taken.append(t)
    before = len(proxy.clients)
    h2 = TlsTransport(proxy, "h2")
    TlsClientConn(proxy).connection_made(cast(Any, h2))
    assert taken == [h2] and len(proxy.clients) == before
    assert negotiated_protocol(cast(Any, h2)) == "h2"
    h1 = TlsClientConn(proxy)
    h1.connection_made(cast(Any, TlsTransport(proxy, "http/1.1")))
    assert len(taken) == 1 and h1 in proxy.clients
    assert negotiated_protocol(cast(Any, FakeTransport())) is None
