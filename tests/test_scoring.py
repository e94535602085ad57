"""Scoring methods on small random-init models: shapes, determinism, formulas, the search's fitness, model intact."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F

from snapvit_cli.adapters import HEADS, MLP, get_adapter
from snapvit_cli.data.arrays import ArrayReader
from snapvit_cli.data.imageset import ImageSet
from snapvit_cli.elastic.budget import plan_slice
from snapvit_cli.elastic.surgery import build_model, keep_prefix, permute
from snapvit_cli.errors import BudgetError, DataError, SnapvitError
from snapvit_cli.scoring import METHODS, score_model
from snapvit_cli.scoring import gradient as gradient_module
from snapvit_cli.scoring.baselines import lamp_element_scores
from snapvit_cli.scoring.calibration import input_config, preprocessed
from snapvit_cli.scoring.crops import MultiCrop
from snapvit_cli.scoring.dino_loss import dino_self_distillation_loss
from snapvit_cli.scoring.gradient import crop_generator
from snapvit_cli.scoring.search import FeatureFitness, initial_mean, removed_units
from snapvit_cli.scoring.settings import ScoreSettings, parse_pairs
from tests.conftest import SMALL_CONFIGS, make_small_model

FAST = {
    "samples": 6,
    "batch_size": 4,
    "micro_batch": 2,
    "ga_evals": 5,
    "ga_population": 2,
    "ga_batch_size": 8,
    "seed": 3,
}


def image_set(n: int = 12, seed: int = 0, classes: int = 5) -> ImageSet:
    """Random uint8 images with labels; 40 px so that crops are real resamplings for the 32 px test models."""
    gen = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, 40, 40), dtype=torch.uint8, generator=gen)
    labels = torch.arange(n) % classes
    return ImageSet(ArrayReader(images), n, source=f"random-{seed}", split="train", name="random", labels=labels)


@pytest.fixture(scope="module")
def data() -> ImageSet:
    return image_set()


@pytest.mark.parametrize("method", METHODS)
def test_every_method_scores_every_unit(method, data):
    model = make_small_model("dino")
    scores = score_model(model, method, data=data, **FAST)
    adapter = get_adapter(model)
    assert scores.method == method
    assert scores.mlp.shape == (3, 96) and scores.heads.shape == (3, 4)
    for values in (scores.mlp, scores.heads):
        assert values.dtype == torch.float64 and torch.isfinite(values).all()
        assert values.std() > 0  # not a constant: the ranking means something
    assert scores.timings["total_s"] > 0
    assert adapter.num_blocks == 3


def test_model_is_left_as_it_was(data):
    model = make_small_model("augreg-classifier").train()
    model.blocks[0].norm1.weight.requires_grad_(False)
    before = copy.deepcopy(model.state_dict())
    flags = [p.requires_grad for p in model.parameters()]
    score_model(model, "snapvit", data=data, **FAST)
    assert model.training
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(p.grad is None for p in model.parameters())  # none before, none after
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("method", ["snapvit", "random", "snip"])
def test_same_seed_same_data_identical_scores(method, data):
    model = make_small_model("dino")
    first = score_model(model, method, data=data, **FAST)
    second = score_model(model, method, data=data, **FAST)
    assert torch.equal(first.mlp, second.mlp) and torch.equal(first.heads, second.heads)
    assert sorted(first.extras) == sorted(second.extras)
    assert all(torch.equal(first.extras[k], second.extras[k]) for k in first.extras)


def test_gradient_scores_depend_on_the_data_and_the_seed(data):
    model = make_small_model("dino")
    base = score_model(model, "gradient", data=data, **FAST)
    other_images = score_model(model, "gradient", data=image_set(seed=1), **FAST)
    other_seed = score_model(model, "gradient", data=data, **{**FAST, "seed": 4})
    assert not torch.allclose(base.mlp, other_images.mlp)
    assert not torch.allclose(base.mlp, other_seed.mlp)


def test_sqgrad_matches_one_full_batch_backward(data):
    """Micro-batched accumulation equals the gradient of the batch loss over all crops at once, and the score is
    (1/E)·Σ G² per fc1 row and (1/(hd·E))·Σ G² over a head's value rows."""
    model = make_small_model("dino")
    settings = {**FAST, "samples": 4, "batch_size": 4, "micro_batch": 1, "crops": "independent"}
    scores = score_model(model, "gradient", data=data, **settings)

    images = data.subset(4, settings["seed"])
    config = input_config(model, ScoreSettings())
    crop = MultiCrop(config.size, mean=config.mean, std=config.std)
    views = torch.stack([crop(images[j][0], crop_generator(settings["seed"], j)) for j in range(4)])
    reference = copy.deepcopy(model)
    features = reference.forward_head(reference.forward_features(views.flatten(0, 1)), pre_logits=True)
    features = features.view(4, 12, -1)
    dino_self_distillation_loss(features[:, :2], features).backward()
    for i, block in enumerate(reference.blocks):
        fc1 = block.mlp.fc1.weight.grad.double()
        torch.testing.assert_close(scores.mlp[i], fc1.square().mean(dim=1), rtol=1e-4, atol=0)
        value = block.attn.qkv.weight.grad.double()[2 * 48 :].view(4, 12, 48)
        torch.testing.assert_close(scores.heads[i], value.square().mean(dim=(1, 2)), rtol=1e-4, atol=0)


