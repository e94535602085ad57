"""The search's pairs and presets: FLOPs-matched pairs by default, ``preset="paper"`` for the paper's search, and
both recorded in the bundle (issue 17)."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from snapvit_cli.adapters import get_adapter
from snapvit_cli.api import load_bundle
from snapvit_cli.cli.app import app
from snapvit_cli.elastic.budget import plan_slice, removal_count
from snapvit_cli.errors import BudgetError, SnapvitError
from snapvit_cli.scoring import gradient as gradient_module
from snapvit_cli.scoring import score_model
from snapvit_cli.scoring.search import _ratio, search_pairs
from snapvit_cli.scoring.settings import DEFAULT_GA_FLOPS, PAPER_GA_PAIRS, PRESETS, ScoreSettings
from tests.conftest import make_small_model
from tests.test_scoring import FAST, image_set

runner = CliRunner()
TINY = ["--samples", "4", "--ga-samples", "4", "--batch-size", "4", "--ga-evals", "31", "--seed", "7", "--quiet"]


@pytest.fixture(scope="module")
def data():
    return image_set()


def test_the_default_pairs_slice_to_the_default_flops_fractions():
    adapter = get_adapter(make_small_model("dino"))
    pairs = search_pairs(adapter, ScoreSettings())
    assert len(pairs) == len(DEFAULT_GA_FLOPS) and pairs != PAPER_GA_PAIRS
    zeros = torch.zeros(adapter.num_blocks, adapter.widths().mlp[0]), torch.zeros(adapter.num_blocks, 4)
    for fraction, (mlp, heads) in zip(DEFAULT_GA_FLOPS, pairs, strict=True):
        by_flops = plan_slice(*zeros, adapter.cost_terms(), flops=fraction)
        by_pair = plan_slice(*zeros, adapter.cost_terms(), mlp=mlp, heads=heads)
        assert (by_pair.mlp_removed, by_pair.heads_removed) == (by_flops.mlp_removed, by_flops.heads_removed)
        assert by_pair.widths == by_flops.widths and by_pair.flops_fraction == pytest.approx(fraction, abs=0.01)
    assert [m for m, _ in pairs] == sorted(m for m, _ in pairs)  # smaller fractions remove more


@pytest.mark.parametrize("total", [7, 36, 49, 9216, 36864])
def test_a_ratio_removes_exactly_its_count(total):
    for removed in range(0, total, max(1, total // 97)):
        assert removal_count(total, _ratio(removed, total)) == removed


def test_explicit_pairs_are_used_as_given():
    adapter = get_adapter(make_small_model("dino"))
    assert search_pairs(adapter, ScoreSettings(ga_pairs=((0.2, 0.1),))) == ((0.2, 0.1),)


def test_a_fraction_beyond_the_floors_fails_before_any_work(monkeypatch, data):
    monkeypatch.setattr(gradient_module, "accumulate_gradients", None)  # would fail if reached
    with pytest.raises(BudgetError):
        score_model(make_small_model("dino"), "snapvit", data=data, ga_flops=(0.9, 0.01), **FAST)


@pytest.mark.parametrize(
    ("given", "pairs", "flops"),
    [
        ({}, None, DEFAULT_GA_FLOPS),
        ({"preset": "paper"}, PAPER_GA_PAIRS, None),
        ({"ga_pairs": "0.2:0.1"}, ((0.2, 0.1),), None),
        ({"preset": "paper", "ga_flops": "0.8,0.6"}, None, (0.8, 0.6)),
        ({"preset": "paper", "ga_pairs": ((0.3, 0.2),)}, ((0.3, 0.2),), None),
    ],
)
def test_given_pairs_or_fractions_replace_the_presets(given, pairs, flops):
    settings = ScoreSettings.from_kwargs(given)
    assert settings.ga_pairs == pairs and settings.ga_flops == flops
    assert settings.preset == given.get("preset", "default")


def test_a_preset_fills_only_what_is_not_given():
    settings = ScoreSettings.from_kwargs({"preset": "paper", "ga_evals": 40, "samples": 90})
    assert settings.ga_evals == 40 and settings.ga_init == PRESETS["paper"]["ga_init"]
    assert settings.ga_sample_count == 90  # the paper searches on as many images as the gradient pass


def test_the_default_search_costs_what_the_papers_does():
    """150 evaluations on a third of the images: evaluations × search images as the paper's 50 × all."""
    default, paper = ScoreSettings(samples=1000), ScoreSettings.from_kwargs({"preset": "paper", "samples": 1000})
    assert (default.ga_evals, default.ga_sample_count) == (150, 333)
    assert (paper.ga_evals, paper.ga_sample_count) == (50, 1000)
    assert ScoreSettings(samples=1000, ga_samples=64).ga_sample_count == 64
    assert ScoreSettings(samples=2).ga_sample_count == 1


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ({"ga_pairs": "0.2:0", "ga_flops": "0.5"}, "not both"),
        ({"preset": "fast"}, "preset must be one of default, paper"),
        ({"ga_flops": "0.5,x"}, "not comma-separated FLOPs fractions"),
        ({"ga_flops": (0.5, 1.5)}, r"must lie in \(0, 1\]"),
        ({"ga_flops": ()}, "needs ga_pairs or ga_flops"),
    ],
)
def test_bad_search_targets_are_refused(given, message):
    with pytest.raises(SnapvitError, match=message):
        ScoreSettings.from_kwargs(given)


