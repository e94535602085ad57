"""How correction statistics are stored in a bundle: tensor names, shapes, packing and unit order.

Part of the bundle format, so that the bundle can check a file's statistics tensors when it is opened, write them
permuted like its units and copy them, without knowing how they are collected or solved on
(:mod:`snapvit_cli.correction.statistics` collects them; :mod:`snapvit_cli.correction.stored` solves on them).

Per consumer layer (the Linear whose input columns are the units: ``fc2``/``w3`` for neurons, ``attn.proj`` for
heads) there are four tensors, ``correction.<layer>.<split>.<part>`` for the splits ``fit``/``heldout`` and the
parts ``readout``/``rest``: the upper triangle of ``Σ x xᵀ / rows`` (:func:`pack`), in float32 (bundles written
before the accuracy study of issue 28 hold float64: the record's ``storage`` says which, :data:`STATS_DTYPES`).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Protocol

import torch
from torch import Tensor

from snapvit_cli.adapters import UNIT_KINDS, ModelAdapter
from snapvit_cli.adapters.base import UnitTensor, linear_of, take_units
from snapvit_cli.elastic.records import STATS_DTYPES, STATS_STORAGE, CorrectionStats
from snapvit_cli.elastic.tensor_checks import DTYPE_NAMES

#: Tensor names start with this, then the consumer's state-dict name without ``.weight``.
STATS_PREFIX = "correction."
SPLITS = ("fit", "heldout")
PARTS = ("readout", "rest")
_TORCH_DTYPES = {name: dtype for dtype, name in DTYPE_NAMES.items()}


def storage_dtype(storage: str) -> torch.dtype:
    """The dtype of the stored values that a record's ``storage`` layout names (:data:`STATS_STORAGE`, written
    now: float32; they are accumulated and solved in float64)."""
    return _TORCH_DTYPES[STATS_DTYPES[storage]]


class StatisticsToStore(Protocol):
    """What :func:`~snapvit_cli.elastic.bundle.write_bundle` stores: the metadata record and the packed tensors by
    name, in the unit order of the model they were collected on
    (:class:`~snapvit_cli.correction.statistics.CorrectionStatistics`)."""

    record: CorrectionStats
    tensors: dict[str, Tensor]


def pack(moment: Tensor, dtype: torch.dtype) -> Tensor:
    """The upper triangle of a symmetric ``[d, d]`` matrix, row by row, in ``dtype`` on the CPU."""
    d = moment.shape[0]
    upper = torch.triu_indices(d, d, device=moment.device)
    return moment.detach()[upper[0], upper[1]].to("cpu", dtype).contiguous()


def unpack(packed: Tensor) -> Tensor:
    """The symmetric ``[d, d]`` matrix whose upper triangle :func:`pack` gave."""
    d = (math.isqrt(8 * packed.numel() + 1) - 1) // 2
    upper = torch.triu_indices(d, d)
    moment = torch.zeros(d, d, dtype=torch.float64)
    moment[upper[0], upper[1]] = packed.to(torch.float64)
    moment += moment.triu(1).T  # the strict lower triangle from the upper one
    return moment


def tensor_name(consumer: str, split: str, part: str) -> str:
    return f"{STATS_PREFIX}{consumer.removesuffix('.weight')}.{split}.{part}"


def _consumer_layers(adapter: ModelAdapter) -> Iterator[tuple[str, int, str, int, UnitTensor]]:
    """``(state-dict name, block, unit kind, input width, spec)`` of every consumer layer at full width."""
    blocks = adapter.blocks()
    for i in range(adapter.num_blocks):
        for kind in UNIT_KINDS:
            for spec in adapter.unit_tensors(kind, i):
                if spec.consumer:
                    width = linear_of(blocks[i], spec).in_features
                    yield adapter.block_prefix(i) + spec.name, i, kind, width, spec


def expected_shapes(adapter: ModelAdapter) -> dict[str, tuple[int, ...]]:
    """The stored tensors' names and shapes for this architecture (what a bundle's file must hold, no more)."""
    shapes = {}
    for name, _block, _kind, d, _spec in _consumer_layers(adapter):
        for split in SPLITS:
            for part in PARTS:
                shapes[tensor_name(name, split, part)] = (d * (d + 1) // 2,)
    return shapes


def to_tensors(
    statistics: StatisticsToStore, adapter: ModelAdapter, orders: dict[str, list[Tensor]] | None
) -> dict[str, Tensor]:
    """The tensors to store, in the dtype of the record's layout, with the columns permuted like the bundle's units
    (``orders[kind][block]``: the original unit of each permuted unit; None: the statistics were collected on the
    permuted model)."""
    dtype = storage_dtype(statistics.record.storage)
    if orders is None:
        return {key: packed.to(dtype) for key, packed in statistics.tensors.items()}
    tensors = {}
    for name, block, kind, d, spec in _consumer_layers(adapter):
        columns = take_units(torch.arange(d).unsqueeze(0), spec, orders[kind][block]).squeeze(0)
        for split in SPLITS:
            for part in PARTS:
                key = tensor_name(name, split, part)
                tensors[key] = pack(unpack(statistics.tensors[key])[columns][:, columns], dtype)
    return tensors


def stored_bytes(adapter: ModelAdapter) -> int:
    """What the statistics add to a bundle, in bytes."""
    return storage_dtype(STATS_STORAGE).itemsize * sum(shape[0] for shape in expected_shapes(adapter).values())
