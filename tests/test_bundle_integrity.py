"""One open file, one version; byte-identical outputs; bundles written before the typed records still load."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
import timm
import torch
from typer.testing import CliRunner

from snapvit_cli.cli.app import app
from snapvit_cli.elastic import bundle as bundle_module
from snapvit_cli.elastic.bundle import ElasticBundle, write_bundle
from snapvit_cli.errors import BundleError
from snapvit_cli.scoring import score_model
from tests.conftest import make_small_model, small_model_source

V1 = Path(__file__).parent / "data" / "v1-bundle.safetensors"
V1_OUTPUTS = Path(__file__).parent / "data" / "v1-bundle-dense-outputs.json"
V1_ARGS = {"img_size": 64, "embed_dim": 32, "depth": 2, "num_heads": 2, "mlp_ratio": 2.0, "num_classes": 10}


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def folder_hashes(folder: Path) -> dict[str, str]:
    return {p.name: sha(p) for p in sorted(folder.iterdir())}


# -- bundles written before this change -------------------------------------------------------------------


def test_v1_bundle_from_the_previous_writer_still_loads_and_slices(tmp_path):
    """tests/data/v1-bundle.safetensors was written by snapvit 0.1.0's writer (timings in the file, unsorted keys).

    Its dense model must give the outputs stored in tests/data/v1-bundle-dense-outputs.json: those of a plain timm
    model loaded with the bundle's weights put back in their original unit order (whose hash is the recorded
    ``weights_sha256``), computed once when the fixture's source model could no longer be rebuilt from timm's init.
    """
    bundle = ElasticBundle.open(V1)
    assert bundle.metadata.scoring.method == "magnitude" and bundle.source.model_args == V1_ARGS
    bundle.verify_weights()  # its weights, un-permuted, are the recorded source weights
    out = bundle.save_slice(tmp_path / "s", bundle.plan(flops=0.8))
    config = json.loads((out / "config.json").read_text())
    assert config["bundle_sha256"] == sha(V1) and "timings_s" not in config["scoring"]

    stored = json.loads(V1_OUTPUTS.read_text())
    x = torch.linspace(-2, 2, 2 * 3 * 64 * 64).reshape(2, 3, 64, 64).sin()
    assert stored["input"] == "torch.linspace(-2, 2, 2 * 3 * 64 * 64).reshape(2, 3, 64, 64).sin()"
    with torch.no_grad():
        dense = bundle.dense_model()(x)
    assert torch.allclose(dense, torch.tensor(stored["outputs"]), atol=1e-5), dense


# -- one open file, one version ---------------------------------------------------------------------------


@pytest.fixture
def two_bundles(tmp_path) -> tuple[Path, Path]:
    """Two bundles of the same architecture with different weights and scores."""
    paths = []
    for seed, method in ((0, "magnitude"), (1, "random")):
        model = make_small_model("dino", seed=seed)
        scores = score_model(model, method, seed=seed) if method == "random" else score_model(model, method)
        source = small_model_source("dino", model)
        paths.append(write_bundle(tmp_path / f"{method}.safetensors", model, source, scores))
    return paths[0], paths[1]


def test_bundle_replaced_between_plan_and_save_slice_gives_the_old_bundle(two_bundles, tmp_path):
    old, new = two_bundles
    reference = tmp_path / "reference.safetensors"
    shutil.copyfile(old, reference)
    expected = ElasticBundle.open(reference)
    expected_out = expected.save_slice(tmp_path / "expected", expected.plan(flops=0.8))

    bundle = ElasticBundle.open(old)
    plan = bundle.plan(flops=0.8)
    os.replace(new, old)  # another writer (or a download) replaces the file
    out = bundle.save_slice(tmp_path / "out", plan)
    assert folder_hashes(out) == folder_hashes(expected_out)
    assert json.loads((out / "config.json").read_text())["bundle_sha256"] == sha(reference)


def test_bundle_truncated_after_opening_is_one_line_and_writes_nothing(two_bundles, tmp_path):
    path, _ = two_bundles
    bundle = ElasticBundle.open(path)
    plan = bundle.plan(flops=0.8)
    os.truncate(path, path.stat().st_size // 2)
    with pytest.raises(BundleError) as info:
        bundle.save_slice(tmp_path / "out", plan)
    assert "\n" not in str(info.value)
    assert str(info.value).startswith(f"{path} cannot be read (truncated, corrupt or changed while read?)")
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*"))


def test_bundle_truncated_mid_read_is_one_line_and_writes_nothing(two_bundles, tmp_path, monkeypatch):
    path, _ = two_bundles
    real = bundle_module.read_prefix

    def truncating(file, adapter, widths, prefix=""):
        os.truncate(path, path.stat().st_size - 1000)  # while the kept units are being read
        return real(file, adapter, widths, prefix=prefix)

    monkeypatch.setattr(bundle_module, "read_prefix", truncating)
    result = CliRunner().invoke(app, ["slice", str(path), "--flops", "0.8", "-o", str(tmp_path / "out")])
    assert result.exit_code == 1 and len(result.stderr.strip().splitlines()) == 1, result.output
    assert not (tmp_path / "out").exists()


def test_bundle_rewritten_in_place_with_other_weights_is_refused(two_bundles, tmp_path):
    """`cp other.safetensors bundle.safetensors` keeps the inode: the weights hash catches the mixed read."""
    path, other = two_bundles
    bundle = ElasticBundle.open(path)
    plan = bundle.plan(flops=0.8)
    with open(path, "r+b") as f:  # same inode, new content
        f.write(other.read_bytes())
        f.truncate()
    with pytest.raises(BundleError, match="the weights do not match the weights_sha256 recorded in the bundle"):
        bundle.save_slice(tmp_path / "out", plan)
    assert not (tmp_path / "out").exists()


# -- byte-identical outputs -------------------------------------------------------------------------------


def test_score_and_slice_twice_give_identical_bytes(tmp_path):
    runner = CliRunner()
    bundles, folders = [], []
    for run in ("a", "b"):
        bundle = tmp_path / f"{run}.safetensors"
        result = runner.invoke(app, ["score", "--model", "demo", "--method", "magnitude", "-o", str(bundle), "--json"])
        assert result.exit_code == 0, result.output
        timings = json.loads(result.stdout)["results"][0]["timings_s"]
        assert "total" in timings  # timings stay in --json, out of the file
        folder = tmp_path / f"{run}-sliced"
        result = runner.invoke(app, ["slice", str(bundle), "--flops", "0.8", "-o", str(folder)])
        assert result.exit_code == 0, result.output
        bundles.append(sha(bundle))
        folders.append(folder_hashes(folder))
    assert bundles[0] == bundles[1]
    assert folders[0] == folders[1] and set(folders[0]) == {"config.json", "model.safetensors"}
    metadata = ElasticBundle.open(tmp_path / "a.safetensors").metadata
    assert metadata.environment["torch"] == torch.__version__.split("+")[0]  # facts that do not vary run to run
    assert metadata.environment["timm"] == timm.__version__
