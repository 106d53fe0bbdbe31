"""dockmesh's local PKI: the CA's root and its files (`ca`), the leaves it issues per host name
and keeps on disk (`leaves`), and the pure rules for names, renewal and bounds (`names`). The
proxy's `tls internal` issues from it; mutual TLS between services will too."""

# Where `dockmesh ca init` puts the CA unless told otherwise (`--dir`, a routes file's `ca_dir`).
DEFAULT_CA_DIR = "/var/lib/dockmesh/ca"
