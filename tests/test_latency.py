"""Budgets in measured time: the latency model, its cache, and the chooser behind ``slice --speedup/--latency``."""

from __future__ import annotations

import json
import math

import pytest
import torch

from snapvit_cli.adapters import Widths
from snapvit_cli.adapters.cost import CostTerms
from snapvit_cli.elastic.budget import block_floor, plan_slice, select_widths
from snapvit_cli.elastic.records import Budget
from snapvit_cli.errors import BudgetError, BundleError
from snapvit_cli.latency.cache import load_or_measure, profile_path, read_profile, stale_reason
from snapvit_cli.latency.chooser import plan_latency, removal_ranks
from snapvit_cli.latency.model import LatencyError, LatencyModel, ProfileKey
from tests.conftest import make_small_model

COST = CostTerms(32, 17, 1000, 10, 20, 500, 5, 9)


def synthetic(blocks: int, width: int, heads: int, mlp_points, head_points, fixed: float = 1.0) -> LatencyModel:
    """A latency model with the given (width, ms) and (heads, ms) block curves; no timing involved."""
    arch = {"family": "vit", "num_blocks": blocks, "embed_dim": 8, "num_heads": heads, "head_dim": 2,
            "mlp_hidden": width, "mlp_type": "standard", "tokens": 17}  # fmt: skip
    key = ProfileKey("cpu", "synthetic", 1, "float32", 4, 32, "0.0", arch)
    (mw, mms), (hc, hms) = zip(*mlp_points, strict=True), zip(*head_points, strict=True)
    return LatencyModel(key, fixed, mw, mms, hc, hms, 0.0, {}, 1, 1, 0.0, 0.0)


def linear(blocks: int, width: int, heads: int, per_unit: float = 1.0, per_head: float = 10.0) -> LatencyModel:
    dense_block = 5.0 + width * per_unit + heads * per_head
    return synthetic(
        blocks, width, heads,
        [(1, dense_block - (width - 1) * per_unit), (width, dense_block)],
        [(1, dense_block - (heads - 1) * per_head), (heads, dense_block)],
    )  # fmt: skip


