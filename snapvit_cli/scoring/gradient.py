"""Gradient importance scores (docs/method.md §3): one pass over calibration images, gradients of a loss accumulated
on the weights that feed each unit (``adapter.score_tensors``: ``fc1`` rows for MLP neurons, the value rows of
``qkv`` for heads), then reduced to one number per unit.

Loss ``dino`` (default, label-free, §3.3): the teacher is the frozen model and the student the model itself, both
giving the pooled embedding, no projection head. Scoring never updates weights, so the teacher's outputs on the
global views *are* the student's outputs on them, detached: no copy of the model is made. Every image gets
``2 + 10`` multi-crop views (:class:`~snapvit_cli.scoring.crops.MultiCrop`) drawn from one seeded generator in image
order, so the views do not depend on batching. Loss ``ce`` (§3.4): cross-entropy of the classifier's logits on the
plain evaluation transform, for supervised models when labels are given.

Accumulation: G = Σ_batches ∇(batch loss), summed in float64 from each batch's float32 gradient. Every image
weighs 1/batch_size, also in a last partial batch (the reference takes that batch's mean, doubling the weight of
its images: §3.2, §13.4). Micro-batches of images (with all their crops) go through forward/backward one at a time,
which bounds memory without changing the result. Under ``torch.distributed`` each rank takes every world-th batch
and the float64 sums are all-reduced (:mod:`snapvit_cli.scoring.distributed`): the same sum in another order.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from snapvit_cli.adapters import HEADS, MLP, UNIT_KINDS, ModelAdapter, UnitTensor
from snapvit_cli.adapters.base import unit_view
from snapvit_cli.data import ImageSet, describe
from snapvit_cli.devices import resolve_device
from snapvit_cli.errors import DataError, SnapvitError
from snapvit_cli.scoreset import ScoreSet
from snapvit_cli.scoring import distributed
from snapvit_cli.scoring.calibration import InputConfig, autocast, calibration_images, input_config, scoring_mode
from snapvit_cli.scoring.crops import MultiCrop
from snapvit_cli.scoring.dino_loss import dino_self_distillation_loss
from snapvit_cli.scoring.settings import ScoreSettings

# Per kind, per block: one entry per score tensor of that block.
UnitViews = dict[str, list[list[torch.Tensor]]]


@dataclass
class UnitGradients:
    """Accumulated gradients and the weights of every score tensor, as float64 unit views
    ``[groups, units, unit_size, rest]`` on the CPU (see :func:`snapvit_cli.adapters.base.unit_view`)."""

    summed: UnitViews  # G = Σ_batches batch gradient
    squared: UnitViews | None  # Σ_batches (batch gradient)², kept only for the fisher formula
    weights: UnitViews
    images: int
    batches: int


def score_parameters(model: nn.Module, adapter: ModelAdapter) -> dict[str, list[list[tuple[UnitTensor, nn.Parameter]]]]:
    """The (spec, parameter) pairs whose gradients define each block's unit scores."""
    blocks = adapter.blocks()
    return {
        kind: [
            [(spec, block.get_parameter(spec.name)) for spec in adapter.score_tensors(kind, i)]
            for i, block in enumerate(blocks)
        ]
        for kind in UNIT_KINDS
    }


def accumulate_gradients(
    model: nn.Module,
    adapter: ModelAdapter,
    images: ImageSet,
    settings: ScoreSettings,
    config: InputConfig,
    device: torch.device,
) -> UnitGradients:
    """One pass over ``images``; the model must already be on ``device`` in eval mode.

    Only the score tensors require gradients, so nothing else is accumulated; the caller restores the flags. Under
    ``torch.distributed`` this rank runs batches ``rank, rank + world, …`` and the sums are all-reduced.
    """
    specs = score_parameters(model, adapter)
    params = {id(p): p for per_kind in specs.values() for block in per_kind for _, p in block}
    for param in model.parameters():
        param.requires_grad_(id(param) in params)
    chunks = _dino_chunks if settings.loss == "dino" else _ce_chunks
    if settings.loss == "ce":
        _check_classifier(model, images)
    summed = _zeros(specs)
    squared = _zeros(specs) if settings.score == "fisher" else None
    total, batches = len(images), 0
    rank, world = distributed.world()
    if settings.progress is not None:  # the stage starts now: its clock (elapsed, ETA) too
        settings.progress("gradients", 0, total, None)
    for start in range(0, total, settings.batch_size):
        batches += 1
        if (batches - 1) % world != rank:
            continue
        indices = range(start, min(start + settings.batch_size, total))
        for param in params.values():
            param.grad = None
        for loss in chunks(model, adapter, images, indices, settings, config, device):
            loss.backward()
        for kind, per_kind in specs.items():
            for i, block in enumerate(per_kind):
                for k, (spec, param) in enumerate(block):
                    grad = param.grad if param.grad is not None else torch.zeros_like(param)
                    view = unit_view(grad.detach(), spec).cpu().double()
                    summed[kind][i][k] += view
                    if squared is not None:
                        squared[kind][i][k] += view.square()
        if settings.progress is not None:
            settings.progress("gradients", indices.stop, total, None)
    distributed.all_reduce_sum(
        [t for sums in (summed, squared) if sums for per in sums.values() for b in per for t in b]
    )
    weights = {
        kind: [[unit_view(p.detach(), spec).cpu().double() for spec, p in block] for block in per_kind]
        for kind, per_kind in specs.items()
    }
    return UnitGradients(summed, squared, weights, total, batches)


