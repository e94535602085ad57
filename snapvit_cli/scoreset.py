"""What every scoring method returns, and what a bundle is written from."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from snapvit_cli.adapters.base import MLP


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
        return self.mlp if kind == MLP else self.heads
