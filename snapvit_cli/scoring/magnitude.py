"""Data-free baseline: a unit's importance is the L2 norm of every weight that reads into or out of it.

For an MLP neuron that is its ``fc1`` row and ``fc2`` column; for a head its q, k, v rows and ``proj`` columns.
Biases are left out (they do not scale the unit's contribution). Works for every family through the adapter's unit
tensors.
"""

from __future__ import annotations

import torch
from torch import nn

from snapvit_cli.adapters import HEADS, MLP, ModelAdapter
from snapvit_cli.adapters.base import unit_rows
from snapvit_cli.scoreset import ScoreSet
from snapvit_cli.scoring.settings import ScoreSettings


def unit_weight_norms(adapter: ModelAdapter, kind: str) -> torch.Tensor:
    """``[blocks, units]`` L2 norm over the weight slices of every unit, in float64."""
    rows = []
    for i, block in enumerate(adapter.blocks()):
        params = dict(block.named_parameters())
        total = torch.zeros(adapter.width(kind, i), dtype=torch.float64)
        for spec in adapter.unit_tensors(kind, i):
            if spec.name.endswith("bias"):
                continue
            weight = params[spec.name].detach().double()
            total += unit_rows(weight, spec).square().sum(dim=1).cpu()
        rows.append(total.sqrt())
    return torch.stack(rows)


def magnitude_scores(model: nn.Module, adapter: ModelAdapter, settings: ScoreSettings | None = None) -> ScoreSet:
    """L2 norm of each unit's weights; data-free, so ``settings`` are not used."""
    return ScoreSet(
        mlp=unit_weight_norms(adapter, MLP),
        heads=unit_weight_norms(adapter, HEADS),
        method="magnitude",
        settings={"norm": "l2", "tensors": "all weights reading into and out of the unit (no biases)"},
    )
