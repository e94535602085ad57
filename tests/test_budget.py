"""The global selection rule and budget solving (docs/method.md §4)."""

from __future__ import annotations

import pytest
import torch

from snapvit_cli.adapters import get_adapter
from snapvit_cli.elastic.budget import block_floor, plan_slice, select_widths
from snapvit_cli.errors import BudgetError
from tests.conftest import make_small_model


def _sorted_random(blocks, width, seed=0):
    scores = torch.rand(blocks, width, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return torch.sort(scores, dim=1, descending=True).values


def test_removes_exactly_the_globally_lowest():
    scores = torch.tensor([[9.0, 5.0, 1.0, 0.5], [8.0, 4.0, 3.0, 2.0]], dtype=torch.float64)
    # floor = max(1, ⌊4·0.25⌋) = 1 per block; lowest three unprotected: 0.5, 1.0, 2.0
    assert select_widths(scores, 3, 0.25) == (2, 3)
    assert select_widths(scores, 0, 0.25) == (4, 4)
    assert select_widths(scores, 6, 0.25) == (1, 1)
    with pytest.raises(BudgetError, match="cannot remove 7 of 8 units: at most 6 may go"):
        select_widths(scores, 7, 0.25)


def test_floor_protects_even_the_lowest_block():
    scores = torch.tensor([[1e-9, 1e-10, 1e-11, 1e-12], [9.0, 8.0, 7.0, 6.0]], dtype=torch.float64)
    assert select_widths(scores, 3, 0.5) == (2, 3)  # block 0 keeps its floor of 2, block 1 pays the rest


def test_ties_are_deterministic_and_exact():
    scores = torch.ones(3, 10, dtype=torch.float64)
    widths = select_widths(scores, 7, 0.1)
    assert sum(10 - w for w in widths) == 7
    assert widths == select_widths(scores.clone(), 7, 0.1)
    assert widths == (3, 10, 10)  # ties go to the first block first, from its end


def test_never_zero_units():
    assert block_floor(3, 0.2) == 1
    scores = _sorted_random(4, 3)
    assert min(select_widths(scores, 8, 0.0)) == 1


@pytest.mark.parametrize("target", [0.25, 0.3, 0.4, 0.5, 0.6, 0.75, 0.9, 1.0])
@pytest.mark.parametrize("offset", [0.0, 0.15])
def test_flops_targets_hit_within_one_percent(target, offset):
    import timm

    with torch.device("meta"):
        model = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=0)
    cost = get_adapter(model).cost_terms()
    plan = plan_slice(_sorted_random(12, 3072, 1), _sorted_random(12, 12, 2), cost, flops=target, head_offset=offset)
    assert abs(plan.flops_fraction - target) <= 0.01 * target
    assert abs(plan.gmacs - cost.gmacs(plan.widths)) < 1e-12
    assert min(plan.widths.mlp) >= block_floor(3072, 0.05) and min(plan.widths.heads) >= block_floor(12, 0.2)
    assert plan.head_ratio == pytest.approx(
        max(0.0, plan.mlp_ratio - offset), abs=2 / 144
    )  # within a head: neurons fill the gap


@pytest.mark.parametrize("target", [0.5, 0.8])
def test_params_targets(target):
    model = make_small_model("dino")
    cost = get_adapter(model).cost_terms()
    plan = plan_slice(_sorted_random(3, 96), _sorted_random(3, 4), cost, params=target, head_offset=0.0)
    assert abs(plan.params_fraction - target) <= 0.01 * target
    mlp_only = plan_slice(_sorted_random(3, 96), _sorted_random(3, 4), cost, params=0.9, head_offset=1.0)
    assert mlp_only.heads_removed == 0 and mlp_only.mlp_removed > 0


def test_paper_ratio_totals_vit_b():
    """§14 C: totals kept at the six standard pairs for ViT-B."""
    import timm

    with torch.device("meta"):
        model = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=0)
    cost = get_adapter(model).cost_terms()
    pairs = [(0.15, 0.0), (0.25, 0.1), (0.35, 0.2), (0.45, 0.3), (0.55, 0.4), (0.65, 0.5)]
    kept = [plan_slice(_sorted_random(12, 3072), _sorted_random(12, 12), cost, mlp=m, heads=h).widths for m, h in pairs]
    assert [sum(w.mlp) for w in kept] == [31335, 27648, 23962, 20276, 16589, 12903]
    assert [sum(w.heads) for w in kept] == [144, 130, 116, 101, 87, 72]