def _zeros(specs: dict[str, list[list[tuple[UnitTensor, nn.Parameter]]]]) -> UnitViews:
    """float64 CPU zeros shaped like every score tensor's unit view."""
    return {
        kind: [[torch.zeros(unit_view(p, spec).shape, dtype=torch.float64) for spec, p in block] for block in per_kind]
        for kind, per_kind in specs.items()
    }


def _dino_chunks(
    model: nn.Module,
    adapter: ModelAdapter,
    images: ImageSet,
    indices: range,
    settings: ScoreSettings,
    config: InputConfig,
    device: torch.device,
) -> Iterator[torch.Tensor]:
    """Self-distillation loss of each micro-batch, scaled so the batch's losses sum to Σ_images ℓ / batch_size."""
    crop = MultiCrop(config.size, mean=config.mean, std=config.std, mode=settings.crops)
    for first in range(indices.start, indices.stop, settings.micro_batch):
        chunk = range(first, min(first + settings.micro_batch, indices.stop))
        views = torch.stack([crop(images[j][0], crop_generator(settings.seed, j)) for j in chunk])  # [m, V, 3, S, S]
        with autocast(device):
            features = adapter.features(views.flatten(0, 1).to(device))
        features = features.view(len(chunk), crop.n_views, -1)
        teacher = features[:, : crop.n_global]  # detached inside the loss: a fixed target
        yield dino_self_distillation_loss(teacher, features) * (len(chunk) / settings.batch_size)


def crop_generator(seed: int, image: int) -> torch.Generator:
    """The generator of one image's crop parameters, seeded by (seed, position of the image in the set), so an
    image's views do not depend on batch or micro-batch sizes."""
    return torch.Generator().manual_seed(seed * 1_000_003 + image)


def _ce_chunks(
    model: nn.Module,
    adapter: ModelAdapter,
    images: ImageSet,
    indices: range,
    settings: ScoreSettings,
    config: InputConfig,
    device: torch.device,
) -> Iterator[torch.Tensor]:
    """Cross-entropy of the classifier's logits (plain eval preprocessing), summed and divided by batch_size."""
    transform = config.eval_transform()
    for first in range(indices.start, indices.stop, settings.micro_batch):
        chunk = range(first, min(first + settings.micro_batch, indices.stop))
        pairs = [images[j] for j in chunk]
        x = torch.stack([transform(image) for image, _ in pairs]).to(device)
        y = torch.tensor([label for _, label in pairs], device=device)
        with autocast(device):
            logits = model(x)
        yield F.cross_entropy(logits.float(), y, reduction="sum") / settings.batch_size


def _check_classifier(model: nn.Module, images: ImageSet) -> None:
    classes = getattr(model, "num_classes", 0) or 0
    if classes < 1:
        raise SnapvitError(
            "loss ce needs a model with a classifier head; this one outputs features (use dino)", param="loss"
        )
    if images.labels is None:
        raise DataError(f"loss ce needs labelled data; '{images.source}' has none", param="loss")
    if len(images.labels) and int(images.labels.max()) >= classes:
        raise DataError(
            f"label {int(images.labels.max())} in '{images.source}' is out of range for the model's {classes} classes"
        )


def per_unit(views: list[torch.Tensor]) -> torch.Tensor:
    """``[units, n]``: every value belonging to each unit, over all of a block's score tensors."""
    return torch.cat([v.transpose(0, 1).reshape(v.shape[1], -1) for v in views], dim=1)


