"""The follow state machine (dockmesh.engine.coalesce): its invariants one by one, then the
whole protocol driven through every interleaving hypothesis finds, against a toy engine."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    invariant,
    precondition,
    rule,
)

from dockmesh.engine.coalesce import EngineFollow, Phase, ProtocolError, Read
from dockmesh.engine.events import Kind, Refresh

refreshes = st.builds(
    Refresh,
    st.sampled_from(["container", "network"]),
    st.sampled_from(["a", "b", "c"]),
    st.booleans(),
    st.booleans(),
)

Key = tuple[str, str]


class FollowMachine(RuleBasedStateMachine):
    """Invariants 1-5 and 7, against what the module's docstring promises: a model of the
    pending objects (in the order last named), the reads in flight, and the `die` marks."""

    reads = Bundle("reads")

    def __init__(self) -> None:
        super().__init__()
        self.follow: EngineFollow[int] = EngineFollow()
        self.follow.resynced()
        self.pending: dict[Key, Refresh] = {}  # received while following, not taken yet
        self.asked: dict[Key, list[int]] = {}
        self.loose: list[int] = []
        self.in_flight: set[Key] = set()
        self.seq = 0  # events received this epoch
        self.exits: dict[str, int] = {}
        self.resyncs = 0
        self.stopped = False
        self.following = True

    def forget(self) -> None:
        self.pending, self.asked, self.loose = {}, {}, []
        self.in_flight, self.exits, self.seq = set(), {}, 0

    @rule(rs=st.lists(refreshes, max_size=4), event=st.integers())
    def receive(self, rs: list[Refresh], event: int) -> None:
        n = self.follow.received(rs, event)
        if not self.following or self.stopped:
            assert n == 0
            return
        self.seq += 1
        assert n == self.seq
        for r in rs:
            self.pending.pop((r.kind, r.id), None)
            self.pending[(r.kind, r.id)] = r
            if r.exited and r.kind == "container":
                self.exits[r.id] = self.seq
        if rs:
            self.asked.setdefault((rs[-1].kind, rs[-1].id), []).append(event)
        else:
            self.loose.append(event)

    @rule(kind=st.sampled_from(["container", "network"]), oid=st.sampled_from(["a", "b", "c"]))
    def want(self, kind: Kind, oid: str) -> None:
        key = (kind, oid)
        added = self.follow.want(kind, oid)
        live = self.following and not self.stopped
        assert added == (live and key not in self.pending and key not in self.in_flight)
        if added:
            self.pending[key] = Refresh(kind, oid)

    @rule(target=reads)
    def take(self) -> tuple[Read[int], int] | None:
        read = self.follow.take()
        free = [k for k in self.pending if k not in self.in_flight]
        if self.stopped or not (free or self.loose):
            assert read is None
            return None
        assert read is not None
        assert read.taken_at == self.seq
        if free:
            # 1 and 2: the oldest object named, with no read in flight, with its last word.
            key = free[0]
            assert read.refresh == self.pending.pop(key)
            assert read.events == tuple(self.asked.pop(key, []))
            self.in_flight.add(key)
        else:
            assert read.refresh is None
            assert read.events == tuple(self.loose)
            self.loose = []
        return read, self.resyncs

    @rule(taken=consumes(reads), shows_running=st.booleans())
    def finish(self, taken: tuple[Read[int], int] | None, shows_running: bool) -> None:
        if taken is None:
            return
        read, resyncs_then = taken
        install = self.follow.finished(read, shows_running)
        current = not self.stopped and resyncs_then == self.resyncs
        r = read.refresh
        if not current:  # 3 and 5
            assert not install
            return
        if r is None:
            assert install
            return
        self.in_flight.discard((r.kind, r.id))
        died_at = self.exits.get(r.id) if r.kind == "container" else None
        if died_at is not None and died_at > read.taken_at:
            assert install == (not shows_running)  # 7: never "running" from before a die
        else:
            if died_at is not None:
                del self.exits[r.id]
            assert install

    @rule()
    def lose_stream(self) -> None:
        self.follow.stream_lost()
        if not self.stopped:
            self.following = False

    @rule()
    def resync(self) -> None:
        if self.following and not self.stopped:
            with pytest.raises(ProtocolError):
                self.follow.resynced()
            return
        installed = self.follow.resynced()
        assert installed == (not self.stopped)
        if installed:
            self.resyncs += 1
            self.following = True
            self.forget()  # 4: forgotten

    @precondition(lambda self: not self.stopped)
    @rule()
    def stop(self) -> None:
        self.follow.stop()
        self.stopped = True
        self.forget()

    @invariant()
    def phase_and_work_match(self) -> None:
        expected = (
            Phase.STOPPED if self.stopped else Phase.FOLLOWING if self.following else Phase.SYNCING
        )
        assert self.follow.phase is expected
        assert self.follow.pending == tuple(self.pending.values())
        assert self.follow.in_flight == self.in_flight  # 2: at most one read per object
        assert self.follow.has_work == bool(self.pending or self.loose)
        free = any(k not in self.in_flight for k in self.pending)
        assert self.follow.takeable == (not self.stopped and (free or bool(self.loose)))


TestFollowMachine = FollowMachine.TestCase
TestFollowMachine.settings = settings(max_examples=100, stateful_step_count=40)


@given(st.lists(st.sampled_from(["lost", "event", "resync"]), max_size=30))
def test_back_off_doubles_to_a_ceiling_and_an_event_resets_it(steps: list[str]) -> None:
    follow: EngineFollow[None] = EngineFollow(initial_delay=0.5, max_delay=3.0)
    losses = 0  # since the last event
    for step in steps:
        if step == "lost":
            assert follow.stream_lost() == min(0.5 * 2**losses, 3.0)
            losses += 1
        elif step == "resync" and follow.phase is Phase.SYNCING:
            follow.resynced()  # 6: not a reset on its own
        elif step == "event" and follow.phase is Phase.FOLLOWING:
            follow.received([Refresh("container", "x")])
            losses = 0


def test_back_off_bounds_are_checked() -> None:
    with pytest.raises(ValueError, match="back-off"):
        EngineFollow(initial_delay=0)
    with pytest.raises(ValueError, match="back-off"):
        EngineFollow(initial_delay=2, max_delay=1)


# --- the whole protocol against a toy engine ------------------------------------------------
#
# The engine holds containers (id → version, running). Every change is an event on the open
# stream; a stream that drops loses what it had not delivered. Several readers re-read objects
# concurrently, each read taken, made and finished as separate steps, so changes, drops,
# resyncs and other reads land between them. Whatever the interleaving, once things settle the
# model equals the engine (invariants 1-4); and at no moment does the model show a container
# running that has not run since the last `die` the follower heard of (7), while the shell, as
# the watcher does, marks a container exited as soon as its `die` is delivered.

OBJECTS = ["a", "b"]
OPS = ["update", "start", "die", "remove"]
State = tuple[int, bool]  # version, running


@dataclass
class Toy:
    engine: dict[str, State] = field(default_factory=dict)
    model: dict[str, State] = field(default_factory=dict)
    follow: EngineFollow[None] = field(default_factory=EngineFollow)
    stream: list[Refresh] | None = None  # None: no stream open
    snapshot: dict[str, State] | None = None  # read, not installed yet
    # Reads taken, in the order taken: what each found once made (absent: not made yet).
    reads: list[tuple[Read[None], dict[str, State | None]]] = field(default_factory=list)
    clock: int = 0
    # Whether each container has run since the last `die` delivered for it.
    ran_since_die: dict[str, bool] = field(default_factory=dict)

    def change(self, oid: str, op: str) -> None:
        self.clock += 1
        old = self.engine.get(oid)
        if op == "remove":
            if old is None:
                return
            del self.engine[oid]
            refresh = Refresh("container", oid, gone=True)
        elif op == "die":
            if old is None or not old[1]:
                return
            self.engine[oid] = (self.clock, False)
            refresh = Refresh("container", oid, exited=True)
        else:
            running = op == "start" or (old is not None and old[1])
            self.engine[oid] = (self.clock, running)
            if running:
                self.ran_since_die[oid] = True
            refresh = Refresh("container", oid)
        if self.stream is not None:
            self.stream.append(refresh)

    def deliver(self) -> None:
        # The shell hands in events of a stream only once its snapshot is installed.
        if self.stream and self.snapshot is None and self.follow.phase is Phase.FOLLOWING:
            r = self.stream.pop(0)
            self.follow.received([r])
            if r.exited:
                running_now = self.engine.get(r.id, (0, False))[1]
                self.ran_since_die[r.id] = running_now
                held = self.model.get(r.id)
                if held is not None and held[1]:  # the watcher's `_mark_exited`
                    self.model[r.id] = (held[0], False)

    def take(self) -> None:
        read = self.follow.take()
        if read is not None:
            self.reads.append((read, {}))

    def read_one(self, oid: str) -> None:
        """Makes the first unmade read (of `oid`, if there is one)."""
        unmade = [(rd, f) for rd, f in self.reads if "v" not in f]
        mine = [(rd, f) for rd, f in unmade if rd.refresh and rd.refresh.id == oid]
        for rd, found in mine or unmade:
            r = rd.refresh
            found["v"] = None if r is None or r.gone else self.engine.get(r.id)
            return

    def apply(self, oid: str) -> None:
        """Finishes the first made read (of `oid`, if there is one), installing it if told."""
        made = [(rd, f) for rd, f in self.reads if "v" in f]
        mine = [(rd, f) for rd, f in made if rd.refresh and rd.refresh.id == oid]
        for rd, found in mine or made:
            self.reads.remove((rd, found))
            v = found["v"]
            r = rd.refresh
            if self.follow.finished(rd, shows_running=v is not None and v[1]) and r is not None:
                if v is None:
                    self.model.pop(r.id, None)
                else:
                    self.model[r.id] = v
            return

    def drop(self) -> None:
        if self.follow.phase is Phase.FOLLOWING:
            self.stream = None
            self.follow.stream_lost()

    def open_stream(self) -> None:
        if self.follow.phase is Phase.SYNCING and self.stream is None:
            self.stream = []

    def fail_resync(self) -> None:
        """Opening the stream or reading the snapshot failed: try again later."""
        if self.follow.phase is Phase.SYNCING and self.stream is not None:
            self.stream, self.snapshot = None, None
            self.follow.stream_lost()

    def read_snapshot(self) -> None:
        if self.stream is not None and self.follow.phase is Phase.SYNCING:
            self.snapshot = dict(self.engine)

    def install(self) -> None:
        if self.snapshot is not None and self.follow.resynced():
            self.model, self.snapshot = self.snapshot, None
            # The snapshot is the truth as of now: whatever runs in it has run.
            for oid, (_, running) in self.model.items():
                if running:
                    self.ran_since_die[oid] = True

    # Steps that do several of the above at once make the interleavings that matter (a resync
    # landing between a read and its install, a die between them) likely enough to be found.
    def reconnect(self) -> None:
        self.drop()
        self.open_stream()
        self.read_snapshot()
        self.install()

    def pump(self, oid: str) -> None:
        self.deliver()
        self.take()
        self.read_one(oid)

    def never_running_after_a_die(self) -> None:
        for oid, (_, running) in self.model.items():
            assert not running or self.ran_since_die.get(oid, True), oid

    def settle(self) -> None:
        if self.follow.phase is Phase.SYNCING:
            self.open_stream()
            self.read_snapshot()
            self.install()
        while self.stream or self.reads or self.follow.has_work:
            self.deliver()
            self.take()
            while self.reads:
                oid = self.reads[0][0].refresh.id if self.reads[0][0].refresh else ""
                self.read_one(oid)
                self.apply(oid)
                self.take()
            self.never_running_after_a_die()


STEPS = ["change", "deliver", "take", "read_one", "apply", "drop", "open_stream"]
STEPS += ["fail_resync", "read_snapshot", "install", "reconnect", "pump"]
ARG_STEPS = {"read_one", "apply", "pump"}


Step = tuple[str, str, str]
# The races the rules are for, always tried (random search finds them only now and then):
# a read that a resync overtook is installed after the snapshot (invariant 3) ...
STALE_READ: list[Step] = [
    ("change", "a", "update"),
    ("pump", "a", ""),
    ("change", "a", "update"),
    ("reconnect", "a", ""),
    ("apply", "a", ""),
]
# ... an object destroyed then made again (ids are not reused by Docker, but the rule must
# not depend on it) while its read is pending (invariant 2) ...
GONE_THEN_BACK: list[Step] = [
    ("change", "a", "update"),
    ("pump", "a", ""),
    ("apply", "a", ""),
    ("change", "a", "remove"),
    ("change", "a", "update"),
    ("deliver", "a", ""),
    ("deliver", "a", ""),
]
# ... a read begun before a `die`, made while the container still ran, finished after the
# `die` was heard (invariant 7) ...
READ_BEFORE_DIE: list[Step] = [
    ("change", "a", "start"),
    ("pump", "a", ""),
    ("apply", "a", ""),
    ("change", "a", "update"),
    ("pump", "a", ""),
    ("change", "a", "die"),
    ("deliver", "a", ""),
    ("apply", "a", ""),
]
# ... and a slow read of one object while another is read, installed and read again.
SLOW_NEIGHBOUR: list[Step] = [
    ("change", "a", "start"),
    ("change", "b", "start"),
    ("deliver", "a", ""),
    ("take", "a", ""),
    ("deliver", "b", ""),
    ("take", "b", ""),
    ("read_one", "b", ""),
    ("apply", "b", ""),
    ("change", "b", "die"),
    ("pump", "b", ""),
    ("apply", "b", ""),
    ("read_one", "a", ""),
    ("apply", "a", ""),
]


@settings(max_examples=500)
@given(
    st.lists(
        st.tuples(st.sampled_from(STEPS), st.sampled_from(OBJECTS), st.sampled_from(OPS)),
        max_size=80,
    )
)
@example(STALE_READ)
@example(GONE_THEN_BACK)
@example(READ_BEFORE_DIE)
@example(SLOW_NEIGHBOUR)
def test_the_model_converges_to_the_engine_whatever_the_interleaving(steps: list[Step]) -> None:
    toy = Toy()
    toy.open_stream()
    toy.read_snapshot()
    toy.install()
    for step, oid, op in steps:
        if step == "change":
            toy.change(oid, op)
        elif step in ARG_STEPS:
            getattr(toy, step)(oid)
        else:
            getattr(toy, step)()
        toy.never_running_after_a_die()
    toy.settle()
    assert toy.model == toy.engine


def test_a_slow_read_holds_up_only_its_own_object() -> None:
    """One container's read is slow (taken, not back); another container's start is named,
    taken, read and installed meanwhile; the slow one's next event waits for its read."""
    follow: EngineFollow[str] = EngineFollow()
    follow.resynced()
    follow.received([Refresh("container", "slow")], "slow connect")
    slow = follow.take()
    assert slow is not None and slow.refresh == Refresh("container", "slow")
    follow.received([Refresh("container", "slow")], "slow start")
    follow.received([Refresh("container", "fast")], "fast start")
    fast = follow.take()
    assert fast is not None and fast.refresh == Refresh("container", "fast")
    assert fast.events == ("fast start",)
    assert follow.take() is None  # "slow" again only once its read is back
    assert follow.finished(fast, shows_running=True)
    assert follow.finished(slow, shows_running=True)
    again = follow.take()
    assert again is not None and again.refresh == Refresh("container", "slow")
    assert again.events == ("slow start",)
