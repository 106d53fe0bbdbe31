"""The labels codec and the configuration values: what is written reads back the same, and
labels anyone can set never make the decoder raise."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from dockmesh.model.canonical import canonical_json, digest
from dockmesh.model.config import (
    ContainerConfig,
    EndpointConfig,
    HealthcheckConfig,
    IpamConfig,
    NetworkConfig,
    PortMapping,
)
from dockmesh.model.durations import format_duration_ns, parse_duration_ns
from dockmesh.model.labels import (
    DISCOVERY_LABELS,
    PROJECT_LABELS,
    SERVICE_LABELS,
    Discovery,
    DiscoveryCheck,
    decode_discovery,
    encode_discovery,
    project_of,
    service_of,
    stamp,
    stamped_config,
    without_stamp,
)
from tests.outcomes import Outcomes
from tests.spoil import any_json, changed, paths

text = st.text(min_size=1, max_size=12)
word = st.text(st.characters(whitelist_categories=("Ll", "Nd")), min_size=1, max_size=8)
durations = st.sampled_from(["1s", "500ms", "2m", "1m30s", "90s", "1h"])

discoveries = st.builds(
    Discovery,
    service=word,
    port=st.integers(1, 65535),
    tags=st.lists(word, max_size=3, unique=True).map(tuple),
    weight=st.integers(0, 1000),
    network=st.none() | word,
    check=st.none()
    | st.builds(
        DiscoveryCheck,
        http=st.none() | word.map(lambda w: "/" + w),
        tcp=st.just(False),
        interval=durations,
        timeout=durations,
    )
    | st.builds(
        DiscoveryCheck, http=st.none(), tcp=st.just(True), interval=durations, timeout=durations
    ),
)


@given(discoveries)
def test_discovery_round_trips(d: Discovery) -> None:
    if d.check is not None and d.check.http is None and not d.check.tcp:
        return  # a check of neither kind is no check: it is not written
    decoded, problems = decode_discovery(encode_discovery(d))
    assert problems == []
    assert decoded == d


_LABEL_KEYS = list(DISCOVERY_LABELS)


def test_any_labels_decode_without_raising() -> None:
    """Labels as dockmesh writes them, with one changed to any text or removed, and any labels
    at all: a discovery with a port in range, or None, and problems as text."""
    seen = Outcomes()

    @settings(max_examples=200)
    @given(
        st.one_of(
            discoveries.map(encode_discovery),
            discoveries.map(encode_discovery),
            st.builds(
                lambda labels, key, value: {**labels, key: value},
                discoveries.map(encode_discovery),
                st.sampled_from(_LABEL_KEYS),
                st.text(max_size=30),
            ),
            st.dictionaries(st.sampled_from(_LABEL_KEYS), st.text(max_size=30)),
        )
    )
    def run(labels: dict[str, str]) -> None:
        decoded, problems = decode_discovery(labels)
        seen("decoded" if decoded is not None else "none")
        if decoded is not None:
            assert 1 <= decoded.port <= 65535
        assert all(isinstance(p, str) for p in problems)

    run()
    seen.require(decoded=0.3, none=0.15)


def test_wrong_labels_are_named() -> None:
    d, problems = decode_discovery(
        {"dockmesh.service": "api", "dockmesh.port": "\uff18\uff10\uff18\uff10"}
    )
    assert d is None and problems == [
        "dockmesh.port='\uff18\uff10\uff18\uff10': expected a whole number from 1 to 65535"
    ]
    d, problems = decode_discovery(
        {
            "dockmesh.service": "api",
            "dockmesh.port": "80",
            "dockmesh.check.interval": "soon",
            "dockmesh.check.http": "/h",
        }
    )
    assert d is not None and d.check is not None and d.check.interval == "5s"
    assert problems and problems[0].startswith("dockmesh.check.interval='soon'")


ipams = st.builds(
    IpamConfig,
    subnet=text,
    gateway=st.none() | text,
    ip_range=st.none() | text,
    aux_addresses=st.dictionaries(text, text, max_size=2),
)
networks = st.builds(
    NetworkConfig,
    name=text,
    driver=text,
    ipam=st.lists(ipams, max_size=2).map(tuple),
    internal=st.booleans(),
    attachable=st.booleans(),
    enable_ipv6=st.booleans(),
    options=st.dictionaries(text, text, max_size=2),
    labels=st.dictionaries(text, text, max_size=2),
)
argv = st.none() | st.lists(text, max_size=3).map(tuple)
containers = st.builds(
    ContainerConfig,
    name=text,
    image=text,
    command=argv,
    entrypoint=argv,
    environment=st.dictionaries(text, text, max_size=2),
    hostname=st.none() | text,
    networks=st.lists(
        st.builds(
            EndpointConfig,
            network=text,
            aliases=st.lists(text, max_size=2).map(tuple),
            ipv4_address=st.none() | text,
            ipv6_address=st.none() | text,
        ),
        max_size=2,
    ).map(tuple),
    network_mode=st.none() | st.sampled_from(["host", "none"]),
    ports=st.lists(
        st.builds(
            PortMapping,
            container_port=st.integers(1, 65535),
            protocol=st.sampled_from(["tcp", "udp"]),
            host_ip=st.none() | text,
            host_port=st.none() | st.integers(1, 65535),
        ),
        max_size=2,
    ).map(tuple),
    healthcheck=st.none()
    | st.builds(
        HealthcheckConfig,
        test=st.lists(text, min_size=1, max_size=3).map(tuple),
        interval_ns=st.integers(0, 2**63 - 1),
    ),
    labels=st.dictionaries(text, text, max_size=3),
)


@settings(max_examples=50)
@given(networks)
def test_network_config_round_trips_through_its_label(cfg: NetworkConfig) -> None:
    labels = stamp(cfg.labels, cfg.to_json(), digest(cfg.to_json()))
    assert NetworkConfig.from_json(stamped_config(labels)) == cfg
    assert without_stamp(labels) == dict(cfg.labels)


@settings(max_examples=50)
@given(containers)
def test_container_config_round_trips_through_its_label(cfg: ContainerConfig) -> None:
    labels = stamp(cfg.labels, cfg.to_json(), "h")
    assert ContainerConfig.from_json(stamped_config(labels)) == cfg


def _holds_what_it_was_given(given_: Any, read: Any) -> bool:
    """Whether a value read back holds exactly what it was given, field by field and of the
    same JSON type; a field it was not given takes its default, one it does not know is
    ignored."""
    if isinstance(read, dict):
        return isinstance(given_, dict) and all(
            _holds_what_it_was_given(given_[k], v) for k, v in read.items() if k in given_
        )
    if isinstance(read, list):
        return (
            isinstance(given_, list)
            and len(given_) == len(read)
            and all(map(_holds_what_it_was_given, given_, read))
        )
    return type(given_) is type(read) and given_ == read


def test_from_json_refuses_what_it_did_not_write() -> None:
    """What from_json accepts is what to_json would write: a document it wrote, one with a
    field changed or removed, or any JSON at all is read back field for field, or refused with
    ValueError (nothing else escapes)."""
    seen = Outcomes()

    hows = ["as written", "removed", "changed", "as written", "any JSON"]

    @settings(max_examples=200)
    @given(st.data(), st.sampled_from(hows))
    def run(data: st.DataObject, how: str) -> None:
        cfg = data.draw(networks | containers)
        cls = type(cfg)
        raw: Any = cfg.to_json()
        if how == "any JSON":
            raw = data.draw(any_json)
        elif how != "as written":
            path = data.draw(st.sampled_from(paths(raw)))
            raw = changed(raw, path, data.draw(any_json), remove=how == "removed")
        try:
            read = cls.from_json(raw)
        except ValueError:
            seen("refused")
            return
        seen("read")
        assert _holds_what_it_was_given(raw, read.to_json())
        assert cls.from_json(read.to_json()) == read
        if how == "as written":
            assert read == cfg

    run()
    seen.require(read=0.25, refused=0.2)


def test_canonical_json_is_stable() -> None:
    assert canonical_json({"b": 1, "a": [1, "é"]}) == '{"a":[1,"é"],"b":1}'
    assert digest({"a": 1}) == digest({"a": 1}) != digest({"a": 2})


@given(st.integers(0, 10**15))
def test_durations_round_trip(ns: int) -> None:
    assert parse_duration_ns(format_duration_ns(ns)) == ns


def test_durations_refuse_what_the_engine_cannot_hold() -> None:
    for bad in ("\u0661s", "\uff15s", "9999999999h", "", "s", "1x", "-1s", float("nan"), -1, True):
        try:
            parse_duration_ns(bad)
        except ValueError:
            continue
        raise AssertionError(f"{bad!r} was accepted")


def test_project_and_service_are_dockmesh_s_labels_first_then_compose_s() -> None:
    compose = {"com.docker.compose.project": "c", "com.docker.compose.service": "web"}
    assert (project_of(compose), service_of(compose)) == ("c", "web")
    stamped = {**compose, "dockmesh.project": "p", "dockmesh.spec.service": "api"}
    assert (project_of(stamped), service_of(stamped)) == ("p", "api")
    # The catalog's name is the service's name, whoever created the container.
    assert service_of({**stamped, "dockmesh.service": "orders"}) == "orders"
    assert project_of({"team": "x"}) is None and service_of({}) is None


@given(
    st.dictionaries(
        st.sampled_from([*PROJECT_LABELS, *SERVICE_LABELS, "team"]),
        st.sampled_from(["", "a", "b"]),
    )
)
def test_an_empty_label_names_no_project_or_service(labels: dict[str, str]) -> None:
    for keys, named in ((PROJECT_LABELS, project_of(labels)), (SERVICE_LABELS, service_of(labels))):
        values = [labels[k] for k in keys if labels.get(k)]
        assert named == (values[0] if values else None)
