"""Following one engine, as a state machine: what to re-read, and which reads to keep.

Sans-IO: the decisions live here as plain state; `dockmesh.engine.watch` does the reading,
the waiting, the threads and the locks, and calls in here to decide. Nothing here reads a
clock: back-off delays are numbers the caller waits out however it likes.

Theory of operation
-------------------
The watcher never patches its model from an event's attributes (they are incomplete); an event
only names objects to re-read (`dockmesh.engine.events`). Re-reading is idempotent, so reading
an object once for many events, or once more than needed, is harmless. Per engine::

    SYNCING ──resynced()──▶ FOLLOWING ──stream_lost()──▶ SYNCING ──stream_lost()──▶ SYNCING …
       │                        │
       └──────── stop() ────────┴──▶ STOPPED (from any phase; terminal)

- SYNCING: no stream, or a stream whose snapshot is not installed yet. The caller waits out
  the delay `stream_lost()` gave, opens a stream, reads a snapshot, and calls `resynced()`.
- FOLLOWING: events of the current stream arrive through `received()`; the caller `take()`s
  them as a `Batch`, re-reads its objects, and installs the reads only if `accepts(batch)`.

Invariants (tests/unit/engine/test_coalesce.py checks each one):

1. Coalescing loses nothing. A refresh received in FOLLOWING is in the next batch taken,
   unless a resync or stop comes first (3, 5). The batch is taken after the refresh arrived,
   so the object is re-read after the event that named it.
2. One read per object per batch. A batch names each (kind, id) once, and whether it is gone is
   the word of the last event that named it: `destroy` then nothing drops it unread; anything
   after a `destroy` re-reads it (and a read that finds nothing drops it too).
3. Reads a resync overtook are dropped. Every batch carries the epoch it was taken in; every
   resync starts a new epoch; `accepts` is true only within the batch's epoch. Applying such a
   read could roll the model back past the snapshot until the object's next event (maybe
   never). Dropping it loses nothing: the new stream was opened before its snapshot was read,
   so whatever changed since is an event still to come. The caller must check `accepts` and
   install the reads under the same lock it installs snapshots under.
4. A resync forgets pending refreshes, and events received while SYNCING are ignored: they
   name changes made before the snapshot was read, which it holds. So the caller must call
   `resynced()` before it hands in events of the new stream.
5. STOPPED is terminal: events are ignored, nothing is taken, nothing is accepted.
6. Back-off: the delays `stream_lost()` returns double from `initial_delay` up to `max_delay`
   while the engine keeps failing, and start again from `initial_delay` once an event arrives
   (proof the engine is well). A resync alone does not reset them: an engine that accepts a
   connection and drops it at once is not hammered.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Generic, TypeVar

from dockmesh.engine.events import Kind, Refresh

E = TypeVar("E")


class Phase(enum.Enum):
    SYNCING = "syncing"
    FOLLOWING = "following"
    STOPPED = "stopped"


class ProtocolError(RuntimeError):
    """The caller broke the protocol above (a resync while following, say): a bug."""


@dataclass(frozen=True, slots=True)
class Batch(Generic[E]):
    """Objects to re-read (each once), the epoch they were asked for in, and the events that
    asked (kept only when the caller handed them in, for its event hook)."""

    epoch: int
    refreshes: tuple[Refresh, ...]
    events: tuple[E, ...] = ()


class EngineFollow(Generic[E]):
    """The state of following one engine; see the module's theory of operation."""

    def __init__(self, initial_delay: float = 0.1, max_delay: float = 5.0) -> None:
        if not 0 < initial_delay <= max_delay:
            raise ValueError(f"back-off: need 0 < {initial_delay} <= {max_delay}")
        self._initial_delay = initial_delay
        self._max_delay = max_delay
        self._next_delay = initial_delay
        self._phase = Phase.SYNCING
        self._epoch = 0
        # Insertion order is the order objects were last named in: pop, then set.
        self._pending: dict[tuple[Kind, str], Refresh] = {}
        self._events: list[E] = []

    @property
    def phase(self) -> Phase:
        return self._phase

    @property
    def epoch(self) -> int:
        return self._epoch

    @property
    def pending(self) -> tuple[Refresh, ...]:
        """What the next batch would re-read."""
        return tuple(self._pending.values())

    @property
    def has_work(self) -> bool:
        return bool(self._pending or self._events)

    def received(self, refreshes: Iterable[Refresh], event: E | None = None) -> None:
        """An event of the current stream, with what it asks to re-read."""
        if self._phase is not Phase.FOLLOWING:
            return
        # Coalesce as we go, so that a slow reader's backlog stays one entry per object.
        for r in refreshes:
            self._pending.pop((r.kind, r.id), None)
            self._pending[(r.kind, r.id)] = r
        if event is not None:
            self._events.append(event)
        self._next_delay = self._initial_delay

    def take(self) -> Batch[E] | None:
        """Everything received since the last take, or None when there is nothing."""
        if self._phase is Phase.STOPPED or not self.has_work:
            return None
        batch = Batch(self._epoch, tuple(self._pending.values()), tuple(self._events))
        self._pending, self._events = {}, []
        return batch

    def accepts(self, batch: Batch[E]) -> bool:
        """Whether the reads made for `batch` may be installed now."""
        return self._phase is not Phase.STOPPED and batch.epoch == self._epoch

    def stream_lost(self) -> float:
        """The stream ended or broke, or opening one (or its snapshot) failed. Returns how
        many seconds to wait before trying again."""
        if self._phase is Phase.STOPPED:
            return 0.0
        self._phase = Phase.SYNCING
        delay = self._next_delay
        self._next_delay = min(delay * 2, self._max_delay)
        return delay

    def resynced(self) -> bool:
        """A snapshot, read after the current stream was opened, is ready. Returns whether to
        install it (not once stopped)."""
        if self._phase is Phase.STOPPED:
            return False
        if self._phase is not Phase.SYNCING:
            raise ProtocolError("resynced() while following: call stream_lost() first")
        self._phase = Phase.FOLLOWING
        self._epoch += 1
        self._pending, self._events = {}, []
        return True

    def stop(self) -> None:
        self._phase = Phase.STOPPED
        self._pending, self._events = {}, []
