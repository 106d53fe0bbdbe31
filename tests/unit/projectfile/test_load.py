"""Whatever a topology file holds, reading and checking it either succeeds or raises SpecError
whose every line is `FILE:LINE: path: message`; nothing else escapes, end to end."""

from __future__ import annotations

import copy
import os
import re
import tempfile
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dockmesh.errors import SpecError
from dockmesh.projectfile.context import EngineContext
from dockmesh.projectfile.load import MAX_REPORTED, load_spec

FUZZ = settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@pytest.fixture(scope="module")
def folder() -> Iterator[str]:
    with tempfile.TemporaryDirectory(prefix="dockmesh-fuzz-") as d:
        yield d


def assert_reads_or_reports(folder: str, raw: bytes) -> None:
    path = os.path.join(folder, "dockmesh.yaml")
    with open(path, "wb") as f:
        f.write(raw)
    try:
        load_spec(path).check(EngineContext())
    except SpecError as e:
        lines = e.lines
    else:
        return
    assert lines
    assert len(lines) <= MAX_REPORTED + 1
    pattern = re.compile(re.escape(path) + r":\d+: .+: .+")
    for line in lines:
        assert pattern.fullmatch(line), line


# Pieces of YAML syntax, so that random bytes reach the parser and composer, not only the
# UTF-8 decoder.
FRAGMENTS = [
    "\n", "  ", "- ", ": ", "? ", ",", "[", "]", "{", "}", "&a ", "*a", "&b ", "*b", "<<: ",
    "!!", "!foo ", "!!str ", "!!python/object:os.system ", "!!binary ", "!!set ", "|", ">-",
    '"', "'", "\\", "#", "---\n", "...\n", "%YAML 1.1\n", "%TAG ! tag:x,2000:\n", "\t", "~",
    "null", "yes", "1", "0x1F", "1:20", ".inf", "2001-12-14", "=", "é", "\u2028", "\x85",
    "\ufeff", "\x00", "\x1b",
    "project", "networks", "services", "image", "ports", "subnet", "command", "replicas",
]  # fmt: skip

yamlish = st.lists(st.sampled_from(FRAGMENTS), max_size=40).map("".join)


@FUZZ
@given(
    st.one_of(
        st.binary(max_size=200),
        yamlish.map(lambda s: s.encode("utf-8", "surrogatepass")),
        st.tuples(yamlish, st.binary(max_size=8), yamlish).map(
            lambda t: t[0].encode() + t[1] + t[2].encode()
        ),
    )
)
def test_any_bytes(folder: str, raw: bytes) -> None:
    assert_reads_or_reports(folder, raw)


text = st.text(st.characters(codec="utf-8"), max_size=12)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    text,
    st.sampled_from(
        ["80:80", "2001-12-14", "0x1F", "1e3", "yes", "=", "<<", "${X}", "{{replica}}"]
    ),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(text, inner, max_size=4)),
    max_leaves=12,
)


def dump(doc: Any) -> bytes:
    return yaml.safe_dump(doc, allow_unicode=True, sort_keys=False).encode()


@FUZZ
@given(values)
def test_any_yaml_document(folder: str, doc: Any) -> None:
    assert_reads_or_reports(folder, dump(doc))


