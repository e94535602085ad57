"""The common mistakes of a first hour answer in one line, with the right name, in the right order (issue 25)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from typer.testing import CliRunner

from snapvit_cli.cli.app import app

ROOT = Path(__file__).resolve().parents[1]
ROOT_README = ROOT / "README.md"


def run(*args: object):
    return CliRunner().invoke(app, [str(a) for a in args])


def one_error_line(result) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip() and not line[:2].isdigit()]
    assert result.exit_code == 1, result.output
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in result.output, result.stderr
    return lines[0]


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pth"
    torch.save(timm.create_model("vit_tiny_patch16_224", pretrained=False).state_dict(), path)
    return path


def score_with(checkpoint, tmp_path, model="vit_small_patch16_224"):
    out = tmp_path / "out.safetensors"
    result = run("score", "-m", model, "--checkpoint", checkpoint, "--method", "magnitude", "-o", out, "-q")
    assert not out.exists()
    return result


def test_checkpoint_of_another_width_names_embed_dim(tiny_checkpoint, tmp_path):
    line = one_error_line(score_with(tiny_checkpoint, tmp_path))
    assert line == f"error: checkpoint {tiny_checkpoint} has embed_dim 192; vit_small_patch16_224 expects 384"


def test_checkpoint_of_another_depth_names_blocks(tmp_path):
    path = tmp_path / "six.pth"
    torch.save(timm.create_model("vit_tiny_patch16_224", depth=6, pretrained=False).state_dict(), path)
    line = one_error_line(score_with(path, tmp_path, model="vit_tiny_patch16_224"))
    assert "has 6 blocks; vit_tiny_patch16_224 expects 12" in line


def test_checkpoint_with_one_wrong_tensor_names_it(tiny_checkpoint, tmp_path):
    state = torch.load(tiny_checkpoint, weights_only=True)
    state["blocks.3.mlp.fc1.weight"] = state["blocks.3.mlp.fc1.weight"][:100]
    path = tmp_path / "cut.pth"
    torch.save(state, path)
    line = one_error_line(score_with(path, tmp_path, model="vit_tiny_patch16_224"))
    assert "blocks.3.mlp.fc1.weight is [100, 192] in the checkpoint, [768, 192] in the model" in line


@pytest.mark.parametrize(
    "kind,expected",
    [
        ("readme", "is a text file, not a model's weights"),
        ("npz", "is a NumPy .npz archive"),
        ("pickle", "holds Python objects other than tensors"),
        ("empty", "is an empty file"),
    ],
)
def test_a_file_that_is_not_weights_says_what_it_is(kind, expected, tmp_path):
    path = {"readme": ROOT_README, "npz": tmp_path / "x.npz", "pickle": tmp_path / "m.pth", "empty": tmp_path / "e.pt"}
    if kind == "npz":
        np.savez(path[kind], x=np.zeros((2, 3), np.uint8))
    elif kind == "pickle":
        torch.save({"model": torch.nn.Linear(2, 2)}, path[kind])
    elif kind == "empty":
        path[kind].write_bytes(b"")
    line = one_error_line(score_with(path[kind], tmp_path))
    assert expected in line


def test_hf_prefix_is_spelled_once_for_both_modules():
    from snapvit_cli import hub_client
    from snapvit_cli.elastic import artifacts

    assert artifacts.HF_PREFIX == hub_client.HF_PREFIX


NO_TORCH = (
    "import sys\n"
    "class Refuse:\n"
    "    def find_spec(self, name, path=None, target=None):\n"
    "        if name.split('.')[0] in ('torch', 'timm', 'safetensors'):\n"
    "            raise ImportError('imported ' + name + ' for a trivial refusal')\n"
    "sys.meta_path.insert(0, Refuse())\n"
    "from snapvit_cli.cli import main\n"
    "sys.argv = ['snapvit'] + sys.argv[1:]\n"
    "main()\n"
)


@pytest.mark.parametrize(
    "args,expected",
    [
        (["score", "-m", "vit_tiny_patch16_224", "--checkpoint", "nope.pth", "-o", "o.safetensors"], "does not exist"),
        (["score", "-m", "demo", "--method", "magnitude", "-o", "exists.safetensors"], "already exists"),
        (["slice", "nope.safetensors", "--flops", "0.5"], "nope.safetensors does not exist"),
        (["slice", "exists.safetensors", "--flops", "0.5"], "not a safetensors file"),
        (["slice", "README.md", "--flops", "0.5", "-o", "existing"], "neither an elastic bundle"),
        (["slice", "nope.safetensors", "--flops", "half"], "--flops takes numbers"),
        (["eval", "nope.safetensors", "--data", "demo"], "does not exist"),
        (["eval", "demo", "--data", "demo", "--plot", "acc.jpg"], "--plot acc.jpg: name the file .png"),
        (["export", "nope", "-o", "x.onnx"], "nope does not exist"),
        (["import-scores", "nope.pt", "-o", "x.safetensors"], "score file nope.pt does not exist"),
    ],
)
def test_trivial_refusals_come_before_torch(args, expected, tmp_path):
    """Run where importing torch, timm or safetensors fails: each refusal must be answered before them."""
    (tmp_path / "exists.safetensors").write_bytes(b"x")
    (tmp_path / "existing").mkdir()
    (tmp_path / "README.md").write_text("# not a bundle\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-c", NO_TORCH, *args]
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode in (1, 2), result.stderr
    assert expected in result.stderr and "Traceback" not in result.stderr, result.stderr


def test_a_mistyped_model_gets_did_you_mean(tmp_path):
    line = one_error_line(run("score", "-m", "vit_tinny", "--method", "magnitude", "-o", tmp_path / "x.safetensors"))
    assert "Did you mean vit_tiny_patch16_224" in line
    line = one_error_line(run("score", "-m", "dino_vitb", "--method", "magnitude", "-o", tmp_path / "x.safetensors"))
    assert "Did you mean dino_vitb8, dino_vitb16" in line


@pytest.fixture(scope="module")
def demo_bundle(tmp_path_factory):
    path = tmp_path_factory.mktemp("demo") / "demo.safetensors"
    assert run("score", "-m", "demo", "--method", "magnitude", "-o", path, "-q").exit_code == 0
    return path


def test_eval_names_budgets_not_flops(demo_bundle):
    line = one_error_line(run("eval", demo_bundle, "--data", "demo", "--budgets", "0.1", "--no-speed"))
    assert line.startswith("error: --budgets 0.1 is out of reach") and "--flops" not in line


@pytest.mark.parametrize(
    "args,choice",
    [
        (["eval", "demo", "--data", "demo", "--transform", "foo"], "resize"),
        (["slice", "demo.safetensors", "--flops", "0.5", "--correct", "--correct-tokens", "foo"], "weighted"),
        (["export", "demo-half", "--format", "tflite"], "onnx"),
    ],
)
def test_a_bad_choice_is_exit_2_and_lists_the_choices(args, choice):
    result = run(*args)
    assert result.exit_code == 2, result.output
    assert args[-1] in result.output and choice in result.output and "Traceback" not in result.output


def test_export_takes_the_format_from_the_extension(demo_bundle, tmp_path):
    out = tmp_path / "x.pt2"
    result = run("export", demo_bundle, "--flops", "0.5", "-o", out, "--json")
    assert result.exit_code == 0, result.output
    assert out.read_bytes()[:2] == b"PK" and torch.export.load(out) is not None  # a .pt2 archive, not ONNX
    refused = run("export", demo_bundle, "--format", "onnx", "-o", tmp_path / "y.pt2")
    assert refused.exit_code == 2 and "contradicts" in refused.output and not (tmp_path / "y.pt2").exists()


def test_eval_plot_format_follows_the_extension(demo_bundle, tmp_path):
    line = one_error_line(run("eval", demo_bundle, "--data", "demo", "--plot", tmp_path / "acc.jpg"))
    assert "--plot" in line and ".png, .svg or .pdf" in line and not (tmp_path / "acc.jpg").exists()
    svg = tmp_path / "acc.svg"
    result = run("eval", demo_bundle, "--data", "demo", "--budgets", "1.0", "--no-speed", "--plot", svg, "-q")
    assert result.exit_code == 0, result.output
    assert svg.read_text().lstrip().startswith("<?xml") and "<svg" in svg.read_text()


def test_slice_of_a_non_bundle_says_so_before_the_output(tmp_path):
    (tmp_path / "existing").mkdir()
    line = one_error_line(run("slice", ROOT_README, "--flops", "0.5", "-o", tmp_path / "existing"))
    assert "neither an elastic bundle nor a sliced model" in line


def test_quiet_leaves_only_errors_and_warnings(demo_bundle, tmp_path):
    shown = run("slice", demo_bundle, "--flops", "0.5", "-o", tmp_path / "a")
    assert "wrote" in shown.stdout and "GMACs" in shown.stdout
    quiet = run("slice", demo_bundle, "--flops", "0.5", "-o", tmp_path / "b", "-q")
    assert quiet.exit_code == 0 and quiet.stdout == "" and quiet.stderr == ""
    refused = run("slice", demo_bundle, "--flops", "0.5", "-o", tmp_path / "b", "-q")
    assert refused.exit_code == 1 and "already exists" in refused.stderr
    assert run("slice", demo_bundle, "--flops", "0.5", "--dry-run", "-q", "--json").stdout.startswith("{")


def test_eval_names_the_dense_row_dense(demo_bundle):
    result = run("eval", demo_bundle, "--data", "demo", "--budgets", "1.0,0.5", "--no-speed")
    assert result.exit_code == 0, result.output
    rows = [line.split("\t")[0] for line in result.stdout.splitlines()[1:3]]
    assert rows == ["dense", "flops 0.5"], result.stdout


def test_single_class_eval_data_warns(tmp_path, demo_bundle):
    from PIL import Image

    for split in ("train", "test"):
        folder = tmp_path / "one" / split / "cat"
        folder.mkdir(parents=True)
        for i in range(4):
            Image.new("RGB", (16, 16), (i * 40, 0, 0)).save(folder / f"{i}.png")
    result = run("eval", demo_bundle, "--data", tmp_path / "one", "--budgets", "1.0", "--no-speed", "--knn-k", "2")
    assert result.exit_code == 0, result.output
    assert "warning:" in result.stderr and "single class" in result.stderr