KEEP = r"must lie in \(0, 1\] \(the fraction of the dense model to keep\), got "
REMOVE = r"is the fraction of units to remove and must lie in \[0, 1\), got "
ONE = "give exactly one budget: flops, params, or mlp/heads ratios"


@pytest.mark.parametrize(
    ("budget", "message"),
    [
        ({"flops": 0.0}, "flops " + KEEP + "0.0"),
        ({"flops": 1.2}, "flops " + KEEP + "1.2"),
        ({"flops": -0.5}, "flops " + KEEP + "-0.5"),
        ({"params": 1.01}, "params " + KEEP + "1.01"),
        ({"mlp": 1.0}, "mlp " + REMOVE + "1.0"),
        ({"heads": -0.1}, "heads " + REMOVE + "-0.1"),
        ({"mlp": 0.99}, r"mlp 0.99 removes more than the minimum keep allows \(at most 0.9583\)"),
        ({}, ONE),
        ({"flops": 0.5, "mlp": 0.2}, ONE),
        ({"flops": 0.01}, r"flops 0.01 is out of reach with min-keep ratios .* the smallest model keeps 0.261"),
    ],
)
def test_bad_budgets_are_clear_errors(budget, message):
    model = make_small_model("dino")
    cost = get_adapter(model).cost_terms()
    with pytest.raises(BudgetError, match=f"^{message}$"):
        plan_slice(_sorted_random(3, 96), _sorted_random(3, 4), cost, **budget)


def _vit_small_cost():
    import timm

    with torch.device("meta"):
        model = timm.create_model("vit_small_patch16_224", pretrained=False)
    return get_adapter(model).cost_terms()


@pytest.mark.parametrize("multiple", [8, 64])
def test_round_to_gives_multiples_and_meets_the_budget(multiple):
    cost = _vit_small_cost()
    mlp, heads = _sorted_random(12, 1536, seed=1), _sorted_random(12, 6, seed=2)
    exact = plan_slice(mlp, heads, cost, flops=0.5)
    rounded = plan_slice(mlp, heads, cost, flops=0.5, round_to=multiple)
    assert all(w % multiple == 0 or w == 1536 for w in rounded.widths.mlp)
    assert rounded.widths.mlp != exact.widths.mlp  # random scores never land on multiples everywhere
    assert rounded.widths.heads == exact.widths.heads
    assert abs(rounded.flops_fraction - 0.5) <= 0.005
    assert abs(sum(rounded.widths.mlp) - sum(exact.widths.mlp)) <= multiple / 2
    assert rounded.budget.round_to == multiple and rounded.mlp_removed == 12 * 1536 - sum(rounded.widths.mlp)
    assert plan_slice(mlp, heads, cost, flops=0.5, round_to=1) == exact


def test_round_to_gives_chunks_to_the_important_blocks():
    cost = _vit_small_cost()
    mlp = _sorted_random(12, 1536, seed=3)
    mlp[4] *= 10  # block 4's units matter most: it keeps more than the others
    rounded = plan_slice(mlp, _sorted_random(12, 6), cost, mlp=0.5, heads=0.0, round_to=64)
    assert rounded.widths.mlp[4] == max(rounded.widths.mlp)
    assert abs(rounded.mlp_ratio - 0.5) <= 0.005


def test_round_to_refuses_what_it_cannot_meet():
    model = make_small_model("dino")  # 96 neurons per block: chunks of 64 are far too coarse
    cost = get_adapter(model).cost_terms()
    with pytest.raises(BudgetError, match="round-to 64"):
        plan_slice(_sorted_random(3, 96), _sorted_random(3, 4), cost, flops=0.7, round_to=64)
    with pytest.raises(BudgetError, match=r"round_to must lie in \[1, 65536\]"):
        plan_slice(_sorted_random(3, 96), _sorted_random(3, 4), cost, flops=0.7, round_to=0)
