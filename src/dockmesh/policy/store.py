"""The applied policy, kept where both `dockmesh policy apply` and the agent find it.

The kernel keeps the ruleset, but not the policy it came from (nft comments hold 128 bytes),
and the agent must know the policy to keep the ruleset true as containers come and go, also
after a restart or a reboot. So `policy apply` writes it here, with its names already the
engine's, one file per table: `<directory>/<table>.json`. The command line and the agent
choose the directory (`$DOCKMESH_POLICY_DIR`, else `DEFAULT_DIR`) and the table
(`--table`, `$DOCKMESH_POLICY_TABLE`, else `dockmesh`); this module reads no environment.
`policy remove` deletes it. The agent notices a new file by its
identity (inode, size, modification time): files are replaced by rename, never rewritten in
place, so a reader never sees half a file.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dockmesh.model.policy import Policy, policy_from_json
from dockmesh.policy.compile import DEFAULT_TABLE, MODES, Mode
from dockmesh.policy.nft import check_table_name

DEFAULT_DIR = Path("/var/lib/dockmesh/policy")
FORMAT = 1

Stamp = tuple[int, int, int]  # inode, size, mtime_ns


def table_name(given: str | None, configured: str | None = None) -> str:
    """The table named on the command line, else the configured one (the caller's
    $DOCKMESH_POLICY_TABLE), else `dockmesh`. ValueError for a name nft would refuse."""
    return check_table_name(given or configured or DEFAULT_TABLE)


def policy_dir(configured: str | None) -> Path:
    """The configured directory (the caller's $DOCKMESH_POLICY_DIR), else `DEFAULT_DIR`."""
    return Path(configured) if configured else DEFAULT_DIR


@dataclass(frozen=True, slots=True)
class Applied:
    table: str
    mode: Mode
    policy: Policy
    source: str = ""  # the file it was read from
    # The project whose `dockmesh up` applied it ("" for `policy apply`): `down` removes only
    # a policy its own project applied.
    project: str = ""

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "format": FORMAT,
            "table": self.table,
            "mode": self.mode,
            "source": self.source,
            "policy": self.policy.to_json(),
        }
        if self.project:  # absent for `policy apply`: its files stay as they were
            doc["project"] = self.project
        return doc


def applied_from_json(doc: Any) -> Applied:
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ValueError("not an applied policy of this version")
    mode = doc.get("mode")
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}")
    project = doc.get("project", "")
    if not isinstance(project, str):
        raise ValueError(f"project {project!r} is not a name")
    return Applied(
        check_table_name(str(doc["table"])),
        mode,
        policy_from_json(doc["policy"]),
        str(doc.get("source") or ""),
        project,
    )


class PolicyStore:
    """The applied policy of one table, as a file in `directory`. `load` after `save` gives
    back what was saved; a reader never sees half a file (writes go to a temporary file,
    then rename); `stamp` changes whenever the file is replaced."""

    def __init__(self, table: str, directory: Path) -> None:
        self.table = check_table_name(table)
        self.directory = directory

    @property
    def path(self) -> Path:
        return self.directory / f"{self.table}.json"

    def stamp(self) -> Stamp | None:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_size, st.st_mtime_ns)

    def load(self) -> Applied | None:
        """The applied policy, or None when there is none. ValueError when the file is not
        one (it is left alone: a person may want to read it)."""
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return None
        try:
            return applied_from_json(json.loads(text))
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{self.path}: {e}") from None

    def save(self, applied: Applied) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.table}.", dir=self.directory)
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(applied.to_json(), f, indent=1, sort_keys=True)
                f.write("\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def remove(self) -> bool:
        try:
            self.path.unlink()
        except FileNotFoundError:
            return False
        return True
