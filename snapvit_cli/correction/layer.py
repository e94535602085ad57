"""Correcting one consumer layer, and the record of what was done to it (docs/method.md §8).

Shared by the two ways statistics arrive: collected from calibration images while walking the model
(:mod:`snapvit_cli.correction.apply`) or read from a bundle (:mod:`snapvit_cli.correction.stored`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from snapvit_cli.correction.solver import (
    DEFAULT_DAMPING,
    Damping,
    TokenStatistics,
    corrected_weight,
    error_pair,
    select_correction,
)


@dataclass(frozen=True)
class LayerCorrection:
    """One consumer layer: columns kept, the damping fraction chosen (× mean diag H; None when the guard kept the
    plain weights), and mean squared output errors ``‖W x − W̃ x‖²`` of the plain slice and of the result,
    as ``[before, after]`` pairs: ``error_*`` on the fit images with the rows weighted as the fit weighted them,
    ``readout_*`` on the rows the features are read from (the class token), ``rest_*`` on the other tokens, each
    on the images the fit used (``fit``) and on the held-back ones (``heldout``)."""

    block: int
    tensor: str
    kept_columns: int
    columns: int
    error_before: float
    error_after: float
    damping: float | None = None
    readout_fit: tuple[float, float] | None = None
    rest_fit: tuple[float, float] | None = None
    readout_heldout: tuple[float, float] | None = None
    rest_heldout: tuple[float, float] | None = None


def masked(weight: Tensor, kept: Tensor) -> Tensor:
    """``weight`` with every column outside ``kept`` zeroed: the plain sliced layer at full width."""
    out = torch.zeros_like(weight)
    out[:, kept] = weight[:, kept]
    return out


def correct_layer(
    block: int,
    name: str,
    weight: Tensor,
    kept: Tensor,
    fit: TokenStatistics,
    held: TokenStatistics | None,
    tokens: str,
    damping: Damping | None,
    guard: bool,
    guard_readout: bool = False,
) -> tuple[Tensor, LayerCorrection]:
    """The new kept columns of the dense ``weight`` ([out, in]) for the columns ``kept``, fitted on ``fit``'s rows
    weighted per ``tokens``, and the record of the layer.

    With ``held`` statistics (images the fit did not see), ``damping=None`` chooses the damping on them and
    ``guard`` keeps the plain columns unless the correction lowers their error
    (:func:`~snapvit_cli.correction.solver.select_correction`). ``guard_readout`` also keeps them unless the held-back
    error of the readout rows (the class token) drops: the stand-in for the final-feature guard where no images are
    at hand (on the real ViT-Tiny, block 7's ``fc2`` lowered the token-weighted error but raised the class token's
    16-fold, and the features lost kNN accuracy).
    """
    kept = kept.to(weight.device)
    dense_weight = weight.detach()
    if held is None:
        damping = damping or DEFAULT_DAMPING
        new_kept, fraction = corrected_weight(dense_weight, fit.hessian(tokens), kept, damping), damping.fraction
    else:
        choice = select_correction(dense_weight, fit.hessian(tokens), held.hessian(tokens), kept, damping, guard)
        new_kept, fraction = choice.weight, choice.fraction
    # per-part errors for the record, and from them the error the fit minimised (errors are linear in H)
    errors = {
        f"{part}_{split}": error_pair(dense_weight, new_kept, getattr(stats, part).hessian, kept)
        for split, stats in (("fit", fit), ("heldout", held))
        if stats is not None
        for part in ("readout", "rest")
        if getattr(stats, part).count
    }
    readout_held = errors.get("readout_heldout")
    if guard and guard_readout and fraction is not None and readout_held and not readout_held[1] < readout_held[0]:
        new_kept, fraction = dense_weight[:, kept], None  # the plain kept columns: every error stays what it was
        errors = {key: (pair[0], pair[0]) for key, pair in errors.items()}
    a, b = fit.weights(tokens)
    readout, rest = errors.get("readout_fit", (0.0, 0.0)), errors.get("rest_fit", (0.0, 0.0))
    before, after = (a * r + b * o for r, o in zip(readout, rest, strict=True))
    record = LayerCorrection(block, name, kept.numel(), weight.shape[1], before, after, fraction, **errors)
    return new_kept, record
