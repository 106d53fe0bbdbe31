"""Usage errors are bad input like any other: one line on stderr, exit 2."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dockmesh", *args], capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize(
    "args",
    [
        ("--nope",),
        ("plan",),
        ("bench", "latency", "a", "b", "--count", "0"),
        ("bench", "latency", "a", "b", "--timeout", "inf"),
        ("report", "--duration", "nan"),
        ("report", "--duration", "1e9"),
        ("top", "--interval", "-inf"),
        ("why", "a", "b", "--timeout", "nan"),
        ("why", "a", "b", "--timeout", "1e20"),
        ("matrix", "--timeout", "1e308"),
        ("doctor", "c", "--timeout", "nan"),
        ("bench", "bandwidth", "a", "b", "--seconds", "nan"),
        # Commands that act on one engine refuse a second rather than ignore it.
        ("plan", "examples/microservices.yaml", "--engine", "unix:///a", "--engine", "unix:///b"),
        ("images", "build", "--engine", "unix:///a", "--engine", "unix:///b"),
        # A malformed address: once '[Errno -2] Name or service not known', exit 1, naming
        # neither the option nor the value.
        ("agent", "--api", "[::1:0", "--dns", "off", "--state", ""),
        ("agent", "--api", "127.0.0.1:0", "--dns", "999.1.1.1:0", "--state", ""),
        ("proxy", "--listen", "[127.0.0.1]:0", "--service", "s"),
        # DNS limits out of range.
        ("agent", "--dns", "off", "--state", "", "--dns-tcp-per-source", "0"),
        ("agent", "--dns", "off", "--state", "", "--dns-udp-rate", "nan"),
        ("agent", "--dns", "off", "--state", "", "--dns-tcp-idle-timeout", "0"),
        # A datacenter is a DNS label (<svc>.service.<dc>.<domain>).
        ("agent", "--datacenter", "a.b", "--api", "127.0.0.1:0", "--dns", "off", "--state", ""),
        # The shared catalog: an etcd URL and a node name that is a key segment.
        ("agent", "--store", "http://127.0.0.1:2379", "--dns", "off", "--state", ""),
        ("agent", "--store", "etcd://127.0.0.1:0", "--dns", "off", "--state", ""),
        ("agent", "--store", "etcd://127.0.0.1:2379", "--node", "a/b", "--dns", "off"),
        ("agent", "--store", "etcd://127.0.0.1:2379", "--node", "-a", "--dns", "off"),
        ("agent", "--store", "etcd://127.0.0.1:2379", "--node", "a..b", "--dns", "off"),
    ],
)
def test_a_usage_error_is_one_line_and_exit_2(args: tuple[str, ...]) -> None:
    proc = run(*args)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dockmesh"), proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("command", ["why", "matrix", "policy", "bench", "proxy", "agent", "up"])
def test_every_help_page_prints(command: str) -> None:
    proc = run(command, "--help")
    assert proc.returncode == 0 and "Usage:" in proc.stdout, proc.stderr


AFILE = __file__  # a file where a directory is expected


@pytest.mark.parametrize(
    ("var", "value", "args"),
    [
        ("DOCKER_HOST", "garbage", ("topology", "--json")),
        ("DOCKER_HOST", "tcp://127.0.0.1:notaport", ("topology", "--json")),
        ("DOCKER_HOST", "tcp://127.0.0.1:99999", ("why", "a", "b")),
        ("DOCKER_HOST", "tcp://", ("stats", "--json")),
        ("DOCKER_HOST", "http://[::1", ("matrix",)),
        (
            "DOCKER_HOST",
            "ftp://x",
            ("agent", "--api", "127.0.0.1:0", "--dns", "off", "--state", ""),
        ),
        ("DOCKMESH_AGENT", "http://", ("proxy", "--listen", "127.0.0.1:0", "--service", "s")),
        ("DOCKMESH_AGENT", "http://h:x", ("proxy", "--listen", "127.0.0.1:0", "--service", "s")),
        ("DOCKMESH_AGENT", "http://h:0", ("proxy", "--listen", "127.0.0.1:0", "--service", "s")),
        ("DOCKMESH_AGENT", "http://[::1", ("proxy", "--listen", "127.0.0.1:0", "--service", "s")),
        ("DOCKMESH_POLICY_DIR", AFILE, ("policy", "show")),
        ("DOCKMESH_POLICY_DIR", "relative/dir", ("policy", "show")),
        (
            "DOCKMESH_POLICY_DIR",
            AFILE,
            ("agent", "--api", "127.0.0.1:0", "--dns", "off", "--state", ""),
        ),
        ("DOCKMESH_POLICY_TABLE", "bad name", ("policy", "show")),
        (
            "DOCKMESH_POLICY_TABLE",
            "-x",
            ("agent", "--api", "127.0.0.1:0", "--dns", "off", "--state", ""),
        ),
        ("DOCKMESH_BUILD_DIR", "/nonexistent/dir", ("images", "build", "--engine", "unix:///a")),
        ("DOCKMESH_BUILD_DIR", AFILE, ("images", "build", "--engine", "unix:///a")),
        ("DOCKMESH_LOG", "LOUD", ("topology", "--engine", "unix:///a")),
    ],
)
def test_a_bad_environment_variable_is_named_in_one_line_and_exit_2(
    var: str, value: str, args: tuple[str, ...]
) -> None:
    """Read at the edge, each variable is checked there: one line that names it, exit 2 —
    not an --engine the user never gave, an internal error, a daemon that starts anyway, or
    a value ignored."""
    env = dict(os.environ, DOCKMESH_AGENT="http://127.0.0.1:9", DOCKMESH_POLICY_TABLE="t")
    env.pop("DOCKER_HOST", None)
    env[var] = value
    proc = subprocess.run(
        [sys.executable, "-m", "dockmesh", *args],
        capture_output=True,
        text=True,
        timeout=15,
        env=env,
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and f"${var}" in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr and "internal error" not in proc.stderr
