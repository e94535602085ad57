"""A minimal command for tests/test_safe_writes.py: writes a folder (three parts) or a file through fileio, with
the CLI's own error and signal handling, so that interrupting it is fast to test at every step of a write."""

from __future__ import annotations

from pathlib import Path

import typer

from snapvit_cli import fileio
from snapvit_cli.cli._output import user_errors
from snapvit_cli.fileio import atomic_dir, atomic_path, check_output


@user_errors
def write(target: Path, content: str, kind: str = "dir", force: bool = False) -> None:
    parts = [f"part{i}.txt" for i in range(3)]
    check_output(target, force, directory=kind == "dir", owned=parts)
    if kind == "dir":
        with atomic_dir(target, force=force, owned=parts) as tmp:
            for part in parts:
                (tmp / part).write_text(f"{content} {part[4]}\n")
    else:
        with atomic_path(target, force=force) as tmp:
            tmp.write_text(f"{content}\n")


if __name__ == "__main__":
    fileio.pause_hook_enabled = True  # the test hook: off outside the test suite
    typer.run(write)
