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

Blocks are called as ``block(x, **kwargs)`` with the keyword arguments the model itself passed to block 0, so
models that hand blocks extra inputs (e.g. rotary embeddings in timm's ``Eva``) get them too; this assumes those
arguments are the same for every block, as they are in timm's ViT and Eva.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Sized
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from snapvit_cli.adapters import UNIT_KINDS, ModelAdapter, UnitTensor, Widths, get_adapter
from snapvit_cli.adapters.base import take_units
from snapvit_cli.correction.settings import TOKEN_MODES, CorrectionSettings
from snapvit_cli.correction.solver import (
    DEFAULT_DAMPING,
    CorrectionError,
    Damping,
    TokenStatistics,
    corrected_weight,
    parse_damping,
    reconstruction_error,
    select_correction,
)
from snapvit_cli.data import ImageSet, describe, make_loader, preprocess
from snapvit_cli.elastic.budget import SlicePlan
from snapvit_cli.elastic.surgery import keep_prefix
from snapvit_cli.errors import DataError

if TYPE_CHECKING:
    from snapvit_cli.elastic.bundle import ElasticBundle

#: ``progress(stage, done, total)``: stage is "capture" (batches of images; total 0 if unknown) or "blocks".
Progress = Callable[[str, int, int], None]

#: Default token weighting of the statistics (:data:`snapvit_cli.correction.settings.TOKEN_MODES`), chosen by
#: measurement on the real ViT-Tiny (``benchmarks/README.md``).
DEFAULT_TOKENS = CorrectionSettings.tokens

#: Default: every 4th calibration image is held back to choose the damping and to guard against harm.
DEFAULT_HOLDOUT = 4


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


@dataclass
class CorrectionResult:
    """The sliced, corrected state dict, and what was done to get it."""

    state: dict[str, Tensor]
    damping: Damping | None
    sequential: bool
    images: int
    layers: list[LayerCorrection]
    seconds: float
    data: dict[str, Any] | None = None  # describe() of the calibration images, when known
    tokens: str = DEFAULT_TOKENS
    heldout_images: int = 0
    guard: bool = True
    #: Distances of the final features to the dense model's on the held-back images, for the plain slice, the
    #: correction and the result: ``cka_distance`` (1 − linear CKA) and ``relative_mse``; the guard wants both lower.
    feature_error: dict[str, dict[str, float]] | None = None
    #: Consumer layers whose correction made the final features worse and that were given the plain weights back.
    reverted: list[str] = field(default_factory=list)

    @property
    def kept_plain(self) -> list[str]:
        """Layers left with their plain weights: by the layer guard (``damping`` None) or the feature guard."""
        return [layer.tensor for layer in self.layers if layer.damping is None or layer.tensor in self.reverted]

    @property
    def notice(self) -> str | None:
        """One line for the user when a guard kept plain weights, else None."""
        kept = self.kept_plain
        if not kept:
            return None
        why = []
        if len(kept) > len(self.reverted):
            why.append(f"{len(kept) - len(self.reverted)} did not lower their own error")
        if self.reverted:
            why.append(f"{len(self.reverted)} moved the final features away from the dense model's")
        return (
            f"correction kept the plain weights of {len(kept)} of {len(self.layers)} layers "
            f"({' and '.join(why)} on held-back calibration images)"
        )

    def to_json(self) -> dict[str, Any]:
        """The settings and per-layer errors, for ``config.json`` (no timings: the same run gives the same file)."""
        return {
            **({"data": self.data} if self.data is not None else {}),
            "method": "least-squares",
            "damping": "auto" if self.damping is None else str(self.damping),
            "tokens": self.tokens,
            "inputs": "sequential" if self.sequential else "dense",
            "images": self.images,
            "heldout_images": self.heldout_images,
            "guard": self.guard,
            "feature_error": self.feature_error,
            "reverted": self.reverted,
            **({"notice": self.notice} if self.notice else {}),
            "layers": [asdict(layer) for layer in self.layers],
        }


@dataclass(frozen=True)
class _Consumer:
    """A consumer Linear of block ``block``: its module, its state-dict name and the kept column indices."""

    block: int
    name: str
    module: nn.Linear
    kept: Tensor


class _StopForward(Exception):
    """Raised by the block-0 hook: the capture needs nothing after it."""


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
    gives the plain weights back to the layers whose correction made them worse (``result.reverted``).
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
    readout, prefix = _readout(dense)
    dense.eval().to(device)
    with torch.no_grad():
        fit, held, held_images, kwargs = _capture_block_inputs(dense, adapter, batches, device, holdout, progress)
        if holdout and sum(len(x) for x in held) < 2:
            raise DataError(
                f"too few calibration images: every {holdout}th is held back and at least 2 must be, "
                f"so at least {2 * holdout} are needed"
            )
        dense_features = torch.cat([adapter.features(x.to(device)).cpu() for x in held_images]) if held_images else None
        layers: list[LayerCorrection] = []
        weights: dict[str, tuple[nn.Linear, Tensor, Tensor]] = {}  # name -> (module, plain masked, corrected)
        for i, block in enumerate(adapter.blocks()):
            consumers = [c for c in _consumers(adapter, i, widths) if c.kept.numel() < c.module.in_features]
            fit_stats, held_stats = (
                {c.name: TokenStatistics(c.module.in_features, readout, prefix, stats_dtype, device) for c in consumers}
                for _ in range(2)
            )
            fit_out = _run_collecting(block, fit, kwargs, device, consumers, fit_stats)
            held_out = _run_collecting(block, held, kwargs, device, consumers, held_stats)
            for c in consumers:
                plain = _masked(c.module.weight.detach(), c.kept)
                layers.append(
                    _correct_layer(c, fit_stats[c.name], held_stats[c.name] if held else None, tokens, damping, guard)
                )
                weights[c.name] = (c.module, plain, c.module.weight.detach().clone())
            # the outputs above came from the dense block; sequential inputs are those of the corrected sliced block
            if sequential and consumers:
                fit_out = [_run(block, x, kwargs, device) for x in fit]
                held_out = [_run(block, x, kwargs, device) for x in held]
            fit, held = fit_out, held_out
            if progress:
                progress("blocks", i + 1, adapter.num_blocks)
        feature_error, reverted = None, []
        if held_images:
            feature_error, reverted = _feature_guard(
                adapter, weights, layers, held_images, dense_features, device, revert=guard
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
        device=device,
        progress=progress,
    )
    result.data = describe(images)
    return result


def correct_with_settings(
    bundle: ElasticBundle, plan: SlicePlan, settings: CorrectionSettings, progress: Progress | None = None
) -> CorrectionResult:
    """:func:`correct_bundle_slice` with everything taken from ``settings``: the images are drawn here."""
    from snapvit_cli.data import load_images
    from snapvit_cli.devices import resolve_device

    spec = parse_damping(settings.damping)
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


def _readout(model: nn.Module) -> tuple[str, int]:
    """Where the features are read from: ``("cls", prefix)`` for the class token (row 0), ``("mean", prefix)``
    for models that pool their patch tokens (``global_pool='avg'``, or no prefix tokens at all, e.g. an
    attention-pool head, for which the patch mean is the closest linear proxy)."""
    prefix = int(getattr(model, "num_prefix_tokens", 1))
    pooled = getattr(model, "global_pool", "token")
    return ("mean" if pooled == "avg" or prefix == 0 else "cls"), prefix


def _capture_block_inputs(
    model: nn.Module,
    adapter: ModelAdapter,
    batches: Iterable[Tensor | tuple[Tensor, ...]],
    device: torch.device | str,
    holdout: int,
    progress: Progress | None,
) -> tuple[list[Tensor], list[Tensor], list[Tensor], dict[str, Any]]:
    """Block 0's input tokens (on the CPU) of the fit images and of the held-back ones (every ``holdout``-th
    image, counted over the whole stream, so the split does not depend on the batch size), the held-back images
    themselves, and the keyword arguments the model passes to blocks."""
    captured: list[Tensor] = []
    kwargs: dict[str, Any] = {}

    def hook(_module: nn.Module, args: tuple, block_kwargs: dict) -> None:
        captured.append(args[0].detach().cpu())
        kwargs.update(block_kwargs)
        raise _StopForward

    total = len(batches) if isinstance(batches, Sized) else 0  # 0: unknown (a generator)
    dtype = next(model.parameters()).dtype
    fit: list[Tensor] = []
    held: list[Tensor] = []
    held_images: list[Tensor] = []
    seen = 0
    handle = adapter.blocks()[0].register_forward_pre_hook(hook, with_kwargs=True)
    try:
        for done, batch in enumerate(batches, start=1):
            images = batch[0] if isinstance(batch, (tuple, list)) else batch  # (images, labels) from a loader
            with contextlib.suppress(_StopForward):
                model(images.to(device, dtype))
            tokens = captured.pop()
            index = torch.arange(seen, seen + len(images))
            seen += len(images)
            is_held = (index % holdout == holdout - 1) if holdout else torch.zeros(len(images), dtype=torch.bool)
            if (~is_held).any():
                fit.append(tokens[~is_held])
            if is_held.any():
                held.append(tokens[is_held])
                held_images.append(images[is_held].cpu())
            if progress:
                progress("capture", done, total)
    finally:
        handle.remove()
    if not fit:
        raise DataError("no calibration images: the correction needs at least one batch")
    return fit, held, held_images, kwargs


def _run(block: nn.Module, x: Tensor, kwargs: dict[str, Any], device: torch.device | str) -> Tensor:
    """One block on one batch of tokens, result kept on the CPU (activations never pile up on the device)."""
    return block(x.to(device), **kwargs).cpu()


def _consumers(adapter: ModelAdapter, index: int, widths: Widths) -> list[_Consumer]:
    """The Linear layers of block ``index`` whose input columns are units, with the columns ``widths`` keeps."""
    block = adapter.blocks()[index]
    found = []
    for kind in UNIT_KINDS:
        for spec in adapter.unit_tensors(kind, index):
            if not spec.consumer:
                continue
            module = _linear_of(block, spec)
            columns = torch.arange(module.in_features).unsqueeze(0)
            kept = take_units(columns, spec, widths.of(kind)[index]).squeeze(0)
            found.append(_Consumer(index, adapter.block_prefix(index) + spec.name, module, kept))
    return found


def _linear_of(block: nn.Module, spec: UnitTensor) -> nn.Linear:
    """The Linear that owns consumer tensor ``spec``; correction is defined for input columns of a weight only."""
    path, _, param = spec.name.rpartition(".")
    module = block.get_submodule(path)
    if not isinstance(module, nn.Linear) or param != "weight" or spec.axis not in (1, -1):
        raise ValueError(f"consumer tensor {spec.name} is not the input-column side of a Linear weight")
    return module


def _run_collecting(
    block: nn.Module,
    inputs: list[Tensor],
    kwargs: dict[str, Any],
    device: torch.device | str,
    consumers: list[_Consumer],
    stats: dict[str, TokenStatistics],
) -> list[Tensor]:
    """The block's outputs on ``inputs``, while ``stats`` accumulate its consumers' inputs (hooks removed after)."""
    handles = [stats[c.name].register(c.module) for c in consumers]
    try:
        return [_run(block, x, kwargs, device) for x in inputs]
    finally:
        for handle in handles:
            handle.remove()


def _masked(weight: Tensor, kept: Tensor) -> Tensor:
    """``weight`` with every column outside ``kept`` zeroed: the plain sliced layer at full width."""
    out = torch.zeros_like(weight)
    out[:, kept] = weight[:, kept]
    return out


def _pair(weight: Tensor, new: Tensor, kept: Tensor, hessian: Tensor) -> tuple[float, float]:
    return (
        reconstruction_error(weight, weight[:, kept], hessian, kept),
        reconstruction_error(weight, new, hessian, kept),
    )


def _correct_layer(
    consumer: _Consumer,
    fit: TokenStatistics,
    held: TokenStatistics | None,
    tokens: str,
    damping: Damping | None,
    guard: bool,
) -> LayerCorrection:
    """Re-fit the kept columns in place and zero the pruned ones, so the module computes the sliced layer."""
    weight = consumer.module.weight
    kept = consumer.kept.to(weight.device)
    dense_weight = weight.detach().clone()
    hessian = fit.hessian(tokens)
    if held is None:
        new_kept = corrected_weight(dense_weight, hessian, kept, damping or DEFAULT_DAMPING)
        fraction: float | None = (damping or DEFAULT_DAMPING).fraction
    else:
        choice = select_correction(dense_weight, hessian, held.hessian(tokens), kept, damping, guard)
        new_kept, fraction = choice.weight, choice.fraction
    before, after = _pair(dense_weight, new_kept, kept, hessian)
    weight.zero_()
    weight[:, kept] = new_kept.to(weight.dtype)
    errors = {
        f"{part}_{split}": _pair(dense_weight, new_kept, kept, getattr(stats, part).hessian)
        for split, stats in (("fit", fit), ("heldout", held))
        if stats is not None
        for part in ("readout", "rest")
        if getattr(stats, part).count
    }
    return LayerCorrection(
        consumer.block, consumer.name, kept.numel(), weight.shape[1], before, after, fraction, **errors
    )


def _feature_distance(adapter: ModelAdapter, images: list[Tensor], dense: Tensor, device) -> tuple[float, float]:
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


def _feature_guard(
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
    corrected = _feature_distance(adapter, images, dense, device)
    assign(changed, 0)
    plain = _feature_distance(adapter, images, dense, device)
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
            trial = _feature_distance(adapter, images, dense, device)
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
