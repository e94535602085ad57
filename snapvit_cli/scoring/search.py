"""xNES re-weighting of gradient scores (docs/method.md §5): one multiplier per block for its MLP neurons and one per
(block, head), searched so that the pruned models stay close to the dense one.

Fitness of multipliers θ (lower is better): for every (MLP, heads) removal pair (``ga_pairs``, or by default the pairs
that ``slice --flops`` resolves the ``ga_flops`` fractions to: :func:`search_pairs`), select units globally
with the scores |θ|·raw (the same rule and min-keep floors as slicing,
:func:`snapvit_cli.elastic.budget.select_widths`), and measure 1 − mean cosine similarity between the dense
model's features and the pruned model's, both projected into the PCA space of the dense features; average over the
pairs (``ga_fitness="mean"``), or average each pair's distance relative to its distance at the starting point μ₀
(``"relative"``), so that a mild budget, whose distances are small, counts as much as a harsh one.

θ holds one multiplier per block for its MLP neurons, then one per (block, head) (``ga_heads="head"``) or one per
block for all its heads (``"block"``). The search returns the best candidate it evaluated (``ga_result="best"``)
or its final distribution mean, evaluated once more (``"mean"``).

Two evaluations give the same fitness (to float rounding; ``ga_evaluation``):

- ``sliced`` (default): each candidate runs as a physically sliced model (:mod:`snapvit_cli.scoring.pruned`), built
  without copying any weight it keeps whole, so an evaluation costs the candidate's kept FLOPs (on average 0.69 of
  the dense model's over the default budgets 0.9/0.75/0.6/0.5);
- ``masked``: the dense model itself, without touching a weight: removing a unit is exactly zeroing its slice of the
  consumer's input (``fc2`` columns, ``proj`` column groups; §2.3), which forward pre-hooks do per chunk of a batch,
  so the pruned models of all pairs run as one batched forward pass at the dense cost.

The calibration images, the dense features and the PCA basis are computed once. Under ``torch.distributed`` every
rank evaluates its shard of the images and the cosine sums are all-reduced (:mod:`snapvit_cli.scoring.distributed`).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from snapvit_cli.adapters import HEADS, MLP, ModelAdapter, get_adapter
from snapvit_cli.elastic.budget import plan_slice, removal_count, select_widths
from snapvit_cli.errors import SnapvitError
from snapvit_cli.scoring import distributed
from snapvit_cli.scoring.calibration import autocast
from snapvit_cli.scoring.heap import release_freed_memory
from snapvit_cli.scoring.pruned import Removed, pruned_model
from snapvit_cli.scoring.settings import Progress, ScoreSettings
from snapvit_cli.scoring.xnes import default_population_size, minimize


def removed_units(scores: dict[str, torch.Tensor], ratios: tuple[float, float], min_keep: dict[str, float]) -> Removed:
    """The units a slice at ``ratios`` = (MLP, heads) removes, given ``[blocks, units]`` scores per kind.

    Each block keeps a prefix of its units in descending score (stable), exactly as a bundle is sliced.
    """
    removed: Removed = {}
    for kind, ratio in zip((MLP, HEADS), ratios, strict=True):
        values = scores[kind]
        order = torch.argsort(values, dim=1, descending=True, stable=True)
        keep = select_widths(values.gather(1, order), removal_count(values.numel(), ratio), min_keep[kind])
        removed[kind] = [order[i, k:] for i, k in enumerate(keep)]
    return removed


def search_pairs(adapter: ModelAdapter, settings: ScoreSettings) -> tuple[tuple[float, float], ...]:
    """The (MLP, heads) removal pairs the fitness averages over: ``ga_pairs`` if given, else for each ``ga_flops``
    fraction the ratios ``plan(flops=f)`` resolves it to (they depend on the widths and costs, not on the scores),
    so each pair removes exactly the plan's unit counts. Raises :class:`~snapvit_cli.errors.BudgetError` for a
    fraction the floors cannot reach."""
    if settings.ga_pairs is not None:
        return settings.ga_pairs
    zeros = _zero_scores(adapter)
    pairs = []
    for fraction in settings.ga_flops or ():
        plan = plan_slice(zeros[MLP], zeros[HEADS], adapter.cost_terms(), flops=fraction, min_keep=settings.min_keep)
        pairs.append((_ratio(plan.mlp_removed, zeros[MLP].numel()), _ratio(plan.heads_removed, zeros[HEADS].numel())))
    return tuple(pairs)


def _ratio(removed: int, total: int) -> float:
    """``removed / total``, one ulp higher where float rounding would make ``removal_count`` one short."""
    ratio = removed / total
    return ratio if removal_count(total, ratio) == removed else math.nextafter(ratio, 1.0)


def resolve_pairs(adapter: ModelAdapter, settings: ScoreSettings) -> ScoreSettings:
    """``settings`` with ``ga_pairs`` set to :func:`search_pairs`, and ``ga_flops`` kept only where they made the
    pairs: what a bundle records."""
    flops = settings.ga_flops if settings.ga_pairs is None else None
    return replace(settings, ga_pairs=search_pairs(adapter, settings), ga_flops=flops)


def check_pairs(adapter: ModelAdapter, settings: ScoreSettings) -> None:
    """Raise :class:`~snapvit_cli.errors.BudgetError` now if a search pair removes more than the floors allow."""
    zeros = _zero_scores(adapter)
    for pair in search_pairs(adapter, settings):
        removed_units(zeros, pair, settings.min_keep)


def _zero_scores(adapter: ModelAdapter) -> dict[str, torch.Tensor]:
    widths = adapter.widths()
    return {kind: torch.zeros(adapter.num_blocks, widths.of(kind)[0]) for kind in (MLP, HEADS)}


def head_multipliers(heads: int, settings: ScoreSettings) -> int:
    """Head multipliers per block in θ for blocks of ``heads`` heads: one per head, or one for all of them
    (``ga_heads="block"``)."""
    return heads if settings.ga_heads == "head" else 1


def search_population(adapter: ModelAdapter, settings: ScoreSettings) -> int:
    """λ of the search: ``ga_population``, else xNES's default for θ's length (one multiplier per block for its
    MLP neurons, and per block or per head for its heads)."""
    dim = adapter.num_blocks * (1 + head_multipliers(adapter.widths().heads[0], settings))
    return settings.ga_population or default_population_size(dim)


def check_evaluations(adapter: ModelAdapter, settings: ScoreSettings) -> None:
    """Refuse a search too short to move: xNES updates its distribution once per λ evaluations after the first
    (the starting point), so fewer than 2λ + 1 evaluations update it at most once and mostly sample μ₀'s
    neighbourhood. 0 means no search at all and is allowed."""
    population = search_population(adapter, settings)
    minimum = 2 * population + 1
    if 0 < settings.ga_evals < minimum:
        raise SnapvitError(
            f"ga_evals {settings.ga_evals} is too few for this model: xNES with population {population} needs "
            f"at least {minimum} evaluations for two updates; use at least {minimum}, or 0 for gradient scores "
            "without search",
            param="ga_evals",
        )


def keep_masks(adapter: ModelAdapter, candidates: list[Removed]) -> dict[str, list[torch.Tensor]]:
    """Per kind, per block: a [candidates, units] mask, 1 for kept units and 0 for removed ones."""
    widths = adapter.widths()
    masks: dict[str, list[torch.Tensor]] = {}
    for kind in (MLP, HEADS):
        masks[kind] = []
        for i in range(adapter.num_blocks):
            mask = torch.ones(len(candidates), widths.of(kind)[i])
            for c, removed in enumerate(candidates):
                mask[c, removed[kind][i]] = 0.0
            masks[kind].append(mask)
    return masks


@contextlib.contextmanager
def masked(model: nn.Module, adapter: ModelAdapter, candidates: list[Removed]) -> Iterator[None]:
    """Inside the ``with`` block, a batch of ``len(candidates)`` equal chunks runs chunk c as if candidate c's removed
    units were sliced away.

    Each unit's consumer (``fc2``, ``proj``: a Linear reading the unit's outputs) gets a forward pre-hook that zeroes
    the removed units' input features of each chunk. That equals zeroing the consumer's weight columns, i.e. removing
    the unit (§2.3); no weight is touched or copied, and all candidates share one forward pass.
    """
    blocks = adapter.blocks()
    count = len(candidates)
    hooks = []
    for kind, per_block in keep_masks(adapter, candidates).items():
        for i, mask in enumerate(per_block):
            if bool(mask.all()):
                continue
            spec = next(s for s in adapter.unit_tensors(kind, i) if s.consumer)
            consumer = blocks[i].get_submodule(spec.name.rsplit(".", 1)[0])
            # [candidates, units] -> [candidates, consumer input features], features laid out [groups, units, size]
            features = mask[:, None, :, None].expand(count, spec.groups, mask.shape[1], spec.unit_size).flatten(1)
            hooks.append(consumer.register_forward_pre_hook(_zero_inputs(features, count)))
    try:
        yield
    finally:
        for hook in hooks:
            hook.remove()


def _zero_inputs(features: torch.Tensor, count: int):
    def hook(_module: nn.Module, inputs: tuple[torch.Tensor, ...]):
        x = inputs[0]
        chunks = x.unflatten(0, (count, -1))  # [candidates, batch, ..., features]
        mask = features.to(x.device, x.dtype).view(count, *([1] * (x.ndim - 1)), -1)
        return ((chunks * mask).flatten(0, 1), *inputs[1:])

    return hook


def pca_projection(features: torch.Tensor, components: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(mean, basis [k, E]) of the top-``components`` principal axes of ``features`` (float64 SVD), or ``None`` when
    ``components`` ≥ E, where the reference compares raw features (§5.3). k is capped by the number of samples."""
    if components >= features.shape[1]:
        return None
    data = features.double()
    mean = data.mean(dim=0)
    _, _, vh = torch.linalg.svd(data - mean, full_matrices=False)
    return mean, vh[: min(components, vh.shape[0])]


