"""Correction statistics collected once at scoring time and stored in the bundle (docs/method.md §8).

With dense inputs (the reference's mode) a consumer layer's statistics, the second moments of its inputs, depend on
the dense model and the calibration images only, not on the budget: removing units changes which rows and columns
of them the solve reads, never their values. Collected once in one pass of the dense model and stored in the
bundle, they make ``slice --correct`` data-free at every budget (:mod:`snapvit_cli.correction.stored`).

What is stored is exactly what the image-driven correction accumulates (:class:`~snapvit_cli.correction.solver.
TokenStatistics`), for every consumer layer at full width: the readout rows and the other rows, on the fit images
and on the held-back ones (every ``holdout``-th image, as the image-driven correction splits them), so every
``--correct-tokens`` choice, the per-layer damping choice and the per-layer guard work on them unchanged. Each
second moment is accumulated in float64 and stored as the float32 upper triangle of ``Σ x xᵀ / rows``, permuted like
the bundle's units: the rounding moved the solved weights of a small model by up to 8e-5 relative at the smallest
damping, and no accuracy in the study of issue 28 (``stored-f32`` in benchmarks/README.md), at half the bytes of
float64 (which bundles written before hold, and which are still read). Row counts follow from the image counts in
the metadata record (:class:`~snapvit_cli.elastic.records.CorrectionStats`). How they are stored (names, packing,
unit order) is part of the bundle format: :mod:`snapvit_cli.elastic.stats_layout`.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from snapvit_cli.adapters import get_adapter
from snapvit_cli.correction.settings import DEFAULT_HOLDOUT
from snapvit_cli.correction.solver import InputStatistics, TokenStatistics
from snapvit_cli.correction.walk import (
    Progress,
    capture_block_inputs,
    consumers_of,
    readout_of,
    run_collecting,
)
from snapvit_cli.data import ImageSet, describe, load_images, make_loader, preprocess
from snapvit_cli.elastic.records import STATS_DTYPES, STATS_STORAGE, CorrectionStats
from snapvit_cli.elastic.stats_layout import PARTS, SPLITS, pack, storage_dtype, tensor_name, unpack
from snapvit_cli.errors import BundleError, DataError

if TYPE_CHECKING:
    from snapvit_cli.elastic.bundle import ElasticBundle

class _Packed(ABC):
    """Statistics as they are stored: per consumer layer, split and part, ``Σ x xᵀ / rows`` packed (:func:`pack`);
    row counts from ``record``. :meth:`layer` gives one layer back as :class:`TokenStatistics`."""

    record: CorrectionStats
    _where = "correction statistics"

    @abstractmethod
    def _tensors(self, names: list[str]) -> dict[str, Tensor]:
        """The packed tensors called ``names``."""

    def _check(self, name: str, packed: Tensor) -> None:
        """A bundle's statistics are data from a stranger: of their layout's dtype and finite, or a one-line error."""
        expected = storage_dtype(self.record.storage)
        if packed.dtype != expected:
            raise BundleError(f"{self._where}: {name} is {packed.dtype}, expected {expected}")
        if not torch.isfinite(packed).all():
            raise BundleError(f"{self._where}: {name} contains NaN or infinity")

    def layer(self, name: str) -> tuple[TokenStatistics, TokenStatistics]:
        """The fit and held-back statistics of consumer ``name`` (its state-dict weight name)."""
        names = {(split, part): tensor_name(name, split, part) for split in SPLITS for part in PARTS}
        tensors = self._tensors(list(names.values()))
        out = []
        for split in SPLITS:
            token_stats = None
            for part in PARTS:
                packed = tensors[names[split, part]]
                self._check(names[split, part], packed)
                moment = unpack(packed)
                if (moment.diagonal() < 0).any():
                    raise BundleError(f"{self._where}: {names[split, part]} is not a second moment (negative diagonal)")
                if token_stats is None:
                    token_stats = TokenStatistics(0, self.record.readout, self.record.prefix)
                setattr(token_stats, part, InputStatistics.of_mean(moment, self.record.rows(split, part)))
            out.append(token_stats)
        return out[0], out[1]


class CorrectionStatistics(_Packed):
    """Statistics collected in this process (:func:`collect_correction_statistics`), in the unit order of the
    model they were collected on; ``seconds`` is the collection's wall time (never stored)."""

    def __init__(self, record: CorrectionStats, tensors: dict[str, Tensor], seconds: float = 0.0):
        self.record, self.tensors, self.seconds = record, tensors, seconds

    def _tensors(self, names: list[str]) -> dict[str, Tensor]:
        return {name: self.tensors[name] for name in names}


