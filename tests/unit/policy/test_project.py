"""A topology file's policy under plan/up/down (dockmesh.policy.project): which line the plan
shows, whose policy `up` may replace, and that `down` takes away only its own project's."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dockmesh.model.policy import Policy
from dockmesh.policy.project import Wanted, conflict, modes, owned_by, policy_change
from dockmesh.policy.store import Applied
from tests.unit.policy.test_compile import POLICIES

SRC = "/srv/demo/dockmesh.yaml"
MINE = Applied("dockmesh", "enforce", Policy(default="deny"), SRC, "demo")
WANT = Wanted(MINE, "abc", {"s0_4": frozenset({"10.0.0.2"})})


def change(
    want: Wanted | None,
    record: Applied | None,
    kernel: str = "ours",
    structure: str | None = "abc",
    elements: dict[str, frozenset[str]] | None = None,
) -> tuple[str, str] | None:
    c = policy_change(
        want,
        record,
        kernel,  # type: ignore[arg-type]
        structure,
        WANT.elements if elements is None else elements,
        "demo",
        "dockmesh",
    )
    if c is None:
        return None
    assert c.kind == "policy" and c.name == "inet dockmesh"
    return c.action, c.reason


def test_in_sync_is_no_change() -> None:
    assert change(WANT, MINE) is None


def test_each_difference_is_named() -> None:
    assert change(WANT, None) == ("create", "not in the kernel")
    assert change(WANT, MINE, kernel="absent") == ("create", "not in the kernel")
    assert change(WANT, replace(MINE, policy=Policy())) == ("replace", "changed: rules")
    assert change(WANT, replace(MINE, mode="audit")) == (
        "replace",
        "changed: mode audit → enforce",
    )
    assert change(WANT, replace(MINE, project="")) == (
        "replace",
        "applied by policy apply; up takes it over",
    )
    assert change(WANT, MINE, structure="old")[0] == "replace"  # type: ignore[index]
    assert change(WANT, MINE, elements={})[0] == "replace"  # type: ignore[index]


def test_a_file_without_policy_removes_only_its_own_projects() -> None:
    assert change(None, MINE) == ("remove", "the file has no policy: section")
    assert change(None, replace(MINE, project="other")) is None
    assert change(None, replace(MINE, project="")) is None
    assert change(None, None) is None


@settings(max_examples=100)
@given(
    POLICIES,
    st.sampled_from(["", "demo", "other"]),
    st.sampled_from([SRC, "/srv/other.yaml", ""]),
)
def test_up_replaces_only_its_own_or_this_files_policy(
    policy: Policy, project: str, source: str
) -> None:
    record = Applied("dockmesh", "enforce", policy, source, project)
    refused = conflict(record, "demo", SRC, "dockmesh")
    mine = project == "demo" or (project == "" and source == SRC)
    assert (refused is None) == mine
    if refused is not None:
        assert "\n" not in refused and "dockmesh policy remove" in refused
    assert owned_by(record, "demo") == (project == "demo")
    assert conflict(None, "demo", SRC, "dockmesh") is None


def test_modes() -> None:
    assert modes("enforce") == "enforce" and modes("audit") == "audit"
    with pytest.raises(ValueError, match="enforce or audit"):
        modes("drop")