class FeatureFitness:
    """Callable fitness of a multiplier vector θ = [α_0..α_{L−1}, β_{0,0}..β_{L−1,H−1}] (|θ| is used).

    Args:
        model, adapter: the dense model, already on ``device`` in eval mode.
        images: preprocessed calibration images [N, 3, S, S] (all of them, also under ``torch.distributed``).
        raw: ``[blocks, units]`` raw scores per kind.
        settings: pairs, min-keep ratios, PCA components, batch size, evaluation mode and progress callback.
    """

    def __init__(
        self,
        model: nn.Module,
        adapter: ModelAdapter,
        images: torch.Tensor,
        raw: dict[str, torch.Tensor],
        settings: ScoreSettings,
        device: torch.device,
    ) -> None:
        self.model, self.adapter, self.raw, self.device = model, adapter, raw, device
        self.pairs = search_pairs(adapter, settings)
        self.min_keep = settings.min_keep
        self.relative = settings.ga_fitness == "relative"
        self.reference: list[float] | None = None  # per-pair distances at μ₀ (relative fitness)
        self._last: tuple[bytes, list[float]] | None = None
        self.batch_size = settings.ga_batch_size
        self.evaluation = settings.ga_evaluation
        self.calibration = images  # all images, where they were given (the CKA start covariance reads them)
        self.count = len(images)
        self.images = images[distributed.shard(self.count)].to(device)  # this rank's share
        own = self.features(progress=settings.progress)[0]
        dense = distributed.gather_rows(own, self.count)
        self.pca = pca_projection(dense, settings.pca_components)
        self.target = self.project(own)

    @property
    def pca_components(self) -> int:
        """Components of the comparison space (0: raw features, no PCA)."""
        return 0 if self.pca is None else int(self.pca[1].shape[0])

    def features(
        self, copies: int = 1, progress: Progress | None = None, adapter: ModelAdapter | None = None
    ) -> torch.Tensor:
        """Pooled features [copies, n, E] (float32, CPU) of this rank's calibration images, each batch repeated
        ``copies`` times in one forward pass (one copy per candidate under :func:`masked`), by ``adapter``'s model
        (default: the dense one)."""
        adapter = adapter or self.adapter
        out = []
        total = len(self.images)
        if progress is not None:
            progress("features", 0, total, None)
        with torch.no_grad():
            for start in range(0, total, self.batch_size):
                batch = self.images[start : start + self.batch_size]
                with autocast(self.device):
                    features = adapter.features(batch.repeat(copies, 1, 1, 1))
                out.append(features.float().cpu().unflatten(0, (copies, -1)))
                if progress is not None:
                    progress("features", min(start + self.batch_size, total), total, None)
        if not out:  # a rank with no images (more ranks than images)
            return torch.zeros(copies, 0, self.target_width(adapter))
        return torch.cat(out, dim=1)

    def target_width(self, adapter: ModelAdapter) -> int:
        """Width of the pooled features, found by one forward pass of a single image (for empty shards)."""
        with torch.no_grad(), autocast(self.device):
            return int(adapter.features(self.calibration[:1].to(self.device)).shape[-1])

    def project(self, features: torch.Tensor) -> torch.Tensor:
        if self.pca is None:
            return features.double()
        mean, basis = self.pca
        return (features.double() - mean) @ basis.T

    def scaled(self, theta: np.ndarray) -> dict[str, torch.Tensor]:
        """Raw scores times |θ|: one multiplier per block for MLP neurons, one per (block, head)."""
        mlp_weight, head_weight = split_multipliers(theta, *self.raw[HEADS].shape)
        return {MLP: self.raw[MLP] * mlp_weight[:, None], HEADS: self.raw[HEADS] * head_weight}

    def pruned_features(self, candidates: list[Removed]) -> torch.Tensor:
        """[candidates, n, E] features of this rank's images by the model without each candidate's removed units."""
        if self.evaluation == "masked":
            with masked(self.model, self.adapter, candidates):
                return self.features(copies=len(candidates))
        out = []
        for removed in candidates:
            pruned = pruned_model(self.model, self.adapter, removed)
            out.append(self.features(adapter=get_adapter(pruned))[0])
            del pruned  # before the next one is built: one candidate's weights at a time
        return torch.stack(out)

    def distances(self, candidates: list[Removed]) -> list[float]:
        """1 − mean cosine similarity to the dense features, for the model without each candidate's removed units
        (the mean over all images: every rank sums its shard's similarities and the sums are all-reduced)."""
        pruned = self.pruned_features(candidates)
        sums = torch.stack([F.cosine_similarity(self.project(z), self.target, dim=1).sum() for z in pruned])
        distributed.all_reduce_sum([sums])
        return [1.0 - value / self.count for value in sums.tolist()]

    def pair_distances(self, theta: np.ndarray) -> list[float]:
        """The distance of each pair's slice under multipliers θ (the last θ's are kept: μ₀ is asked for twice)."""
        key = np.asarray(theta, dtype=np.float64).tobytes()
        if self._last is None or self._last[0] != key:
            scores = self.scaled(theta)
            self._last = key, self.distances([removed_units(scores, pair, self.min_keep) for pair in self.pairs])
            release_freed_memory()  # without it the heap grows by fragmentation, ~0.5 GB per evaluation (heap.py)
        return self._last[1]

    def set_reference(self, theta: np.ndarray) -> None:
        """Measure the relative fitness against θ's pair distances (the starting point μ₀)."""
        self.reference = self.pair_distances(theta)

    def __call__(self, theta: np.ndarray) -> float:
        distances = self.pair_distances(theta)
        if self.relative:
            if self.reference is None:
                raise RuntimeError("the relative fitness needs set_reference(μ₀) first")
            distances = [d / max(r, 1e-12) for d, r in zip(distances, self.reference, strict=True)]
        return float(np.mean(distances))


