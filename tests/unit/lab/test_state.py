"""The lab's state file: written and read back whole; anything else is one clear error."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dockmesh.lab.plan import NETNS_ETC, Partition
from dockmesh.lab.state import LabState, LabStateError, engine_url, parse_state

paths = st.lists(st.text(max_size=30), max_size=5)


@st.composite
def states(draw: st.DrawFn) -> LabState:
    """A state as `lab up` writes it: its namespaces, directories and files are some of
    those its plan makes (any others are refused: `lab down` removes them as root)."""
    state = draw(
        st.builds(
            LabState,
            name=st.from_regex(r"[a-z][a-z0-9]{0,9}", fullmatch=True),
            subnet=st.just("10.251.0.0/24"),
            hosts=st.integers(1, 5),
            etcd=st.sampled_from([0, 1, 3]),
            managers=st.just(1),
            shared_store=st.booleans(),
            pids=st.dictionaries(st.text(max_size=20), st.integers(1, 2**22)),
            partitions=st.lists(
                st.builds(Partition, st.just("host1"), st.sampled_from(["", "etcd"]))
            ),
            images=paths,
            up_seconds=st.none() | st.floats(0, 1000),
        )
    )
    plan = state.plan()
    dirs = [NETNS_ETC, plan.run_dir, plan.data_dir, *(h.resolv_dir for h in plan.hosts)]
    state.netns = draw(st.lists(st.sampled_from(plan.netns), unique=True))
    state.dirs = draw(st.lists(st.sampled_from(dirs), unique=True))
    state.files = draw(st.lists(st.just(f"{plan.data_dir}/images.tar"), max_size=1))
    return state


@given(states())
def test_a_state_reads_back_as_written(state: LabState) -> None:
    assert parse_state(state.dumps(), "lab.json") == state


@given(st.binary(max_size=300))
def test_any_bytes_are_a_state_or_one_line_error(data: bytes) -> None:
    problem = ""
    try:
        parse_state(data, "/run/dockmesh-lab/lab-lab/lab.json")
    except LabStateError as e:
        problem = str(e)
    if problem:
        assert problem.startswith("/run/dockmesh-lab/lab-lab/lab.json: ")
        assert "\n" not in problem


@given(
    states(),
    st.sampled_from(["name", "pids", "hosts", "netns", "version", "partitions"]),
    st.sampled_from([None, True, "x", [1], {"a": -1}, 0]),
)
def test_a_damaged_field_is_named(state: LabState, key: str, value: object) -> None:
    doc = state.to_json()
    doc[key] = value
    problem = ""
    try:
        parse_state(json.dumps(doc).encode(), "f")
    except LabStateError as e:
        problem = str(e)
    assert "\n" not in problem


@pytest.mark.parametrize(
    ("doc", "why"),
    [
        ("[]", "a JSON object"),
        ('{"version": 2}', "version 2"),
        ("{", "not a lab state file"),
        (b"\xff", "not a lab state file"),
    ],
)
def test_clear_errors(doc: str | bytes, why: str) -> None:
    data = doc if isinstance(doc, bytes) else doc.encode()
    with pytest.raises(LabStateError, match=why):
        parse_state(data, "f")


def test_a_missing_key_and_a_bad_pid_are_named() -> None:
    doc = LabState("lab", "10.251.0.0/24", 2, 1, 1).to_json()
    del doc["netns"]
    with pytest.raises(LabStateError, match="no 'netns'"):
        parse_state(json.dumps(doc).encode(), "f")
    doc = LabState("lab", "10.251.0.0/24", 2, 1, 1, pids={"agent@host1": -3}).to_json()
    with pytest.raises(LabStateError, match="agent@host1"):
        parse_state(json.dumps(doc).encode(), "f")
    doc = LabState("lab", "10.251.0.0/24", 2, 1, 9).to_json()
    with pytest.raises(LabStateError, match="--managers"):
        parse_state(json.dumps(doc).encode(), "f")


def test_engine_urls_of_lab_hosts() -> None:
    state = LabState("dev", "10.251.0.0/24", 2, 1, 1)
    assert engine_url(state, "host2") == "unix:///run/dockmesh-lab/lab-dev/host2.sock"
    assert engine_url(state, "host3") is None


@pytest.mark.parametrize(
    ("key", "item"),
    [
        ("dirs", "/"),
        ("dirs", "/var/lib/dockmesh-lab/lab-other"),
        ("dirs", "/var/lib/dockmesh-lab/lab-dev/../../../etc"),
        ("files", "/etc/passwd"),
        ("netns", "dml-other-host1"),
        ("netns", "some-users-netns"),
    ],
)
def test_a_state_listing_what_the_lab_never_makes_is_refused(key: str, item: str) -> None:
    # `lab down` removes every listed directory (rm -rf), file and namespace, as root.
    doc = LabState("dev", "10.251.0.0/24", 2, 1, 1).to_json()
    doc[key] = [item]
    with pytest.raises(LabStateError, match="never makes"):
        parse_state(json.dumps(doc).encode(), "f")
