"""dockmesh's local certificate authority: an EC P-256 root whose two files (`ca.crt`,
`ca.key`, mode 0600) live in a state directory (default `/var/lib/dockmesh/ca`), and the
leaves it issues (a host name each, for the proxy's `tls internal`; the mTLS work issues its
own from the same root).

Files are written whole or not at all (a temporary file in the same directory, renamed), so a
reader never sees half a key. Time is given (`now`), never read here; serial numbers are
random, as RFC 5280 asks of a CA that does not keep a register.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from dockmesh.pki import DEFAULT_CA_DIR
from dockmesh.pki.names import canonical_name

__all__ = ["DEFAULT_CA_DIR", "Ca", "CaError", "CaInfo", "init_ca", "load_ca"]

CERT_FILE = "ca.crt"
KEY_FILE = "ca.key"
LEAVES_DIR = "leaves"
CA_LIFETIME = dt.timedelta(days=3650)
LEAF_LIFETIME = dt.timedelta(days=7)
# Leaves start a little in the past: a client whose clock is behind still accepts them.
BACKDATE = dt.timedelta(minutes=5)


class CaError(Exception):
    """The CA cannot be used or made; the message says why, in one line."""


@dataclass(frozen=True)
class CaInfo:
    """What `dockmesh ca show` prints."""

    subject: str
    fingerprint_sha256: str  # colon-separated upper-case hex, as openssl prints it
    not_before: dt.datetime
    not_after: dt.datetime
    path: Path  # the directory
    name_constraints: tuple[str, ...]

    def to_json(self) -> dict[str, object]:
        return {
            "subject": self.subject,
            "fingerprint_sha256": self.fingerprint_sha256,
            "not_before": self.not_before.isoformat(),
            "not_after": self.not_after.isoformat(),
            "path": str(self.path),
            "cert": str(self.path / CERT_FILE),
            "name_constraints": list(self.name_constraints),
        }


def fingerprint(cert: x509.Certificate) -> str:
    digest = hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest().upper()
    return ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))


def write_private(path: Path, data: bytes) -> None:
    """`data` into `path` with mode 0600, whole or not at all. The temporary file is made
    anew (never opened through a link someone put at its name, which would put the key in
    the file the link names)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)  # a stale one of ours, or a planted link (the link goes, not its file)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


class Ca:
    """A loaded CA: its certificate and key, and the directory they came from."""

    def __init__(self, directory: Path, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey):
        self.dir = directory
        self.cert = cert
        self.key = key
        self.cert_path = directory / CERT_FILE

    def info(self) -> CaInfo:
        try:
            nc = self.cert.extensions.get_extension_for_class(x509.NameConstraints).value
            permitted = tuple(
                str(n.value) for n in nc.permitted_subtrees or () if isinstance(n, x509.DNSName)
            )
        except x509.ExtensionNotFound:
            permitted = ()
        return CaInfo(
            subject=self.cert.subject.rfc4514_string(),
            fingerprint_sha256=fingerprint(self.cert),
            not_before=self.cert.not_valid_before_utc,
            not_after=self.cert.not_valid_after_utc,
            path=self.dir,
            name_constraints=permitted,
        )

    def issue_leaf(
        self, name: str, now: dt.datetime, lifetime: dt.timedelta = LEAF_LIFETIME
    ) -> tuple[x509.Certificate, bytes]:
        """A server certificate for the host name `name` and its key (PEM, PKCS#8)."""
        host = canonical_name(name)
        if host is None:
            raise CaError(f"{name!r} is not a host name")
        key = ec.generate_private_key(ec.SECP256R1())
        ca_ski = self.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        not_after = min(now + lifetime, self.cert.not_valid_after_utc)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE)
            .not_valid_after(not_after)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
                critical=False,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
            )
            .sign(self.key, hashes.SHA256())
        )
        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        return cert, key_pem

    def issued(self, cert: x509.Certificate) -> bool:
        """Whether this CA signed `cert` (a leaf kept on disk may be an older CA's)."""
        if cert.issuer != self.cert.subject:
            return False
        try:
            cert.verify_directly_issued_by(self.cert)
        except (ValueError, TypeError, InvalidSignature):
            return False
        return True


def init_ca(
    directory: Path,
    now: dt.datetime,
    *,
    force: bool = False,
    name_constraints: tuple[str, ...] = (),
    common_name: str = "dockmesh local CA",
) -> Ca:
    """Makes a new root in `directory` (created with mode 0700 when missing). An existing CA
    is kept unless `force`: every leaf it issued stops being trusted with it."""
    cert_path, key_path = directory / CERT_FILE, directory / KEY_FILE
    if not force and (cert_path.exists() or key_path.exists()):
        raise CaError(f"{directory}: a CA is already there (--force replaces it)")
    permitted = []
    for n in name_constraints:
        host = canonical_name(n.removeprefix("."))
        if host is None:
            raise CaError(f"name constraint {n!r} is not a domain name")
        permitted.append(x509.DNSName(host))
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as e:
        raise CaError(f"{directory}: {e.strerror or e}") from None
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "dockmesh"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + CA_LIFETIME)
        # It signs leaves only, never another CA.
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if permitted:
        builder = builder.add_extension(
            x509.NameConstraints(permitted_subtrees=permitted, excluded_subtrees=None),
            critical=True,
        )
    cert = builder.sign(key, hashes.SHA256())
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    try:
        # The key first: a certificate without its key is never left behind.
        write_private(key_path, key_pem)
        write_private(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    except OSError as e:
        raise CaError(f"{directory}: {e.strerror or e}") from None
    leaves = directory / LEAVES_DIR
    if leaves.is_dir():
        # Leaves of the CA replaced: no longer trusted, never served.
        for old in leaves.glob("*.pem"):
            with contextlib.suppress(OSError):
                old.unlink()
    return Ca(directory, cert, key)


def load_ca(directory: Path) -> Ca:
    """The CA in `directory`; CaError saying what is missing or wrong. A directory another
    user owns or others may write to is refused, as is a key others may read: whoever can
    put their own ca.crt and ca.key there has the proxy issue leaves they hold the root of."""
    try:
        st = directory.stat()
        if st.st_uid not in (0, os.getuid()):
            raise CaError(f"{directory}: belongs to another user (uid {st.st_uid})")
        if st.st_mode & 0o022:
            raise CaError(f"{directory}: others may write to it (mode {st.st_mode & 0o777:o})")
        kst = (directory / KEY_FILE).stat()
        if kst.st_uid not in (0, os.getuid()) or kst.st_mode & 0o077:
            raise CaError(
                f"{directory}/{KEY_FILE}: must be this user's and readable by it only "
                f"(mode {kst.st_mode & 0o777:o}, uid {kst.st_uid})"
            )
        cert_pem = (directory / CERT_FILE).read_bytes()
        key_pem = (directory / KEY_FILE).read_bytes()
    except FileNotFoundError:
        raise CaError(f"{directory}: no CA there (make one with `dockmesh ca init`)") from None
    except OSError as e:
        raise CaError(f"{directory}: {e.strerror or e}") from None
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as e:
        raise CaError(f"{directory}: not a usable CA ({e})") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CaError(f"{directory}/{KEY_FILE}: not an EC key")
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    if cert.public_key().public_bytes(der, spki) != key.public_key().public_bytes(der, spki):
        raise CaError(f"{directory}: {CERT_FILE} and {KEY_FILE} do not belong together")
    try:
        cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    except x509.ExtensionNotFound:
        raise CaError(f"{directory}/{CERT_FILE}: no subject key identifier") from None
    return Ca(directory, cert, key)
