"""The applied policy's file (dockmesh.policy.store): what is saved loads back, a save replaces
the file by rename (a reader holds the old one whole, a failed save leaves it and no
temporary file), the stamp changes with every save, and a file that is not an applied
policy is refused with its path and left alone."""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dockmesh.model.policy import Policy, PortRange, Rule, Selector, policy_from_json
from dockmesh.policy.store import (
    DEFAULT_DIR,
    FORMAT,
    Applied,
    PolicyStore,
    applied_from_json,
    policy_dir,
    table_name,
)
from tests.outcomes import Outcomes
from tests.spoil import spoiled
from tests.unit.policy.test_compile import POLICIES

POLICY = Policy(
    default="deny",
    networks=(("backend", "deny"),),
    rules=(
        Rule((Selector(service="web"),), (Selector(service="api"),), (PortRange("tcp", 80, 80),)),
    ),
)
applieds = st.builds(
    Applied,
    table=st.sampled_from(["dockmesh", "t", "policy-2"]),
    mode=st.sampled_from(["enforce", "audit"]),
    policy=POLICIES,
    source=st.sampled_from(["", "/srv/policy.yaml", "dockmesh.yaml"]),
    project=st.sampled_from(["", "demo"]),
)


@settings(max_examples=50)
@given(applieds)
def test_what_is_saved_loads_back(applied: Applied) -> None:
    # A policy as read from a file: its ports in order (the form `policy apply` saves).
    applied = replace(applied, policy=policy_from_json(applied.policy.to_json()))
    with tempfile.TemporaryDirectory() as d:
        store = PolicyStore(applied.table, Path(d) / "policy")
        assert store.load() is None and store.stamp() is None
        store.save(applied)  # makes the directory
        assert store.load() == applied
        assert store.path == Path(d) / "policy" / f"{applied.table}.json"


def test_a_save_replaces_the_file_by_rename(tmp_path: Path) -> None:
    store = PolicyStore("t", tmp_path)
    store.save(Applied("t", "enforce", POLICY, "first"))
    first = store.stamp()
    with open(store.path) as reader:  # a reader that opened the old file
        store.save(Applied("t", "enforce", POLICY, "second"))
        assert json.loads(reader.read())["source"] == "first"  # whole, and the old one
    assert store.stamp() != first
    assert os.listdir(tmp_path) == ["t.json"]  # no temporary file left
    # The same content saved again is another file: the stamp still changes.
    again = store.stamp()
    store.save(Applied("t", "enforce", POLICY, "second"))
    assert store.stamp() != again


def test_a_failed_save_leaves_the_old_file_and_no_temporary_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = PolicyStore("t", tmp_path)
    store.save(Applied("t", "enforce", POLICY, "kept"))
    before = (store.stamp(), store.path.read_text())

    def full_disk(*_: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(OSError, match="No space left"):
        store.save(Applied("t", "audit", Policy(), "lost"))
    assert (store.stamp(), store.path.read_text()) == before
    assert os.listdir(tmp_path) == ["t.json"]


def test_remove_says_whether_there_was_a_file(tmp_path: Path) -> None:
    store = PolicyStore("t", tmp_path)
    assert store.remove() is False
    store.save(Applied("t", "enforce", POLICY))
    assert store.remove() is True
    assert store.load() is None and store.stamp() is None


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("{ not json", "Expecting property name"),
        ("[]", "not an applied policy of this version"),
        ('{"format": 2}', "not an applied policy of this version"),
        ('{"format": 1, "mode": "block"}', "unknown mode 'block'"),
        ('{"format": 1, "mode": "enforce", "table": "no way"}', "is not a table name"),
        ('{"format": 1, "mode": "enforce", "table": "t"}', "'policy'"),
    ],
)
def test_a_file_that_is_not_an_applied_policy_is_refused_with_its_path(
    tmp_path: Path, text: str, why: str
) -> None:
    store = PolicyStore("t", tmp_path)
    store.path.write_text(text)
    with pytest.raises(ValueError, match=why) as e:
        store.load()
    assert str(e.value).startswith(f"{store.path}: ")
    assert store.path.read_text() == text  # left for a person to read


def test_any_spoiled_file_loads_or_is_refused_with_value_error() -> None:
    """What `save` writes, with one value changed or removed: an applied policy, or a
    ValueError naming the file (never another exception)."""
    seen = Outcomes()
    docs = applieds.map(Applied.to_json)

    @settings(max_examples=200)
    @given(st.one_of(docs, spoiled(docs), spoiled(docs)))
    def run(doc: Any) -> None:
        with tempfile.TemporaryDirectory() as d:
            store = PolicyStore("t", Path(d))
            store.path.write_text(json.dumps(doc))
            try:
                got = store.load()
            except ValueError as e:
                message: str | None = str(e)
            else:
                message = None
            if message is not None:
                seen("refused")
                assert message.startswith(str(store.path))
                return
            seen("loaded")
            assert got is not None and applied_from_json(got.to_json()) == got

    run()
    seen.require(loaded=0.2, refused=0.3)


def test_a_store_refuses_a_table_name_nft_would() -> None:
    with pytest.raises(ValueError, match="is not a table name"):
        PolicyStore("../etc/passwd", Path("/tmp"))


def test_the_table_and_the_directory_named_configured_or_default() -> None:
    assert table_name("given", "configured") == "given"
    assert table_name(None, "configured") == "configured"
    assert table_name(None, None) == table_name("", "") == "dockmesh"
    with pytest.raises(ValueError, match="is not a table name"):
        table_name("bad name")
    assert policy_dir("/srv/p") == Path("/srv/p")
    assert policy_dir(None) == policy_dir("") == DEFAULT_DIR


def test_the_file_format() -> None:
    doc = Applied("t", "audit", POLICY, "p.yaml").to_json()
    assert doc == {
        "format": FORMAT,
        "table": "t",
        "mode": "audit",
        "source": "p.yaml",
        "policy": POLICY.to_json(),
    }
