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
    check_output(target, force, directory=kind == "dir")
    if kind == "dir":
        with atomic_dir(target) as tmp:
            for i in range(3):
                (tmp / f"part{i}.txt").write_text(f"{content} {i}\n")
    else:
        with atomic_path(target) as tmp:
            tmp.write_text(f"{content}\n")


if __name__ == "__main__":
    fileio.pause_hook_enabled = True  # the test hook: off outside the test suite
    typer.run(write)