def field(value: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly a value of the right kind, sometimes anything at all."""
    return st.one_of(value, value, values)


names = st.one_of(st.sampled_from(["a", "web", "db", "x-1"]), text)
ports = st.one_of(
    st.integers(-1, 70000),
    st.sampled_from(["8080", "127.0.0.1:18080:8080", "80/udp", "1-3:1-3", "::1:80:80", "٨٠"]),
    text,
)
network = st.fixed_dictionaries(
    {},
    optional={
        "subnet": field(st.sampled_from(["10.77.1.0/24", "10.77.3.0/28", "fd00::/64", "x"])),
        "gateway": field(st.sampled_from(["10.77.1.1", "10.77.9.1", "::1"])),
        "ip_range": field(st.sampled_from(["10.77.1.0/28", "10.0.0.0/8"])),
        "driver": field(st.sampled_from(["bridge", "macvlan", "overlay", "ipvlan", "host"])),
        "internal": field(st.booleans()),
        "aux_addresses": field(st.dictionaries(names, st.sampled_from(["10.77.1.9", "x"]))),
        "options": field(st.dictionaries(text, scalars, max_size=2)),
    },
)
healthcheck = st.fixed_dictionaries(
    {},
    optional={
        "http": field(st.sampled_from(["/health", "health", "/"])),
        "tcp": field(st.booleans()),
        "port": field(ports),
        "interval": field(st.sampled_from(["2s", "1m", "0s", "-1s", "1.5h", "2"])),
        "timeout": field(st.sampled_from(["1s", "x"])),
        "retries": field(st.integers(-1, 5)),
        "test": field(st.lists(text, max_size=3)),
    },
)
discovery = st.fixed_dictionaries(
    {"port": field(ports)},
    optional={
        "name": field(names),
        "tags": field(st.lists(text, max_size=3)),
        "weight": field(st.integers(-1, 100)),
        "network": field(names),
        "check": field(st.fixed_dictionaries({}, optional={"http": text, "interval": text})),
    },
)
service = st.fixed_dictionaries(
    {"image": field(st.sampled_from(["dockmesh/toolbox", "busybox:1.36", "x@sha256:00", ""]))},
    optional={
        "command": field(
            st.one_of(
                st.sampled_from(["httpd -f -p 8080", "sh -c 'echo \"hi", "a\\", "$X ${Y:-z}"]),
                st.lists(text, max_size=3),
                text,
            )
        ),
        "entrypoint": field(st.lists(text, max_size=2)),
        "replicas": field(st.integers(-2, 1002)),
        "environment": field(
            st.one_of(
                st.dictionaries(text, scalars, max_size=3),
                st.lists(st.sampled_from(["A=1", "B", "=x", "{{replica}}=1"]), max_size=3),
            )
        ),
        "networks": field(
            st.one_of(
                st.lists(names, max_size=3),
                st.dictionaries(
                    names,
                    st.one_of(
                        st.none(),
                        st.fixed_dictionaries(
                            {},
                            optional={
                                "aliases": st.lists(text, max_size=2),
                                "ipv4_address": st.sampled_from(["10.77.1.5", "10.77.1.0", "x"]),
                            },
                        ),
                    ),
                    max_size=3,
                ),
            )
        ),
        "network_mode": field(st.sampled_from(["host", "none", "bridge"])),
        "ports": field(st.lists(ports, max_size=3)),
        "labels": field(st.dictionaries(text, text, max_size=2)),
        "hostname": field(text),
        "healthcheck": field(healthcheck),
        "depends_on": field(st.lists(names, max_size=3)),
        "discovery": field(discovery),
    },
)
topology_files = st.fixed_dictionaries(
    {},
    optional={
        "project": field(st.one_of(st.sampled_from(["demo", "Demo", "a_b", "-x", ""]), text)),
        "networks": field(st.dictionaries(names, st.one_of(st.none(), network), max_size=3)),
        "services": field(st.dictionaries(names, service, max_size=3)),
        "policy": field(st.dictionaries(text, values, max_size=2)),
    },
)


@FUZZ
@given(topology_files)
def test_any_topology_file(folder: str, doc: dict[str, Any]) -> None:
    assert_reads_or_reports(folder, dump(doc))


# A valid file with a field or a name changed: random whole files are nearly always wrong in
# several ways at once, and a file's first problems hide the checks that run only on an
# otherwise valid one (building the desired state, for instance).
VALID: dict[str, Any] = {
    "project": "demo",
    "networks": {
        "front": {
            "subnet": "10.77.1.0/24",
            "gateway": "10.77.1.1",
            "ip_range": "10.77.1.0/28",
            "aux_addresses": {"spare": "10.77.1.200"},
            "options": {"com.docker.network.driver.mtu": "1500"},
            "labels": {"a": "b"},
        },
        "back": {"internal": True},
    },
    "services": {
        "web": {
            "image": "dockmesh/toolbox",
            "command": "httpd -f -p 8080 -h /www",
            "replicas": 1,
            "environment": {"INSTANCE_ID": "{{replica}}"},
            "networks": {"front": {"aliases": ["web"]}, "back": {}},
            "ports": ["127.0.0.1:18080:8080"],
            "labels": {"team": "web"},
            "hostname": "web",
            "healthcheck": {"http": "/health", "port": 8080, "interval": "2s"},
            "depends_on": ["db"],
            # On two networks: which one's address to register is said (plan refuses it else).
            "discovery": {
                "port": 8080,
                "tags": ["v1"],
                "network": "front",
                "check": {"http": "/health"},
            },
        },
        "db": {"image": "busybox", "networks": ["back"]},
    },
}


def test_the_valid_file_is_valid(folder: str) -> None:
    path = os.path.join(folder, "valid.yaml")
    with open(path, "wb") as f:
        f.write(dump(VALID))
    load_spec(path).check(EngineContext())


def leaves(doc: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix] if prefix else []
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += leaves(v, (*prefix, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out += leaves(v, (*prefix, i))
    return out


PATHS = leaves(VALID) + [
    ("services", "web", key)
    for key in ("entrypoint", "network_mode", "replicas", "environment", "command")
]

nasty_text = st.one_of(
    text,
    st.sampled_from(
        [
            "",
            " ",
            "sh -c 'echo \"hi",
            'a "b',
            "a\\",
            "$X ${Y:-z} $$",
            "{{replica}}",
            "{{ replica }}",
            "{{nope}}",
            "{{",
            "٨٠٨٠",
            "\uff18\uff10",  # fullwidth digits
            "8080/udp",
            "0.0.0.0:80:80",
            "[::1]:80:80",
            "80-81:80-81",
            "65536",
            "10.77.1.0/33",
            "10.77.1.300",
            "fd00::/64",
            "UPPER",
            "-leading",
            "a" * 300,
            "x@sha256:" + "0" * 64,
            "registry:5000/a/b:tag",
            "a b",
            "é",
            "1s",
            "-5s",
            "1e400s",
            "9" * 30,
        ]
    ),
)
nasty = st.one_of(
    nasty_text,
    st.integers(),
    st.sampled_from([0, -1, 65536, 2**63, 2**64]),
    st.floats(),
    st.booleans(),
    st.none(),
    st.lists(nasty_text, max_size=3),
    st.dictionaries(nasty_text, st.one_of(nasty_text, st.integers()), max_size=2),
)


def set_at(doc: Any, path: tuple[Any, ...], value: Any) -> None:
    for part in path[:-1]:
        doc = doc[part]
    doc[path[-1]] = value


def rename_at(doc: Any, path: tuple[Any, ...], name: str) -> None:
    """Renames the key at `path`, keeping its place among its siblings."""
    for part in path[:-1]:
        doc = doc[part]
    if isinstance(doc, dict) and name not in doc:
        items = [(name if k == path[-1] else k, v) for k, v in doc.items()]
        doc.clear()
        doc.update(items)


@FUZZ
@given(
    st.lists(
        st.tuples(st.sampled_from(PATHS), st.booleans(), nasty, nasty_text),
        min_size=1,
        max_size=2,
    )
)
def test_a_valid_file_with_fields_changed(
    folder: str, changes: list[tuple[tuple[Any, ...], bool, Any, str]]
) -> None:
    doc = copy.deepcopy(VALID)
    for path, rename, value, name in changes:
        try:
            if rename and isinstance(path[-1], str):
                rename_at(doc, path, name)
            else:
                set_at(doc, path, value)
        except (KeyError, IndexError, TypeError):
            continue  # an earlier change took the place away
    assert_reads_or_reports(folder, dump(doc))
