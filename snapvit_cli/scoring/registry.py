"""The scoring methods by name: one table that the CLI, the library and the bundle metadata read.

Adding a method is one row here and one function ``(model, adapter, settings) -> ScoreSet`` in its module. The table
is plain data (no torch), so ``snapvit score --help`` can list the methods without importing them.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import nn

    from snapvit_cli.adapters import ModelAdapter
    from snapvit_cli.scoreset import ScoreSet
    from snapvit_cli.scoring.settings import ScoreSettings

    Scorer = Callable[[nn.Module, ModelAdapter, ScoreSettings], ScoreSet]


@dataclass(frozen=True)
class ScoringMethod:
    """One scoring method: whether it reads calibration images, and where its function lives."""

    name: str
    needs_data: bool
    summary: str
    entry: str  # "module:function" under snapvit_cli.scoring

    def load(self) -> Scorer:
        module, _, function = self.entry.partition(":")
        return getattr(importlib.import_module(f"snapvit_cli.scoring.{module}"), function)


REGISTRY: dict[str, ScoringMethod] = {
    method.name: method
    for method in (
        ScoringMethod(
            "snapvit", True, "gradient scores re-weighted by an xNES search (the paper)", "snapvit:snapvit_scores"
        ),
        ScoringMethod("gradient", True, "label-free gradient scores, no re-weighting", "gradient:gradient_scores"),
        ScoringMethod("magnitude", False, "L2 norm of each unit's weights", "magnitude:magnitude_scores"),
        ScoringMethod("random", False, "seeded random scores (a baseline)", "baselines:random_scores"),
        ScoringMethod("snip", True, "SNIP: |weight x gradient| on the same gradients", "baselines:snip_scores"),
        ScoringMethod("lamp", False, "LAMP magnitude scores (a baseline)", "baselines:lamp_scores"),
    )
}
METHODS: tuple[str, ...] = tuple(REGISTRY)
DATA_METHODS: frozenset[str] = frozenset(name for name, method in REGISTRY.items() if method.needs_data)