def test_micro_batch_changes_memory_not_results(data):
    model = make_small_model("dino")
    one = score_model(model, "gradient", data=data, **{**FAST, "micro_batch": 1})
    four = score_model(model, "gradient", data=data, **{**FAST, "micro_batch": 4})
    torch.testing.assert_close(one.mlp, four.mlp, rtol=1e-4, atol=0)
    torch.testing.assert_close(one.heads, four.heads, rtol=1e-4, atol=0)


class RecordingCrop(MultiCrop):
    seen: list[torch.Tensor] = []

    def __call__(self, image, generator):
        views = super().__call__(image, generator)
        RecordingCrop.seen.append(views)
        return views


@pytest.mark.parametrize("mode", ["legacy", "independent"])
def test_crop_mode_reaches_the_views(monkeypatch, mode, data):
    monkeypatch.setattr(gradient_module, "MultiCrop", RecordingCrop)
    RecordingCrop.seen = []
    score_model(make_small_model("dino"), "gradient", data=data, **{**FAST, "crops": mode})
    assert len(RecordingCrop.seen) == FAST["samples"]
    for views in RecordingCrop.seen:
        globals_equal = torch.equal(views[0], views[1])
        locals_equal = all(torch.equal(views[2], views[k]) for k in range(3, 12))
        assert globals_equal == locals_equal == (mode == "legacy")


def test_legacy_and_independent_crops_give_different_scores(data):
    model = make_small_model("dino")
    legacy = score_model(model, "gradient", data=data, **{**FAST, "crops": "legacy"})
    independent = score_model(model, "gradient", data=data, **FAST)
    assert not torch.allclose(legacy.mlp, independent.mlp)


@pytest.mark.parametrize("formula", ["fisher", "taylor"])
def test_other_score_formulas(formula, data):
    model = make_small_model("dino")
    sq = score_model(model, "gradient", data=data, **FAST)
    other = score_model(model, "gradient", data=data, **{**FAST, "score": formula})
    assert other.settings["score"] == formula and torch.isfinite(other.mlp).all()
    assert (other.mlp >= 0).all() and not torch.allclose(sq.mlp, other.mlp)
    if formula == "fisher":  # Σ_b g_b² ≥ (Σ_b g_b)² / n_batches by Cauchy-Schwarz; 2 batches here
        assert (other.mlp >= sq.mlp / 2 * (1 - 1e-9)).all()


def test_cross_entropy_needs_a_classifier_and_labels(data):
    classifier = make_small_model("augreg-classifier")  # 7 classes; the data has labels 0..4
    scores = score_model(classifier, "gradient", data=data, **{**FAST, "loss": "ce"})
    assert scores.settings["loss"] == "ce" and torch.isfinite(scores.mlp).all()
    with pytest.raises(SnapvitError, match="classifier"):
        score_model(make_small_model("dino"), "gradient", data=data, **{**FAST, "loss": "ce"})
    with pytest.raises(DataError, match="out of range"):
        score_model(classifier, "gradient", data=image_set(classes=12), **{**FAST, "loss": "ce", "samples": 12})


