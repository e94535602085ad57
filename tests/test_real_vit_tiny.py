"""Integration on the real pretrained ViT-Tiny in ../shared/data (skipped when it is absent)."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from snapvit_cli.api import load, load_bundle
from snapvit_cli.cli.app import app
from snapvit_cli.models.loading import load_model

CHECKPOINT = "vit_tiny_patch16_224.tinyimagenet.safetensors"


@pytest.fixture(scope="module")
def real_bundle(tmp_path_factory):
    from tests.conftest import SHARED_DATA

    if not (SHARED_DATA / CHECKPOINT).is_file():
        pytest.skip(f"{SHARED_DATA / CHECKPOINT} not available")
    folder = tmp_path_factory.mktemp("real")
    bundle = folder / "tiny.safetensors"
    result = CliRunner().invoke(
        app,
        [
            "score",
            "--method",
            "magnitude",
            "--model",
            "vit_tiny_patch16_224",
            "--checkpoint",
            str(SHARED_DATA / CHECKPOINT),
            "-o",
            str(bundle),
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    return SHARED_DATA / CHECKPOINT, bundle, folder


@torch.no_grad()
def test_bundle_of_real_model_keeps_outputs(real_bundle):
    checkpoint, bundle, _ = real_bundle
    model, source = load_model("vit_tiny_patch16_224", checkpoint=checkpoint)
    assert model.num_classes == 200 and source.pretrained_cfg["mean"] == [0.5, 0.5, 0.5]
    x = torch.randn(4, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    dense = load_bundle(bundle).dense_model()
    for got, want in ((dense(x), model(x)), (dense.forward_features(x), model.forward_features(x))):
        # summation order changes with the permutation: equal up to float32 rounding, relative to the values' scale
        assert (got - want).abs().max() <= 1e-5 * want.abs().max()


@torch.no_grad()
def test_real_model_slices_and_reloads(real_bundle):
    checkpoint, bundle, folder = real_bundle
    out = folder / "half"
    result = CliRunner().invoke(app, ["slice", str(bundle), "--flops", "0.5", "-o", str(out), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)["results"][0]
    assert abs(report["flops_fraction"] - 0.5) < 0.005
    sliced = load(out)
    x = torch.randn(2, 3, 224, 224)
    assert torch.equal(sliced(x), load_bundle(bundle).slice(flops=0.5)(x))
    assert sum(p.numel() for p in sliced.parameters()) == report["params"]
    dense, _ = load_model("vit_tiny_patch16_224", checkpoint=checkpoint)
    assert report["dense_params"] == sum(p.numel() for p in dense.parameters())
