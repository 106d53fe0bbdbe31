"""What `ps` and `logs` decide without an engine (dockmesh.cli.projectview)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dockmesh.cli.projectview import LineSplitter, chosen, project_containers, ps_json
from dockmesh.errors import UsageError
from dockmesh.model.topology import Container


def ctr(name: str, project: str, service: str, replica: int) -> Container:
    labels = {
        "dockmesh.project": project,
        "dockmesh.spec.service": service,
        "dockmesh.spec.replica": str(replica),
    }
    return Container(
        id=name, name=name, engine="local", image="img", state="running", labels=labels
    )


def test_a_projects_containers_by_service_then_replica() -> None:
    live = [
        ctr("p-web-10", "p", "web", 10),
        ctr("p-web-2", "p", "web", 2),
        ctr("p-api-1", "p", "api", 1),
        ctr("q-web-1", "q", "web", 1),
    ]
    mine = project_containers(live, "p")
    assert [c.name for c in mine] == ["p-api-1", "p-web-2", "p-web-10"]
    doc = ps_json("p", mine)
    assert doc["containers"][1] == {
        "name": "p-web-2",
        "service": "web",
        "replica": 2,
        "image": "img",
        "state": "running",
        "health": None,
        "ports": [],
        "networks": [],
    }
    assert [c.name for c in chosen(mine, ["api"], "p")] == ["p-api-1"]
    assert chosen(mine, [], "p") == mine
    with pytest.raises(
        UsageError, match=r"^no container of service 'db' in project 'p' \(services: api, web\)$"
    ):
        chosen(mine, ["web", "db"], "p")


@given(st.lists(st.binary(max_size=20), max_size=10))
def test_chunks_come_out_as_the_same_lines(chunks: list[bytes]) -> None:
    split = LineSplitter("c | ")
    out = [line for chunk in chunks for line in split.feed(chunk)] + split.end()
    data = b"".join(chunks)
    expected = data.split(b"\n")
    if expected and expected[-1] == b"":
        expected.pop()
    assert out == ["c | " + x.rstrip(b"\r").decode("utf-8", "replace") + "\n" for x in expected]


def test_a_line_without_end_is_cut_not_held() -> None:
    # A container that never writes a newline was held whole, each chunk copying all of it.
    split = LineSplitter("")
    out: list[str] = []
    text = "é" * 100_000  # two bytes each: a cut could fall inside one
    raw = text.encode()
    for i in range(0, len(raw), 4096):
        out += split.feed(raw[i : i + 4096])
        assert len(split._rest) <= LineSplitter.MAX_LINE
    out += split.end()
    assert all(len(x.encode()) <= LineSplitter.MAX_LINE + 1 for x in out)
    assert "".join(x.rstrip("\n") for x in out) == text  # no character broken


@given(st.lists(st.text(alphabet="ab\n", max_size=40).map(str.encode), max_size=10))
def test_long_lines_are_cut_into_pieces_in_order(chunks: list[bytes]) -> None:
    LineSplitter.MAX_LINE, saved = 16, LineSplitter.MAX_LINE
    try:
        split = LineSplitter("")
        out = [line for chunk in chunks for line in split.feed(chunk)] + split.end()
    finally:
        LineSplitter.MAX_LINE = saved
    assert all(len(x) <= 17 and x.endswith("\n") for x in out)
    assert "".join(x[:-1] for x in out) == b"".join(chunks).decode().replace("\n", "")
