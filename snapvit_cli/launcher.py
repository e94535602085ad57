"""What a launcher (``torchrun``) says about this process, read from its environment without importing torch.

``WORLD_SIZE`` and ``RANK`` come from the environment, so they are input like any other: a value that is not an
integer, or a rank outside the world, is one :class:`SnapvitError` line (``WORLD_SIZE=abc snapvit models``), never a
``ValueError`` traceback. Unset means one process.
"""

from __future__ import annotations

import os

from snapvit_cli.errors import SnapvitError

MAX_WORLD = 1 << 16


def _env_int(name: str, default: int, lo: int, hi: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw.strip())
    except ValueError:
        value = None
    if value is None or not lo <= value <= hi:
        shown = raw if len(raw) <= 30 else raw[:27] + "..."
        raise SnapvitError(
            f"environment variable {name}={shown!r} is not an integer in [{lo}, {hi}]; torchrun sets it, "
            f"unset it to run one process"
        )
    return value


def world_size() -> int:
    """``WORLD_SIZE`` (1 when unset); a :class:`SnapvitError` when it is not a positive integer."""
    return _env_int("WORLD_SIZE", 1, 1, MAX_WORLD)


def launched() -> bool:
    """Whether this process was started by ``torchrun`` (or another launcher setting ``WORLD_SIZE``) with N > 1."""
    return world_size() > 1


def rank() -> int:
    """This process's ``RANK`` under a launcher (0 for a single process); checked against ``WORLD_SIZE``."""
    size = world_size()
    return _env_int("RANK", 0, 0, size - 1) if size > 1 else 0


def local_rank() -> int:
    """``LOCAL_RANK``: the GPU of this process on its machine (0 when unset)."""
    return _env_int("LOCAL_RANK", 0, 0, MAX_WORLD - 1)


def launched_quietly() -> tuple[bool, int]:
    """(launched, rank) for code that reports errors and must not raise: a bad environment counts as one process."""
    try:
        return launched(), rank()
    except SnapvitError:
        return False, 0