def unit_scores(grads: UnitGradients, formula: str, snip_alpha: float = 1e-3) -> dict[str, torch.Tensor]:
    """``[blocks, units]`` float64 scores per kind (§3.2).

    ``sqgrad`` (reference): mean over the unit's weights of G², i.e. (1/E)·Σ_k G[j,k]² for a neuron and
    (1/(hd·E))·Σ over its value rows for a head. ``fisher``: the same mean of Σ_batches (batch gradient)², the
    empirical Fisher of batch means. ``taylor``: |Σ G·W| over the unit's weights, the first-order change of the loss
    when the unit is removed. ``snip``: mean over the unit's weights of |G ⊙ W| + α·W² (method ``snip``'s scores,
    §9; the search can re-weight them like any raw scores).
    """
    out = {}
    for kind in UNIT_KINDS:
        rows = []
        for i, summed in enumerate(grads.summed[kind]):
            if formula == "sqgrad":
                rows.append(per_unit(summed).square().mean(dim=1))
            elif formula == "fisher":
                if grads.squared is None:
                    raise ValueError("the gradient pass did not keep squared gradients (score formula fisher)")
                rows.append(per_unit(grads.squared[kind][i]).mean(dim=1))
            elif formula == "taylor":
                rows.append((per_unit(summed) * per_unit(grads.weights[kind][i])).sum(dim=1).abs())
            elif formula == "snip":
                g, w = per_unit(summed), per_unit(grads.weights[kind][i])
                rows.append(((g * w).abs() + snip_alpha * w.square()).mean(dim=1))
            else:
                raise ValueError(f"unknown score formula {formula!r}")
        out[kind] = torch.stack(rows)
    return out


# Settings every gradient-based method records in its bundle.
GRADIENT_SETTINGS = ("samples", "batch_size", "micro_batch", "seed", "crops", "loss", "resolution")
# Recorded only when used, so that bundles scored without it stay byte-identical to earlier ones.
OPTIONAL_SETTINGS = ("grad_checkpointing",)


@dataclass
class GradientPass:
    """The outcome of :func:`gradient_pass` with what the bundle's metadata needs to say about it."""

    grads: UnitGradients
    config: InputConfig
    data: dict  # snapvit_cli.data.describe() of the images used
    seconds: float


def gradient_pass(
    model: nn.Module, adapter: ModelAdapter, settings: ScoreSettings, device: torch.device
) -> GradientPass:
    """Draw the calibration images and accumulate gradients (model already in scoring mode on ``device``)."""
    start = time.perf_counter()
    config = input_config(model, settings)
    images = calibration_images(settings, settings.samples, settings.seed, need_labels=settings.loss == "ce")
    with checkpointing(model, settings.grad_checkpointing):
        grads = accumulate_gradients(model, adapter, images, settings, config, device)
    return GradientPass(grads, config, describe(images), time.perf_counter() - start)


@contextlib.contextmanager
def checkpointing(model: nn.Module, enable: bool) -> Iterator[None]:
    """timm's gradient checkpointing for the duration (``set_grad_checkpointing``): the backward pass recomputes each
    block, so only the blocks' inputs stay in memory (about a third more compute, the same gradients)."""
    if not enable:
        yield
        return
    setter = getattr(model, "set_grad_checkpointing", None)
    if setter is None:
        raise SnapvitError(
            f"{type(model).__name__} has no set_grad_checkpointing; score it without --grad-checkpointing"
        )
    before = bool(getattr(model, "grad_checkpointing", False))
    setter(True)
    try:
        yield
    finally:
        setter(before)


def gradient_settings(settings: ScoreSettings, run: GradientPass, device: torch.device) -> dict:
    """The settings of a gradient pass as recorded in a bundle."""
    return {
        **settings.record(GRADIENT_SETTINGS),
        **settings.record([name for name in OPTIONAL_SETTINGS if getattr(settings, name)]),
        "samples": run.grads.images,  # the images used (fewer than asked when the source has fewer)
        "device": str(device),
        "input": run.config.to_json(),
        "data": run.data,
        "images": run.grads.images,
        "batches": run.grads.batches,
        "teacher": "frozen model (no projection head, temperature 1)" if settings.loss == "dino" else None,
    }


def scores_from_gradients(
    model: nn.Module,
    adapter: ModelAdapter,
    settings: ScoreSettings,
    method: str,
    reduce: Callable[[UnitGradients], dict[str, Tensor]],
    recorded: dict[str, object],
) -> ScoreSet:
    """One gradient pass, its per-unit reduction ``reduce`` and the record of both: what every gradient-based method
    without a search (``gradient``, ``snip``) does; ``recorded`` adds the method's own settings."""
    device = resolve_device(settings.device)
    with scoring_mode(model, device):
        run = gradient_pass(model, adapter, settings, device)
    scores = reduce(run.grads)
    return ScoreSet(
        mlp=scores[MLP],
        heads=scores[HEADS],
        method=method,
        settings={**gradient_settings(settings, run, device), **recorded},
        timings={"gradients_s": run.seconds},
    )


def gradient_scores(model: nn.Module, adapter: ModelAdapter, settings: ScoreSettings) -> ScoreSet:
    """Method ``gradient``: the raw gradient scores, without xNES re-weighting (multipliers all one)."""
    reduce = lambda grads: unit_scores(grads, settings.score, settings.snip_alpha)  # noqa: E731
    return scores_from_gradients(model, adapter, settings, "gradient", reduce, score_record(settings))


def score_record(settings: ScoreSettings) -> dict:
    """The score formula as a bundle records it (with its α for ``snip``)."""
    return {"score": settings.score, **({"snip_alpha": settings.snip_alpha} if settings.score == "snip" else {})}
