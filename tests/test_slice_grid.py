"""Several budgets in one call: the grid of budgets, and folders identical to one-budget slices."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from snapvit_cli.api import load_bundle
from snapvit_cli.cli.app import app
from snapvit_cli.elastic.bundle import write_bundle
from snapvit_cli.elastic.grid import BudgetSpec, budget_grid, plan_grid, save_slices
from snapvit_cli.errors import BudgetError
from snapvit_cli.models.loading import load_model
from snapvit_cli.scoring import score_model
from tests.conftest import make_small_model, small_model_source

runner = CliRunner()


def files_under(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_budget_grid():
    assert budget_grid(flops=[0.25, 0.5]) == [BudgetSpec(flops=0.25), BudgetSpec(flops=0.5)]
    assert [s.tag for s in budget_grid(mlp=[0.3, 0.5], heads=[0.15, 0.35])] == ["mlp0.3-heads0.15", "mlp0.5-heads0.35"]
    assert budget_grid(heads=[0.2]) == [BudgetSpec(heads=0.2)]
    assert budget_grid() == []
    with pytest.raises(BudgetError, match="pair up"):
        budget_grid(mlp=[0.3, 0.5], heads=[0.1])
    with pytest.raises(BudgetError, match="exactly one budget"):
        budget_grid(flops=[0.5], params=[0.5])
    with pytest.raises(BudgetError, match="given twice"):
        budget_grid(flops=[0.5, 0.50])


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    model = make_small_model("deit-distilled")
    path = tmp_path_factory.mktemp("grid") / "deit.safetensors"
    return write_bundle(path, model, small_model_source("deit-distilled", model), score_model(model, "magnitude"))


@pytest.mark.parametrize(
    ("options", "names"),
    [
        (["--flops", "0.4,0.6,0.8"], ["flops0.4", "flops0.6", "flops0.8"]),
        (["--params", "0.5,0.7"], ["params0.5", "params0.7"]),
        (["--mlp", "0.2,0.4", "--heads", "0,0.25"], ["mlp0.2-heads0", "mlp0.4-heads0.25"]),
    ],
)
def test_many_budgets_equal_one_budget_slices(bundle, tmp_path, options, names):
    parent = tmp_path / "grid"
    result = runner.invoke(app, ["slice", str(bundle), *options, "-o", str(parent), "--json"])
    assert result.exit_code == 0, result.output
    records = json.loads(result.stdout)["results"]
    assert [r["path"] for r in records] == [str(parent / n) for n in names]
    assert sorted(p.name for p in parent.iterdir()) == sorted(names)
    values = [option.split(",") for option in options[1::2]]
    for i, name in enumerate(names):
        single = tmp_path / f"single-{name}"
        one = [x for flag, vals in zip(options[::2], values, strict=True) for x in (flag, vals[i])]
        done = runner.invoke(app, ["slice", str(bundle), *one, "-o", str(single), "--json"])
        assert done.exit_code == 0, done.output
        assert json.loads(done.stdout)["results"][0]["widths"] == records[i]["widths"]
        assert files_under(parent / name) == files_under(single), name  # byte for byte


def test_grid_is_checked_before_anything_is_written(bundle, tmp_path):
    parent = tmp_path / "grid"
    (parent / "flops0.6").mkdir(parents=True)
    result = runner.invoke(app, ["slice", str(bundle), "--flops", "0.4,0.6", "-o", str(parent)])
    assert result.exit_code == 1 and "already exists" in result.stderr
    assert sorted(p.name for p in parent.iterdir()) == ["flops0.6"]  # flops0.4 was not written either
    result = runner.invoke(app, ["slice", str(bundle), "--flops", "0.4,0.0001", "-o", str(tmp_path / "x")])
    assert result.exit_code == 1 and not (tmp_path / "x").exists()  # the unreachable budget stops all


@pytest.mark.slow
def test_real_vit_tiny_three_budgets_in_one_process(shared_data, tmp_path):
    model, source = load_model(
        "vit_tiny_patch16_224", checkpoint=shared_data / "vit_tiny_patch16_224.tinyimagenet.safetensors"
    )
    path = write_bundle(tmp_path / "tiny.safetensors", model, source, score_model(model, "magnitude"))
    elastic = load_bundle(path)
    fractions = (0.25, 0.5, 0.75)
    plans = plan_grid(elastic, budget_grid(flops=list(fractions)))
    grid = save_slices(elastic, plans, [tmp_path / "grid" / f"{f}" for f in fractions])
    for fraction, folder in zip(fractions, grid, strict=True):
        single = load_bundle(path)  # a fresh bundle, as a separate `snapvit slice` run would open
        alone = single.save_slice(tmp_path / f"single-{fraction}", single.plan(flops=fraction))
        assert files_under(folder) == files_under(alone), fraction
