"""The exceptions the command line maps onto exit codes. A light module on purpose: the CLI
imports it at start-up without pulling in what raises them."""

from __future__ import annotations


class EngineError(Exception):
    """The engine could not be reached or refused a request (exit 1)."""


class EngineNotFound(EngineError):
    """The object named does not exist on the engine."""


class EngineConflict(EngineError):
    """The engine refused because of the object's state (in use, already exists)."""


class BuildError(Exception):
    """An image could not be built (exit 1)."""


class SpecError(Exception):
    """A topology file is wrong (exit 2); `lines` holds one formatted problem each."""

    def __init__(self, lines: list[str]) -> None:
        super().__init__("\n".join(lines))
        self.lines = lines


class UsageError(Exception):
    """Bad input (a flag, a name that does not exist): exit 2 with this one-line reason."""


class Interrupted(Exception):
    """The user stopped an operation (SIGINT) between two of its steps; the message says
    what was done and what was not."""
