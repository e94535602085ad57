"""The README's quickstart, run exactly as written: its search must update xNES at least twice."""

from __future__ import annotations

import shlex
from pathlib import Path

from typer.testing import CliRunner

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
    assert search["updates"] >= 2 and search["best_fitness"] <= search["initial_fitness"]
    assert "in 2 updates" in result.stdout or f"in {search['updates']} updates" in result.stdout
    result = runner.invoke(app, slice_)
    assert result.exit_code == 0, result.output
    assert load(Path(slice_[slice_.index("-o") + 1])) is not None
