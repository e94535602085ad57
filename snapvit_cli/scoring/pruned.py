"""The pruned model of one search candidate, physically sliced, so that evaluating it costs its kept FLOPs.

The search (docs/method.md §5.3, ``ga_evaluation="sliced"``) measures the model without a candidate's removed units.
Masking them runs the dense model at full cost; slicing them away runs a model whose matmuls are as small as what is
kept. The sliced model is built from a meta-device copy of the dense model's structure (no weight copied or
initialised), resized by the adapter, then loaded with ``assign=True``: every tensor that loses no unit *is* the dense
model's tensor, and only the kept units of the pruned blocks are gathered into new tensors. Removing a
unit this way equals zeroing its consumer slice (§2.3), so both evaluations agree to float rounding.
"""

from __future__ import annotations

import copy
import itertools

import torch
from torch import nn

from snapvit_cli.adapters import UNIT_KINDS, ModelAdapter, Widths
from snapvit_cli.elastic.surgery import build_model, permute

Removed = dict[str, list[torch.Tensor]]  # kind -> per block: indices of the removed units (original order)


def meta_skeleton(model: nn.Module) -> nn.Module:
    """A copy of ``model``'s modules whose parameters and buffers are empty meta tensors (nothing allocated)."""
    memo: dict[int, torch.Tensor] = {}
    for tensor in itertools.chain(model.parameters(), model.buffers()):
        meta = torch.empty_like(tensor, device="meta")
        memo[id(tensor)] = nn.Parameter(meta, requires_grad=False) if isinstance(tensor, nn.Parameter) else meta
    return copy.deepcopy(model, memo)


def kept_units(adapter: ModelAdapter, removed: Removed) -> tuple[dict[str, list[torch.Tensor | None]], Widths]:
    """Per kind, per block: the kept unit indices in ascending order (``None`` where nothing is removed), and the
    widths they give."""
    dense = adapter.widths()
    kept: dict[str, list[torch.Tensor | None]] = {}
    for kind in UNIT_KINDS:
        kept[kind] = []
        for i, gone in enumerate(removed[kind]):
            if gone.numel() == 0:
                kept[kind].append(None)
                continue
            mask = torch.ones(dense.of(kind)[i], dtype=torch.bool)
            mask[gone] = False
            kept[kind].append(torch.nonzero(mask).flatten())
    widths = {
        kind: tuple(dense.of(kind)[i] if k is None else len(k) for i, k in enumerate(kept[kind])) for kind in kept
    }
    return kept, Widths(widths["mlp"], widths["heads"])


def pruned_model(model: nn.Module, adapter: ModelAdapter, removed: Removed) -> nn.Module:
    """``model`` without the ``removed`` units, as a smaller model sharing every untouched tensor with ``model``.

    ``model`` itself is not changed. The result is for inference only (its parameters do not require gradients).
    """
    kept, widths = kept_units(adapter, removed)
    with torch.no_grad():
        state = permute(model.state_dict(), adapter, kept)
    pruned = build_model(meta_skeleton(model), widths, state)
    return pruned.requires_grad_(False)
