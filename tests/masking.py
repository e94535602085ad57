"""Removal by masking: the exact stand-in for slicing that slices and searches are tested against (docs/method.md §2.3).

Zeroing the consumer slices (``fc2`` columns, ``proj`` column groups) of removed units gives the same outputs as
cutting them out; the package itself masks only through forward pre-hooks (the xNES search), so the state-dict
version lives here, with the tests that need it.
"""

from __future__ import annotations

import torch

from snapvit_cli.adapters import UNIT_KINDS, ModelAdapter, UnitTensor, Widths


def zero_units(tensor: torch.Tensor, spec: UnitTensor, removed: torch.Tensor) -> torch.Tensor:
    """A copy of ``tensor`` with the slices of the ``removed`` units set to zero (exact stand-in for removal)."""
    axis = spec.axis % tensor.ndim
    shape = tensor.shape
    n_units = shape[axis] // (spec.groups * spec.unit_size)
    out = tensor.clone()
    view = out.view(*shape[:axis], spec.groups, n_units, spec.unit_size, *shape[axis + 1 :])
    view.index_fill_(axis + 1, removed.to(tensor.device), 0)
    return out


def mask_suffix(state: dict[str, torch.Tensor], adapter: ModelAdapter, widths: Widths) -> dict[str, torch.Tensor]:
    """``state`` with the consumer slices of every unit beyond ``widths`` (units are in importance order) zeroed."""
    out = dict(state)
    dense = adapter.widths()
    for i in range(adapter.num_blocks):
        for kind in UNIT_KINDS:
            keep, total = widths.of(kind)[i], dense.of(kind)[i]
            if keep == total:
                continue
            for spec in adapter.unit_tensors(kind, i):
                if spec.consumer:
                    key = adapter.block_prefix(i) + spec.name
                    out[key] = zero_units(out[key], spec, torch.arange(keep, total))
    return out
