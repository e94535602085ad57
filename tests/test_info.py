"""`snapvit info`: what a bundle, a sliced folder, an ONNX and a .pt2 file hold, as text and JSON."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from snapvit_cli.cli.app import app
from snapvit_cli.fileio import sha256_file


def run(*args: object):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    folder = tmp_path_factory.mktemp("info")
    bundle, half = folder / "demo.safetensors", folder / "demo-half"
    assert run("score", "-m", "demo", "--method", "magnitude", "-o", bundle, "-q").exit_code == 0
    assert run("slice", bundle, "--flops", "0.5", "-o", half, "-q").exit_code == 0
    for suffix in ("onnx", "pt2"):
        result = run("export", half, "-o", folder / f"demo-half.{suffix}", "-q")
        assert result.exit_code == 0, result.output
    return folder


def info(path) -> dict:
    result = run("info", path, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_info_of_a_bundle(artifacts):
    record = info(artifacts / "demo.safetensors")
    assert record["kind"] == "bundle" and record["model"]["timm_name"] == "vit_tiny_patch16_224"
    assert record["model"]["origin"] == "random weights (not pretrained)"
    assert record["widths"] == {"blocks": 12, "embed_dim": 192, "mlp_hidden": 768, "num_heads": 3}
    assert [b["budget"] for b in record["budgets"]] == ["flops 0.9", "flops 0.75", "flops 0.5"]
    assert record["budgets"][2]["flops_fraction"] == 0.5 and record["scoring"]["method"] == "magnitude"
    assert record["correction_statistics"] is None
    assert record["sha256"] == sha256_file(artifacts / "demo.safetensors")


def test_info_of_a_sliced_folder_and_its_text_form(artifacts):
    record = info(artifacts / "demo-half")
    assert record["kind"] == "sliced" and record["budget"] == "flops 0.5"
    assert len(record["widths"]["mlp_hidden"]) == 12 and record["cost"]["flops_fraction"] == 0.5
    assert record["bundle_sha256"] == sha256_file(artifacts / "demo.safetensors")
    assert record["sha256"] == sha256_file(artifacts / "demo-half" / "model.safetensors")
    text = run("info", artifacts / "demo-half").stdout
    assert "budget: flops 0.5" in text and "origin: random weights (not pretrained)" in text


def test_info_of_exported_files(artifacts):
    onnx = info(artifacts / "demo-half.onnx")
    assert onnx["kind"] == "onnx" and onnx["opset"] == 18 and onnx["inputs"]["pixel_values"] == ["batch", 3, 64, 64]
    assert onnx["weights"]["tensors"] > 0 and onnx["weights"]["values"] > 0
    sliced = info(artifacts / "demo-half")
    pt2 = info(artifacts / "demo-half.pt2")
    assert pt2["kind"] == "pt2" and pt2["weights"]["tensors"] > 0
    for exported in (onnx, pt2):  # what snapvit recorded in the file: the folder's model, budget, widths, bundle
        assert exported["budget"] == "flops 0.5" and exported["widths"] == sliced["widths"]
        assert exported["model"]["origin"] == "random weights (not pretrained)"
        assert exported["bundle_sha256"] == sliced["bundle_sha256"]
    assert pt2["sha256"] == sha256_file(artifacts / "demo-half.pt2")


@pytest.mark.parametrize("name,expected", [("nope.onnx", "does not exist"), ("README.md", "neither an elastic")])
def test_info_refuses_in_one_line(name, expected, tmp_path):
    (tmp_path / "README.md").write_text("# hi\n")
    result = run("info", tmp_path / name)
    assert result.exit_code == 1 and expected in result.stderr and "Traceback" not in result.output
