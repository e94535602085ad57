"""One `--json` shape for every command that writes (docs/json.md): schema, command, written, results."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from snapvit_cli.cli._output import SCHEMA, _without_float32_noise
from snapvit_cli.cli.app import app

KEYS = {"schema", "command", "written", "results"}


def run_json(*args: object) -> dict:
    result = CliRunner().invoke(app, [*map(str, args), "--json"])
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout)
    assert set(printed) == KEYS and printed["schema"] == SCHEMA == "snapvit/1"
    assert isinstance(printed["results"], list) and printed["results"]
    assert [r["path"] for r in printed["results"] if r["path"] is not None] == printed["written"]
    return printed


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tmp_path_factory.mktemp("json")


def test_every_writing_command_prints_the_same_shape(folder):
    bundle = folder / "demo.safetensors"
    score = run_json("score", "-m", "demo", "--method", "magnitude", "-o", bundle, "-q")
    assert score["command"] == "score" and score["written"] == [str(bundle)]
    assert "total" in score["results"][0]["timings_s"]  # not total_s inside timings_s
    one = run_json("slice", bundle, "--flops", "0.5", "-o", folder / "half", "-q")
    many = run_json("slice", bundle, "--flops", "0.5,0.75", "-o", folder / "grid", "-q")
    assert len(one["results"]) == 1 and len(many["results"]) == 2  # a list whatever the number of budgets
    assert many["written"] == [str(folder / "grid" / "flops0.5"), str(folder / "grid" / "flops0.75")]
    dry = run_json("slice", bundle, "--flops", "0.5", "--dry-run")
    assert dry["written"] == [] and dry["results"][0]["path"] is None
    export = run_json("export", folder / "half", "-o", folder / "half.pt2", "-q")
    assert export["command"] == "export" and export["written"] == [str(folder / "half.pt2")]
    staged = folder / "staged"
    push = run_json("push", folder / "half", "--repo", "me/half", "--allow-random", "--dry-run", staged, "-q")
    assert push["command"] == "push" and push["written"] == [str(staged)] and push["results"][0]["repo"] == "me/half"
    estimate = run_json("score", "-m", "demo", "--dry-run", "--samples", "8")
    assert estimate["written"] == [] and "stages" in estimate["results"][0]
    assert all(set(printed) == KEYS for printed in (score, one, many, dry, export, push, estimate))


def test_float32_noise_is_printed_short_and_float64_kept():
    assert _without_float32_noise({"a": [0.6050000190734863]}) == {"a": [0.605]}
    assert _without_float32_noise(1.2536832) == 1.2536832  # a float64 value keeps every digit
    assert _without_float32_noise(0.1) == 0.1 and _without_float32_noise(1e300) == 1e300
    assert _without_float32_noise(float("nan")) != _without_float32_noise(float("nan"))  # left alone
