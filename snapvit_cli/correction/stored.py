"""``slice --correct`` without images: the least-squares correction solved on statistics stored in the bundle.

The statistics are the dense model's (:mod:`snapvit_cli.correction.statistics`), so this is the image-driven
correction with dense inputs (``--dense-inputs``), layer for layer the same solve, damping choice and per-layer guard
on the same numbers. What it cannot do without images is the final-feature guard, which runs the corrected model on
held-back images. In its place the per-layer guard is made stricter (``guard_readout``): a layer also keeps its plain
weights unless the class token's held-back error drops. ``config.json`` says so (``statistics: bundle``,
``feature_error: null``).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import torch

from snapvit_cli.adapters import get_adapter
from snapvit_cli.correction.layer import LayerCorrection, correct_layer
from snapvit_cli.correction.result import DEFAULT_TOKENS, CorrectionResult
from snapvit_cli.correction.settings import TOKEN_MODES
from snapvit_cli.correction.solver import CorrectionError, Damping
from snapvit_cli.correction.statistics import StoredStatistics, stored_statistics
from snapvit_cli.correction.walk import Progress, consumers_of
from snapvit_cli.elastic.surgery import keep_prefix, unaliased

if TYPE_CHECKING:
    from snapvit_cli.elastic.budget import SlicePlan
    from snapvit_cli.elastic.bundle import ElasticBundle


def require_statistics(bundle: ElasticBundle) -> StoredStatistics:
    """The bundle's stored statistics, or the one error for a bundle that has none (checked before any work)."""
    statistics = stored_statistics(bundle)
    if statistics is None:
        raise CorrectionError(
            f"{bundle.path} holds no correction statistics: give calibration images with --correct --data, or "
            "score the bundle with --correction-stats"
        )
    return statistics


def correct_from_bundle(
    bundle: ElasticBundle,
    plan: SlicePlan,
    *,
    damping: Damping | None = None,
    tokens: str = DEFAULT_TOKENS,
    guard: bool = True,
    guard_readout: bool = True,
    progress: Progress | None = None,
) -> CorrectionResult:
    """Correct the slice ``plan`` of ``bundle`` on the bundle's stored statistics; reads no images.

    ``damping=None`` chooses each layer's damping on the stored held-back statistics; ``guard`` keeps a layer's
    plain weights unless its correction lowers its held-back error, and with ``guard_readout`` that of the
    class-token rows alone too (without images there is no final-feature guard; this is its stand-in). Raises
    :class:`CorrectionError` when the bundle holds no statistics.
    """
    start = time.perf_counter()
    if tokens not in TOKEN_MODES:
        raise CorrectionError(f"unknown token weighting {tokens!r}; choose one of: {', '.join(TOKEN_MODES)}")
    statistics = require_statistics(bundle)
    adapter = get_adapter(bundle.skeleton())
    weights = bundle.weights()
    state = dict(weights)
    layers: list[LayerCorrection] = []
    with torch.no_grad():
        for i in range(adapter.num_blocks):
            for c in consumers_of(adapter, i, plan.widths):
                if c.kept.numel() == c.module.in_features:
                    continue
                dense = weights[c.name]
                fit, held = statistics.layer(c.name)
                new_kept, record = correct_layer(
                    i, c.name, dense, c.kept, fit, held, tokens, damping, guard, guard_readout
                )
                full = torch.zeros_like(dense)
                full[:, c.kept] = new_kept.to(dense.dtype)
                state[c.name] = full
                layers.append(record)
            if progress:
                progress("blocks", i + 1, adapter.num_blocks)
    sliced = keep_prefix(state, adapter, plan.widths)
    record = statistics.record
    return CorrectionResult(
        state=unaliased(sliced, weights),
        damping=damping,
        sequential=False,
        images=record.images,
        layers=layers,
        seconds=time.perf_counter() - start,
        data=record.data,
        tokens=tokens,
        heldout_images=record.heldout_images,
        guard=guard,
        statistics="bundle",
    )
