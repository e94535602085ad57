"""``score --dry-run``: the closed-form estimate of every stage, without weights or scoring."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from snapvit_cli.adapters import get_adapter
from snapvit_cli.cli import app
from snapvit_cli.models.loading import meta_architecture
from snapvit_cli.scoring.estimate import duration, estimate_scoring
from snapvit_cli.scoring.settings import DEFAULT_GA_FLOPS, ScoreSettings

CPU = torch.device("cpu")


def _estimate(model, **settings):
    return {
        s.stage.split(" (")[0]: s
        for s in estimate_scoring(model, get_adapter(model), ScoreSettings(**settings), CPU, 1e12)
    }


def test_estimates_follow_the_settings():
    model = meta_architecture("vit_small_patch16_224")
    assert all(p.is_meta for p in model.parameters())  # nothing read or allocated
    base = _estimate(model)
    assert set(base) == {"gradient pass", "dense features", "search"}
    checkpointed = _estimate(model, grad_checkpointing=True)
    assert checkpointed["gradient pass"].device_gb < base["gradient pass"].device_gb / 3
    assert checkpointed["gradient pass"].tflop > base["gradient pass"].tflop  # the recomputation
    masked = _estimate(model, ga_evaluation="masked")
    # a sliced candidate costs its kept FLOPs: the default pairs keep on average the mean of their FLOPs fractions
    # (0.9, 0.75, 0.6, 0.5 -> 0.6875); masking costs the dense model for every pair
    kept = sum(DEFAULT_GA_FLOPS) / len(DEFAULT_GA_FLOPS)
    assert base["search"].tflop / masked["search"].tflop == pytest.approx(kept, abs=0.005)
    half, half_masked = _estimate(model, ga_flops=(0.5,)), _estimate(model, ga_flops=(0.5,), ga_evaluation="masked")
    assert half["search"].tflop / half_masked["search"].tflop == pytest.approx(0.5, abs=0.005)
    assert masked["search"].device_gb > base["search"].device_gb - 0.1  # masking runs all pairs in one batch
    doubled = _estimate(model, samples=2000, micro_batch=8)
    assert doubled["gradient pass"].tflop == 2 * base["gradient pass"].tflop
    assert doubled["gradient pass"].device_gb > base["gradient pass"].device_gb
    assert base["gradient pass"].seconds == base["gradient pass"].tflop  # at 1 TFLOP/s


def test_dry_run_reads_no_weights_and_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(
        app, ["score", "--model", "dinov2_vitg14", "--data", "demo", "--dry-run", "--json", "--device", "cpu"]
    )
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout)
    assert printed["written"] == [] and printed["command"] == "score"
    report = printed["results"][0]
    assert [s["stage"] for s in report["stages"]] == ["gradient pass", "dense features", "search (sliced)"]
    assert report["stages"][0]["device_gb"] > 4.5  # a billion float32 weights and then some
    assert list(tmp_path.iterdir()) == []
    text = CliRunner().invoke(app, ["score", "--model", "demo", "--dry-run", "--samples", "8", "--grad-checkpointing"])
    assert text.exit_code == 0 and "gradient pass: 8 images, 96 views" in text.stdout


def test_duration_units():
    assert duration(30) == "30.0 s" and duration(600) == "10.0 min" and duration(3 * 86400) == "3.0 d"


def test_dry_run_needs_no_data(tmp_path, monkeypatch):
    """An estimate reads no image: the README's giant-model dry run works without --data; a real run still asks."""
    monkeypatch.chdir(tmp_path)
    args = ["score", "--model", "dinov2_vitg14", "--grad-checkpointing", "--micro-batch", "1", "--device", "cpu"]
    result = CliRunner().invoke(app, [*args, "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "gradient pass: 1000 images" in result.stdout and list(tmp_path.iterdir()) == []
    refused = CliRunner().invoke(app, args)
    assert refused.exit_code == 1 and "--data is required" in refused.stderr
