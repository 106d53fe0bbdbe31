"""TLS at the proxy's edge: the server contexts a TLS listener hands to the event loop, with
the certificate for each name picked by SNI.

- Certificates come from files (each names the hosts its subjectAltName lists) and, with
  `internal`, from the dockmesh CA: a leaf per host name the routes allow, issued the first
  time a client asks for that name, kept on disk (`pki.leaves`) and in memory (a bounded
  cache of contexts, `pki.names.BoundedCache`). A name neither a file nor the routes cover is
  refused with the `unrecognized_name` alert and nothing is minted for it, so a client cannot
  make the proxy issue certificates for names of its choosing.
- A client that sends no SNI (an address in its URL; or the address itself, as wrk does)
  gets the default certificate: the
  `default_name`'s, else the first file's, else the first route host's leaf.
- TLS 1.2 and 1.3 only; ALPN offers what the proxy speaks (`http/1.1`, and `h2` once a
  handler for it is registered: `server.Proxy.alpn`); no compression, no renegotiation.

Which certificate serves a name is `pki.names.choose` (pure); this module carries it out with
`ssl` and the files.
"""

from __future__ import annotations

import datetime as dt
import logging
import ssl
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509

from dockmesh.pki.ca import CaError, load_ca
from dockmesh.pki.leaves import LeafStore
from dockmesh.pki.names import (
    INTERNAL,
    BoundedCache,
    canonical_name,
    canonical_pattern,
    choose,
    is_address,
)
from dockmesh.proxy.config import TlsSpec

log = logging.getLogger(__name__)

HTTP1 = "http/1.1"


class TlsError(Exception):
    """A certificate, key or the CA cannot be used; one line saying which and why."""


def server_context(alpn: Sequence[str]) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.maximum_version = ssl.TLSVersion.TLSv1_3
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION | ssl.OP_CIPHER_SERVER_PREFERENCE
    # TLS 1.2: forward secrecy and AEAD only (TLS 1.3's suites are all of that kind).
    ctx.set_ciphers("ECDHE+AESGCM:ECDHE+CHACHA20")
    ctx.set_alpn_protocols(list(alpn))
    return ctx


def certificate_names(pem: bytes, where: str) -> list[str]:
    """The canonical host names (and wildcards) a PEM certificate serves: its subjectAltName's
    DNS names, or its common name when it has none."""
    try:
        cert = x509.load_pem_x509_certificate(pem)
    except ValueError as e:
        raise TlsError(f"{where}: not a PEM certificate ({e})") from None
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        raw = [str(n) for n in san.get_values_for_type(x509.DNSName)]
    except x509.ExtensionNotFound:
        raw = [str(a.value) for a in cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)]
    return [n for n in (canonical_pattern(r) for r in raw) if n is not None]


@dataclass
class _Files:
    names: list[list[str]] = field(default_factory=list)
    contexts: list[ssl.SSLContext] = field(default_factory=list)


@dataclass(frozen=True)
class _Config:
    """One configuration, read and checked whole: a reload swaps it in one assignment."""

    spec: TlsSpec
    files: _Files
    store: LeafStore | None
    internal: frozenset[str]  # the names the CA may issue for
    default_name: str | None  # whose certificate a client without SNI gets; None: the first file


def _quiet_undecodable_names(previous: Callable[[Any], object]) -> Callable[[Any], object]:
    """An unraisable hook that drops what `ssl` reports for an SNI name it cannot decode:
    it decodes the name as ASCII before calling `Edge._sni` and, when that fails, refuses the
    handshake and prints a traceback per client, five lines a handshake that a client could
    send by the thousand. Counted in `undecodable` and logged at debug level instead; every
    other unraisable goes to `previous`."""

    def hook(unraisable: Any) -> object:
        if isinstance(unraisable.exc_value, UnicodeDecodeError) and isinstance(
            unraisable.object, bytes
        ):
            undecodable[0] += 1
            log.debug("TLS: an SNI name that is not ASCII refused: %r", unraisable.object[:64])
            return None
        return previous(unraisable)

    hook.dockmesh_sni = True  # type: ignore[attr-defined]
    return hook


undecodable = [0]  # handshakes refused because `ssl` could not decode their SNI name


def _install_hook() -> None:
    if not getattr(sys.unraisablehook, "dockmesh_sni", False):
        sys.unraisablehook = _quiet_undecodable_names(sys.unraisablehook)