def test_magnitude_is_the_l2_norm_of_every_weight_into_and_out_of_the_unit():
    """By hand on a small ViT: a neuron's fc1 row and fc2 column, a head's q, k and v rows and proj columns (no bias),
    as one L2 norm."""
    model = make_small_model("dino")
    scores = score_model(model, "magnitude")
    for i, block in enumerate(model.blocks):
        fc1, fc2 = block.mlp.fc1.weight.double(), block.mlp.fc2.weight.double()
        for j in range(fc1.shape[0]):
            expected = (fc1[j].square().sum() + fc2[:, j].square().sum()).sqrt()
            assert torch.isclose(scores.mlp[i, j], expected, rtol=1e-12), (i, j)
        qkv, proj = block.attn.qkv.weight.double(), block.attn.proj.weight.double()
        dim, hd = proj.shape[0], block.attn.head_dim
        for h in range(block.attn.num_heads):
            rows = [qkv[g * dim + h * hd : g * dim + (h + 1) * hd] for g in range(3)]  # its q, k and v rows
            total = sum(r.square().sum() for r in rows) + proj[:, h * hd : (h + 1) * hd].square().sum()
            assert torch.isclose(scores.heads[i, h], total.sqrt(), rtol=1e-12), (i, h)


def test_snip_is_the_mean_of_grad_times_weight_plus_alpha_weight_squared(monkeypatch, data):
    """By hand from the accumulated gradient G of the fc1 rows and of the v rows of qkv, and the model's own weights:
    the mean over the unit's weights of |G·W| + α·W² (the same for neurons and heads, §13.7)."""
    captured = {}
    real = gradient_module.accumulate_gradients

    def keep(*args, **kwargs):
        captured["grads"] = real(*args, **kwargs)
        return captured["grads"]

    monkeypatch.setattr(gradient_module, "accumulate_gradients", keep)
    model = make_small_model("dino")
    alpha = 0.25
    scores = score_model(model, "snip", data=data, snip_alpha=alpha, **FAST)
    summed = captured["grads"].summed
    for i, block in enumerate(model.blocks):
        fc1 = block.mlp.fc1.weight.detach().double()
        for j in range(fc1.shape[0]):
            g, w = summed[MLP][i][0][0, j].reshape(-1), fc1[j]  # the gradient of fc1's row j
            expected = ((g * w).abs() + alpha * w.square()).mean()
            assert torch.isclose(scores.mlp[i, j], expected, rtol=1e-10), (i, j)
        qkv, hd = block.attn.qkv.weight.detach().double(), block.attn.head_dim
        dim = qkv.shape[1]
        for h in range(block.attn.num_heads):
            w = qkv[2 * dim + h * hd : 2 * dim + (h + 1) * hd].reshape(-1)  # head h's v rows
            g = summed[HEADS][i][0][0, h].reshape(-1)
            expected = ((g * w).abs() + alpha * w.square()).mean()
            assert torch.isclose(scores.heads[i, h], expected, rtol=1e-10), (i, h)
    assert float(summed[MLP][0][0].abs().sum()) > 0  # a real gradient, not zeros


def test_lamp_element_scores_by_hand():
    # |w| ascending: 1, 2, 3 -> w² / (sum of this and larger w²): 1/14, 4/13, 9/9
    scores = lamp_element_scores(torch.tensor([[3.0, -1.0, 2.0]]))
    torch.testing.assert_close(scores, torch.tensor([[1.0, 1 / 14, 4 / 13]], dtype=torch.float64))


def test_random_scores_follow_the_seed():
    model = make_small_model("dino")
    a, b = score_model(model, "random", seed=1), score_model(model, "random", seed=2)
    assert torch.equal(a.mlp, score_model(model, "random", seed=1).mlp) and not torch.equal(a.mlp, b.mlp)


