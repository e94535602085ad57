"""From a budget to per-block widths: the global selection rule (docs/method.md §4) and FLOPs/params targets.

Units are ranked globally across blocks, separately for MLP neurons and heads. Within each block the top
``max(1, ⌊width·min_keep⌋)`` units are protected; of the rest exactly ``N`` are removed, lowest score first, ties
broken by block then by position from the end — so every block loses a suffix of its importance-ordered units and
the result is deterministic ([BETTER] rule of §4.3: exact count, stable ties, never zero units in a block).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import asdict, dataclass

import numpy as np
import torch

from snapvit_cli.adapters import Widths
from snapvit_cli.adapters.cost import CostTerms
from snapvit_cli.elastic.defaults import DEFAULT_HEAD_OFFSET, DEFAULT_MIN_KEEP
from snapvit_cli.elastic.records import MAX_ROUND_TO, Budget
from snapvit_cli.errors import BudgetError


def block_floor(width: int, min_keep: float) -> int:
    """Units of a block that can never be removed: ``⌊width·min_keep⌋``, but at least one."""
    return max(1, math.floor(width * min_keep))


def removal_count(total: int, ratio: float) -> int:
    """``⌊total·ratio⌋`` as the reference computes it (§4.1)."""
    return math.floor(total * ratio)


def select_widths(sorted_scores: torch.Tensor, remove: int, min_keep: float) -> tuple[int, ...]:
    """Kept units per block after removing exactly ``remove`` units globally.

    ``sorted_scores`` is ``[blocks, width]`` with each row in descending order (the bundle's unit order).
    """
    blocks, width = sorted_scores.shape
    floor = block_floor(width, min_keep)
    removable = blocks * (width - floor)
    if not 0 <= remove <= removable:
        raise BudgetError(f"cannot remove {remove} of {blocks * width} units: at most {removable} may go")
    if remove == 0:
        return (width,) * blocks
    values = sorted_scores[:, floor:].double().reshape(-1).cpu().numpy()
    block = np.repeat(np.arange(blocks), width - floor)
    position = np.tile(np.arange(floor, width), blocks)
    order = np.lexsort((-position, block, values))  # last key is primary: score, then block, then from the end
    removed_per_block = np.bincount(block[order[:remove]], minlength=blocks)
    return tuple(int(width - r) for r in removed_per_block)


@dataclass(frozen=True)
class SlicePlan:
    """What a budget resolves to: widths per block, removed fractions, and the resulting cost."""

    widths: Widths
    budget: Budget
    mlp_removed: int
    heads_removed: int
    mlp_ratio: float
    head_ratio: float
    resolution: int
    gmacs: float
    params: int
    dense_gmacs: float
    dense_params: int

    @property
    def flops_fraction(self) -> float:
        return self.gmacs / self.dense_gmacs

    @property
    def params_fraction(self) -> float:
        return self.params / self.dense_params

    @classmethod
    def of(cls, widths: Widths, dense: Widths, budget: Budget, cost: CostTerms) -> SlicePlan:
        """The plan that keeps ``widths`` of the ``dense`` model, its removed counts and costs derived from them."""
        total_m, total_h = sum(dense.mlp), sum(dense.heads)
        n_m, n_h = total_m - sum(widths.mlp), total_h - sum(widths.heads)
        return cls(
            widths=widths,
            budget=budget,
            mlp_removed=n_m,
            heads_removed=n_h,
            mlp_ratio=n_m / total_m,
            head_ratio=n_h / total_h,
            resolution=cost.resolution,
            gmacs=cost.gmacs(widths),
            params=cost.params(widths),
            dense_gmacs=cost.macs(dense) / 1e9,
            dense_params=cost.params(dense),
        )

    def to_json(self) -> dict:
        data = asdict(self)
        data["widths"] = self.widths.to_json()
        data["budget"] = self.budget.to_json()
        data["flops_fraction"] = self.flops_fraction
        data["params_fraction"] = self.params_fraction
        return data


def plan_slice(
    mlp_scores: torch.Tensor,
    head_scores: torch.Tensor,
    cost: CostTerms,
    *,
    flops: float | None = None,
    params: float | None = None,
    mlp: float | None = None,
    heads: float | None = None,
    head_offset: float = DEFAULT_HEAD_OFFSET,
    min_keep: dict[str, float] | None = None,
    round_to: int = 1,
) -> SlicePlan:
    """Resolve exactly one kind of budget into a :class:`SlicePlan`.

    ``flops`` / ``params``: fraction of the dense model's GMACs / parameters to keep, in (0, 1]. The head removal
    ratio follows the MLP ratio as ``max(0, mlp_ratio − head_offset)`` (0.15: the paper's grid; 0: prune both
    alike; 1: MLP only); the MLP count is then fine-tuned so the target is met to within one neuron's cost.
    ``mlp`` / ``heads``: fractions of neurons / heads to *remove* (the paper's convention), in [0, 1).
    ``round_to``: every block's kept MLP width becomes a multiple of it (or stays whole) by :func:`round_widths`;
    the budget must still be met within 1 % (1 = the method's exact counts).
    """
    if isinstance(round_to, bool) or not isinstance(round_to, int) or not 1 <= round_to <= MAX_ROUND_TO:
        raise BudgetError(f"round_to must lie in [1, {MAX_ROUND_TO}], got {round_to!r}", param="round_to")
    min_keep = {**DEFAULT_MIN_KEEP, **(min_keep or {})}
    blocks, width = mlp_scores.shape
    n_heads = head_scores.shape[1]
    total_m, total_h = blocks * width, blocks * n_heads
    max_m = blocks * (width - block_floor(width, min_keep["mlp"]))
    max_h = blocks * (n_heads - block_floor(n_heads, min_keep["heads"]))
    dense = Widths((width,) * blocks, (n_heads,) * blocks)

    given = [name for name, v in (("flops", flops), ("params", params)) if v is not None]
    if mlp is not None or heads is not None:
        given.append("ratios")
    if len(given) != 1:
        raise BudgetError("give exactly one budget: flops, params, or mlp/heads ratios")

    if given[0] == "ratios":
        r_m, r_h = mlp or 0.0, heads or 0.0
        for name, r, most in (("mlp", r_m, max_m / total_m), ("heads", r_h, max_h / total_h)):
            if not 0.0 <= r < 1.0:
                raise BudgetError(
                    f"{name} is the fraction of units to remove and must lie in [0, 1), got {r}", param=name
                )
            if r > most + 1e-12:
                raise BudgetError(
                    f"{name} {r} removes more than the minimum keep allows (at most {most:.4f})", param=name
                )
        n_m, n_h = removal_count(total_m, r_m), removal_count(total_h, r_h)
        budget = Budget("ratios", mlp=r_m, heads=r_h)
    else:
        kind = given[0]
        fraction = flops if kind == "flops" else params
        if not 0.0 < fraction <= 1.0:
            raise BudgetError(
                f"{kind} must lie in (0, 1] (the fraction of the dense model to keep), got {fraction}", param=kind
            )
        if not 0.0 <= head_offset <= 1.0:
            raise BudgetError(f"head_offset must lie in [0, 1], got {head_offset}", param="head_offset")
        base, per_m, per_h = _cost_basis(kind, cost, dense)
        n_m, n_h = _solve_counts(base * (1.0 - fraction), per_m, per_h, total_m, total_h, max_m, max_h, head_offset)
        achieved = (base - n_m * per_m - n_h * per_h) / base
        if abs(achieved - fraction) > 0.01 * fraction:
            floor_fraction = base - max_m * per_m - _heads_for(max_m, total_m, total_h, max_h, head_offset) * per_h
            raise BudgetError(
                f"{kind} {fraction} is out of reach with min-keep ratios {min_keep} and head_offset "
                f"{head_offset}: the smallest model keeps {floor_fraction / base:.3f}",
                param=kind,
            )
        budget = Budget(kind, target=fraction, head_offset=head_offset)

    mlp_widths = select_widths(_sorted(mlp_scores), n_m, min_keep["mlp"])
    if round_to != 1:
        mlp_widths = round_widths(_sorted(mlp_scores), mlp_widths, round_to, min_keep["mlp"])
        n_m = total_m - sum(mlp_widths)
        _check_rounded(budget, cost, dense, n_m, n_h, total_m, round_to)
        budget = dataclasses.replace(budget, round_to=round_to)
    widths = Widths(mlp_widths, select_widths(_sorted(head_scores), n_h, min_keep["heads"]))
    return SlicePlan.of(widths, dense, budget, cost)


def round_widths(
    sorted_scores: torch.Tensor, widths: tuple[int, ...], multiple: int, min_keep: float
) -> tuple[int, ...]:
    """``widths`` with every block's count a multiple of ``multiple`` (or the whole block), about the same total.

    Every block starts at its width rounded down (but not below its floor, itself rounded up); then whole chunks of
    ``multiple`` units go back, the most important chunk first (the sum of its units' scores, the global rule of §4
    at chunk granularity), while the total stays at most ``multiple / 2`` below the exact one.
    """
    if multiple < 1:
        raise BudgetError(f"--round-to must be at least 1, got {multiple}")
    blocks, width = sorted_scores.shape
    floor = min(width, -(-block_floor(width, min_keep) // multiple) * multiple)
    rounded = [min(width, max(floor, w // multiple * multiple)) for w in widths]
    scores = sorted_scores.double()
    target = sum(widths)
    while target - sum(rounded) > multiple / 2:
        open_blocks = [i for i, w in enumerate(rounded) if w < width]
        if not open_blocks:
            break
        # the chunk whose units score highest in total; ties go to the earlier block
        block = max(open_blocks, key=lambda i: (float(scores[i, rounded[i] : rounded[i] + multiple].sum()), -i))
        rounded[block] = min(width, rounded[block] + multiple)
    return tuple(rounded)


def _check_rounded(budget: Budget, cost: CostTerms, dense: Widths, n_m: int, n_h: int, total_m: int, multiple: int):
    """Raise :class:`BudgetError` unless the rounded widths still meet the budget within 1 %."""
    if budget.kind == "ratios":
        target, achieved = budget.mlp, n_m / total_m
        what = "the MLP removal ratio"
    else:
        base, per_m, per_h = _cost_basis(budget.kind, cost, dense)
        target, achieved = budget.target, (base - n_m * per_m - n_h * per_h) / base
        what = f"the --{budget.kind} budget"
    if abs(achieved - target) > 0.01 * max(target, 1e-12):
        raise BudgetError(
            f"--round-to {multiple} misses {what} by more than 1 % ({achieved:.4f} instead of {target:.4f}): "
            f"the blocks are too narrow for chunks of {multiple}"
        )


def _cost_basis(kind: str, cost: CostTerms, dense: Widths) -> tuple[int, int, int]:
    """``(dense total, cost per MLP neuron, cost per head)`` of a ``flops`` (MACs) or ``params`` budget."""
    if kind == "flops":
        return cost.macs(dense), cost.macs_per_neuron, cost.macs_per_head
    return cost.params(dense), cost.params_per_neuron, cost.params_per_head


def _sorted(scores: torch.Tensor) -> torch.Tensor:
    """Rows in descending order (a no-op for bundle scores, which are stored that way)."""
    return torch.sort(scores, dim=1, descending=True, stable=True).values


def _heads_for(n_m: int, total_m: int, total_h: int, max_h: int, offset: float) -> int:
    return min(max_h, removal_count(total_h, max(0.0, n_m / total_m - offset)))


def _solve_counts(
    to_remove: float,
    per_m: int,
    per_h: int,
    total_m: int,
    total_h: int,
    max_m: int,
    max_h: int,
    offset: float,
) -> tuple[int, int]:
    """Removal counts (neurons, heads) whose cost is closest to ``to_remove``, heads tied to neurons by ``offset``."""

    def removed_cost(r_m: float) -> float:
        return r_m * total_m * per_m + min(max_h, max(0.0, r_m - offset) * total_h) * per_h

    lo, hi = 0.0, max_m / total_m
    for _ in range(60):  # bisection on the continuous MLP ratio
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if removed_cost(mid) < to_remove else (lo, mid)
    n_h = _heads_for(round(hi * total_m), total_m, total_h, max_h, offset)
    n_m = round((to_remove - n_h * per_h) / per_m)
    return min(max(n_m, 0), max_m), n_h
