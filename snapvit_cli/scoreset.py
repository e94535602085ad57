"""What every scoring method returns, and what a bundle is written from.

A leaf (torch only): the elastic format writes it and the scoring methods produce it, so it belongs to neither.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class ScoreSet:
    """What a scoring method produces: one score per unit, plus anything worth keeping for diagnostics."""

    mlp: torch.Tensor
    heads: torch.Tensor
    method: str
    settings: dict[str, Any] = field(default_factory=dict)
    extras: dict[str, torch.Tensor] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    def of(self, kind: str) -> torch.Tensor:
        """The scores of unit ``kind`` (``"mlp"`` or ``"heads"``, the adapters' unit kinds)."""
        if kind not in ("mlp", "heads"):
            raise ValueError(f"unknown unit kind {kind!r}")
        return self.mlp if kind == "mlp" else self.heads
