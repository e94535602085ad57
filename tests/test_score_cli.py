"""`snapvit score` with the data-driven methods, end to end on the demo model with tiny settings."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from snapvit_cli.api import load, load_bundle
from snapvit_cli.cli.app import app

runner = CliRunner()
# 31 evaluations: the fewest that update xNES twice for the demo model (population 15)
TINY = ["--samples", "4", "--ga-samples", "4", "--batch-size", "4", "--ga-evals", "31", "--seed", "7"]


def run(*args: str):
    return runner.invoke(app, list(args))


@pytest.fixture(scope="module")
def snapvit_bundle(tmp_path_factory):
    path = tmp_path_factory.mktemp("score") / "demo.safetensors"
    result = run("score", "--model", "demo", *TINY, "--crops", "legacy", "-o", str(path), "--json")
    assert result.exit_code == 0, result.output
    return path, json.loads(result.stdout)["results"][0]


def test_snapvit_is_the_default_and_records_everything(snapvit_bundle):
    path, report = snapvit_bundle
    assert report["method"] == "snapvit" and report["path"] == str(path)
    assert report["fitness"]["best"] <= report["fitness"]["initial"]
    assert {"gradients", "dense_features", "xnes", "total"} <= set(report["timings_s"])
    bundle = load_bundle(path)
    scoring = bundle.metadata.scoring
    settings = scoring.settings
    assert scoring.method == "snapvit" and "timings_s" not in scoring.to_json()  # timings: --json only
    assert settings["crops"] == "legacy" and settings["seed"] == 7 and settings["device"] == "cpu"
    assert settings["data"]["source"] == "demo" and settings["data"]["n"] == 4
    assert settings["input"]["size"] == 64 and settings["input"]["mean"] == [0.5, 0.5, 0.5]
    assert settings["ga_evals"] == 31 and settings["preset"] == "default"
    assert settings["ga_flops"] == [0.9, 0.75, 0.6, 0.5] and len(settings["ga_pairs"]) == 4  # the fractions' pairs
    assert settings["xnes"]["evaluations"] == 31 and settings["xnes"]["updates"] == 2
    assert report["xnes_updates"] == 2
    trace = bundle.read_tensor("ga.fitness_trace")
    assert trace.shape == (31,) and trace[0].item() == pytest.approx(report["fitness"]["initial"])
    assert trace.min().item() == pytest.approx(report["fitness"]["best"])
    head_weight = bundle.read_tensor("ga.head_weight")
    assert head_weight.shape == (12, 3) and bool(((head_weight >= 0) & (head_weight <= 2)).all())  # --ga-bounds
    raw, weight = bundle.read_tensor("raw.mlp"), bundle.read_tensor("ga.mlp_weight")
    assert torch.equal(bundle.read_tensor("scores.mlp"), raw * weight[:, None])
    raw_heads = bundle.read_tensor("raw.heads")
    assert torch.equal(bundle.read_tensor("scores.heads"), raw_heads * head_weight)


def test_bundle_slices(tmp_path, snapvit_bundle):
    path, _ = snapvit_bundle
    out = tmp_path / "half"
    result = run("slice", str(path), "--flops", "0.5", "-o", str(out), "--json")
    assert result.exit_code == 0, result.output
    model = load(out)
    assert model(torch.zeros(1, 3, 64, 64)).shape == (1, 10)


def test_progress_on_stderr_unless_quiet(tmp_path):
    shown = run("score", *TINY, "-o", str(tmp_path / "a.safetensors"))
    assert shown.exit_code == 0, shown.output
    assert "gradient pass" in shown.stderr and "xNES evaluations" in shown.stderr and "best fitness" in shown.stderr
    quiet = run("score", *TINY, "--quiet", "-o", str(tmp_path / "b.safetensors"))
    assert quiet.exit_code == 0 and "xNES" not in quiet.stderr
    assert "wrote" in shown.stdout and quiet.stdout == ""  # --quiet: errors and warnings only


@pytest.mark.parametrize("method", ["gradient", "random", "lamp"])
def test_other_methods_write_bundles(tmp_path, method):
    from snapvit_cli.models.loading import load_model
    from snapvit_cli.scoring import score_model

    path = tmp_path / f"{method}.safetensors"
    result = run("score", "--method", method, *TINY, "-o", str(path), "--json", "--quiet")
    assert result.exit_code == 0, result.output
    bundle = load_bundle(path)
    assert bundle.metadata.scoring.method == method
    # The CLI's bundle holds what the library computes with the same settings, in descending order per block.
    model, _ = load_model("demo")
    expected = score_model(model, method, data="demo", samples=4, batch_size=4, seed=7)
    for kind, stored in (("mlp", bundle.read_tensor("scores.mlp")), ("heads", bundle.read_tensor("scores.heads"))):
        assert torch.allclose(stored, getattr(expected, kind).double(), rtol=1e-6, atol=0)
        assert bool((bundle.scores[kind][:, :-1] >= bundle.scores[kind][:, 1:]).all())
    assert len(set(bundle.read_tensor("scores.mlp").flatten().tolist())) > 1  # not a constant score


@pytest.mark.parametrize(
    ("args", "message", "code"),
    [
        (["--method", "best"], "'best' is not one of", 2),
        (["--crops", "diagonal"], "'diagonal' is not one of", 2),
        (["--device", "tpu"], "'tpu' is not one of", 2),
        (["--ga-pairs", "0.3"], "--ga-pairs item '0.3' is not MLP:HEADS", 1),
        (["--samples", "0"], "--samples must be at least 1", 1),
        (["--ga-evals", "-1"], "--ga-evals must be 0 (no search) or positive", 1),
        (["--data", "/nonexistent/images"], "not found", 1),
    ],
)
def test_bad_settings_are_one_line_errors(tmp_path, args, message, code):
    result = run("score", *TINY, *args, "-o", str(tmp_path / "x.safetensors"))
    assert result.exit_code == code
    assert message in result.output and "Traceback" not in result.output
    assert not list(tmp_path.iterdir())


# -- guard rails ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("args", [[], ["--method", "gradient"], ["--method", "snip"], ["--loss", "ce"]])
def test_a_real_model_needs_data(tmp_path, args):
    result = run("score", "-m", "deit_tiny", "--no-pretrained", *args, "-o", str(tmp_path / "x.safetensors"))
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "--data is required by method" in lines[0] and "image folder" in lines[0]
    assert not list(tmp_path.iterdir())


def test_the_library_refuses_a_data_method_without_data():
    from snapvit_cli.errors import SnapvitError
    from snapvit_cli.models.loading import load_model
    from snapvit_cli.scoring import score_model

    model, _ = load_model("demo")
    with pytest.raises(SnapvitError, match=r"^data is required by method 'gradient'"):
        score_model(model, "gradient")


def test_too_few_xnes_evaluations_state_the_minimum(tmp_path):
    result = run("score", *TINY, "--ga-evals", "30", "-o", str(tmp_path / "x.safetensors"))
    assert result.exit_code == 1, result.output
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "population 15" in lines[0] and "at least 31" in lines[0] and "or 0" in lines[0]
    assert not list(tmp_path.iterdir())


def test_zero_evaluations_is_gradient_scores_recorded_as_no_search(tmp_path):
    path = tmp_path / "g.safetensors"
    result = run("score", *TINY, "--ga-evals", "0", "-o", str(path))
    assert result.exit_code == 0, result.output
    assert "no xNES search" in result.stdout
    scoring = load_bundle(path).metadata.scoring
    assert scoring.method == "snapvit"
    assert scoring.settings["ga_evals"] == 0 and scoring.settings["xnes"] is None
    gradient = tmp_path / "plain.safetensors"
    assert run("score", *TINY, "--method", "gradient", "-o", str(gradient), "--quiet").exit_code == 0
    bundle, plain = load_bundle(path), load_bundle(gradient)
    assert torch.equal(bundle.read_tensor("scores.mlp"), plain.read_tensor("scores.mlp"))


def test_more_images_than_the_source_has(tmp_path):
    path = tmp_path / "w.safetensors"
    args = ["--method", "gradient", "-d", "demo:6/2", "--samples", "10", "--batch-size", "3"]
    result = run("score", *args, "-o", str(path), "--quiet")
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert warnings == ["warning: 10 images asked from 'demo:6/2' (train), which has 6: using 6"]
    settings = load_bundle(path).metadata.scoring.settings
    assert settings["samples"] == 6 and settings["images"] == 6
    assert settings["data"]["n"] == 6 and settings["data"]["samples"] == 6
