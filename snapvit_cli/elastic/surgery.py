"""Tensor surgery on state dicts: permute units, keep a prefix of them, or zero them out.

All three work on plain ``{name: tensor}`` dicts through an adapter's :class:`UnitTensor` lists, so a bundle can be
cut without instantiating the dense model; :func:`read_prefix` cuts straight from a safetensors file, reading only
the kept units. :func:`build_model` then turns a sliced state dict into a module made of stock timm layers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import nn

from snapvit_cli.adapters import UNIT_KINDS, ModelAdapter, Widths, get_adapter
from snapvit_cli.adapters.base import UnitTensor, take_units
from snapvit_cli.hashing import state_sha256


def _unit_args(
    adapter: ModelAdapter, per_block: Callable[[str, int], object | None]
) -> dict[str, list[tuple[UnitTensor, object]]]:
    """``{state-dict key: [(spec, argument), ...]}`` for every unit tensor whose ``per_block(kind, block)`` is set."""
    args: dict[str, list[tuple[UnitTensor, object]]] = {}
    for i in range(adapter.num_blocks):
        prefix = adapter.block_prefix(i)
        for kind in UNIT_KINDS:
            arg = per_block(kind, i)
            if arg is None:
                continue
            for spec in adapter.unit_tensors(kind, i):
                args.setdefault(prefix + spec.name, []).append((spec, arg))
    return args


def _map_units(
    state: dict[str, torch.Tensor],
    adapter: ModelAdapter,
    per_block: Callable[[str, int], object | None],
    op: Callable,
) -> dict[str, torch.Tensor]:
    """Apply ``op(tensor, spec, arg)`` to every unit tensor whose ``per_block(kind, block)`` argument is not None."""
    out = dict(state)
    for key, ops in _unit_args(adapter, per_block).items():
        for spec, arg in ops:
            out[key] = op(out[key], spec, arg)
    return out


def _kept_counts(adapter: ModelAdapter, widths: Widths) -> Callable[[str, int], int | None]:
    """``per_block`` for :func:`_unit_args`: the kept count of every block that loses units."""
    dense = adapter.widths()

    def count(kind: str, i: int) -> int | None:
        return None if widths.of(kind)[i] == dense.of(kind)[i] else widths.of(kind)[i]

    return count


def permute(state: dict[str, torch.Tensor], adapter: ModelAdapter, orders: dict[str, Sequence[torch.Tensor]]):
    """Reorder every block's units: new unit ``k`` of block ``l`` is old unit ``orders[kind][l][k]``."""
    return _map_units(state, adapter, lambda kind, i: orders[kind][i], take_units)


def keep_prefix(state: dict[str, torch.Tensor], adapter: ModelAdapter, widths: Widths):
    """Keep the first ``widths`` units of every block (units are stored in descending importance)."""
    return _map_units(state, adapter, _kept_counts(adapter, widths), take_units)


def unaliased(sliced: dict[str, torch.Tensor], source: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``sliced`` with every tensor that shares memory with its namesake in ``source`` copied (e.g. a tensor kept
    whole by :func:`keep_prefix` from a bundle's kept weights), so the result never aliases ``source``."""
    return {
        k: v.clone() if k in source and v.untyped_storage().data_ptr() == source[k].untyped_storage().data_ptr() else v
        for k, v in sliced.items()
    }


def read_prefix(file: Any, adapter: ModelAdapter, widths: Widths, prefix: str = "") -> dict[str, torch.Tensor]:
    """:func:`keep_prefix` straight from an open safetensors ``file`` (tensors named ``prefix + key``).

    Only the bytes of the kept units are read; with ``safe_open(..., backend="pread")`` they go straight into fresh
    tensors, so a one-off cut needs about the memory of its result, not that of the dense weights plus the result.
    """
    units = _unit_args(adapter, _kept_counts(adapter, widths))
    state = {}
    for name in file.keys():
        if not name.startswith(prefix):
            continue
        key = name[len(prefix) :]
        if key not in units:
            state[key] = file.get_tensor(name)
            continue
        (spec, count), *more = units[key]
        state[key] = _read_units(file.get_slice(name), spec, count)
        for spec, count in more:
            state[key] = take_units(state[key], spec, count)
    return state


def _read_units(part: Any, spec: UnitTensor, count: int) -> torch.Tensor:
    """``take_units(tensor, spec, count)`` for a lazily read safetensors slice: one read per group of units."""
    shape = part.get_shape()
    axis = spec.axis % len(shape)
    group = shape[axis] // spec.groups
    keep = count * spec.unit_size
    lead = (slice(None),) * axis
    pieces = [part[(*lead, slice(g * group, g * group + keep))] for g in range(spec.groups)]
    return torch.cat(pieces, dim=axis) if len(pieces) > 1 else pieces[0].contiguous()


def unpermuted_sha256(file: Any, adapter: ModelAdapter, orders: dict[str, torch.Tensor], prefix: str = "") -> str:
    """:func:`state_sha256` of the state dict stored permuted by ``orders`` in the open safetensors ``file``, as it
    was before permuting: each tensor is read, put back in original unit order and hashed, one at a time."""
    inverse = {kind: torch.argsort(order, dim=1) for kind, order in orders.items()}
    units = _unit_args(adapter, lambda kind, i: inverse[kind][i])
    names = sorted(name[len(prefix) :] for name in file.keys() if name.startswith(prefix))

    def restored() -> Iterable[tuple[str, torch.Tensor]]:
        for key in names:
            tensor = file.get_tensor(prefix + key)
            for spec, index in units.get(key, []):
                tensor = take_units(tensor, spec, index)
            yield key, tensor

    return state_sha256(restored())


def build_model(skeleton: nn.Module, widths: Widths, state: dict[str, torch.Tensor]) -> nn.Module:
    """Resize ``skeleton`` (built on the meta device: no allocation, no init) to ``widths`` and load ``state``.

    Loading with ``assign=True`` adopts the tensors of ``state`` as parameters, so nothing is copied twice; buffers
    that are computed rather than stored (RoPE periods) are then recomputed by the adapter.
    """
    adapter = get_adapter(skeleton)
    for i in range(adapter.num_blocks):
        adapter.resize_block(i, widths.mlp[i], widths.heads[i])
    skeleton.load_state_dict(state, strict=True, assign=True)
    adapter.materialize()
    leftover = [name for name, t in list(skeleton.named_parameters()) + list(skeleton.named_buffers()) if t.is_meta]
    if leftover:
        raise RuntimeError(f"tensors not materialised after loading: {leftover[:5]}")
    return skeleton.eval()
