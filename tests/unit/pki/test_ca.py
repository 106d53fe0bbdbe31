"""The local CA: a P-256 root in two 0600 files, kept unless forced, loaded back whole or
refused with one line, and leaves that verify against it for the one name asked."""

from __future__ import annotations

import datetime as dt
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from dockmesh.pki.ca import CERT_FILE, KEY_FILE, CaError, init_ca, load_ca, write_private

NOW = dt.datetime(2026, 12, 5, 8, 0, tzinfo=dt.UTC)


def test_init_makes_a_p256_root_in_two_private_files_and_show_reads_it(tmp_path: Path) -> None:
    d = tmp_path / "ca"
    ca = init_ca(d, NOW)
    for f in (CERT_FILE, KEY_FILE):
        assert stat.S_IMODE((d / f).stat().st_mode) == 0o600
    assert stat.S_IMODE(d.stat().st_mode) == 0o700
    assert isinstance(ca.key, ec.EllipticCurvePrivateKey) and ca.key.curve.name == "secp256r1"
    bc = ca.cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert bc.ca and bc.path_length == 0
    info = load_ca(d).info()
    assert info == ca.info()
    assert info.subject == "CN=dockmesh local CA,O=dockmesh"
    assert len(info.fingerprint_sha256.split(":")) == 32
    assert info.not_after - NOW > dt.timedelta(days=3640)
    assert info.to_json()["cert"] == str(d / CERT_FILE)


def test_an_existing_ca_is_kept_unless_forced(tmp_path: Path) -> None:
    first = init_ca(tmp_path, NOW)
    with pytest.raises(CaError, match="already there"):
        init_ca(tmp_path, NOW)
    assert load_ca(tmp_path).info() == first.info()
    second = init_ca(tmp_path, NOW, force=True)
    assert second.info().fingerprint_sha256 != first.info().fingerprint_sha256


def test_name_constraints_are_written_and_shown(tmp_path: Path) -> None:
    ca = init_ca(tmp_path, NOW, name_constraints=("example.test", ".internal"))
    assert ca.info().name_constraints == ("example.test", "internal")
    with pytest.raises(CaError, match="not a domain"):
        init_ca(tmp_path / "x", NOW, name_constraints=("bad name",))


def test_what_cannot_be_loaded_says_why(tmp_path: Path) -> None:
    with pytest.raises(CaError, match="no CA there"):
        load_ca(tmp_path)
    init_ca(tmp_path, NOW)
    (tmp_path / KEY_FILE).write_bytes(b"garbage")
    with pytest.raises(CaError, match="not a usable CA"):
        load_ca(tmp_path)
    other = init_ca(tmp_path / "other", NOW)
    (tmp_path / KEY_FILE).write_bytes((other.dir / KEY_FILE).read_bytes())
    with pytest.raises(CaError, match="do not belong together"):
        load_ca(tmp_path)


def test_a_leaf_names_one_host_serves_servers_and_verifies_against_the_root(
    tmp_path: Path,
) -> None:
    ca = init_ca(tmp_path, NOW)
    cert, key_pem = ca.issue_leaf("App.Example.TEST", NOW)
    cert.verify_directly_issued_by(ca.cert)
    assert ca.issued(cert)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["app.example.test"]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert cert.not_valid_before_utc < NOW < cert.not_valid_after_utc
    assert b"PRIVATE KEY" in key_pem
    other = init_ca(tmp_path / "other", NOW)
    assert not other.issued(cert)
    with pytest.raises(CaError, match="not a host name"):
        ca.issue_leaf("10.0.0.1", NOW)


def test_a_private_file_is_never_written_through_a_link_planted_at_its_temporary_name(
    tmp_path: Path,
) -> None:
    """The temporary name is predictable (`.NAME.PID.tmp`): a link put there by whoever may
    write the directory must not make the key land in (or truncate) the file it points to."""
    import os

    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    target = tmp_path / "leaf.pem"
    (tmp_path / f".leaf.pem.{os.getpid()}.tmp").symlink_to(victim)
    write_private(target, b"KEY")
    assert victim.read_bytes() == b"precious"
    assert target.read_bytes() == b"KEY" and not target.is_symlink()
    assert stat.S_IMODE(target.stat().st_mode) == 0o600


def test_a_ca_in_a_directory_others_may_write_or_with_a_key_others_may_read_is_refused(
    tmp_path: Path,
) -> None:
    """Whoever can swap ca.crt and ca.key has the proxy issue leaves from a root they hold."""
    d = tmp_path / "ca"
    init_ca(d, dt.datetime(2026, 1, 1, tzinfo=dt.UTC))
    load_ca(d)
    d.chmod(0o777)
    with pytest.raises(CaError, match=r"others may write to it \(mode 777\)"):
        load_ca(d)
    d.chmod(0o700)
    (d / KEY_FILE).chmod(0o644)
    with pytest.raises(CaError, match="readable by it only"):
        load_ca(d)
    (d / KEY_FILE).chmod(0o600)
    load_ca(d)