class StoredStatistics(_Packed):
    """A bundle's statistics, read one layer at a time when the solve asks for it (unpacked all at once, a ViT-B's
    would take about 4 GB): of the layout's dtype, finite, second moments, or a
    :class:`~snapvit_cli.errors.BundleError`.
    ``read(names)`` returns those tensors of the file, whose shapes the bundle checked against
    :func:`expected_shapes` when it was opened."""

    def __init__(self, record: CorrectionStats, read: Callable[[list[str]], dict[str, Tensor]], where: str):
        self.record, self._read, self._where = record, read, where

    def _tensors(self, names: list[str]) -> dict[str, Tensor]:
        return self._read(names)


def collect_correction_statistics(
    model: nn.Module,
    images: ImageSet | str,
    pretrained_cfg: dict,
    *,
    samples: int = 1000,
    seed: int = 0,
    resolution: int | None = None,
    batch_size: int = 64,
    holdout: int = DEFAULT_HOLDOUT,
    device: torch.device | str = "cpu",
    storage: str = STATS_STORAGE,
    progress: Progress | None = None,
) -> CorrectionStatistics:
    """One pass of the dense ``model`` over ``images`` in the eval transform of ``pretrained_cfg`` at ``resolution``
    (default: the size the model was built for), as ``slice --correct --data`` reads them, accumulating every
    consumer layer's statistics in float64 on ``device`` (one block's at a time; packed when the block is done).
    ``images`` is an :class:`~snapvit_cli.data.ImageSet` or a ``--data`` string, of whose train split ``samples``
    images are drawn with ``seed``. ``storage`` is the stored layout (:data:`~snapvit_cli.elastic.records.STATS_DTYPES`:
    float32, or float64 as bundles written before hold). The result goes to
    :func:`~snapvit_cli.elastic.bundle.write_bundle`'s ``correction_stats``."""
    if holdout < 2:
        raise ValueError(f"holdout must be at least 2, got {holdout}")
    if storage not in STATS_DTYPES:
        raise ValueError(f"unknown statistics layout {storage!r}")
    start = time.perf_counter()
    if not isinstance(images, ImageSet):
        images = load_images(str(images), "train", samples=samples, seed=seed)
    adapter = get_adapter(model)
    transform = preprocess(pretrained_cfg, adapter.cost_terms(resolution).resolution)
    readout, prefix = readout_of(model)
    model.eval().to(device)
    tensors: dict[str, Tensor] = {}
    dtype = storage_dtype(storage)
    with torch.no_grad():
        loader = make_loader(images, transform, batch_size)
        fit, held, _, kwargs = capture_block_inputs(model, adapter, loader, device, holdout, progress)
        held_images = sum(len(x) for x in held)
        if held_images < 2:
            raise DataError(f"too few calibration images: every {holdout}th is held back and at least 2 must be")
        tokens = fit[0].shape[1]
        for i, block in enumerate(adapter.blocks()):
            found = consumers_of(adapter, i, adapter.widths())
            stats = {
                split: {c.name: TokenStatistics(c.module.in_features, readout, prefix, device=device) for c in found}
                for split in SPLITS
            }
            fit = run_collecting(block, fit, kwargs, device, found, stats["fit"])
            held = run_collecting(block, held, kwargs, device, found, stats["heldout"])
            for c in found:
                for split in SPLITS:
                    for part in PARTS:
                        moment = getattr(stats[split][c.name], part).hessian
                        tensors[tensor_name(c.name, split, part)] = pack(moment, dtype)
            if progress:
                progress("blocks", i + 1, adapter.num_blocks)
    record = CorrectionStats(
        images=sum(len(x) for x in fit),
        heldout_images=held_images,
        holdout=holdout,
        tokens=tokens,
        readout=readout,
        prefix=prefix,
        data=describe(images),
        storage=storage,
    )
    return CorrectionStatistics(record, tensors, time.perf_counter() - start)


def stored_statistics(bundle: ElasticBundle) -> StoredStatistics | None:
    """The bundle's stored statistics (``score --correction-stats``), read one layer at a time through its open
    handle and checked as they are read; None when the bundle has none."""
    record = bundle.metadata.correction_stats
    if record is None:
        return None
    return StoredStatistics(record, bundle.read_tensors, str(bundle.path))