class Edge:
    """The certificates of the proxy's TLS listeners. `context` goes to the loop; its SNI
    callback sets the connection's context to the one that serves the name asked for.
    `update` takes a new configuration (a reload) without touching live connections."""

    def __init__(
        self,
        spec: TlsSpec,
        hosts: Iterable[str],
        alpn: Sequence[str] = (HTTP1,),
        clock: Callable[[], dt.datetime] | None = None,
    ) -> None:
        self.alpn = list(alpn)
        self.clock = clock or (lambda: dt.datetime.now(dt.UTC))
        self.context = server_context(self.alpn)
        self.context.sni_callback = self._sni
        self.refused = 0  # handshakes refused for a name nothing serves
        _install_hook()
        self._apply(self._prepare(spec, hosts))

    # --- configuration ----------------------------------------------------------------------

    def _prepare(self, spec: TlsSpec, hosts: Iterable[str]) -> _Config:
        """Everything a configuration needs read and checked, before any of it is used:
        TlsError when a file or the CA is unusable."""
        files = _Files()
        for cert, key in spec.certificates:
            try:
                pem = Path(cert).read_bytes()
            except OSError as e:
                raise TlsError(f"{cert}: {e.strerror or e}") from None
            names = certificate_names(pem, cert)
            ctx = server_context(self.alpn)
            try:
                ctx.load_cert_chain(cert, key)
            except (OSError, ssl.SSLError) as e:
                raise TlsError(f"{cert} with {key}: {getattr(e, 'reason', None) or e}") from None
            files.names.append(names)
            files.contexts.append(ctx)
        store = None
        internal: list[str] = []
        if spec.internal:
            try:
                store = LeafStore(load_ca(Path(spec.ca_dir)), self.clock)
            except CaError as e:
                raise TlsError(str(e)) from None
            # Only host names: a route without a host (or with an address) mints nothing.
            wanted = [*hosts, *([spec.default_name] if spec.default_name else [])]
            for h in wanted:
                name = canonical_name(h)
                if name is not None and name not in internal:
                    internal.append(name)
            if not internal and not files.contexts:
                raise TlsError(
                    "internal: no route names a host (routes' host:) and no default_name: "
                    "no name to issue a certificate for"
                )
        # Who serves a client that sends no SNI: None is the first file.
        default = None
        if spec.default_name:
            default = canonical_name(spec.default_name)
            if default is None or choose(default, files.names, internal) is None:
                raise TlsError(f"default_name {spec.default_name!r}: no certificate serves it")
        elif not files.contexts and internal:
            default = internal[0]
        return _Config(spec, files, store, frozenset(internal), default)

    def _apply(self, config: _Config) -> None:
        self.config = config
        self.leaves: BoundedCache[str, tuple[ssl.SSLContext, float]] = BoundedCache(
            config.spec.max_names
        )

    def update(self, spec: TlsSpec, hosts: Iterable[str]) -> None:
        """A new configuration for new handshakes; TlsError (and the old one kept) when it
        cannot be used."""
        self._apply(self._prepare(spec, hosts))

    # --- names ------------------------------------------------------------------------------

    def default_context(self) -> ssl.SSLContext | None:
        c = self.config
        if c.default_name is not None:
            return self.context_for(c.default_name)
        return c.files.contexts[0] if c.files.contexts else None

    def context_for(self, name: str) -> ssl.SSLContext | None:
        """The context serving the canonical `name`, or None: nothing may serve it."""
        c = self.config
        i = choose(name, c.files.names, c.internal)
        if i is None:
            return None
        if i != INTERNAL:
            return c.files.contexts[i]
        return self._leaf_context(name)

    def _leaf_context(self, name: str) -> ssl.SSLContext:
        now = self.clock().timestamp()
        cached = self.leaves.get(name)
        if cached is not None and now < cached[1]:
            return cached[0]
        store = self.config.store
        assert store is not None  # INTERNAL names exist only with a store
        leaf = store.leaf(name)
        ctx = server_context(self.alpn)
        ctx.load_cert_chain(leaf.path)
        self.leaves.put(name, (ctx, leaf.renew_at().timestamp()))
        return ctx

    def _sni(
        self, sslobj: ssl.SSLObject | ssl.SSLSocket, server_name: str | None, _: object
    ) -> int | None:
        name = None if server_name is None else canonical_name(server_name)
        try:
            if server_name is None or (name is None and is_address(server_name)):
                ctx = self.default_context()
            else:
                ctx = self.context_for(name) if name is not None else None
        except (CaError, OSError, ssl.SSLError) as e:
            log.error("TLS: no certificate for %s: %s", name, e)
            return ssl.ALERT_DESCRIPTION_INTERNAL_ERROR
        if ctx is None:
            self.refused += 1
            return ssl.ALERT_DESCRIPTION_UNRECOGNIZED_NAME
        sslobj.context = ctx
        return None
