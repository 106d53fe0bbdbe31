"""The configuration values (dockmesh.model.config): `from_json` reads back what `to_json`
wrote, and refuses, with ValueError alone, anything it did not write (labels anyone can
set carry it)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dockmesh.model.config import (
    ContainerConfig,
    EndpointConfig,
    HealthcheckConfig,
    IpamConfig,
    NetworkConfig,
    PortMapping,
)
from tests.outcomes import Outcomes
from tests.spoil import any_json, changed, paths
from tests.unit.model.configs import containers, networks


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


@settings(max_examples=50)
@given(networks | containers)
def test_a_configuration_reads_back_from_its_json(cfg: NetworkConfig | ContainerConfig) -> None:
    assert type(cfg).from_json(cfg.to_json()) == cfg


@given(containers)
def test_the_json_does_not_depend_on_the_order_mappings_were_built_in(
    cfg: ContainerConfig,
) -> None:
    backwards = ContainerConfig(
        **{
            **{f: getattr(cfg, f) for f in ContainerConfig.__dataclass_fields__},
            "environment": dict(reversed(list(cfg.environment.items()))),
            "labels": dict(reversed(list(cfg.labels.items()))),
        }
    )
    assert backwards.to_json() == cfg.to_json()
    assert list(backwards.to_json()["labels"]) == list(cfg.to_json()["labels"])


@pytest.mark.parametrize(
    ("cls", "raw", "message"),
    [
        (IpamConfig, [], "ipam: expected a mapping"),
        (IpamConfig, {"subnet": 1}, "ipam.subnet: expected a string"),
        (PortMapping, {"container_port": True, "protocol": "tcp"}, "expected an integer"),
        (EndpointConfig, {"network": "n", "aliases": "a"}, "expected a list of strings"),
        (HealthcheckConfig, {"test": ["CMD"], "interval_ns": "1s"}, "expected an integer"),
        (NetworkConfig, {"name": "n", "internal": "yes"}, "expected true or false"),
        (ContainerConfig, {"name": "c", "image": "i", "labels": {"a": 1}}, "mapping of strings"),
    ],
)
def test_a_wrong_value_is_named(cls: Any, raw: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        cls.from_json(raw)
