"""``snapvit profile`` and ``slice --speedup/--latency``: the budget and its profile in config.json and the card."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from snapvit_cli.cli.app import app
from snapvit_cli.elastic.bundle import load_bundle
from snapvit_cli.elastic.records import Budget
from snapvit_cli.elastic.sliced import read_config
from snapvit_cli.hub.model_card import render_model_card
from snapvit_cli.latency.cache import read_profile, write_profile
from snapvit_cli.latency.chooser import profile_sha256
from snapvit_cli.latency.model import LatencyModel
from snapvit_cli.latency.profile import profile_key
from tests.conftest import assert_one_line_error

runner = CliRunner()


def run(*args: str):
    return runner.invoke(app, list(args))


@pytest.fixture
def cached(built, tmp_path, monkeypatch) -> LatencyModel:
    """A synthetic linear profile of the test bundle's architecture for batch 4 on this CPU, in a private cache."""
    monkeypatch.setenv("SNAPVIT_CACHE_DIR", str(tmp_path / "cache"))
    key = profile_key(load_bundle(built[0]).skeleton(), torch.device("cpu"), "float32", 4, None)
    width, heads = key.architecture["mlp_hidden"], key.architecture["num_heads"]
    dense_block = 10.0 + width + 10.0 * heads
    profile = LatencyModel(
        key, 2.0, (1, width), (dense_block - width + 1, dense_block), (1, heads),
        (dense_block - 10.0 * (heads - 1), dense_block), 0.0, {}, 1, 1, 0.0, 0.0,
    )  # fmt: skip
    write_profile(profile)
    return profile


def test_speedup_budget_round_trips_through_config_and_card(built, cached, tmp_path):
    out = tmp_path / "fast"
    result = run("slice", str(built[0]), "--speedup", "1.5", "--device", "cpu", "--batch-size", "4", "-o", str(out),
                 "--json")  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)["results"][0]
    budget = report["budget"]
    assert budget["kind"] == "speedup" and budget["target"] == 1.5
    assert budget["latency"]["profile_sha256"] == profile_sha256(cached) and budget["latency"]["batch_size"] == 4
    assert budget["latency"]["predicted_ms"] == pytest.approx(cached.dense_ms() / 1.5, rel=0.02)
    config = read_config(out)
    assert config.budget.to_json() == {k: v for k, v in budget.items() if k not in ("mlp_ratio", "head_ratio")}
    assert config.budget == Budget.from_json(config.budget.to_json())
    assert config.widths == report["widths"]
    card = render_model_card(config, kind="sliced", repo_id="me/fast")
    assert "`speedup 1.5`" in card and "**Latency profile:** measured on cpu (" in card and "batch 4" in card
    assert cached.key.describe().split(",")[0] in card and profile_sha256(cached)[:12] in card
    shown = run("info", str(out), "--json")
    assert shown.exit_code == 0, shown.output
    info = json.loads(shown.stdout)
    assert info["budget"] == "speedup 1.5" and info["latency_profile"]["profile_sha256"] == profile_sha256(cached)
    assert "batch 4" in info["latency_profile"]["measured_on"]


def test_latency_budget_names_its_folder_and_prints_the_prediction(built, cached, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    target = round(cached.dense_ms() * 0.7, 1)
    result = run("slice", str(built[0]), "--latency", str(target), "--device", "cpu", "--batch-size", "4")
    assert result.exit_code == 0, result.output
    folder = tmp_path / f"{built[0].stem}-latency{target:g}"
    assert read_config(folder).budget.label() == f"latency {target:g} ms"
    assert "predicted:" in result.stdout and "from the cache" in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--speedup", "0.5"], "--speedup must lie in [1"),
        (["--speedup", "1.5", "--flops", "0.5"], "give exactly one budget"),
        (["--latency", "0"], "--latency must be a positive number"),
        (["--speedup", "100"], "--speedup 100 is out of reach"),
    ],
)
def test_bad_timed_budgets_are_one_line_errors(built, cached, args, message):
    result = run("slice", str(built[0]), *args, "--device", "cpu", "--batch-size", "4", "--dry-run")
    assert_one_line_error(result, message)


def test_profile_command_reads_the_cache_and_remeasures(built, cached):
    result = run("profile", str(built[0]), "--device", "cpu", "--batch-size", "4", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["cached"] is True and LatencyModel.from_json({k: data[k] for k in cached.to_json()}) == cached
    again = run("profile", str(built[0]), "--device", "cpu", "--batch-size", "4", "--remeasure", "--repeats", "1",
                "--json", "-q")  # fmt: skip
    assert again.exit_code == 0, again.output
    measured = json.loads(again.stdout)
    assert measured["cached"] is False and measured["key"] == cached.key.to_json()
    assert read_profile(measured["path"]).mlp_widths[-1] == cached.key.architecture["mlp_hidden"]