def scores(blocks: int, width: int, seed: int = 0) -> torch.Tensor:
    values = torch.rand(blocks, width, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return torch.sort(values, dim=1, descending=True).values


def test_linear_profile_keeps_the_global_ranking_and_the_head_rule_of_flops_budgets():
    mlp, heads = scores(4, 40), scores(4, 4, seed=1)
    profile = linear(4, 40, 4)
    plan = plan_latency(mlp, heads, COST, profile, speedup=1.6, head_offset=0.15)
    n_m = plan.mlp_removed
    # every unit saves the same time, so the MLP widths are those of the global ranking for the same count ...
    assert plan.widths.mlp == select_widths(mlp, n_m, 0.05)
    # ... and heads follow the MLP ratio exactly as a FLOPs budget would make them
    flops_heads = plan_slice(mlp, heads, COST, mlp=n_m / 160, heads=max(0.0, n_m / 160 - 0.15)).widths.heads
    assert plan.widths.heads == flops_heads and plan.heads_removed > 0


def test_synthetic_profile_target_is_hit_exactly():
    profile = linear(3, 32, 4, per_unit=0.5)
    dense = profile.dense_ms()
    for removed in (1, 17, 50):  # MLP only (head_offset 1): each removed neuron saves exactly 0.5 ms
        target = dense / (dense - 0.5 * removed)
        plan = plan_latency(scores(3, 32), scores(3, 4), COST, profile, speedup=target, head_offset=1.0)
        assert plan.mlp_removed == removed and plan.heads_removed == 0
        assert math.isclose(plan.budget.latency.predicted_ms, dense / target, rel_tol=1e-12)
    plan = plan_latency(scores(3, 32), scores(3, 4), COST, profile, latency=dense - 10.0, head_offset=1.0)
    assert plan.mlp_removed == 20 and math.isclose(plan.budget.latency.predicted_ms, dense - 10.0)


def test_floors_hold_and_an_unreachable_speedup_is_refused():
    mlp, heads = scores(3, 40), scores(3, 5)
    profile = linear(3, 40, 5)
    fastest = profile.predict_ms([block_floor(40, 0.05)] * 3, [block_floor(5, 0.2)] * 3)
    plan = plan_latency(mlp, heads, COST, profile, speedup=profile.dense_ms() / fastest, head_offset=0.0)
    assert plan.widths == Widths((2, 2, 2), (1, 1, 1))  # the floors: ⌊40·0.05⌋ = 2 neurons, 1 head of 5
    with pytest.raises(BudgetError, match="out of reach") as caught:
        plan_latency(mlp, heads, COST, profile, speedup=profile.dense_ms() / fastest * 1.1, head_offset=0.0)
    assert caught.value.param == "speedup"
    with pytest.raises(BudgetError, match=r"speedup must lie in \[1"):
        plan_latency(mlp, heads, COST, profile, speedup=0.5)


def test_removal_follows_time_saved_where_the_profile_is_not_linear():
    # removing a neuron above width 6 saves 10 ms, below it 0.1 ms; block 0's units all rank below block 1's
    mlp = torch.tensor([[0.20, 0.19, 0.18, 0.17, 0.16, 0.15, 0.14, 0.13], [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.25]])
    heads = torch.ones(2, 2, dtype=torch.float64)
    profile = synthetic(2, 8, 2, [(1, 100.5), (6, 101.0), (8, 121.0)], [(1, 111.0), (2, 121.0)])
    plan = plan_latency(mlp, heads, COST, profile, latency=profile.dense_ms() - 40.0, head_offset=1.0)
    # the global ranking would take 4 units from block 0 (down to 4); time per rank takes 2 from each block
    assert plan.widths.mlp == (6, 6) and select_widths(mlp, 4, 0.05) == (4, 8)


def test_round_to_removes_whole_chunks():
    profile = linear(3, 64, 4)
    plan = plan_latency(scores(3, 64), scores(3, 4), COST, profile, speedup=1.5, round_to=8, head_offset=1.0)
    assert all(w % 8 == 0 for w in plan.widths.mlp) and plan.budget.round_to == 8
    # the closest prediction a whole chunk allows: within half a chunk's time (8 neurons of 1 ms)
    assert abs(plan.budget.latency.predicted_ms - profile.dense_ms() / 1.5) <= 4.0


def test_removal_ranks_number_units_in_the_order_of_select_widths():
    mlp = scores(3, 10)
    ranks = removal_ranks(mlp, 1)
    for n in range(0, 28):
        kept = select_widths(mlp, n, 0.1)
        removed = {(b, p) for b in range(3) for p in range(kept[b], 10)}
        assert removed == {(b, p) for b in range(3) for p in range(10) if ranks[b, p] <= n}


def test_profile_record_round_trips_and_is_strict():
    profile = linear(2, 8, 2)
    data = profile.to_json()
    assert LatencyModel.from_json(json.loads(json.dumps(data))) == profile
    with pytest.raises(BundleError, match="unknown key"):
        LatencyModel.from_json({**data, "extra": 1})
    with pytest.raises(LatencyError, match="profile version"):
        LatencyModel.from_json({**data, "profile_version": 2})
    bad = json.loads(json.dumps(data))
    bad["mlp"]["widths"] = [8, 1]
    with pytest.raises(LatencyError, match="increase"):
        LatencyModel.from_json(bad)


def test_profile_measures_a_small_model_and_the_cache_detects_stale_files(tmp_path, monkeypatch):
    monkeypatch.setenv("SNAPVIT_CACHE_DIR", str(tmp_path / "cache"))
    skeleton = make_small_model("dino").to("meta")
    first = load_or_measure(skeleton, min_keep_mlp=0.05, batch_size=2, repeats=1)
    assert not first.cached and first.stale is None and first.path.parent == tmp_path / "cache" / "latency"
    profile = first.profile
    assert profile.mlp_widths[-1] == 96 and profile.heads == (1, 2, 3, 4) and profile.key.batch_size == 2
    assert all(t > 0 for t in (*profile.mlp_ms, *profile.heads_ms, profile.fixed_ms, profile.dense_ms_measured))
    assert profile.key.torch == torch.__version__ and profile.key.architecture["tokens"] == 17
    again = load_or_measure(skeleton, min_keep_mlp=0.05, batch_size=2, repeats=1)
    assert again.cached and again.profile == profile
    # another batch size is another key, another file
    assert profile_path(profile.key) != profile_path(ProfileKey(**{**profile.key.__dict__, "batch_size": 3}))
    # a file that claims another torch version under this key is stale: measured again, and the reason is said
    stale = json.loads(first.path.read_text())
    stale["key"]["torch"] = "1.0.0"
    first.path.write_text(json.dumps(stale))
    assert "torch '1.0.0', not" in stale_reason(read_profile(first.path), profile.key)
    redone = load_or_measure(skeleton, min_keep_mlp=0.05, batch_size=2, repeats=1)
    assert not redone.cached and "torch '1.0.0'" in redone.stale
    assert read_profile(redone.path).key.torch == torch.__version__


def test_speedup_budget_round_trips_through_its_record():
    profile = linear(2, 8, 2)
    plan = plan_latency(scores(2, 8), scores(2, 2), COST, profile, speedup=1.25, head_offset=1.0)
    budget = plan.budget
    assert budget.kind == "speedup" and budget.label() == "speedup 1.25"
    assert Budget.from_json(json.loads(json.dumps(budget.to_json()))) == budget
    assert budget.latency.batch_size == 4 and budget.latency.device_name == "synthetic"
    data = budget.to_json()
    with pytest.raises(BundleError, match="target"):
        Budget.from_json({**data, "target": 0.5})
    with pytest.raises(BundleError, match="lacks 'latency'"):
        Budget.from_json({k: v for k, v in data.items() if k != "latency"})


def _profile_of(timing, monkeypatch, blocks: int = 3, fixed: float = 5.0) -> LatencyModel:
    """``measure_profile`` of the small ViT with ``timing(m, h)`` (ms) standing in for each block's measured median."""
    from snapvit_cli.latency import profile as profile_module

    def rounds(items, device, dtype, repeats, progress, timer=None, **kwargs):
        dense = fixed + blocks * timing(96, 4, dense_model=True)
        named = {"fixed": fixed, "dense": dense}
        return {name: [named[name] if name in named else timing(*name)] * repeats for name in items}

    monkeypatch.setattr(profile_module, "_rounds", rounds)
    skeleton = make_small_model("dino").to("meta")
    assert len(skeleton.blocks) == blocks
    return profile_module.measure_profile(skeleton, min_keep_mlp=0.05, batch_size=2, repeats=3)


def test_profile_fit_follows_the_timing_function_not_its_noisiest_medians(monkeypatch):
    """What a loaded machine did to a ViT-Tiny profile at batch 32: the dense block's median came out slow and two
    neighbouring medians swapped. Joined point to point, that made a steep last segment over a flat one, the chooser
    took exactly those units, and slices measured 15-25 % short of the target. The fit must follow the timing
    function (affine in the widths, with a fixed part per block) to within a few percent anyway."""

    def true_ms(m: int, h: int, dense_model: bool = False) -> float:
        return 20.0 + 0.25 * m + 6.0 * h  # a fixed part per block (norms, residuals, softmax) + MLP + heads

    noise = {(96, 4): 1.25, (84, 4): 0.93, (72, 4): 1.08, (96, 3): 1.15}

    def measured(m: int, h: int, dense_model: bool = False) -> float:
        return true_ms(m, h) * (1.0 if dense_model else noise.get((m, h), 1.0))

    def truth(mlp, heads) -> float:
        return 5.0 + sum(true_ms(m, h) for m, h in zip(mlp, heads, strict=True))

    profile = _profile_of(measured, monkeypatch)
    assert profile.mlp_widths[-1] == 96 and profile.heads == (1, 2, 3, 4)
    dense = truth([96] * 3, [4] * 3)
    assert profile.dense_ms() == pytest.approx(dense, rel=0.05)
    for mlp, heads in (([48] * 3, [4] * 3), ([84, 12, 12], [4, 2, 1]), ([72, 36, 5], [3, 2, 2])):
        speedup = profile.dense_ms() / profile.predict_ms(mlp, heads)
        assert speedup == pytest.approx(dense / truth(mlp, heads), rel=0.04), (mlp, heads)
    plan = plan_latency(scores(3, 96), scores(3, 4, seed=1), COST, profile, speedup=1.8, head_offset=0.15)
    assert dense / truth(plan.widths.mlp, plan.widths.heads) == pytest.approx(1.8, rel=0.05)
    # without noise the fit is the timing function itself, and the dense check agrees with it
    exact = _profile_of(true_ms, monkeypatch)
    assert exact.mlp_ms == pytest.approx([true_ms(m, 4) for m in exact.mlp_widths])
    assert exact.heads_ms == pytest.approx([true_ms(96, h) for h in exact.heads])
    assert exact.dense_ms() == pytest.approx(exact.dense_ms_measured)


def test_profile_fit_never_says_that_removing_units_makes_a_block_slower(monkeypatch):
    """On a flat curve noise can tilt the fitted slope below zero; the slope is then zero, not negative."""
    profile = _profile_of(lambda m, h, dense_model=False: 50.0 - 0.01 * m + (0.5 if h == 2 else 0.0), monkeypatch)
    assert profile.mlp_ms == pytest.approx([profile.mlp_ms[-1]] * len(profile.mlp_ms))
    assert list(profile.heads_ms) == sorted(profile.heads_ms) and profile.heads_ms[-1] == profile.mlp_ms[-1]


def test_the_dense_check_is_timed_once_without_a_warm_up_of_its_own():
    """The dense model was timed in every round plus a warm-up: a third of a ViT-B batch-32 profile's cost."""
    from snapvit_cli.latency.profile import _rounds

    clock, counts = [0.0], dict.fromkeys(("block", "dense", "small"), 0)

    def item(name: str, seconds: float):
        def run() -> None:
            counts[name] += 1
            clock[0] += seconds

        return run

    items = {"block": item("block", 0.1), "dense": item("dense", 1.0), "small": item("small", 2.0**-10)}
    checks = frozenset({"dense", "small"})
    times = _rounds(items, torch.device("cpu"), "float32", 5, None, lambda: clock[0], checks=checks)
    assert counts == {"block": 6, "dense": 1, "small": 53}  # a fast check: its first pass warms, 52 fill a sample
    assert times["dense"] == [1000.0] and times["small"] == [1000.0 * 2.0**-10]
    assert times["block"] == pytest.approx([100.0] * 5)


def test_cpu_clock_profile_is_its_own_key_and_is_recorded(tmp_path, monkeypatch):
    from snapvit_cli.latency.profile import measure_profile

    monkeypatch.setenv("SNAPVIT_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)  # the cpu clock needs one thread
    skeleton = make_small_model("dino").to("meta")
    wall = load_or_measure(skeleton, min_keep_mlp=0.05, batch_size=2, repeats=1)
    cpu = load_or_measure(skeleton, min_keep_mlp=0.05, batch_size=2, repeats=1, clock="cpu")
    assert not cpu.cached and cpu.path != wall.path and cpu.profile.key.clock == "cpu"
    assert cpu.profile.key.describe().endswith(", CPU time") and "CPU time" not in wall.profile.key.describe()
    with pytest.raises(LatencyError, match="clock must be one of wall, cpu"):
        measure_profile(skeleton, min_keep_mlp=0.05, clock="sundial")
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)  # the calling thread's CPU time would miss the other's
    with pytest.raises(LatencyError, match="calling thread only, and torch runs 2 threads"):
        measure_profile(skeleton, min_keep_mlp=0.05, clock="cpu")
    profile = linear(2, 8, 2)
    timed = LatencyModel(**{**profile.__dict__, "key": ProfileKey(**{**profile.key.__dict__, "clock": "cpu"})})
    budget = plan_latency(scores(2, 8), scores(2, 2), COST, timed, speedup=1.2, head_offset=1.0).budget
    assert budget.latency.clock == "cpu" and budget.latency.describe().endswith("CPU time")
    assert Budget.from_json(json.loads(json.dumps(budget.to_json()))) == budget
