"""`dockmesh ca` and `dockmesh proxy --tls-listen` as a user runs them: curl verifies a
`tls internal` leaf against the CA's certificate and reaches a real backend (which sees
`X-Forwarded-Proto: https`), SNI picks between two certificate files, TLS 1.1 is refused, a
name the routes do not allow is refused and nothing is minted for it, a client that never says
hello is closed, and bad input exits 2 with one line."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from dockmesh.pki.ca import load_ca
from tests.integration.proxyenv import Backend, ProxyProc, backends, free_port


def dockmesh(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dockmesh", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


def curl(port: int, name: str, *args: str, path: str = "/") -> subprocess.CompletedProcess[str]:
    """curl to https://NAME:PORT/ with NAME resolved to loopback (no DNS, nothing leaves)."""
    return subprocess.run(
        ["curl", "-sS", "--max-time", "10", "--resolve", f"{name}:{port}:127.0.0.1",
         *args, f"https://{name}:{port}{path}"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip


def wait_tls_port(proxy: ProxyProc, port: int) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            if proxy.proc.poll() is not None:
                raise AssertionError(proxy.log.read_text()) from None
            time.sleep(0.1)
    raise AssertionError("no TLS listener: " + proxy.log.read_text())


def served_name(port: int, name: str | None, cafile: Path | None = None) -> str:
    ctx = (
        ssl.create_default_context(cafile=str(cafile))
        if cafile
        else ssl._create_unverified_context()
    )
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        ctx.wrap_socket(raw, server_hostname=name) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    cert = x509.load_der_x509_certificate(der)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return str(san.get_values_for_type(x509.DNSName)[0])


@pytest.fixture
def ca_dir(tmp_path: Path) -> Path:
    d = tmp_path / "ca"
    r = dockmesh("ca", "init", "--dir", str(d))
    assert r.returncode == 0, r.stderr
    return d


@pytest.fixture
def internal(tmp_path: Path, ca_dir: Path) -> Iterator[tuple[ProxyProc, int, Backend]]:
    with backends(1) as (be,):
        cfg = tmp_path / "routes.yaml"
        cfg.write_text(
            "routes:\n"
            f"  - host: app.test\n    backends: [{be.url}]\n"
            f"  - host: other.test\n    backends: [{be.url}]\n"
            "tls: {internal: true, handshake_timeout: 1s}\n"
        )
        tls_port = free_port()
        proxy = ProxyProc(
            tmp_path, "--config", str(cfg), "--tls-listen", f"127.0.0.1:{tls_port}",
            env={"DOCKMESH_CA_DIR": str(ca_dir)},
        )  # fmt: skip
        try:
            wait_tls_port(proxy, tls_port)
            yield proxy, tls_port, be
        finally:
            proxy.stop()


def test_ca_init_and_show_and_their_bad_input(tmp_path: Path, ca_dir: Path) -> None:
    assert sorted(p.name for p in ca_dir.iterdir()) == ["ca.crt", "ca.key"]
    assert all(p.stat().st_mode & 0o777 == 0o600 for p in ca_dir.iterdir())
    r = dockmesh("ca", "show", "--json", env={"DOCKMESH_CA_DIR": str(ca_dir)})
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    cert = x509.load_pem_x509_certificate((ca_dir / "ca.crt").read_bytes())
    assert (
        doc["fingerprint_sha256"].replace(":", "").lower()
        == cert.fingerprint(hashes.SHA256()).hex()
    )
    assert doc["subject"] == "CN=dockmesh local CA,O=dockmesh" and doc["path"] == str(ca_dir)
    assert dt.datetime.fromisoformat(doc["not_after"]) > dt.datetime.now(dt.UTC)
    human = dockmesh("ca", "show", "--dir", str(ca_dir))
    for key in ("subject:", "fingerprint SHA-256:", "not after:", "path:"):
        assert key in human.stdout, human.stdout
    for args in (
        ("ca", "init", "--dir", str(ca_dir)),  # there already
        ("ca", "show", "--dir", str(tmp_path / "nothing")),
        ("ca", "init", "--dir", str(tmp_path / "x"), "--name-constraint", "not a name"),
        ("ca", "init", "--dir", str(ca_dir / "ca.crt")),  # a file, not a folder
    ):
        r = dockmesh(*args)
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert doc == json.loads(dockmesh("ca", "show", "--json", "--dir", str(ca_dir)).stdout)
    r = dockmesh("ca", "init", "--dir", str(ca_dir), "--force", "--json")
    assert (
        r.returncode == 0
        and json.loads(r.stdout)["fingerprint_sha256"] != doc["fingerprint_sha256"]
    )


def test_curl_verifies_a_tls_internal_leaf_and_reaches_the_backend_as_https(
    internal: tuple[ProxyProc, int, Backend], ca_dir: Path
) -> None:
    proxy, port, _ = internal
    r = curl(port, "app.test", "--cacert", str(ca_dir / "ca.crt"), path="/hello")
    assert r.returncode == 0, r.stderr
    doc: dict[str, Any] = json.loads(r.stdout)
    assert doc["path"] == "/hello" and doc["headers"]["x-forwarded-proto"] == "https"
    assert doc["headers"]["host"] == f"app.test:{port}"
    # The leaf is the CA's, for that name only, and kept on disk for the next start.
    leaf = x509.load_pem_x509_certificate((ca_dir / "leaves" / "app.test.pem").read_bytes())
    leaf.verify_directly_issued_by(load_ca(ca_dir).cert)
    assert sorted(p.name for p in (ca_dir / "leaves").iterdir()) == ["app.test.pem"]
    # Keep-alive over TLS, and the plain listener still says http.
    r = curl(port, "app.test", "--cacert", str(ca_dir / "ca.crt"), "-o", "/dev/null",
             "-o", "/dev/null", "-w", "%{http_code} %{num_connects}\n", "--http1.1",
             f"https://app.test:{port}/again")  # fmt: skip
    assert r.stdout.split() == ["200", "1", "200", "0"], r
    r = subprocess.run(
        ["curl", "-sS", "-H", "Host: app.test", f"{proxy.url}/plain"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert json.loads(r.stdout)["headers"]["x-forwarded-proto"] == "http"
    # curl -k reaches it by address too (no SNI: the first route host's leaf).
    r = curl(port, "app.test", "-k", "-o", "/dev/null", "-w", "%{http_code}")
    assert r.stdout == "200", r


def test_a_name_the_routes_do_not_allow_is_refused_and_nothing_is_minted(
    internal: tuple[ProxyProc, int, Backend], ca_dir: Path
) -> None:
    _, port, _ = internal
    for name in ("evil.test", "app.test.evil.test", "admin.internal"):
        r = curl(port, name, "-k", "-o", "/dev/null")
        assert r.returncode == 35, (name, r)  # the handshake failed
    leaves = ca_dir / "leaves"
    assert not leaves.exists() or not any(leaves.iterdir())
    assert served_name(port, "other.test", ca_dir / "ca.crt") == "other.test"
    assert sorted(p.name for p in leaves.iterdir()) == ["other.test.pem"]


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1_1 is deprecated")
def test_tls_1_1_is_refused_where_1_2_and_1_3_are_served(
    internal: tuple[ProxyProc, int, Backend],
) -> None:
    _, port, _ = internal

    def version(highest: ssl.TLSVersion) -> str | None:
        ctx = ssl._create_unverified_context()
        # An old client: TLS 1.1 allowed on its side, so the refusal is the proxy's.
        ctx.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
        ctx.maximum_version = highest
        ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
        with (
            socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
            ctx.wrap_socket(raw, server_hostname="app.test") as tls,
        ):
            return tls.version()

    with pytest.raises((ssl.SSLError, ConnectionResetError)):
        version(ssl.TLSVersion.TLSv1_1)
    assert version(ssl.TLSVersion.TLSv1_2) == "TLSv1.2"
    assert version(ssl.TLSVersion.TLSv1_3) == "TLSv1.3"
    r = curl(port, "app.test", "-k", "--tlsv1.1", "--tls-max", "1.1")
    assert r.returncode != 0


def test_a_client_that_never_says_hello_is_closed_after_the_handshake_timeout(
    internal: tuple[ProxyProc, int, Backend],
) -> None:
    _, port, _ = internal
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        started = time.monotonic()
        try:
            got = s.recv(1)
        except ConnectionResetError:
            got = b""
        waited = time.monotonic() - started
    assert got == b"" and 0.5 < waited < 6, waited


def test_sni_picks_between_two_certificate_files(tmp_path: Path, ca_dir: Path) -> None:
    ca = load_ca(ca_dir)
    files = []
    for name in ("one.test", "two.test"):
        cert, key = ca.issue_leaf(name, dt.datetime.now(dt.UTC))
        (tmp_path / f"{name}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        (tmp_path / f"{name}.key").write_bytes(key)
        files += ["--tls-cert", str(tmp_path / f"{name}.crt"),
                  "--tls-key", str(tmp_path / f"{name}.key")]  # fmt: skip
    with backends(1) as (be,):
        port = free_port()
        proxy = ProxyProc(tmp_path, "--backend", be.url, "--tls-listen", f"127.0.0.1:{port}",
                          *files)  # fmt: skip
        try:
            wait_tls_port(proxy, port)
            for name in ("one.test", "two.test"):
                assert served_name(port, name, ca_dir / "ca.crt") == name
                r = curl(port, name, "--cacert", str(ca_dir / "ca.crt"))
                assert r.returncode == 0 and json.loads(r.stdout)["backend"] == be.name, r
            assert served_name(port, None) == "one.test"
            r = curl(port, "three.test", "-k")
            assert r.returncode == 35, r
        finally:
            proxy.stop()


def test_bad_tls_input_exits_2_with_one_line(tmp_path: Path, ca_dir: Path) -> None:
    tls = f"127.0.0.1:{free_port()}"
    cert = tmp_path / "c.pem"
    cert.write_text("not a certificate\n")
    bad_yaml = tmp_path / "r.yaml"
    bad_yaml.write_text("tls: {internal: maybe}\nroutes: [{backends: [http://127.0.0.1:9]}]\n")
    for args in (
        ("--tls-listen", tls),  # no certificate
        ("--tls-listen", tls, "--tls", "acme"),
        ("--tls-listen", tls, "--tls-cert", str(cert)),  # no key
        ("--tls-listen", tls, "--tls-cert", str(cert), "--tls-key", str(cert)),
        ("--tls-listen", tls, "--tls", "internal", "--ca-dir", str(tmp_path / "none")),
        ("--tls-listen", tls, "--tls", "internal", "--ca-dir", str(ca_dir)),  # no host to serve
        ("--listen", f"127.0.0.1:{free_port()}", "--tls", "internal"),  # no TLS listener
        ("--tls-listen", "nowhere"),
        ("--tls-listen", tls, "--listen", tls, "--tls", "internal"),
        ("--tls-listen", tls, "--config", str(bad_yaml)),
    ):
        extra = () if "--config" in args else ("--backend", "http://127.0.0.1:9")
        r = dockmesh("proxy", *args, *extra)
        assert r.returncode == 2, (args, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1, (args, r.stderr)
    # A TLS port another process serves.
    good_yaml = tmp_path / "good.yaml"
    good_yaml.write_text("routes: [{host: app.test, backends: [http://127.0.0.1:9]}]\n")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        r = dockmesh("proxy", "--tls-listen", f"127.0.0.1:{port}", "--tls", "internal",
                     "--ca-dir", str(ca_dir), "--config", str(good_yaml))  # fmt: skip
    assert r.returncode == 2 and r.stderr.startswith("dockmesh: --tls-listen 127.0.0.1:"), r


def test_sighup_serves_a_rotated_certificate_file(tmp_path: Path, ca_dir: Path) -> None:
    ca = load_ca(ca_dir)
    crt, key = tmp_path / "site.crt", tmp_path / "site.key"

    def write(name: str) -> None:
        cert, k = ca.issue_leaf(name, dt.datetime.now(dt.UTC))
        crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key.write_bytes(k)

    write("old.test")
    cfg = tmp_path / "routes.yaml"
    cfg.write_text(
        "routes: [{backends: [http://127.0.0.1:9]}]\n"
        "tls: {certificates: [{cert: site.crt, key: site.key}]}\n"
    )
    port = free_port()
    proxy = ProxyProc(tmp_path, "--config", str(cfg), "--tls-listen", f"127.0.0.1:{port}")
    try:
        wait_tls_port(proxy, port)
        assert served_name(port, None) == "old.test"
        write("new.test")
        proxy.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while served_name(port, None) != "new.test":
            assert time.monotonic() < deadline, proxy.log.read_text()
            time.sleep(0.1)
        # A file that cannot be used is logged; what runs stays.
        crt.write_text("garbage\n")
        proxy.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while "keeping the running certificates" not in proxy.log.read_text():
            assert time.monotonic() < deadline, proxy.log.read_text()
            time.sleep(0.1)
        assert served_name(port, "new.test", ca_dir / "ca.crt") == "new.test"
        assert proxy.proc.poll() is None
    finally:
        proxy.stop()
