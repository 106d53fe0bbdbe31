"""The exceptions the command line maps onto exit codes. A light module on purpose: the CLI
imports it at start-up without pulling in what raises them."""

from __future__ import annotations


class EngineError(Exception):
    """The engine could not be reached or refused a request (exit 1)."""


class BuildError(Exception):
    """An image could not be built (exit 1)."""


class SpecError(Exception):
    """A topology file is wrong (exit 2); `lines` holds one formatted problem each."""

    def __init__(self, lines: list[str]) -> None:
        super().__init__("\n".join(lines))
        self.lines = lines
