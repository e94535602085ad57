"""The README's quickstart, run exactly as written: its search must update xNES at least twice."""

from __future__ import annotations

import shlex
from pathlib import Path

import torch
from typer.testing import CliRunner

from snapvit_cli.adapters import get_adapter
from snapvit_cli.api import load, load_bundle
from snapvit_cli.cli.app import app

README = Path(__file__).resolve().parents[1] / "README.md"


def quickstart_commands() -> list[list[str]]:
    """The `snapvit ...` commands of the README's first install line, as argument lists."""
    line = next(line for line in README.read_text().splitlines() if line.startswith("pip install -e . && snapvit"))
    parts = [shlex.split(part) for part in line.split("&&")]
    commands = [words[1:] for words in parts if words and words[0] == "snapvit"]
    assert [c[0] for c in commands] == ["score", "slice"], line
    return commands


def test_readme_quickstart_searches_with_two_updates(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    score, slice_ = quickstart_commands()
    result = runner.invoke(app, score)
    assert result.exit_code == 0, result.output
    bundle = load_bundle(Path(score[score.index("-o") + 1]))
    search = bundle.metadata.scoring.settings["xnes"]
    trace = bundle.read_tensor("ga.fitness_trace")  # every evaluation's fitness, μ₀ first
    assert search["evaluations"] == len(trace) == int(score[score.index("--ga-evals") + 1])
    assert trace[0].item() == search["initial_fitness"] and trace.min().item() == search["best_fitness"]
    assert search["updates"] >= 2 and search["best_fitness"] < search["initial_fitness"]  # the search found better
    assert f"in {search['updates']} updates" in result.stdout
    result = runner.invoke(app, slice_)
    assert result.exit_code == 0, result.output
    folder = Path(slice_[slice_.index("-o") + 1])
    model = load(folder)
    fraction = float(slice_[slice_.index("--flops") + 1])
    plan = bundle.plan(flops=fraction)
    assert get_adapter(model).widths() == plan.widths and abs(plan.flops_fraction - fraction) < 0.01 * fraction
    assert sum(p.numel() for p in model.parameters()) == plan.params
    x = torch.linspace(-1, 1, 3 * 64 * 64).reshape(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), bundle.slice(plan)(x))  # the folder holds the bundle's slice, as loaded