def test_score_model_takes_a_settings_object():
    """The settings the CLI already validated go in as they are; keywords replace fields of it."""
    model = make_small_model("dino")
    settings = ScoreSettings(seed=3)
    by_object = score_model(model, "random", settings)
    assert torch.equal(by_object.mlp, score_model(model, "random", seed=3).mlp)
    assert not torch.equal(by_object.mlp, score_model(model, "random").mlp)
    replaced = score_model(model, "random", settings, seed=4)
    assert torch.equal(replaced.mlp, score_model(model, "random", seed=4).mlp) and settings.seed == 3
    with pytest.raises(TypeError):
        score_model(model, "random", settings, no_such_setting=1)


def test_snapvit_bundle_extras_explain_the_scores(data):
    model = make_small_model("deit3-layerscale")
    scores = score_model(model, "snapvit", data=data, **FAST)
    extras = scores.extras
    torch.testing.assert_close(scores.mlp, extras["raw.mlp"] * extras["ga.mlp_weight"][:, None], rtol=0, atol=0)
    torch.testing.assert_close(scores.heads, extras["raw.heads"] * extras["ga.head_weight"], rtol=0, atol=0)
    trace = extras["ga.fitness_trace"]
    assert trace.shape == (FAST["ga_evals"],)
    search = scores.settings["xnes"]
    assert search["initial_fitness"] == trace[0] and search["best_fitness"] == trace.min()
    assert ((extras["ga.mlp_weight"] >= 0) & (extras["ga.mlp_weight"] <= 2)).all()
    assert scores.settings["data"]["n"] == FAST["samples"] and scores.settings["ga_data"]["seed"] == FAST["seed"] + 1
    assert set(scores.timings) >= {"gradients_s", "dense_features_s", "xnes_s", "total_s"}


def test_search_pairs_beyond_the_floors_fail_before_any_work(monkeypatch, data):
    monkeypatch.setattr(gradient_module, "accumulate_gradients", None)  # would fail if reached
    with pytest.raises(BudgetError, match="at most"):
        score_model(make_small_model("dino"), "snapvit", data=data, ga_pairs=((0.97, 0.0),), **FAST)


def test_model_grads_are_kept(data):
    model = make_small_model("dino")
    grads = [torch.full_like(p, 0.5) for p in model.parameters()]
    for param, grad in zip(model.parameters(), grads, strict=True):
        param.grad = grad
    score_model(model, "gradient", data=data, **FAST)
    assert all(p.grad is g for p, g in zip(model.parameters(), grads, strict=True))


def test_search_starts_from_the_linspace_mean():
    theta = initial_mean(3, 2, 1.2, 0.8)
    np.testing.assert_allclose(theta, [1.2, 1.0, 0.8, 1.2, 1.2, 1.0, 1.0, 0.8, 0.8])


def test_parse_pairs():
    assert parse_pairs("0.15:0, 0.35:0.2") == ((0.15, 0.0), (0.35, 0.2))
    with pytest.raises(SnapvitError, match="MLP:HEADS"):
        parse_pairs("0.15")
    with pytest.raises(SnapvitError, match=r"\[0, 1\)"):
        ScoreSettings(ga_pairs=((1.0, 0.0),))


@pytest.fixture(scope="module")
def fitness(data):
    model = make_small_model("qk-norm")
    settings = ScoreSettings(data=data, ga_batch_size=5, pca_components=8)
    raw = {
        MLP: torch.rand(3, 96, dtype=torch.float64, generator=torch.Generator().manual_seed(0)),
        HEADS: torch.rand(3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1)),
    }
    images = preprocessed(data, input_config(model, settings))
    return FeatureFitness(model, get_adapter(model), images, raw, settings, torch.device("cpu"))


