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
