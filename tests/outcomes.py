"""How often a property test's examples reach each of its branches.

A fuzz test of the shape "parses, or is refused cleanly" passes without checking anything when
its strategy never reaches the accepting branch (every example refused, every message None).
Such a test counts what each example reached and requires a share of each at the end:

    def test_any_body_registers_or_is_refused_cleanly() -> None:
        seen = Outcomes()

        @given(bodies)
        def run(body: bytes) -> None:
            try:
                parse(body)
            except ApiError:
                seen("refused")
                return
            seen("accepted")

        run()
        seen.require(accepted=0.3, refused=0.1)

Each outcome is also a hypothesis event: `pytest --hypothesis-show-statistics` prints the
shares of every test.
"""

from __future__ import annotations

from collections import Counter

from hypothesis import event


class Outcomes:
    def __init__(self) -> None:
        self.seen: Counter[str] = Counter()

    def __call__(self, outcome: str) -> None:
        self.seen[outcome] += 1
        event(outcome)

    def share(self, outcome: str) -> float:
        total = sum(self.seen.values())
        return self.seen[outcome] / total if total else 0.0

    def require(self, **at_least: float) -> None:
        """Fails unless each named outcome was reached in at least that share of examples."""
        total = sum(self.seen.values())
        shares = ", ".join(f"{k} {v}/{total}" for k, v in sorted(self.seen.items()))
        print(f"outcomes: {shares}")  # shown by pytest -rP
        for outcome, share in at_least.items():
            assert self.share(outcome) >= share, (
                f"the strategy reaches {outcome!r} in {self.share(outcome):.0%} of examples "
                f"(wanted at least {share:.0%}): {shares}"
            )