@dataclass(frozen=True)
class SearchResult:
    """The multipliers found and how the search went."""

    mlp_weight: torch.Tensor  # [L], float64, non-negative
    head_weight: torch.Tensor  # [L, H]
    best_fitness: float  # of the multipliers returned
    initial_fitness: float  # of the starting mean μ₀ (evaluated first)
    trace: torch.Tensor  # fitness of every evaluation, in order
    evaluations: int
    updates: int
    population: int


def initial_mean(blocks: int, heads: int, start: float, end: float) -> np.ndarray:
    """μ₀ (§5.2): α_l = linspace(start, end, L)[l], and every head multiplier of block l starts at α_l (early blocks
    favoured); ``heads`` is the number of head multipliers per block (1 with ``ga_heads="block"``)."""
    alpha = np.linspace(start, end, blocks)
    return np.concatenate([alpha, np.repeat(alpha, heads)])


def split_multipliers(theta: np.ndarray, blocks: int, heads: int) -> tuple[torch.Tensor, torch.Tensor]:
    """|θ| as MLP multipliers [L] and head multipliers [L, H]: θ holds L MLP values, then L·H head values or L
    (one per block, shared by its heads)."""
    weights = torch.as_tensor(np.abs(theta), dtype=torch.float64)
    if len(weights) - blocks not in (blocks, blocks * heads):
        raise ValueError(f"θ has {len(weights)} values: expected {blocks} + {blocks} or {blocks} + {blocks * heads}")
    head_values = weights[blocks:].view(blocks, -1)
    return weights[:blocks].clone(), head_values.expand(blocks, heads).clone()


