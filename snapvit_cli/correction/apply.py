"""Driving the least-squares correction (method §8) through a model, block by block, on calibration images.

:mod:`snapvit_cli.correction.solver` holds the linear algebra; this module feeds it. It works on the bundle's
importance-ordered dense model, where every block keeps a prefix of its units:

1. the input tokens of block 0 are captured once for all calibration images (batched forwards, stopped at
   block 0); tokens live on the CPU, at most two sets at a time (a block's inputs and outputs), each
   ``N × tokens × embed_dim`` floats;
2. for each block, one batched pass over those tokens accumulates ``Σ x xᵀ`` of the inputs of every *consumer*
   layer (the Linear whose input columns are the units: ``fc2``/``w3`` for neurons, ``attn.proj`` for heads,
   found through the adapter, so every family with an adapter works, SwiGLU included) — statistics are summed,
   activations are never stored;
3. the kept columns are re-fitted in closed form and the pruned columns zeroed in place, which makes the block
   exactly the corrected sliced block (zeroed consumer columns remove a unit exactly);
4. the next block gets either the outputs of the corrected sliced block (``sequential=True``, the default;
   standard SparseGPT: later layers also make up for the error of earlier ones), or the **dense** outputs computed
   in the same pass (``sequential=False``, the reference ``ElasticViT``). On the real ViT-Tiny, sequential inputs
   gave the better kNN accuracy at every budget measured (``benchmarks/README.md``).

The walk itself (capture, consumers, hooks) is :mod:`snapvit_cli.correction.walk`; one layer's fit is
:mod:`snapvit_cli.correction.layer`. Statistics stored in a bundle at scoring time replace the images altogether
(:mod:`snapvit_cli.correction.stored`).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from snapvit_cli.adapters import ModelAdapter, Widths, get_adapter
from snapvit_cli.correction.layer import LayerCorrection, correct_layer, masked
from snapvit_cli.correction.result import DEFAULT_TOKENS, CorrectionResult
from snapvit_cli.correction.settings import DEFAULT_HOLDOUT, TOKEN_MODES, CorrectionSettings
from snapvit_cli.correction.solver import CorrectionError, Damping, TokenStatistics, parse_damping
from snapvit_cli.correction.walk import (
    Progress,
    capture_block_inputs,
    consumers_of,
    readout_of,
    run_block,
    run_collecting,
)
from snapvit_cli.data import ImageSet, describe, make_loader, preprocess
from snapvit_cli.elastic.budget import SlicePlan
from snapvit_cli.elastic.surgery import keep_prefix
from snapvit_cli.errors import DataError

if TYPE_CHECKING:
    from collections.abc import Iterable

    from snapvit_cli.elastic.bundle import ElasticBundle


def correct_slice(
    dense: nn.Module,
    widths: Widths,
    batches: Iterable[Tensor | tuple[Tensor, ...]],
    *,
    damping: Damping | None = None,
    tokens: str = DEFAULT_TOKENS,
    sequential: bool = True,
    holdout: int = DEFAULT_HOLDOUT,
    guard: bool = True,
    guard_features: bool = True,
    guard_readout: bool = True,
    device: torch.device | str = "cpu",
    stats_dtype: torch.dtype = torch.float64,
    progress: Progress | None = None,
) -> CorrectionResult:
    """Correct and slice ``dense`` (an importance-ordered dense model, e.g. ``bundle.dense_model()``) to ``widths``.

    ``batches`` yields preprocessed image tensors ``[B, 3, R, R]`` (or ``(images, labels)`` from a loader). Every
    ``holdout``-th image is held back from the fit (0: none): the damping (``None``: chosen per layer from
    :data:`~snapvit_cli.correction.solver.DAMPING_GRID`) and the ``guard`` are judged on those images. The guard keeps a
    layer's plain weights when its correction does not lower its held-back error, and then, if the corrected
    model's final features are not closer to the dense model's than the plain slice's on the held-back images,
    gives the plain weights back to the layers whose correction made them worse (``result.reverted``);
    ``guard_features=False`` only measures the final features (the stored-statistics correction cannot run them).
    ``guard_readout`` also keeps a layer's plain weights unless the class token's held-back error drops
    (:func:`~snapvit_cli.correction.layer.correct_layer`): decided while walking, before later layers are fitted to
    the layer's output. The feature guard alone decides after every layer is fitted: with sequential inputs, giving
    one layer back then leaves the later layers fitted to outputs it no longer produces, so on the real ViT-Tiny it
    gave *every* layer back where one (block 7's ``fc2``) was harmful: 32.9 against 36.4 kNN with the per-layer guard
    (the accuracy study, ``images`` against ``images-readout`` in ``benchmarks/README.md``).
    ``tokens`` weights the rows of the statistics (:data:`~snapvit_cli.correction.settings.TOKEN_MODES`).

    ``dense`` is modified in place (its consumer layers end up corrected and masked) and moved to ``device``;
    the returned state dict is on the CPU and has the shapes of ``keep_prefix(..., widths)``. Layers that lose
    nothing are left bit-identical.
    """
    start = time.perf_counter()
    if tokens not in TOKEN_MODES:
        raise CorrectionError(f"unknown token weighting {tokens!r}; choose one of: {', '.join(TOKEN_MODES)}")
    if holdout < 0 or holdout == 1:
        raise ValueError(f"holdout must be 0 (none) or at least 2, got {holdout}")
    if holdout == 0 and (damping is None or guard):
        raise ValueError("choosing the damping and the guard need held-back images: holdout > 0")
    adapter = get_adapter(dense)
    if len(widths.mlp) != adapter.num_blocks:
        raise ValueError(f"widths describe {len(widths.mlp)} blocks, the model has {adapter.num_blocks}")
    readout, prefix = readout_of(dense)
    dense.eval().to(device)
    with torch.no_grad():
        fit, held, held_images, kwargs = capture_block_inputs(dense, adapter, batches, device, holdout, progress)
        if holdout and sum(len(x) for x in held) < 2:
            raise DataError(
                f"too few calibration images: every {holdout}th is held back and at least 2 must be, "
                f"so at least {2 * holdout} are needed"
            )
        dense_features = torch.cat([adapter.features(x.to(device)).cpu() for x in held_images]) if held_images else None
        layers: list[LayerCorrection] = []
        weights: dict[str, tuple[nn.Linear, Tensor, Tensor]] = {}  # name -> (module, plain masked, corrected)
        for i, block in enumerate(adapter.blocks()):
            consumers = [c for c in consumers_of(adapter, i, widths) if c.kept.numel() < c.module.in_features]
            fit_stats, held_stats = (
                {c.name: TokenStatistics(c.module.in_features, readout, prefix, stats_dtype, device) for c in consumers}
                for _ in range(2)
            )
            fit_out = run_collecting(block, fit, kwargs, device, consumers, fit_stats)
            held_out = run_collecting(block, held, kwargs, device, consumers, held_stats)
            for c in consumers:
                weight = c.module.weight.detach()
                plain = masked(weight, c.kept)
                held_c = held_stats[c.name] if held else None
                new_kept, record = correct_layer(
                    i, c.name, weight, c.kept, fit_stats[c.name], held_c, tokens, damping, guard, guard_readout
                )
                weight.zero_()
                weight[:, c.kept] = new_kept.to(weight.dtype)  # the corrected sliced layer, at full width
                layers.append(record)
                weights[c.name] = (c.module, plain, weight.clone())
            # the outputs above came from the dense block; sequential inputs are those of the corrected sliced block
            if sequential and consumers:
                fit_out = [run_block(block, x, kwargs, device) for x in fit]
                held_out = [run_block(block, x, kwargs, device) for x in held]
            fit, held = fit_out, held_out
            if progress:
                progress("blocks", i + 1, adapter.num_blocks)
        feature_error, reverted = None, []
        if held_images:
            feature_error, reverted = feature_guard(
                adapter, weights, layers, held_images, dense_features, device, revert=guard and guard_features
            )
    state = {k: v.detach().cpu() for k, v in dense.state_dict().items()}
    return CorrectionResult(
        state=keep_prefix(state, adapter, widths),
        damping=damping,
        sequential=sequential,
        images=sum(len(x) for x in fit),
        layers=layers,
        seconds=time.perf_counter() - start,
        tokens=tokens,
        heldout_images=sum(len(x) for x in held),
        guard=guard,
        feature_error=feature_error,
        reverted=reverted,
    )


def correct_bundle_slice(
    bundle: ElasticBundle,
    plan: SlicePlan,
    images: ImageSet,
    *,
    batch_size: int = 64,
    damping: Damping | None = None,
    tokens: str = DEFAULT_TOKENS,
    sequential: bool = True,
    holdout: int = DEFAULT_HOLDOUT,
    guard: bool = True,
    guard_features: bool = True,
    guard_readout: bool = True,
    device: torch.device | str = "cpu",
    progress: Progress | None = None,
) -> CorrectionResult:
    """:func:`correct_slice` on a bundle's dense model, with calibration ``images`` in the model's eval transform.

    The result's :meth:`~CorrectionResult.to_json` gains a ``data`` entry describing the images used.
    """
    if batch_size < 1:
        raise DataError(f"the batch size must be positive, got {batch_size}")
    # The size the architecture was built with (a config's input_size can be the pretrained default instead).
    transform = preprocess(bundle.source.pretrained_cfg, bundle.cost().resolution)
    loader = make_loader(images, transform, batch_size)
    result = correct_slice(
        bundle.dense_model(),
        plan.widths,
        loader,
        damping=damping,
        tokens=tokens,
        sequential=sequential,
        holdout=holdout,
        guard=guard,
        guard_features=guard_features,
        guard_readout=guard_readout,
        device=device,
        progress=progress,
    )
    result.data = describe(images)
    return result


def correct_with_settings(
    bundle: ElasticBundle, plan: SlicePlan, settings: CorrectionSettings, progress: Progress | None = None
) -> CorrectionResult:
    """:func:`correct_bundle_slice` with everything taken from ``settings``: the images are drawn here. Without
    images (``settings.data`` None) the bundle's stored statistics are used (:mod:`snapvit_cli.correction.stored`)."""
    from snapvit_cli.data import load_images
    from snapvit_cli.devices import resolve_device

    spec = parse_damping(settings.damping)
    if settings.data is None:
        from snapvit_cli.correction.stored import correct_from_bundle

        return correct_from_bundle(bundle, plan, damping=spec, tokens=settings.tokens, progress=progress)
    device = resolve_device(settings.device)
    images = settings.data
    if not isinstance(images, ImageSet):
        images = load_images(str(images), "train", samples=settings.samples, seed=settings.seed)
    return correct_bundle_slice(
        bundle,
        plan,
        images,
        batch_size=settings.batch_size,
        damping=spec,
        tokens=settings.tokens,
        sequential=settings.sequential,
        device=device,
        progress=progress,
    )


def feature_distance(adapter: ModelAdapter, images: list[Tensor], dense: Tensor, device) -> tuple[float, float]:
    """How far the model's features on ``images`` are from the ``dense`` ones: ``1 − linear CKA`` and the mean
    squared distance relative to the dense features' mean squared norm.

    Linear CKA compares the two feature sets' similarity structure (invariant to rotations, scale and a common
    shift), which is what kNN and linear probes read; on the real ViT-Tiny a correction that lowered the squared
    distance by a fifth still lowered CKA and kNN accuracy (benchmarks/README.md). The squared distance catches
    what CKA cannot see, such as a shift common to all images. The guard wants both.
    """
    x = torch.cat([adapter.features(batch.to(device)).cpu() for batch in images]).double()
    d = dense.double()
    mse = float((x - d).pow(2).sum() / d.pow(2).sum().clamp_min(1e-300))
    xc, dc = x - x.mean(0), d - d.mean(0)
    cka = float((xc.T @ dc).pow(2).sum() / ((xc.T @ xc).norm() * (dc.T @ dc).norm()).clamp_min(1e-300))
    return 1.0 - cka, mse


def feature_guard(
    adapter: ModelAdapter,
    weights: dict[str, tuple[nn.Linear, Tensor, Tensor]],
    layers: list[LayerCorrection],
    images: list[Tensor],
    dense: Tensor,
    device: torch.device | str,
    revert: bool = True,
) -> tuple[dict[str, dict[str, float]], list[str]]:
    """Compare the corrected and the plain slice's final features with the dense model's on held-back images by
    both measures of :func:`_feature_distance`; unless the correction is closer by both, sweep the corrected layers
    from the last to the first and give each its plain weights back if that lowers the sum of the two measures
    (each relative to the plain slice's), and all of them if the result is still not closer by both than the plain
    slice (with ``revert=False`` it only measures). Leaves the model with the weights chosen; returns both
    distances (plain, corrected, final) and the reverted names."""

    def assign(names, which: int) -> None:
        for name in names:
            module, plain, corrected = weights[name]
            module.weight.copy_((plain, corrected)[which])

    changed = [layer.tensor for layer in layers if layer.damping is not None]
    corrected = feature_distance(adapter, images, dense, device)
    assign(changed, 0)
    plain = feature_distance(adapter, images, dense, device)
    assign(changed, 1)

    def closer(dist: tuple[float, float]) -> bool:  # closer than the plain slice by both measures
        return dist[0] < plain[0] and dist[1] < plain[1]

    def score(dist: tuple[float, float]) -> float:  # both measures relative to the plain slice's
        return dist[0] / max(plain[0], 1e-300) + dist[1] / max(plain[1], 1e-300)

    reverted: list[str] = []
    current = corrected
    if revert and not closer(corrected):
        for name in reversed(changed):
            assign([name], 0)
            trial = feature_distance(adapter, images, dense, device)
            if score(trial) < score(current):
                reverted.append(name)
                current = trial
            else:
                assign([name], 1)
        if not closer(current):
            assign(changed, 0)
            reverted, current = changed, plain
    distances = {"plain": plain, "corrected": corrected, "final": current}
    report = {
        "cka_distance": {k: v[0] for k, v in distances.items()},
        "relative_mse": {k: v[1] for k, v in distances.items()},
    }
    return report, [name for name in changed if name in reverted]
