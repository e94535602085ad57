"""Walking a model block by block for the least-squares correction (docs/method.md §8).

The correction needs, per block, the inputs of its *consumer* layers (the Linear whose input columns are the units:
``fc2``/``w3`` for neurons, ``attn.proj`` for heads, found through the adapter). Block 0's input tokens are captured
once for all calibration images (batched forwards stopped at block 0, every ``holdout``-th image held back); each
block then runs on those tokens with hooks that accumulate its consumers' input statistics, and its outputs feed the
next block. Tokens live on the CPU, at most two sets at a time (a block's inputs and outputs), each
``N × tokens × embed_dim`` floats; activations inside a block are never stored.

Blocks are called as ``block(x, **kwargs)`` with the keyword arguments the model itself passed to block 0, so
models that hand blocks extra inputs (e.g. rotary embeddings in timm's ``Eva``) get them too; this assumes those
arguments are the same for every block, as they are in timm's ViT and Eva.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Sized
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from snapvit_cli.adapters import UNIT_KINDS, ModelAdapter, UnitTensor, Widths
from snapvit_cli.adapters.base import linear_of, take_units
from snapvit_cli.correction.solver import TokenStatistics
from snapvit_cli.errors import DataError

#: ``progress(stage, done, total)``: stage is "capture" (batches of images; total 0 if unknown) or "blocks".
Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class Consumer:
    """A consumer Linear of block ``block``: its module, its state-dict name, the kept column indices, and the unit
    kind and tensor spec its columns belong to."""

    block: int
    name: str
    module: nn.Linear
    kept: Tensor
    kind: str
    spec: UnitTensor


class _StopForward(Exception):
    """Raised by the block-0 hook: the capture needs nothing after it."""


def readout_of(model: nn.Module) -> tuple[str, int]:
    """Where the features are read from: ``("cls", prefix)`` for the class token (row 0), ``("mean", prefix)``
    for models that pool their patch tokens (``global_pool='avg'``, or no prefix tokens at all, e.g. an
    attention-pool head, for which the patch mean is the closest linear proxy)."""
    prefix = int(getattr(model, "num_prefix_tokens", 1))
    pooled = getattr(model, "global_pool", "token")
    return ("mean" if pooled == "avg" or prefix == 0 else "cls"), prefix


def capture_block_inputs(
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


def run_block(block: nn.Module, x: Tensor, kwargs: dict[str, Any], device: torch.device | str) -> Tensor:
    """One block on one batch of tokens, result kept on the CPU (activations never pile up on the device)."""
    return block(x.to(device), **kwargs).cpu()


def consumers_of(adapter: ModelAdapter, index: int, widths: Widths) -> list[Consumer]:
    """The Linear layers of block ``index`` whose input columns are units, with the columns ``widths`` keeps."""
    block = adapter.blocks()[index]
    found = []
    for kind in UNIT_KINDS:
        for spec in adapter.unit_tensors(kind, index):
            if not spec.consumer:
                continue
            module = linear_of(block, spec)
            columns = torch.arange(module.in_features).unsqueeze(0)
            kept = take_units(columns, spec, widths.of(kind)[index]).squeeze(0)
            found.append(Consumer(index, adapter.block_prefix(index) + spec.name, module, kept, kind, spec))
    return found


def run_collecting(
    block: nn.Module,
    inputs: list[Tensor],
    kwargs: dict[str, Any],
    device: torch.device | str,
    consumers: list[Consumer],
    stats: dict[str, TokenStatistics],
) -> list[Tensor]:
    """The block's outputs on ``inputs``, while ``stats`` accumulate its consumers' inputs (hooks removed after)."""
    handles = [stats[c.name].register(c.module) for c in consumers]
    try:
        return [run_block(block, x, kwargs, device) for x in inputs]
    finally:
        for handle in handles:
            handle.remove()
