"""What an engine event means for the model. Pure: an event dict in, a list of refreshes out.

The watcher does not try to patch the model from event attributes (they are incomplete: a
`connect` event carries no address). It re-reads the object the event names (for a `connect`
or `disconnect`, the container: the network is unchanged), or drops it when the event says it
is gone. Re-reading is idempotent, so replaying an event is harmless — which
is what makes "open the stream, then snapshot" free of races.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

Kind = Literal["container", "network"]

# Container actions that change nothing the topology shows.
_IGNORED_CONTAINER_ACTIONS = frozenset(
    {
        "attach",
        "detach",
        "resize",
        "top",
        "export",
        "commit",
        "copy",
        "archive-path",
        "extract-to-dir",
        "exec_create",
        "exec_start",
        "exec_die",
        "exec_detach",
    }
)


@dataclass(frozen=True, slots=True)
class Refresh:
    kind: Kind
    id: str
    gone: bool = False  # drop it: the engine says it no longer exists
    # A `die` event: the process has ended, which the model may show before the re-read
    # (an engine under load can take a second to answer an inspect).
    exited: bool = False


def refreshes_for(event: Mapping[str, Any]) -> tuple[Refresh, ...]:
    etype = event.get("Type") or event.get("type")
    action = str(event.get("Action") or event.get("status") or "")
    actor = event.get("Actor") or {}
    oid = str(actor.get("ID") or event.get("id") or "")
    attrs: Mapping[str, str] = actor.get("Attributes") or {}
    base_action = action.split(":", 1)[0].strip()  # "health_status: healthy", "exec_start: sh"
    if etype == "container":
        if base_action in _IGNORED_CONTAINER_ACTIONS or not oid:
            return ()
        return (
            Refresh("container", oid, gone=base_action == "destroy", exited=base_action == "die"),
        )
    if etype == "network":
        cid = attrs.get("container")
        if cid and base_action in ("connect", "disconnect"):
            # The container's attachments changed, and only its inspect shows them (address,
            # MAC, aliases); the network itself did not change (the model keeps no list of
            # its endpoints), so it is not read again. A container attached to a network the
            # model does not hold yet has that network read (the watcher asks for it).
            return (Refresh("container", cid),)
        if oid and base_action == "destroy":
            return (Refresh("network", oid, gone=True),)
        if oid and base_action in ("connect", "disconnect", "create", "update", "remove"):
            return (Refresh("network", oid),)  # a (dis)connect naming no container: look
    return ()
