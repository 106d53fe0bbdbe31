"""Leaves of the dockmesh CA kept on disk, one file per host name (`<ca dir>/leaves/<name>.pem`:
the key and the certificate, mode 0600), issued when first asked for and issued again when
renewal is due (`names.renewal_due`) or the CA that signed the kept one was replaced.

The caller decides which names may be asked for (the proxy: only its routes' hosts), so the
number of files is bounded by its configuration, never by what clients send. The clock is
given.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from dockmesh.pki.ca import LEAF_LIFETIME, LEAVES_DIR, Ca, CaError, write_private
from dockmesh.pki.names import canonical_name, renewal_due


@dataclass(frozen=True)
class Leaf:
    name: str
    path: Path  # key and certificate, PEM: what ssl's load_cert_chain reads
    not_before: dt.datetime
    not_after: dt.datetime

    def renew_at(self) -> dt.datetime:
        return self.not_before + (self.not_after - self.not_before) * 2 / 3


class LeafStore:
    def __init__(
        self,
        ca: Ca,
        clock: Callable[[], dt.datetime],
        lifetime: dt.timedelta = LEAF_LIFETIME,
    ) -> None:
        self.ca = ca
        self.clock = clock
        self.lifetime = lifetime
        self.dir = ca.dir / LEAVES_DIR
        self.issued = 0  # leaves made by this process (reused ones not counted)

    def leaf(self, name: str) -> Leaf:
        """The kept leaf for `name` when it is still good, else a new one (written first)."""
        host = canonical_name(name)
        if host is None:
            raise CaError(f"{name!r} is not a host name")
        path = self.dir / f"{host}.pem"
        now = self.clock()
        kept = self._read(path, now)
        if kept is not None:
            return kept
        cert, key_pem = self.ca.issue_leaf(host, now, self.lifetime)
        try:
            self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            write_private(path, key_pem + cert.public_bytes(serialization.Encoding.PEM))
        except OSError as e:
            raise CaError(f"{path}: {e.strerror or e}") from None
        self.issued += 1
        return Leaf(host, path, cert.not_valid_before_utc, cert.not_valid_after_utc)

    def _read(self, path: Path, now: dt.datetime) -> Leaf | None:
        try:
            pem = path.read_bytes()
        except OSError:
            return None
        try:
            cert = x509.load_pem_x509_certificate(pem)
        except ValueError:
            return None
        if not self.ca.issued(cert):
            return None
        nb, na = cert.not_valid_before_utc, cert.not_valid_after_utc
        if renewal_due(nb.timestamp(), na.timestamp(), now.timestamp()):
            return None
        return Leaf(path.stem, path, nb, na)
