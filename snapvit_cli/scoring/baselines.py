"""Baseline scores of the paper's comparisons (docs/method.md §9), through the same adapter score tensors as the
gradient scores (``fc1`` rows for MLP neurons, the value rows of ``qkv`` for heads).

- ``random``: i.i.d. N(0, 1) per unit from a seeded generator (finite, possibly negative: only the order matters).
- ``lamp``: layer-adaptive magnitude (Lee et al., 2021), data-free.
- ``snip``: SNIP-magnitude |G ⊙ W| + α·W² with G from the gradient pass (DINO loss by default).
"""

from __future__ import annotations

import torch
from torch import nn

from snapvit_cli.adapters import HEADS, MLP, UNIT_KINDS, ModelAdapter
from snapvit_cli.adapters.base import unit_view
from snapvit_cli.scoreset import ScoreSet
from snapvit_cli.scoring.gradient import UnitGradients, per_unit, scores_from_gradients, unit_scores
from snapvit_cli.scoring.settings import ScoreSettings


def random_scores(model: nn.Module, adapter: ModelAdapter, settings: ScoreSettings) -> ScoreSet:
    """Seeded standard-normal scores: the MLP block first, then the heads, from one generator."""
    generator = torch.Generator().manual_seed(settings.seed)
    widths = adapter.widths()
    mlp = torch.randn(adapter.num_blocks, widths.mlp[0], generator=generator, dtype=torch.float64)
    heads = torch.randn(adapter.num_blocks, widths.heads[0], generator=generator, dtype=torch.float64)
    return ScoreSet(mlp=mlp, heads=heads, method="random", settings={"seed": settings.seed, "distribution": "N(0,1)"})


def lamp_element_scores(matrix: torch.Tensor) -> torch.Tensor:
    """LAMP score of every element of ``matrix``: w_u² / Σ_{v ≥ u} w_v², with elements sorted by |w| ascending
    (stable), so the largest weight of a matrix scores 1."""
    flat = matrix.reshape(-1).double().square()
    order = torch.argsort(flat, stable=True)
    ordered = flat[order]
    tail = ordered.flip(0).cumsum(0).flip(0)  # Σ over this and every larger element
    out = torch.empty_like(flat)
    out[order] = torch.where(tail > 0, ordered / tail, torch.zeros_like(tail))
    return out.view(matrix.shape)


def lamp_scores(model: nn.Module, adapter: ModelAdapter, settings: ScoreSettings | None = None) -> ScoreSet:
    """Mean LAMP score of each unit's weights, each score tensor normalised as one matrix (for heads: the value
    third of ``qkv``, [H·hd, E]).

    Quirk fixed (§13.7): the reference averages the *square root* of the LAMP score; this uses the score itself.
    """
    blocks = adapter.blocks()
    scores = {}
    for kind in UNIT_KINDS:
        rows = []
        for i, block in enumerate(blocks):
            views = [
                lamp_element_scores(unit_view(block.get_parameter(spec.name).detach(), spec))
                for spec in adapter.score_tensors(kind, i)
            ]
            rows.append(per_unit(views).mean(dim=1).cpu())
        scores[kind] = torch.stack(rows)
    return ScoreSet(
        mlp=scores[MLP],
        heads=scores[HEADS],
        method="lamp",
        settings={"score": "mean over the unit's weights of w_u^2 / sum_{|w_v| >= |w_u|} w_v^2", "sqrt": False},
    )


def snip_unit_scores(grads: UnitGradients, alpha: float) -> dict[str, torch.Tensor]:
    """Mean over each unit's weights of m = |G ⊙ W| + α·W².

    Quirk fixed (§13.7): the reference squares m again for heads (mean of m²) but not for neurons; both use m here.
    """
    return unit_scores(grads, "snip", alpha)


def snip_scores(model: nn.Module, adapter: ModelAdapter, settings: ScoreSettings) -> ScoreSet:
    """Method ``snip``: SNIP-magnitude with the gradient of the configured loss (DINO by default, as in §9)."""
    reduce = lambda grads: snip_unit_scores(grads, settings.snip_alpha)  # noqa: E731
    return scores_from_gradients(model, adapter, settings, "snip", reduce, {"snip_alpha": settings.snip_alpha})