def test_preset_paper_is_the_papers_search_and_is_recorded(data):
    """``preset="paper"`` scores exactly as the explicit paper settings (snapvit's default before this release)."""
    paper = score_model(make_small_model("dino"), "snapvit", data=data, preset="paper", **FAST)
    explicit = score_model(make_small_model("dino"), "snapvit", data=data, ga_pairs=PAPER_GA_PAIRS, **FAST)
    assert torch.equal(paper.mlp, explicit.mlp) and torch.equal(paper.heads, explicit.heads)
    assert paper.settings["preset"] == "paper" and explicit.settings["preset"] == "default"
    assert paper.settings["ga_pairs"] == [list(p) for p in PAPER_GA_PAIRS] and paper.settings["ga_flops"] is None

    default = score_model(make_small_model("dino"), "snapvit", data=data, **FAST)
    adapter = get_adapter(make_small_model("dino"))
    assert default.settings["ga_flops"] == list(DEFAULT_GA_FLOPS)
    assert default.settings["ga_pairs"] == [list(p) for p in search_pairs(adapter, ScoreSettings())]
    assert not torch.equal(default.extras["ga.fitness_trace"], paper.extras["ga.fitness_trace"])  # another fitness
    torch.testing.assert_close(default.extras["raw.mlp"], paper.extras["raw.mlp"], rtol=0, atol=0)


def test_cli_preset_and_overrides_reach_the_bundle(tmp_path):
    path = tmp_path / "paper.safetensors"
    result = runner.invoke(app, ["score", *TINY, "--preset", "paper", "--ga-sigma", "0.2", "-o", str(path)])
    assert result.exit_code == 0, result.output
    settings = load_bundle(path).metadata.scoring.settings
    assert settings["preset"] == "paper" and settings["ga_sigma"] == 0.2 and settings["ga_evals"] == 31
    assert settings["ga_pairs"] == [list(p) for p in PAPER_GA_PAIRS] and settings["ga_flops"] is None

    path = tmp_path / "flops.safetensors"
    result = runner.invoke(app, ["score", *TINY, "--ga-flops", "0.8,0.6", "-o", str(path)])
    assert result.exit_code == 0, result.output
    settings = load_bundle(path).metadata.scoring.settings
    assert settings["preset"] == "default" and settings["ga_flops"] == [0.8, 0.6] and len(settings["ga_pairs"]) == 2


def test_cli_refuses_pairs_and_fractions_together(tmp_path):
    args = ["score", *TINY, "--ga-pairs", "0.2:0", "--ga-flops", "0.5", "-o", str(tmp_path / "x.safetensors")]
    result = runner.invoke(app, args)
    assert result.exit_code == 2 and "not both" in result.output and "Traceback" not in result.output
    assert not list(tmp_path.iterdir())


def test_dry_run_counts_the_default_pairs(tmp_path):
    result = runner.invoke(app, ["score", "--samples", "8", "--dry-run", "--json"])
    assert result.exit_code == 0, result.output
    search = [s for s in json.loads(result.stdout)["results"][0]["stages"] if s["stage"].startswith("search")]
    assert len(search) == 1 and f"× {len(DEFAULT_GA_FLOPS)} pairs" in search[0]["passes"]