def search_multipliers(
    fitness: FeatureFitness, settings: ScoreSettings, covariance: np.ndarray | None = None
) -> SearchResult:
    """Minimise ``fitness`` with xNES from μ₀ (evaluated first, so the result is never worse than μ₀)."""
    blocks, heads = fitness.raw[HEADS].shape
    progress = settings.progress

    def report(index: int, _value: float, best: float) -> None:
        if progress is not None:
            progress("xnes", index + 1, settings.ga_evals, best)

    if progress is not None:
        progress("xnes", 0, settings.ga_evals, None)
    def clipped(x: np.ndarray) -> np.ndarray:  # as xNES clips what it evaluates
        return np.clip(x, *settings.ga_bounds) if settings.ga_bounds else x

    start = initial_mean(blocks, head_multipliers(heads, settings), *settings.ga_init)
    if settings.ga_fitness == "relative":
        fitness.set_reference(clipped(start))
    result = minimize(
        fitness,
        start,
        max_evaluations=settings.ga_evals,
        evaluate_mean=True,
        on_evaluation=report,
        sigma=settings.ga_sigma,
        bounds=settings.ga_bounds,
        population_size=settings.ga_population,
        seed=settings.seed,
        covariance=covariance,
    )
    chosen, value, trace = result.best_x, result.best_fitness, list(result.trace)
    if settings.ga_result == "mean":
        chosen = clipped(result.mean)
        value = fitness(chosen.copy())
        trace.append(value)
    mlp_weight, head_weight = split_multipliers(chosen, blocks, heads)
    return SearchResult(
        mlp_weight=mlp_weight,
        head_weight=head_weight,
        best_fitness=value,
        initial_fitness=float(result.trace[0]),
        trace=torch.as_tensor(trace, dtype=torch.float64),
        evaluations=len(trace),
        updates=result.updates,
        population=result.population_size,
    )
