"""The one range every ``--seed`` takes: what both torch's generators and numpy's ``default_rng`` (xNES) accept,
with room for the per-image seeds derived from it (``seed * 1_000_003 + image`` stays inside int64)."""

from __future__ import annotations

from typing import Any

from snapvit_cli.errors import SnapvitError

MAX_SEED = 2**32 - 1


def check_seed(seed: Any, name: str = "seed") -> int:
    """``seed`` if it is an integer in [0, :data:`MAX_SEED`]; else one :class:`SnapvitError` line naming ``name``."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        shown = repr(seed) if len(repr(seed)) <= 30 else repr(seed)[:27] + "..."
        raise SnapvitError(f"{name} must be an integer in [0, {MAX_SEED}], got {shown}", param=name)
    return seed
