"""Slicing defaults, in a module without torch so that the CLI can show them in ``--help`` (docs/method.md §4, §12)."""

from __future__ import annotations

# Fraction of each block's units that no budget removes (the paper's values).
DEFAULT_MIN_KEEP: dict[str, float] = {"mlp": 0.05, "heads": 0.2}

# With a FLOPs / params budget, heads are removed at max(0, mlp_ratio - offset): 0.15 is the paper's grid
# (0.15, 0), (0.25, 0.1), ..., (0.65, 0.5); 0 prunes both alike; 1 prunes MLP neurons only.
DEFAULT_HEAD_OFFSET = 0.15
