"""The labels codec: what is written reads back the same, a configuration travels in its
stamp, and labels anyone can set never make the decoder raise."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from dockmesh.model.canonical import digest
from dockmesh.model.config import ContainerConfig, NetworkConfig
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
from tests.unit.model.configs import containers, networks

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
