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
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from snapvit_cli.adapters import UNIT_KINDS, ModelAdapter, UnitTensor, Widths, get_adapter
from snapvit_cli.adapters.base import take_units
from snapvit_cli.correction.solver import (
    DEFAULT_DAMPING,
    Damping,
    InputStatistics,
    corrected_weight,
    parse_damping,
    reconstruction_error,
)
from snapvit_cli.data import ImageSet, describe, make_loader, preprocess
from snapvit_cli.elastic.budget import SlicePlan
from snapvit_cli.elastic.surgery import keep_prefix
from snapvit_cli.errors import DataError

if TYPE_CHECKING:
    from snapvit_cli.correction.settings import CorrectionSettings
    from snapvit_cli.elastic.bundle import ElasticBundle

#: ``progress(stage, done, total)``: stage is "capture" (batches of images; total 0 if unknown) or "blocks".
Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class LayerCorrection:
    """One corrected layer: columns kept, and the squared output error ``‖W x − W̃ x‖²`` averaged over the
    calibration token rows, for the plain slice (before) and the corrected one (after)."""

    block: int
    tensor: str
    kept_columns: int
    columns: int
    error_before: float
    error_after: float


@dataclass
class CorrectionResult:
    """The sliced, corrected state dict, and what was done to get it."""

    state: dict[str, Tensor]
    damping: Damping
    sequential: bool
    images: int
    layers: list[LayerCorrection]
    seconds: float
    data: dict[str, Any] | None = None  # describe() of the calibration images, when known

    def to_json(self) -> dict[str, Any]:
        """The settings and per-layer errors, for ``config.json`` (no timings: the same run gives the same file)."""
        return {
            **({"data": self.data} if self.data is not None else {}),
            "method": "least-squares",
            "damping": str(self.damping),
            "inputs": "sequential" if self.sequential else "dense",
            "images": self.images,
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
    damping: Damping = DEFAULT_DAMPING,
    sequential: bool = True,
    device: torch.device | str = "cpu",
    stats_dtype: torch.dtype = torch.float64,
    progress: Progress | None = None,
) -> CorrectionResult:
    """Correct and slice ``dense`` (an importance-ordered dense model, e.g. ``bundle.dense_model()``) to ``widths``.

    ``batches`` yields preprocessed image tensors ``[B, 3, R, R]`` (or ``(images, labels)`` from a loader).
    ``dense`` is modified in place (its consumer layers end up corrected and masked) and moved to ``device``;
    the returned state dict is on the CPU and has the shapes of ``keep_prefix(..., widths)``. Layers that lose
    nothing are left bit-identical.
    """
    start = time.perf_counter()
    adapter = get_adapter(dense)
    if len(widths.mlp) != adapter.num_blocks:
        raise ValueError(f"widths describe {len(widths.mlp)} blocks, the model has {adapter.num_blocks}")
    dense.eval().to(device)
    with torch.no_grad():
        inputs, kwargs = _capture_block_inputs(dense, adapter, batches, device, progress)
        images = sum(len(x) for x in inputs)
        layers: list[LayerCorrection] = []
        for i, block in enumerate(adapter.blocks()):
            consumers = [c for c in _consumers(adapter, i, widths) if c.kept.numel() < c.module.in_features]
            stats = {c.name: InputStatistics(c.module.in_features, stats_dtype, device) for c in consumers}
            handles = [stats[c.name].register(c.module) for c in consumers]
            try:
                outputs = [_run(block, x, kwargs, device) for x in inputs]
            finally:
                for handle in handles:
                    handle.remove()
            layers += [_correct_layer(c, stats[c.name], damping) for c in consumers]
            # ``outputs`` came from the dense block; sequential inputs are those of the corrected sliced block.
            inputs = [_run(block, x, kwargs, device) for x in inputs] if sequential and consumers else outputs
            if progress:
                progress("blocks", i + 1, adapter.num_blocks)
    state = {k: v.detach().cpu() for k, v in dense.state_dict().items()}
    return CorrectionResult(
        state=keep_prefix(state, adapter, widths),
        damping=damping,
        sequential=sequential,
        images=images,
        layers=layers,
        seconds=time.perf_counter() - start,
    )


def correct_bundle_slice(
    bundle: ElasticBundle,
    plan: SlicePlan,
    images: ImageSet,
    *,
    batch_size: int = 64,
    damping: Damping = DEFAULT_DAMPING,
    sequential: bool = True,
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
        sequential=sequential,
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
        sequential=settings.sequential,
        device=device,
        progress=progress,
    )


def _capture_block_inputs(
    model: nn.Module,
    adapter: ModelAdapter,
    batches: Iterable[Tensor | tuple[Tensor, ...]],
    device: torch.device | str,
    progress: Progress | None,
) -> tuple[list[Tensor], dict[str, Any]]:
    """Block 0's input tokens for every batch (on the CPU) and the keyword arguments the model passes to blocks."""
    captured: list[Tensor] = []
    kwargs: dict[str, Any] = {}

    def hook(_module: nn.Module, args: tuple, block_kwargs: dict) -> None:
        captured.append(args[0].detach().cpu())
        kwargs.update(block_kwargs)
        raise _StopForward

    total = len(batches) if isinstance(batches, Sized) else 0  # 0: unknown (a generator)
    dtype = next(model.parameters()).dtype
    handle = adapter.blocks()[0].register_forward_pre_hook(hook, with_kwargs=True)
    try:
        for done, batch in enumerate(batches, start=1):
            images = batch[0] if isinstance(batch, (tuple, list)) else batch  # (images, labels) from a loader
            with contextlib.suppress(_StopForward):
                model(images.to(device, dtype))
            if progress:
                progress("capture", done, total)
    finally:
        handle.remove()
    if not captured:
        raise DataError("no calibration images: the correction needs at least one batch")
    return captured, kwargs


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


def _correct_layer(consumer: _Consumer, stats: InputStatistics, damping: Damping) -> LayerCorrection:
    """Re-fit the kept columns in place and zero the pruned ones, so the module computes the sliced layer."""
    weight = consumer.module.weight
    hessian = stats.hessian
    kept = consumer.kept.to(weight.device)
    dense_weight = weight.detach().clone()
    new_kept = corrected_weight(dense_weight, hessian, kept, damping)
    before = reconstruction_error(dense_weight, dense_weight[:, kept], hessian, kept)
    after = reconstruction_error(dense_weight, new_kept, hessian, kept)
    weight.zero_()
    weight[:, kept] = new_kept
    return LayerCorrection(consumer.block, consumer.name, kept.numel(), weight.shape[1], before, after)
