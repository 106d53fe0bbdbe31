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
  one `Read` at a time — several readers may each hold one, for different objects — re-reads
  its object, and installs the result only if `finished(read, ...)` says so.

Each object is read on its own and installed as soon as its read returns: a slow inspect (the
engine holds a container's lock while it starts or connects it) holds up that object only,
never another container's start.

Invariants (tests/unit/engine/test_coalesce.py checks each one):

1. Coalescing loses nothing. A refresh received in FOLLOWING is taken in a later `Read`,
   unless a resync or stop comes first (3, 5). The read is taken after the refresh arrived,
   so the object is re-read after the event that named it.
2. One read in flight per object. An object named while a read of it is in flight waits in
   pending until that read is `finished`, then is read again; pending names each (kind, id)
   once, and whether it is gone is the word of the last event that named it: `destroy` then
   nothing drops it unread; anything after a `destroy` re-reads it (and a read that finds
   nothing drops it too). So reads of one object are installed in the order they were taken.
3. Reads a resync overtook are dropped. Every read carries the epoch it was taken in; every
   resync starts a new epoch; `finished` says install only within the read's epoch. Applying
   such a read could roll the model back past the snapshot until the object's next event
   (maybe never). Dropping it loses nothing: the new stream was opened before its snapshot was
   read, so whatever changed since is an event still to come. The caller must call
   `finished` and install under the same lock it installs snapshots under.
4. A resync forgets pending refreshes, reads in flight and `die` marks, and events received
   while SYNCING are ignored: they name changes made before the snapshot was read, which it
   holds. So the caller must call `resynced()` before it hands in events of the new stream.
5. STOPPED is terminal: events are ignored, nothing is taken, nothing is accepted.
6. Back-off: the delays `stream_lost()` returns double from `initial_delay` up to `max_delay`
   while the engine keeps failing, and start again from `initial_delay` once an event arrives
   (proof the engine is well). A resync alone does not reset them: an engine that accepts a
   connection and drops it at once is not hammered.
7. A read begun before a container's `die` never brings "running" back: `finished` refuses a
   read that shows it running when it was taken before the last `die` received for it (the
   `die` named the container again, so a newer read follows). A read taken after the `die`
   is the truth and clears the mark.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Generic, TypeVar

from dockmesh.engine.events import Kind, Refresh

E = TypeVar("E")

Key = tuple[Kind, str]


class Phase(enum.Enum):
    SYNCING = "syncing"
    FOLLOWING = "following"
    STOPPED = "stopped"


class ProtocolError(RuntimeError):
    """The caller broke the protocol above (a resync while following, say): a bug."""


@dataclass(frozen=True, slots=True)
class Read(Generic[E]):
    """One object to re-read (None: nothing to read, only events to hand on), the epoch it was
    asked for in, how many events had been received when it was taken, and the events that
    asked for it (kept only when the caller handed them in, for its event hook)."""

    epoch: int
    refresh: Refresh | None
    taken_at: int
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
        self._pending: dict[Key, Refresh] = {}
        self._asked_by: dict[Key, list[E]] = {}  # events waiting on a pending object's read
        self._loose: list[E] = []  # events that named nothing to read
        self._in_flight: set[Key] = set()  # objects with a read taken in this epoch
        self._received = 0  # events received in this epoch
        self._exits: dict[str, int] = {}  # container id → number of its last `die` event

    @property
    def phase(self) -> Phase:
        return self._phase

    @property
    def epoch(self) -> int:
        return self._epoch

    @property
    def pending(self) -> tuple[Refresh, ...]:
        """What is still to be read, in the order it was last named in."""
        return tuple(self._pending.values())

    @property
    def in_flight(self) -> frozenset[Key]:
        return frozenset(self._in_flight)

    @property
    def has_work(self) -> bool:
        """Whether something is waiting to be read or handed on (taken or not yet takeable)."""
        return bool(self._pending or self._loose)

    @property
    def takeable(self) -> bool:
        """Whether `take()` would return a read now."""
        if self._phase is Phase.STOPPED:
            return False
        return bool(self._loose) or any(k not in self._in_flight for k in self._pending)

    def received(self, refreshes: Iterable[Refresh], event: E | None = None) -> int:
        """An event of the current stream, with what it asks to re-read. Returns its number in
        this epoch (0: ignored, not following)."""
        if self._phase is not Phase.FOLLOWING:
            return 0
        self._received += 1
        last: Key | None = None
        # Coalesce as we go, so that a slow reader's backlog stays one entry per object.
        for r in refreshes:
            key = (r.kind, r.id)
            self._pending.pop(key, None)
            self._pending[key] = r
            last = key
            if r.exited and r.kind == "container":
                self._exits[r.id] = self._received
        if event is not None:
            # An event is handed on with the read of the last object it named: for a
            # `connect`, the container's, which shows the new attachment.
            if last is None:
                self._loose.append(event)
            else:
                self._asked_by.setdefault(last, []).append(event)
        self._next_delay = self._initial_delay
        return self._received

    def want(self, kind: Kind, oid: str) -> bool:
        """The caller learnt of an object it must read (a container attached to a network
        the model does not hold): read it unless a read of it is pending or in flight already.
        Returns whether it was added."""
        key = (kind, oid)
        if self._phase is not Phase.FOLLOWING or key in self._pending or key in self._in_flight:
            return False
        self._pending[key] = Refresh(kind, oid)
        return True

    def take(self) -> Read[E] | None:
        """The oldest named object with no read in flight, or events that named nothing; None
        when there is none."""
        if self._phase is Phase.STOPPED:
            return None
        for key, r in self._pending.items():
            if key not in self._in_flight:
                del self._pending[key]
                self._in_flight.add(key)
                events = tuple(self._asked_by.pop(key, ()))
                return Read(self._epoch, r, self._received, events)
        if self._loose:
            events, self._loose = tuple(self._loose), []
            return Read(self._epoch, None, self._received, events)
        return None

    def accepts(self, read: Read[E]) -> bool:
        """Whether a read taken then is still current (in this epoch, not stopped)."""
        return self._phase is not Phase.STOPPED and read.epoch == self._epoch

    def finished(self, read: Read[E], shows_running: bool = False) -> bool:
        """The read is done (or failed: then the result does not matter): frees its object
        for the next read and says whether to install what it found. `shows_running`: it
        found a running container."""
        r = read.refresh
        current = self.accepts(read)
        if r is None or not current:
            return current
        self._in_flight.discard((r.kind, r.id))
        died_at = self._exits.get(r.id) if r.kind == "container" else None
        if died_at is not None:
            if died_at > read.taken_at:
                return not shows_running  # begun before the `die`: the next read says
            del self._exits[r.id]  # begun after the `die`: it is the truth
        return True

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
        self._forget()
        return True

    def stop(self) -> None:
        self._phase = Phase.STOPPED
        self._forget()

    def _forget(self) -> None:
        self._pending, self._asked_by, self._loose = {}, {}, []
        self._in_flight = set()
        self._exits = {}
        self._received = 0
