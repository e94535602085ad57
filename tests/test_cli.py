"""The `snapvit` command line: end to end on the embedded demo model, exit codes, JSON, no partial outputs."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from typer.testing import CliRunner

from snapvit_cli.api import load
from snapvit_cli.cli.app import app

runner = CliRunner()


def run(*args: str):
    return runner.invoke(app, list(args))


@pytest.fixture(scope="module")
def demo_bundle(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "demo.safetensors"
    result = run("score", "--model", "demo", "--method", "magnitude", "-o", str(path), "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["written"] == [str(path)]
    return path


def test_slice_json_matches_written_model(tmp_path, demo_bundle):
    out = tmp_path / "half"
    result = run("slice", str(demo_bundle), "--flops", "0.5", "-o", str(out), "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)["results"][0]
    assert abs(report["flops_fraction"] - 0.5) <= 0.005
    model = load(out)
    assert sum(p.numel() for p in model.parameters()) == report["params"]
    assert [b.mlp.fc1.out_features for b in model.blocks] == report["widths"]["mlp_hidden"]
    assert [b.attn.num_heads for b in model.blocks] == report["widths"]["num_heads"]
    config = json.loads((out / "config.json").read_text())
    assert config["cost"]["gmacs"] == report["gmacs"] and config["base_model"]["model_id"] == "demo"
    assert model(torch.zeros(1, 3, 64, 64)).shape == (1, 10)


def test_slice_round_to_writes_rounded_widths(tmp_path, demo_bundle):
    out = tmp_path / "r8"
    result = run("slice", str(demo_bundle), "--flops", "0.5", "--round-to", "8", "-o", str(out), "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)["results"][0]
    assert all(w % 8 == 0 or w == 768 for w in report["widths"]["mlp_hidden"])
    assert abs(report["flops_fraction"] - 0.5) <= 0.005 and report["budget"]["round_to"] == 8
    assert [b.mlp.fc1.out_features for b in load(out).blocks] == report["widths"]["mlp_hidden"]
    bad = run("slice", str(demo_bundle), "--flops", "0.5", "--round-to", "0", "--dry-run")
    assert bad.exit_code == 1 and "--round-to" in bad.stderr


def test_slice_by_ratios_prints_widths(tmp_path, demo_bundle):
    result = run("slice", str(demo_bundle), "--mlp", "0.5", "--heads", "0.25", "-o", str(tmp_path / "r"))
    assert result.exit_code == 0, result.output
    assert "GMACs @ 64px" in result.stdout and "MLP hidden" in result.stdout


def test_never_overwrites_without_force(tmp_path, demo_bundle):
    out = tmp_path / "o"
    assert run("slice", str(demo_bundle), "--flops", "0.7", "-o", str(out)).exit_code == 0
    again = run("slice", str(demo_bundle), "--flops", "0.6", "-o", str(out))
    assert again.exit_code == 1 and "--force" in again.stderr
    assert run("slice", str(demo_bundle), "--flops", "0.6", "-o", str(out), "--force").exit_code == 0
    assert json.loads((out / "config.json").read_text())["budget"]["target"] == 0.6


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--flops", "1.5"], "must lie in (0, 1]"),
        (["--flops", "0"], "must lie in (0, 1]"),
        (["--params", "-1"], "must lie in (0, 1]"),
        (["--mlp", "1.2"], "must lie in [0, 1)"),
        (["--flops", "0.5", "--mlp", "0.2"], "exactly one budget"),
    ],
)
def test_bad_budget_is_one_line_error(tmp_path, demo_bundle, args, message):
    out = tmp_path / "bad"
    result = run("slice", str(demo_bundle), *args, "-o", str(out))
    assert result.exit_code == 1
    assert message in result.stderr and "Traceback" not in result.output
    assert len(result.stderr.strip().splitlines()) == 1
    assert not out.exists() and not list(tmp_path.iterdir())  # nothing half-written


def test_corrupt_bundle_is_one_line_error(tmp_path, demo_bundle):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(demo_bundle.read_bytes()[: demo_bundle.stat().st_size // 2])
    result = run("slice", str(bad), "--flops", "0.5", "-o", str(tmp_path / "x"))
    assert result.exit_code == 1 and "truncated or corrupt" in result.stderr
    assert "Traceback" not in result.output and not (tmp_path / "x").exists()


def test_unknown_model_is_one_line_error(tmp_path):
    out = str(tmp_path / "b.safetensors")
    result = run("score", "--model", "vit_nonexistent_patch3", "--method", "magnitude", "-o", out)
    assert result.exit_code == 1 and "unknown model 'vit_nonexistent_patch3'" in result.stderr
    assert "Traceback" not in result.output and not list(tmp_path.iterdir())


def test_unsupported_model_is_refused(tmp_path):
    out = str(tmp_path / "b.safetensors")
    result = run("score", "--model", "resnet18", "--method", "magnitude", "--no-pretrained", "-o", out)
    assert result.exit_code == 1 and "not a supported model" in result.stderr and "DeiT" in result.stderr
    assert "Traceback" not in result.output and not list(tmp_path.iterdir())


def test_missing_checkpoint(tmp_path):
    w = str(tmp_path / "w.pt")
    result = run("score", "-m", "deit_tiny", "--method", "magnitude", "--checkpoint", w, "-o", str(tmp_path / "b"))
    assert result.exit_code == 1 and "does not exist" in result.stderr


def test_models_lists_aliases():
    result = run("models", "--json")
    assert result.exit_code == 0
    assert json.loads(result.stdout)["aliases"]["dinov2_vitb14"] == "vit_base_patch14_dinov2.lvd142m"


def test_help_does_not_import_torch():
    """`snapvit --help` and every command's `--help` start without torch or timm (run as `python -m snapvit_cli`)."""
    code = (
        "import runpy, sys, typer\n"
        "from snapvit_cli.cli.app import app\n"
        "for args in [['--help'], *([name, '--help'] for name in typer.main.get_command(app).commands)]:\n"
        "    sys.argv = ['snapvit', *args]\n"
        "    try:\n        runpy.run_module('snapvit_cli', run_name='__main__')\n"
        "    except SystemExit as exit:\n        assert exit.code == 0, args\n"
        "heavy = sorted({'torch', 'timm', 'torchvision'} & set(sys.modules))\n"
        "assert not heavy, f'--help imported {heavy}'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "score" in done.stdout and "slice" in done.stdout
    assert "--flops" in done.stdout  # `slice --help` ran too
