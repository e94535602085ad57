"""A small file cannot make snapvit compute more than a real model would (issue 23, item 2): the patch tokens an
architecture's img_size / patch_size imply, and the buffers loading recomputes, are bounded on the meta-device
skeleton before any weight is loaded; ``eval --resolution`` is held to the same token bound."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from snapvit_cli.adapters import get_adapter
from snapvit_cli.cli.app import app
from snapvit_cli.elastic.bundle import ElasticBundle
from snapvit_cli.elastic.sliced import load_sliced
from snapvit_cli.errors import BundleError, SnapvitError
from tests.conftest import assert_one_line_error
from tests.crafted import edit_config, edit_safetensors, sliced_folder, small_bundle

runner = CliRunner()
MAX_TOKENS = 4096  # the rule (snapvit_cli.adapters.vit.MAX_TOKENS): a 64 x 64 patch grid


def _claim_img_size(size: int, *, dynamic: bool = False):
    def edit(record: dict) -> None:
        source = record.get("source", record)
        source["model_args"]["img_size"] = size
        if dynamic:
            source["model_args"]["dynamic_img_size"] = True
        source["pretrained_cfg"]["input_size"] = [3, size, size]
        record["structure"]["img_size"] = [size, size]

    return edit


@pytest.fixture(scope="module")
def rope_bundle(tmp_path_factory) -> Path:
    """A DINOv3 (Eva, RoPE, no stored position embedding) bundle with patch size 1: its file does not grow with
    img_size, so only the metadata says how many tokens the model computes."""
    return small_bundle(tmp_path_factory.mktemp("rope") / "d3.safetensors", "dinov3", patch_size=1, img_size=32)


@pytest.mark.parametrize(("size", "dynamic"), [(4096, False), (256, True)])
def test_bundle_claiming_millions_of_tokens_is_refused_before_building(rope_bundle, tmp_path, size, dynamic):
    hostile = edit_safetensors(rope_bundle, tmp_path / "big.safetensors", meta=_claim_img_size(size, dynamic=dynamic))
    assert hostile.stat().st_size < 300_000
    with pytest.raises(BundleError, match=f"patch tokens per image.*at most {MAX_TOKENS}"):
        ElasticBundle.open(hostile)
    result = runner.invoke(app, ["slice", str(hostile), "--mlp", "0.5", "--heads", "0", "-o", str(tmp_path / "o")])
    assert_one_line_error(result, "patch tokens per image")
    assert not (tmp_path / "o").exists()


def test_sliced_folder_claiming_millions_of_tokens_is_refused_by_load_eval_and_push(rope_bundle, tmp_path):
    folder = edit_config(sliced_folder(rope_bundle, tmp_path / "sliced"), _claim_img_size(4096))
    with pytest.raises(BundleError, match="patch tokens per image"):
        load_sliced(folder)
    push = ["push", str(folder), "--repo", "me/x", "--dry-run", str(tmp_path / "p"), "-q"]
    for args in (["eval", str(folder), "--data", "demo"], push):
        result = runner.invoke(app, args)
        assert_one_line_error(result, "patch tokens per image")
        assert "do not match" not in result.stderr


def test_eval_resolution_is_bounded_by_tokens(rope_bundle):
    adapter = get_adapter(ElasticBundle.open(rope_bundle).skeleton())
    side = int(MAX_TOKENS**0.5)  # patch size 1: a side of 64 px is exactly MAX_TOKENS tokens
    assert adapter.check_resolution(side) == side
    with pytest.raises(SnapvitError, match=f"patch tokens per image; snapvit runs at most {MAX_TOKENS}"):
        adapter.check_resolution(side + 1)


def test_running_out_of_memory_is_not_reported_as_a_mismatch(rope_bundle, tmp_path, monkeypatch):
    """Whatever the bounds let through, an allocation that fails while building is said as such (push reported it
    as "weights do not match config.json")."""
    import snapvit_cli.elastic.sliced as sliced

    folder = sliced_folder(rope_bundle, tmp_path / "sliced")

    def no_memory(*args, **kwargs):
        raise MemoryError

    monkeypatch.setattr(sliced, "build_model", no_memory)
    with pytest.raises(BundleError, match="not enough memory to build the model") as info:
        load_sliced(folder)
    assert "do not match" not in str(info.value)