def test_removed_units_agree_with_slicing(fitness):
    scores = fitness.scaled(np.linspace(0.5, 1.5, 3 + 12))
    for pair in ((0.15, 0.0), (0.55, 0.4)):
        removed = removed_units(scores, pair, fitness.min_keep)
        cost = get_adapter(fitness.model).cost_terms()
        plan = plan_slice(scores[MLP], scores[HEADS], cost, mlp=pair[0], heads=pair[1])
        assert [96 - len(r) for r in removed[MLP]] == list(plan.widths.mlp)
        assert [4 - len(r) for r in removed[HEADS]] == list(plan.widths.heads)


def test_masked_candidate_equals_a_physically_sliced_model(fitness):
    model, adapter = fitness.model, get_adapter(fitness.model)
    state = copy.deepcopy(model.state_dict())
    theta = np.linspace(1.4, 0.6, 3 + 12)
    scores = fitness.scaled(theta)
    removed = removed_units(scores, (0.55, 0.4), fitness.min_keep)

    orders = {kind: torch.argsort(scores[kind], dim=1, descending=True, stable=True) for kind in (MLP, HEADS)}
    plan = plan_slice(scores[MLP], scores[HEADS], adapter.cost_terms(), mlp=0.55, heads=0.4)
    sliced_state = keep_prefix(permute(state, adapter, orders), adapter, plan.widths)
    arch, kwargs = SMALL_CONFIGS["qk-norm"]
    with torch.device("meta"):
        skeleton = timm.create_model(arch, **kwargs)
    sliced = build_model(skeleton, plan.widths, sliced_state)
    with torch.no_grad():
        expected = fitness.project(get_adapter(sliced).features(fitness.images))
    want = 1 - F.cosine_similarity(expected, fitness.target, dim=1).mean().item()
    assert fitness.distances([removed])[0] == pytest.approx(want, abs=1e-5)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())  # no weight touched


def test_candidates_batched_together_equal_one_at_a_time(fitness):
    scores = fitness.scaled(np.linspace(0.7, 1.3, 3 + 12))
    candidates = [removed_units(scores, pair, fitness.min_keep) for pair in ((0.15, 0.0), (0.35, 0.2), (0.65, 0.5))]
    together = fitness.distances(candidates)
    alone = [fitness.distances([c])[0] for c in candidates]
    assert together == pytest.approx(alone, abs=1e-6)
    assert together[0] < together[1] < together[2]  # more pruning, further from the dense features
    assert not any(module._forward_pre_hooks for module in fitness.model.modules())  # hooks removed


def test_masked_search_never_copies_the_model(monkeypatch, data):
    def refuse(*args, **kwargs):
        raise AssertionError("the search deep-copied something")

    model = make_small_model("dino")
    monkeypatch.setattr(copy, "deepcopy", refuse)
    monkeypatch.setattr(torch.nn.Module, "__deepcopy__", refuse, raising=False)
    scores = score_model(model, "snapvit", data=data, ga_evaluation="masked", **FAST)
    assert scores.extras["ga.fitness_trace"].shape == (FAST["ga_evals"],)


def test_sliced_search_never_copies_a_weight(monkeypatch, data):
    """Candidates are built from a meta-device copy of the structure: no real tensor is ever deep-copied."""
    originals = {cls: cls.__deepcopy__ for cls in (torch.Tensor, torch.nn.Parameter)}

    def guarded(cls):
        def deepcopy(self, memo):
            if not self.is_meta:
                raise AssertionError("the search deep-copied a weight")
            return originals[cls](self, memo)

        return deepcopy

    for cls in originals:
        monkeypatch.setattr(cls, "__deepcopy__", guarded(cls))
    scores = score_model(make_small_model("dino"), "snapvit", data=data, **FAST)
    assert scores.settings["ga_evaluation"] == "sliced"
    assert scores.extras["ga.fitness_trace"].shape == (FAST["ga_evals"],)


def test_dense_candidate_has_zero_distance(fitness):
    nothing = [torch.empty(0, dtype=torch.long)] * 3
    assert fitness.distances([{MLP: nothing, HEADS: nothing}]) == pytest.approx([0.0], abs=1e-6)
    assert fitness(np.ones(15)) > 0  # pruning moves the features


