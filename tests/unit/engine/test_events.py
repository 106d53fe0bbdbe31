from __future__ import annotations

from typing import Any

import pytest

from dockmesh.engine.events import Refresh, refreshes_for


def ev(type_: str, action: str, id_: str = "x", **attrs: str) -> dict[str, Any]:
    return {"Type": type_, "Action": action, "Actor": {"ID": id_, "Attributes": attrs}}


@pytest.mark.parametrize(
    "action",
    [
        "create",
        "start",
        "die",
        "stop",
        "rename",
        "pause",
        "health_status: healthy",
        "health_status: unhealthy",
    ],
)
def test_container_events_reread_the_container(action: str) -> None:
    assert refreshes_for(ev("container", action, "c")) == (
        Refresh("container", "c", exited=action == "die"),
    )


def test_destroy_drops() -> None:
    assert refreshes_for(ev("container", "destroy", "c")) == (Refresh("container", "c", True),)
    assert refreshes_for(ev("network", "destroy", "n")) == (Refresh("network", "n", True),)


def test_connect_rereads_the_container_only() -> None:
    # The container's inspect carries the endpoint (address, MAC, aliases); the network's
    # own inspect does not change when a container joins or leaves it.
    assert refreshes_for(ev("network", "connect", "n", container="c")) == (
        Refresh("container", "c"),
    )
    assert refreshes_for(ev("network", "disconnect", "n", container="c")) == (
        Refresh("container", "c"),
    )
    # Without a container named, the network is what the event is about.
    assert refreshes_for(ev("network", "connect", "n")) == (Refresh("network", "n"),)


def test_network_changes_reread_the_network() -> None:
    for action in ("create", "update", "remove"):
        assert refreshes_for(ev("network", action, "n")) == (Refresh("network", "n"),)


@pytest.mark.parametrize(
    "e",
    [
        ev("container", "exec_start: sh -c x"),
        ev("container", "attach"),
        ev("image", "pull"),
        ev("volume", "create"),
        {},
    ],
)
def test_noise_is_ignored(e: dict[str, Any]) -> None:
    assert refreshes_for(e) == ()


def test_an_event_without_an_id_names_nothing_to_read() -> None:
    assert refreshes_for(ev("network", "destroy", "")) == ()
    assert refreshes_for(ev("network", "create", "")) == ()
    assert refreshes_for(ev("container", "start", "")) == ()
    # the container is still worth re-reading
    assert refreshes_for(ev("network", "connect", "", container="c")) == (
        Refresh("container", "c"),
    )


def test_old_engines_lower_case_keys_and_status() -> None:
    assert refreshes_for({"type": "container", "status": "start", "id": "c"}) == (
        Refresh("container", "c"),
    )
