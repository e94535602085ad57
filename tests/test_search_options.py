"""The search's options studied in issue 28: how the fitness weighs the budgets (``ga_fitness``), one head
multiplier per block (``ga_heads``) and returning the final distribution mean (``ga_result``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from snapvit_cli.adapters import HEADS, MLP, get_adapter
from snapvit_cli.errors import SnapvitError
from snapvit_cli.scoring import score_model
from snapvit_cli.scoring.calibration import input_config, preprocessed
from snapvit_cli.scoring.search import (
    FeatureFitness,
    initial_mean,
    search_multipliers,
    search_population,
    split_multipliers,
)
from snapvit_cli.scoring.settings import ScoreSettings
from snapvit_cli.scoring.xnes import default_population_size, minimize
from tests.conftest import make_small_model
from tests.test_scoring import FAST, image_set

RAW = {
    MLP: torch.rand(3, 96, dtype=torch.float64, generator=torch.Generator().manual_seed(0)),
    HEADS: torch.rand(3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1)),
}


@pytest.fixture(scope="module")
def data():
    return image_set()


def fitness_of(data, **settings) -> FeatureFitness:
    model = make_small_model("qk-norm")
    config = ScoreSettings(data=data, ga_batch_size=5, pca_components=8, **settings)
    images = preprocessed(data, input_config(model, config))
    return FeatureFitness(model, get_adapter(model), images, RAW, config, torch.device("cpu"))


def test_relative_fitness_is_the_mean_of_each_pairs_distance_over_its_distance_at_the_start(data):
    plain, relative = fitness_of(data), fitness_of(data, ga_fitness="relative")
    start, theta = initial_mean(3, 4, 1.2, 0.8), np.linspace(0.4, 1.6, 15)
    with pytest.raises(RuntimeError, match="set_reference"):
        relative(theta)
    relative.set_reference(start)
    at_start, at_theta = plain.pair_distances(start), plain.pair_distances(theta)
    assert len(at_start) == 4 and len(set(at_start)) == 4  # four budgets, four different distances
    assert relative(start) == pytest.approx(1.0)
    assert relative(theta) == pytest.approx(np.mean([t / s for t, s in zip(at_theta, at_start, strict=True)]))
    assert plain(theta) == pytest.approx(np.mean(at_theta))
    assert relative(theta) != pytest.approx(plain(theta) / plain(start))  # not one common scale


def test_the_start_is_measured_once_for_the_relative_fitness(data, monkeypatch):
    fitness = fitness_of(data, ga_fitness="relative", ga_evals=5, ga_population=2)
    calls = []
    original = fitness.distances
    monkeypatch.setattr(fitness, "distances", lambda candidates: calls.append(1) or original(candidates))
    result = search_multipliers(fitness, fitness_settings(data, ga_fitness="relative", ga_evals=5, ga_population=2))
    assert result.evaluations == 5 and len(calls) == 5  # μ₀ once, for the reference and the first evaluation
    assert result.initial_fitness == pytest.approx(1.0)


def fitness_settings(data, **settings) -> ScoreSettings:
    return ScoreSettings(data=data, ga_batch_size=5, pca_components=8, **settings)


def test_one_head_multiplier_per_block_shares_it_among_the_blocks_heads(data):
    settings = fitness_settings(data, ga_heads="block", ga_evals=7, ga_population=3, seed=5)
    fitness = fitness_of(data, ga_heads="block")
    result = search_multipliers(fitness, settings)
    assert result.head_weight.shape == (3, 4)
    assert torch.equal(result.head_weight, result.head_weight[:, :1].expand(3, 4))
    assert not torch.equal(result.head_weight[:, 0], result.mlp_weight)  # searched apart from the MLP's
    adapter = get_adapter(make_small_model("qk-norm"))
    assert search_population(adapter, ScoreSettings(ga_heads="block")) == default_population_size(3 + 3)
    assert search_population(adapter, ScoreSettings()) == default_population_size(3 + 12)
    with pytest.raises(ValueError, match="expected 3 \\+ 3 or 3 \\+ 12"):
        split_multipliers(np.ones(7), 3, 4)


def test_cka_start_needs_a_multiplier_per_head():
    with pytest.raises(SnapvitError, match="cka_init"):
        ScoreSettings(cka_init=True, ga_heads="block")


class Quadratic:
    """A fitness with a known optimum, shaped like FeatureFitness for search_multipliers."""

    raw = RAW

    def __call__(self, theta: np.ndarray) -> float:
        return float(np.sum((theta - 0.6) ** 2))


def test_returning_the_mean_returns_the_final_distribution_mean_evaluated_once_more(data):
    settings = fitness_settings(data, ga_result="mean", ga_evals=31, ga_population=5, ga_flops=(0.5,), seed=9)
    result = search_multipliers(Quadratic(), settings)
    plain = minimize(
        Quadratic(),
        initial_mean(3, 4, 1.2, 0.8),
        max_evaluations=31,
        sigma=0.3,
        bounds=(0.0, 2.0),
        population_size=5,
        seed=9,
    )
    mean = np.clip(plain.mean, 0.0, 2.0)
    np.testing.assert_allclose(result.mlp_weight.numpy(), np.abs(mean[:3]))
    np.testing.assert_allclose(result.head_weight.flatten().numpy(), np.abs(mean[3:]))
    assert result.evaluations == 32 and result.best_fitness == pytest.approx(Quadratic()(mean))
    best = search_multipliers(Quadratic(), fitness_settings(data, ga_evals=31, ga_population=5, seed=9))
    assert best.best_fitness == pytest.approx(plain.best_fitness) and best.evaluations == 31


def test_the_options_are_recorded_and_the_paper_preset_keeps_the_papers(data):
    options = {"ga_fitness": "relative", "ga_heads": "block", "ga_result": "mean"}
    scores = score_model(make_small_model("dino"), "snapvit", data=data, **{**FAST, "ga_evals": 7}, **options)
    assert {k: scores.settings[k] for k in options} == options
    paper = score_model(make_small_model("dino"), "snapvit", data=data, preset="paper", **FAST)
    assert (paper.settings["ga_fitness"], paper.settings["ga_heads"], paper.settings["ga_result"]) == (
        "mean",
        "head",
        "best",
    )
    with pytest.raises(SnapvitError, match="ga_fitness must be one of mean, relative"):
        ScoreSettings(ga_fitness="median")


def test_score_snip_gives_the_search_snips_scores_to_reweight(data):
    """``score="snip"`` ranks as method ``snip`` does, so the search can re-weight SNIP scores (issue 28)."""
    snip = score_model(make_small_model("dino"), "snip", data=data, **FAST)
    raw = score_model(make_small_model("dino"), "gradient", data=data, score="snip", **FAST)
    assert torch.equal(raw.mlp, snip.mlp) and torch.equal(raw.heads, snip.heads)
    assert raw.settings["score"] == "snip" and raw.settings["snip_alpha"] == 1e-3
    sqgrad = score_model(make_small_model("dino"), "gradient", data=data, **FAST)
    assert not torch.equal(sqgrad.mlp, snip.mlp) and "snip_alpha" not in sqgrad.settings
    searched = score_model(make_small_model("dino"), "snapvit", data=data, score="snip", **{**FAST, "ga_evals": 7})
    assert torch.equal(searched.extras["raw.mlp"], snip.mlp) and searched.settings["score"] == "snip"
    weights = searched.extras["ga.mlp_weight"]
    torch.testing.assert_close(searched.mlp, snip.mlp * weights[:, None], rtol=0, atol=0)
