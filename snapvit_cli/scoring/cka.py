"""Optional xNES start covariance from the CKA similarity of the units' activations (docs/method.md §5.2).

Every search coordinate (a block's MLP, a head) gets a representation: the outputs of its units at the class token
(the token mean for models without one) over the calibration images, read as the input of the unit's consumer
(``fc2``, ``proj``) by a forward pre-hook. C[i, j] is linear CKA between the representations of coordinates i and
j, i.e. the cosine similarity of their centred Gram matrices. C is therefore positive semi-definite with a unit
diagonal by construction (the reference projects onto the nearest correlation matrix with statsmodels instead); a
small ridge makes it positive definite for the Cholesky factor xNES starts from. Coordinates whose units move
together get correlated perturbations.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from snapvit_cli.adapters import HEADS, MLP, ModelAdapter
from snapvit_cli.scoring.calibration import autocast

RIDGE = 1e-3


def _consumer(adapter: ModelAdapter, kind: str, index: int):
    spec = next(s for s in adapter.unit_tensors(kind, index) if s.consumer)
    module = adapter.blocks()[index].get_submodule(spec.name.rsplit(".", 1)[0])
    return spec, module


def unit_representations(
    model: nn.Module, adapter: ModelAdapter, images: torch.Tensor, batch_size: int, device: torch.device
) -> list[torch.Tensor]:
    """One [N, features] float64 matrix per search coordinate, in θ's order: block MLPs, then (block, head)."""
    pooled = {}
    hooks = []
    has_class_token = getattr(model, "cls_token", None) is not None

    def capture(key):
        def hook(_module, inputs):
            x = inputs[0]
            if x.ndim == 3:  # [batch, tokens, features]
                x = x[:, 0] if has_class_token else x.mean(dim=1)
            pooled.setdefault(key, []).append(x.cpu().double())

        return hook

    for i in range(adapter.num_blocks):
        for kind in (MLP, HEADS):
            _, module = _consumer(adapter, kind, i)
            hooks.append(module.register_forward_pre_hook(capture((kind, i))))
    try:
        with torch.no_grad():
            for start in range(0, len(images), batch_size):
                with autocast(device):
                    adapter.features(images[start : start + batch_size].to(device))
    finally:
        for hook in hooks:
            hook.remove()
    mlp = [torch.cat(pooled[(MLP, i)]) for i in range(adapter.num_blocks)]
    heads = []
    for i in range(adapter.num_blocks):
        spec, _ = _consumer(adapter, HEADS, i)
        x = torch.cat(pooled[(HEADS, i)])
        per_head = x.view(len(x), spec.groups, -1, spec.unit_size).transpose(1, 2)  # [N, H, groups, unit_size]
        heads.extend(per_head[:, h].reshape(len(x), -1) for h in range(per_head.shape[1]))
    return mlp + heads


def linear_cka_matrix(representations: list[torch.Tensor]) -> torch.Tensor:
    """C[i, j] = ⟨K_i, K_j⟩_F / (‖K_i‖_F ‖K_j‖_F) with K = H X Xᵀ H the centred linear Gram matrix."""
    grams = []
    for x in representations:
        centred = x - x.mean(dim=0)
        gram = (centred @ centred.T).reshape(-1)
        norm = gram.norm()
        grams.append(gram / norm if norm > 0 else gram)
    stacked = torch.stack(grams)
    return stacked @ stacked.T


def cka_covariance(
    model: nn.Module, adapter: ModelAdapter, images: torch.Tensor, batch_size: int, device: torch.device
) -> np.ndarray:
    """The [d, d] start covariance (unit diagonal) for xNES over θ = [α_l, β_{l,h}]."""
    cka = linear_cka_matrix(unit_representations(model, adapter, images, batch_size, device))
    cka = 0.5 * (cka + cka.T)
    cka.fill_diagonal_(1.0)
    return ((cka + RIDGE * torch.eye(len(cka), dtype=cka.dtype)) / (1 + RIDGE)).numpy()
