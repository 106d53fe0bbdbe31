"""A problem found in a topology file, located by its path in the document."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

Path = tuple[str | int, ...]


@dataclass(frozen=True, slots=True)
class Problem:
    path: Path
    message: str
    line: int | None = None  # when the path alone would point elsewhere (a duplicate key)

    def dotted(self) -> str:
        return ".".join(str(p) for p in self.path) or "(document)"


def line_of(path: Path, lines: Mapping[Path, int]) -> int:
    """The line of the deepest part of `path` the document has (a missing key: its parent)."""
    for n in range(len(path), -1, -1):
        line = lines.get(path[:n])
        if line is not None:
            return line
    return 1


def format_problem(filename: str, p: Problem, lines: Mapping[Path, int]) -> str:
    """`FILE:LINE: path: message` on one line of visible text, whatever the file's keys and
    values hold: a newline in a key would split the report, an escape sequence would drive
    the terminal, a right-to-left override would disguise the rest of the line."""
    line = p.line if p.line is not None else line_of(p.path, lines)
    return f"{visible(filename)}:{line}: {visible(p.dotted())}: {visible(p.message)}"


def visible(text: str) -> str:
    """`text` with every character that does not print (controls, line and paragraph
    separators, format characters) written as its Python escape."""
    if text.isprintable():
        return text
    return "".join(
        ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in text
    )
