"""The routes file's identity and the watch that reloads it on change."""

from __future__ import annotations

from typing import Any


def test_the_routes_files_identity_changes_with_a_rename_or_a_write(tmp_path: Any) -> None:
    import os

    from dockmesh.proxy.filewatch import identity

    path = tmp_path / "routes.yaml"
    assert identity(str(path)) is None
    path.write_text("routes: []\n")
    first = identity(str(path))
    path.write_text("routes: [] \n")
    second = identity(str(path))
    assert first is not None and second is not None and second != first
    new = tmp_path / "new.yaml"
    new.write_text("routes: [] \n")
    os.utime(new, ns=(second[3], second[3]))
    os.replace(new, path)
    assert identity(str(path)) != second  # same size and time, another inode


def test_a_changed_file_is_reported_once_per_change(tmp_path: Any) -> None:
    import asyncio

    from dockmesh.proxy.filewatch import watch_file

    path = tmp_path / "routes.yaml"
    path.write_text("a\n")
    seen: list[str] = []

    async def main() -> None:
        task = asyncio.create_task(
            watch_file(str(path), lambda: seen.append(path.read_text()), 0.01)
        )
        await asyncio.sleep(0.05)
        path.write_text("bb\n")
        await asyncio.sleep(0.05)
        path.unlink()  # missing: nothing to read yet
        await asyncio.sleep(0.05)
        path.write_text("ccc\n")
        await asyncio.sleep(0.05)
        task.cancel()

    asyncio.run(main())
    assert seen == ["bb\n", "ccc\n"]
