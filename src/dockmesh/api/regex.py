"""Regular expressions for `?filter=…matches…`, in time linear in the text. Pure.

Consul's filters use Go's RE2, which never backtracks. Python's `re` does: `a*a*a*a*b` over
512 `a`s runs for minutes, and a filter is whatever a client sends. So `matches` runs here,
on a Thompson NFA read one character at a time as a lazy DFA (each set of states and each
transition built once, then a dict lookup a character): time O(len(text) * len(pattern)).
That bound is still seconds in Python for a pattern of thousands of states over a long
field (`(.|.|.){500}z`, whose sets grow with every character), and the filter runs on the
loop that answers DNS: so what building sets costs is charged to a `Budget` per request
(`MAX_STEPS`, about 25 ms), and all the patterns of one filter share
`MAX_STATES`. What a request takes past them is refused (`BudgetExceeded`), not waited for.

The syntax is RE2's common core: literals, `.`, classes `[a-z]`, `[^…]`, escapes `\\d \\w \\s`
(and their capitals), `\\.` and the like, `^`, `$`, groups `(…)`, `(?:…)`, `(?P<name>…)`,
alternation, `* + ? {n} {n,} {n,m}` (a lazy `?` after them changes nothing for a yes/no
match) and a leading `(?i)`. What RE2 refuses (backreferences, lookaround) is refused, with
what else this subset leaves out, by `RegexError`. A match is a search, like Go's
`MatchString`: anywhere in the text unless anchored.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

MAX_PATTERN = 1024
# NFA states of all the patterns of one filter: `x{1000}{1000}` would be a million; a
# compiled state costs about 4 µs and 200 bytes, and what one request costs the event loop
# is time every DNS answer waits (RE2 takes more: `[a-z]{1,1000}` is refused here).
MAX_STATES = 2_000
MAX_REPEAT = 1000  # RE2's own limit on a counted repetition
# Steps (NFA states visited building DFA states) one request's searches may take: about
# 25 ms of the event loop, which every DNS answer and API request shares. The usual pattern
# over a few hundred rows takes a few thousand (a transition already built costs nothing).
MAX_STEPS = 50_000

CharTest = Callable[[str], bool]


class RegexError(ValueError):
    """A pattern this module does not take; the message says why, in one line."""


@dataclass(slots=True)
class _State:
    # kind: "char" (test, then out), "split" (out and alt), "bol", "eol" (assertions, then
    # out), "match".
    kind: str
    test: CharTest | None = None
    out: int = -1
    alt: int = -1


@dataclass(slots=True)
class _Frag:
    start: int
    ends: list[tuple[int, str]] = field(default_factory=list)  # (state, "out" or "alt")


_DIGIT: CharTest = lambda c: "0" <= c <= "9"  # noqa: E731
_WORD: CharTest = lambda c: c == "_" or (c.isascii() and c.isalnum())  # noqa: E731
_SPACE: CharTest = lambda c: c in " \t\n\r\f\v"  # noqa: E731
_CLASSES: dict[str, CharTest] = {
    "d": _DIGIT,
    "w": _WORD,
    "s": _SPACE,
    "D": lambda c: not _DIGIT(c),
    "W": lambda c: not _WORD(c),
    "S": lambda c: not _SPACE(c),
}
_CONTROL = {"t": "\t", "n": "\n", "r": "\r", "f": "\f", "v": "\v", "a": "\a"}


class _Compiler:
    def __init__(self, pattern: str, max_states: int = MAX_STATES) -> None:
        self.p = pattern
        self.max_states = max_states
        self.i = 0
        self.states: list[_State] = []
        self.fold = False

    def fail(self, why: str) -> RegexError:
        return RegexError(f"invalid regular expression at offset {self.i}: {why}")

    def new(self, kind: str, test: CharTest | None = None) -> int:
        if len(self.states) >= self.max_states:
            raise RegexError("regular expression too large")
        self.states.append(_State(kind, test))
        return len(self.states) - 1

    def patch(self, ends: list[tuple[int, str]], to: int) -> None:
        for s, slot in ends:
            if slot == "out":
                self.states[s].out = to
            else:
                self.states[s].alt = to

    def peek(self) -> str:
        return self.p[self.i] if self.i < len(self.p) else ""

    # --- grammar: alternation > concatenation > repetition > atom -------------------------

    def alternation(self, depth: int) -> _Frag:
        if depth > 100:
            raise self.fail("groups nested too deeply")
        frag = self.concatenation(depth)
        while self.peek() == "|":
            self.i += 1
            other = self.concatenation(depth)
            split = self.new("split")
            self.states[split].out, self.states[split].alt = frag.start, other.start
            frag = _Frag(split, frag.ends + other.ends)
        return frag

    def concatenation(self, depth: int) -> _Frag:
        frag: _Frag | None = None
        while self.peek() not in ("", "|", ")"):
            nxt = self.repetition(depth)
            if frag is None:
                frag = nxt
            else:
                self.patch(frag.ends, nxt.start)
                frag = _Frag(frag.start, nxt.ends)
        return frag if frag is not None else self.empty()

    def repetition(self, depth: int) -> _Frag:
        start = self.i
        frag = self.atom(depth)
        atom_text = self.p[start : self.i]
        c = self.peek()
        if c not in ("*", "+", "?", "{") or (c == "{" and not self._counted_ahead()):
            return frag
        low, high = self.bounds()
        if self.peek() == "?":  # lazy: the same yes/no answer
            self.i += 1
        if self.peek() in ("*", "+", "?") or (self.peek() == "{" and self._counted_ahead()):
            raise self.fail("bad repetition operator")
        # x{2,4} is x x x? x?, and x+ is x x*: copies of the atom, compiled again from its text.
        copies = low + (1 if high is None else high - low)
        made = [frag, *(self._recompile(atom_text, depth) for _ in range(copies - 1))][:copies]
        parts = made[:low]
        for opt in made[low:]:
            split = self.new("split")
            self.states[split].out = opt.start
            if high is None:  # the loop back
                self.patch(opt.ends, split)
                parts.append(_Frag(split, [(split, "alt")]))
            else:
                parts.append(_Frag(split, [*opt.ends, (split, "alt")]))
        if not parts:  # x{0}: the empty string
            return self.empty()
        whole = parts[0]
        for nxt in parts[1:]:
            self.patch(whole.ends, nxt.start)
            whole = _Frag(whole.start, nxt.ends)
        return whole

    def empty(self) -> _Frag:
        s = self.new("split")
        return _Frag(s, [(s, "out")])

    def _counted_ahead(self) -> bool:
        j = self.i + 1
        while j < len(self.p) and (self.p[j].isdigit() or self.p[j] == ","):
            j += 1
        return j < len(self.p) and self.p[j] == "}" and j > self.i + 1

    def _recompile(self, text: str, depth: int) -> _Frag:
        saved_p, saved_i = self.p, self.i
        self.p, self.i = text, 0
        try:
            return self.atom(depth)
        finally:
            self.p, self.i = saved_p, saved_i

    def bounds(self) -> tuple[int, int | None]:
        c = self.p[self.i]
        self.i += 1
        if c == "*":
            return 0, None
        if c == "+":
            return 1, None
        if c == "?":
            return 0, 1
        end = self.p.find("}", self.i)
        body = self.p[self.i : end] if end >= 0 else ""
        lo_text, comma, hi_text = body.partition(",")
        if end < 0 or not lo_text.isdigit() or (hi_text and not hi_text.isdigit()):
            raise self.fail("bad repetition {n,m}")
        self.i = end + 1
        low = int(lo_text[:5])
        high = None if comma and not hi_text else int((hi_text or lo_text)[:5])
        if low > MAX_REPEAT or (high is not None and (high > MAX_REPEAT or high < low)):
            raise self.fail(f"bad repetition {{{body}}} (at most {MAX_REPEAT})")
        return low, high

    def atom(self, depth: int) -> _Frag:
        c = self.peek()
        self.i += 1
        if c == "(":
            if self.p.startswith("?:", self.i):
                self.i += 2
            elif self.p.startswith("?P<", self.i):
                end = self.p.find(">", self.i)
                if end < 0:
                    raise self.fail("unterminated group name")
                self.i = end + 1
            elif self.peek() == "?":
                raise self.fail("lookaround and inline flags other than a leading (?i)")
            inner = self.alternation(depth + 1)
            if self.peek() != ")":
                raise self.fail("missing )")
            self.i += 1
            return inner
        if c in ("*", "+", "?", "{") and not (c == "{" and not self._counted_before()):
            raise self.fail("missing argument to repetition operator")
        if c == "^":
            s = self.new("bol")
            return _Frag(s, [(s, "out")])
        if c == "$":
            s = self.new("eol")
            return _Frag(s, [(s, "out")])
        if c == ".":
            return self.char(lambda ch: ch != "\n")
        if c == "[":
            return self.char(self.klass())
        if c == "\\":
            return self.char(self.escape(in_class=False))
        return self.char(self.literal(c))

    def _counted_before(self) -> bool:
        # `{` is a literal unless it starts {n}, {n,} or {n,m}.
        saved = self.i
        self.i -= 1
        try:
            return self._counted_ahead()
        finally:
            self.i = saved

    def literal(self, c: str) -> CharTest:
        if self.fold:
            low = c.lower()
            return lambda ch: ch.lower() == low
        return lambda ch: ch == c

    def char(self, test: CharTest) -> _Frag:
        s = self.new("char", test)
        return _Frag(s, [(s, "out")])

    def escape(self, in_class: bool) -> CharTest:
        c = self.peek()
        if not c:
            raise self.fail("trailing backslash")
        self.i += 1
        if c in _CLASSES:
            return _CLASSES[c]
        if c in _CONTROL:
            return self.literal(_CONTROL[c])
        if c.isdigit() or (c in "bBAzZpPxuUQE" and not in_class):
            raise self.fail(f"escape \\{c} is not supported")
        if c.isalnum():
            raise self.fail(f"invalid escape \\{c}")
        return self.literal(c)

    def klass(self) -> CharTest:
        negate = self.peek() == "^"
        if negate:
            self.i += 1
        tests: list[CharTest] = []
        first = True
        while True:
            c = self.peek()
            if not c:
                raise self.fail("missing ]")
            if c == "]" and not first:
                self.i += 1
                break
            first = False
            self.i += 1
            if c == "[" and self.peek() == ":":
                raise self.fail("POSIX classes [:name:] are not supported")
            if c == "\\":
                lo_test = self.escape(in_class=True)
                prev = self.p[self.i - 1]
                if prev in _CLASSES:
                    tests.append(lo_test)
                    continue
                lo = _CONTROL.get(prev, prev)
            else:
                lo = c
            if self.peek() == "-" and self.i + 1 < len(self.p) and self.p[self.i + 1] != "]":
                self.i += 1
                hi = self.peek()
                self.i += 1
                if hi == "\\":
                    self.escape(in_class=True)
                    hi = self.p[self.i - 1]
                    hi = _CONTROL.get(hi, hi)
                if hi < lo:
                    raise self.fail(f"bad range {lo}-{hi}")
                tests.append(self._range(lo, hi))
            else:
                tests.append(self.literal(lo))
        if negate:
            return lambda ch: not any(t(ch) for t in tests)
        return lambda ch: any(t(ch) for t in tests)

    def _range(self, lo: str, hi: str) -> CharTest:
        if self.fold:
            return lambda ch: lo <= ch <= hi or lo <= ch.lower() <= hi or lo <= ch.upper() <= hi
        return lambda ch: lo <= ch <= hi


class BudgetExceeded(RegexError):
    """A `Budget` ran out: the patterns cost more than it allows over these texts."""


class Budget:
    """Work `Regex.search` may still do, shared by the searches of one request: a step is one
    NFA state visited while a new DFA state or transition is built (a cached transition costs
    nothing). Bounds the time and memory a pattern costs whatever the pattern and the text."""

    def __init__(self, steps: int = MAX_STEPS) -> None:
        self.steps = steps
        self.left = steps

    def charge(self, steps: int) -> None:
        self.left -= steps
        if self.left < 0:
            raise BudgetExceeded(f"regular expressions cost more than {self.steps} steps")


class Regex:
    """A compiled pattern: `search(text)` says whether it matches anywhere in `text`.

    Run as a lazy DFA (RE2's way): each set of NFA states met is numbered once, and each
    (set, character) transition is computed once and remembered, so the usual pattern costs
    a dict lookup a character. What building them costs is charged to a `Budget`: a pattern
    whose sets keep growing (`(.?){1000}z`) costs the budget, not minutes of the loop."""

    __slots__ = ("_accept", "_first", "_ids", "_next", "_sets", "_start", "_states", "pattern")

    def __init__(self, pattern: str, states: tuple[_State, ...], start: int) -> None:
        self.pattern = pattern
        self._states = states
        self._start = start
        # A DFA state: the NFA's char and match states reached, and the `$`s waiting for the
        # end of the text; `_accept[i]` says whether it holds the match state.
        self._ids: dict[frozenset[int], int] = {}
        self._sets: list[frozenset[int]] = []
        self._accept: list[bool] = []
        self._next: dict[tuple[int, str], int] = {}
        self._first: int | None = None  # the DFA state at the start of a text

    @property
    def size(self) -> int:
        """The NFA states compiled (what a filter's `MAX_STATES` counts)."""
        return len(self._states)

    def search(self, text: str, budget: Budget | None = None) -> bool:
        budget = budget if budget is not None else Budget()
        accept, nxt = self._accept, self._next
        current = self._first
        if current is None:
            current = self._dfa(self._closure({self._start}, True, False, budget), budget)
            self._first = current
        for ch in text:
            if accept[current]:
                return True
            following = nxt.get((current, ch))
            if following is None:
                following = self._step(current, ch, budget)
            current = following
        return accept[current] or self._at_end(current, not text, budget)

    def _dfa(self, nfa: frozenset[int], budget: Budget) -> int:
        known = self._ids.get(nfa)
        if known is not None:
            return known
        budget.charge(len(nfa) + 1)  # what it keeps in memory
        self._ids[nfa] = len(self._sets)
        self._sets.append(nfa)
        self._accept.append(any(self._states[s].kind == "match" for s in nfa))
        return len(self._sets) - 1

    def _step(self, current: int, ch: str, budget: Budget) -> int:
        states = self._states
        nfa = self._sets[current]
        budget.charge(len(nfa) + 1)
        stepped = {
            states[s].out
            for s in nfa
            if states[s].kind == "char" and states[s].test(ch)  # type: ignore[misc]
        }
        stepped.add(self._start)  # a search: a match may start anywhere
        following = self._dfa(self._closure(stepped, False, False, budget), budget)
        self._next[(current, ch)] = following
        return following

    def _at_end(self, current: int, at_start: bool, budget: Budget) -> bool:
        states = self._states
        waiting = {states[s].out for s in self._sets[current] if states[s].kind == "eol"}
        if not waiting:
            return False
        end = self._closure(waiting, at_start, True, budget)
        return any(states[s].kind == "match" for s in end)

    def _closure(
        self, seeds: set[int], at_start: bool, at_end: bool, budget: Budget
    ) -> frozenset[int]:
        """The char and match states `seeds` reach without reading a character, with the
        `$`s that wait for the end of the text (`^` holds only at the start). Each state
        visited is a step of `budget`, charged as it goes: a closure may visit them all."""
        states = self._states
        seen: set[int] = set()
        stack = [s for s in seeds if s >= 0]
        charged = 0
        while stack:
            s = stack.pop()
            if s in seen:
                continue
            seen.add(s)
            charged += 1
            if charged == 1024:
                budget.charge(charged)
                charged = 0
            st = states[s]
            if st.kind == "split":
                stack.extend(x for x in (st.out, st.alt) if x >= 0)
            elif st.kind == "bol":
                if at_start and st.out >= 0:
                    stack.append(st.out)
            elif st.kind == "eol" and at_end and st.out >= 0:
                stack.append(st.out)
        budget.charge(charged)
        keep = ("char", "match") if at_end else ("char", "match", "eol")
        return frozenset(s for s in seen if states[s].kind in keep)


def compile_regex(pattern: str, max_states: int = MAX_STATES) -> Regex:
    """`pattern` compiled, or `RegexError` with a one-line reason (also when it would take
    more than `max_states` NFA states)."""
    if len(pattern) > MAX_PATTERN:
        raise RegexError(f"regular expression longer than {MAX_PATTERN} characters")
    c = _Compiler(pattern, max_states)
    if pattern.startswith("(?i)"):
        c.fold, c.i = True, 4
    frag = c.alternation(0)
    if c.i < len(pattern):
        raise c.fail("unexpected )")
    match = c.new("match")
    c.patch(frag.ends, match)
    return Regex(pattern, tuple(c.states), frag.start)