def test_pca_is_skipped_when_it_would_not_reduce(data):
    model = make_small_model("dino")  # embedding dim 48
    settings = ScoreSettings(data=data, pca_components=48)
    images = preprocessed(data, input_config(model, settings))
    raw = {MLP: torch.rand(3, 96, dtype=torch.float64), HEADS: torch.rand(3, 4, dtype=torch.float64)}
    fit = FeatureFitness(model, get_adapter(model), images, raw, settings, torch.device("cpu"))
    assert fit.pca_components == 0
    settings = ScoreSettings(data=data, pca_components=30)  # capped by the 12 images
    assert FeatureFitness(model, get_adapter(model), images, raw, settings, torch.device("cpu")).pca_components == 12


def test_linear_cka_is_invariant_to_rotation_and_scale():
    from snapvit_cli.scoring.cka import linear_cka_matrix

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(30, 6, dtype=torch.float64, generator=gen)
    rotation, _ = torch.linalg.qr(torch.randn(6, 6, dtype=torch.float64, generator=gen))
    unrelated = torch.randn(30, 4, dtype=torch.float64, generator=gen)
    cka = linear_cka_matrix([x, 3.0 * x @ rotation + 1.0, unrelated])
    torch.testing.assert_close(cka.diagonal(), torch.ones(3, dtype=torch.float64))
    assert cka[0, 1] == pytest.approx(1.0, abs=1e-12) and cka[0, 2] < 0.6
    torch.testing.assert_close(cka, cka.T)


def test_cka_initialisation_gives_a_correlation_covariance(data):
    from snapvit_cli.scoring.cka import cka_covariance

    model = make_small_model("dinov2-registers")
    adapter = get_adapter(model)
    images = preprocessed(data, input_config(model, ScoreSettings()))
    cov = cka_covariance(model, adapter, images, 5, torch.device("cpu"))
    assert cov.shape == (15, 15)  # 3 block MLPs + 3 x 4 heads
    np.testing.assert_allclose(np.diag(cov), 1.0)
    np.linalg.cholesky(cov)  # positive definite
    assert (cov > 0).all() and cov[0, 1] < 1
    scores = score_model(model, "snapvit", data=data, cka_init=True, **FAST)
    assert scores.settings["cka_init"] is True and "cka_s" in scores.timings


def test_gradient_method_runs_on_every_family(small_name, data):
    """Issue 7: every supported layout scores through the adapter's score tensors (SwiGLU gates, Eva v rows...)."""
    model = make_small_model(small_name)
    adapter = get_adapter(model)
    scores = score_model(model, "gradient", data=data, **FAST)
    dense = adapter.widths()
    assert scores.mlp.shape == (adapter.num_blocks, dense.mlp[0])
    assert scores.heads.shape == (adapter.num_blocks, dense.heads[0])
    assert torch.isfinite(scores.mlp).all() and scores.mlp.sum() > 0 and scores.heads.sum() > 0


@pytest.mark.parametrize("name", ["dino", "dinov3"])
def test_grad_checkpointing_gives_the_same_scores(name, data):
    model = make_small_model(name)
    plain = score_model(model, "gradient", data=data, **FAST)
    checkpointed = score_model(model, "gradient", data=data, grad_checkpointing=True, **FAST)
    torch.testing.assert_close(checkpointed.mlp, plain.mlp, rtol=1e-5, atol=0)
    torch.testing.assert_close(checkpointed.heads, plain.heads, rtol=1e-5, atol=0)
    assert checkpointed.settings["grad_checkpointing"] is True and "grad_checkpointing" not in plain.settings
    assert model.grad_checkpointing is False  # restored


def test_grad_checkpointing_really_recomputes(monkeypatch, data):
    """With checkpointing every block runs twice per micro-batch (forward, then again in the backward)."""
    model = make_small_model("dino")
    calls = {"n": 0}

    def count(*_):
        calls["n"] += 1

    model.blocks[0].register_forward_pre_hook(count)
    score_model(model, "gradient", data=data, **FAST)
    plain = calls["n"]
    calls["n"] = 0
    score_model(model, "gradient", data=data, grad_checkpointing=True, **FAST)
    assert calls["n"] == 2 * plain
