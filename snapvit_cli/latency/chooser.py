"""From a budget in measured time to per-block widths: remove MLP units by importance per millisecond saved.

The rules are those of FLOPs budgets (:mod:`snapvit_cli.elastic.budget`, docs/method.md §4): every block loses a
suffix of its importance-ordered units and keeps at least its floor; heads follow the MLP removal ratio through
``head_offset`` and are chosen by the global head ranking. What changes is the order in which blocks give up MLP
neurons: each neuron's global removal rank (1 = the first a FLOPs budget would remove) is divided by the time its
removal saves according to the latency profile, and the lowest goes first. Where removing a neuron saves the same
time in every block (a linear profile) this is exactly the FLOPs budgets' global ranking; where it does not, the
ranking bends only as far as the measured times say. Removal stops at the prediction closest to the target.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import math
from typing import TYPE_CHECKING

import numpy as np
import torch

from snapvit_cli.adapters import HEADS, MLP, Widths
from snapvit_cli.adapters.cost import CostTerms
from snapvit_cli.elastic.budget import SlicePlan, block_floor, removal_count, select_widths
from snapvit_cli.elastic.defaults import DEFAULT_HEAD_OFFSET, DEFAULT_MIN_KEEP
from snapvit_cli.elastic.grid import check_timed_target
from snapvit_cli.elastic.records import Budget, LatencyBasis
from snapvit_cli.errors import BudgetError
from snapvit_cli.latency.model import LatencyError, LatencyModel

if TYPE_CHECKING:
    from snapvit_cli.elastic.bundle import ElasticBundle


def profile_sha256(profile: LatencyModel) -> str:
    """The profile's identity in ``config.json``: sha256 of its canonical JSON."""
    text = json.dumps(profile.to_json(), sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()


def removal_ranks(sorted_scores: torch.Tensor, floor: int) -> np.ndarray:
    """``[blocks, width]`` ranks 1, 2, … in the order :func:`select_widths` removes units (infinite for the units
    under the floor): lowest score first, ties by block, then from the end of the block."""
    blocks, width = sorted_scores.shape
    values = sorted_scores[:, floor:].double().reshape(-1).cpu().numpy()
    block = np.repeat(np.arange(blocks), width - floor)
    position = np.tile(np.arange(floor, width), blocks)
    order = np.lexsort((-position, block, values))
    ranks = np.full((blocks, width), np.inf)
    ranks[block[order], position[order]] = np.arange(1, len(order) + 1)
    return ranks


def plan_latency(
    mlp_scores: torch.Tensor,
    head_scores: torch.Tensor,
    cost: CostTerms,
    profile: LatencyModel,
    *,
    speedup: float | None = None,
    latency: float | None = None,
    head_offset: float = DEFAULT_HEAD_OFFSET,
    min_keep: dict[str, float] | None = None,
    round_to: int = 1,
) -> SlicePlan:
    """Resolve a ``speedup`` (times faster than dense) or ``latency`` (milliseconds per batch) budget.

    Both are what ``profile`` predicts for the batch size, device, dtype and resolution it was measured at.
    ``round_to``: MLP neurons are removed in chunks that keep every block's width a multiple of it (or whole).
    """
    min_keep = {**DEFAULT_MIN_KEEP, **(min_keep or {})}
    check_timed_target(speedup, latency)
    if not 0.0 <= head_offset <= 1.0:
        raise BudgetError(f"head_offset must lie in [0, 1], got {head_offset}", param="head_offset")
    if round_to < 1:
        raise BudgetError(f"--round-to must be at least 1, got {round_to}")
    blocks, width = mlp_scores.shape
    n_heads = head_scores.shape[1]
    arch = profile.key.architecture
    if (arch["num_blocks"], arch["mlp_hidden"], arch["num_heads"]) != (blocks, width, n_heads):
        raise LatencyError(
            f"the latency profile describes {arch['num_blocks']} blocks of {arch['mlp_hidden']} neurons and "
            f"{arch['num_heads']} heads, not this bundle's {blocks} × {width} and {n_heads}"
        )
    if profile.key.resolution != cost.resolution:
        raise LatencyError(f"the latency profile is for {profile.key.resolution} px, not {cost.resolution} px")

    dense_ms = profile.dense_ms()
    target_ms = dense_ms / speedup if speedup is not None else latency
    mlp_sorted = torch.sort(mlp_scores, dim=1, descending=True, stable=True).values
    head_sorted = torch.sort(head_scores, dim=1, descending=True, stable=True).values
    floor = block_floor(width, min_keep["mlp"])
    chunk_floor = min(width, -(-floor // round_to) * round_to)
    ranks = removal_ranks(mlp_sorted, floor)
    total_m, total_h = blocks * width, blocks * n_heads
    max_h = blocks * (n_heads - block_floor(n_heads, min_keep["heads"]))

    mlp = [width] * blocks
    heads = (n_heads,) * blocks
    n_m = n_h = 0
    times = [profile.block_ms(width, n_heads)] * blocks

    def candidate(b: int) -> tuple[float, int, int] | None:
        w = mlp[b]
        nxt = (w - 1) // round_to * round_to
        if nxt < chunk_floor:
            return None
        saved = profile.block_ms(w, heads[b]) - profile.block_ms(nxt, heads[b])
        priority = float(ranks[b, nxt:w].sum()) / max(saved, 1e-12)
        return priority, b, nxt

    heap = [c for c in (candidate(b) for b in range(blocks)) if c is not None]
    heapq.heapify(heap)
    best = (abs(profile.fixed_ms + sum(times) - target_ms), tuple(mlp), heads)
    while profile.fixed_ms + sum(times) > target_ms and heap:
        _, b, nxt = heapq.heappop(heap)
        n_m += mlp[b] - nxt
        mlp[b] = nxt
        new_h = min(max_h, removal_count(total_h, max(0.0, n_m / total_m - head_offset)))  # as FLOPs budgets
        if new_h != n_h:
            n_h = new_h
            heads = select_widths(head_sorted, n_h, min_keep["heads"])
            times = [profile.block_ms(m, h) for m, h in zip(mlp, heads, strict=True)]
        else:
            times[b] = profile.block_ms(nxt, heads[b])
        nxt_candidate = candidate(b)
        if nxt_candidate is not None:
            heapq.heappush(heap, nxt_candidate)
        error = abs(profile.fixed_ms + sum(times) - target_ms)
        if error <= best[0]:
            best = (error, tuple(mlp), heads)
    predicted = profile.fixed_ms + sum(times)
    if predicted > target_ms and not math.isclose(predicted, target_ms, rel_tol=0.01):
        what = f"speedup {speedup:g}" if speedup is not None else f"latency {latency:g} ms"
        raise BudgetError(
            f"{what} is out of reach with min-keep ratios {min_keep} and head_offset {head_offset}: the fastest "
            f"slice is predicted at {predicted:.3g} ms per batch, {dense_ms / predicted:.2f}× faster than dense",
            param="speedup" if speedup is not None else "latency",
        )
    _, mlp_widths, head_widths = best
    widths = Widths(mlp_widths, head_widths)
    predicted = profile.predict_ms(widths.mlp, widths.heads)
    key = profile.key
    basis = LatencyBasis(
        device=key.device,
        device_name=key.device_name,
        threads=key.threads,
        dtype=key.dtype,
        batch_size=key.batch_size,
        resolution=key.resolution,
        torch=key.torch,
        profile_sha256=profile_sha256(profile),
        dense_ms=dense_ms,
        predicted_ms=predicted,
        clock=key.clock,
    )
    kind, target = ("speedup", speedup) if speedup is not None else ("latency", latency)
    budget = Budget(kind, target=target, head_offset=head_offset, round_to=round_to, latency=basis)
    return SlicePlan.of(widths, Widths((width,) * blocks, (n_heads,) * blocks), budget, cost)


def plan_bundle(
    bundle: ElasticBundle,
    profile: LatencyModel,
    *,
    speedup: float | None = None,
    latency: float | None = None,
    head_offset: float = DEFAULT_HEAD_OFFSET,
    round_to: int = 1,
) -> SlicePlan:
    """:func:`plan_latency` for an opened bundle (its scores and floors), at the profile's resolution."""
    return plan_latency(
        bundle.scores[MLP],
        bundle.scores[HEADS],
        bundle.cost(profile.key.resolution),
        profile,
        speedup=speedup,
        latency=latency,
        head_offset=head_offset,
        min_keep=bundle.min_keep,
        round_to=round_to,
    )
