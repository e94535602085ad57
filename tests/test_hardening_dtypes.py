"""Tensor dtypes, input channels and crop_pct from strangers' files (issue 23, items 6 and 9).

A file's tensors must have the dtypes of the architecture snapvit builds (float32 weights, float64 scores, int64
orders): fp16, bf16, fp8, float64 or complex weights, even a single odd tensor, are one line from every reader
(``slice``, ``load``, ``eval``, ``push``), before a value is read. A model must take RGB (``in_chans`` 3: every
image snapvit feeds is RGB), and ``crop_pct`` is a fraction of the image."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from snapvit_cli.cli.app import app
from snapvit_cli.elastic.bundle import ElasticBundle
from snapvit_cli.elastic.sliced import load_sliced
from snapvit_cli.errors import BundleError, DataError
from tests.conftest import assert_one_line_error
from tests.crafted import edit_config, edit_safetensors, sliced_folder, small_bundle

runner = CliRunner()
FC1 = "blocks.0.mlp.fc1.weight"


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> tuple[Path, Path]:
    """A real bundle and a folder sliced from it (small DINO ViT)."""
    folder = tmp_path_factory.mktemp("dtypes")
    bundle = small_bundle(folder / "b.safetensors", "dino")
    return bundle, sliced_folder(bundle, folder / "sliced")


def _weights_as(dtype: torch.dtype, prefix: str, only: str | None = None):
    def edit(state: dict[str, torch.Tensor]) -> None:
        for name in list(state):
            if name.startswith(prefix) and (only is None or name == prefix + only):
                state[name] = state[name].to(dtype)

    return edit


WEIGHT_CASES = {
    "fp16 weights": (torch.float16, None),
    "bf16 weights": (torch.bfloat16, None),
    "fp8 weights": (torch.float8_e4m3fn, None),
    "fp64 weights": (torch.float64, None),
    "one fp64 tensor": (torch.float64, FC1),
    "one complex tensor": (torch.complex64, FC1),
}


@pytest.mark.parametrize("case", sorted(WEIGHT_CASES))
def test_bundle_with_odd_dtypes_is_refused_by_open_and_slice(made, tmp_path, case):
    dtype, only = WEIGHT_CASES[case]
    hostile = edit_safetensors(made[0], tmp_path / "odd.safetensors", tensors=_weights_as(dtype, "model.", only))
    with pytest.raises(BundleError, match="is stored as .*; snapvit reads it only as F32"):
        ElasticBundle.open(hostile)
    result = runner.invoke(app, ["slice", str(hostile), "--flops", "0.5", "-o", str(tmp_path / "out")])
    assert_one_line_error(result, "is stored as")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("name", "dtype", "want"), [("scores.mlp", torch.float32, "F64"), ("order.heads", torch.int32, "I64")]
)
def test_bundle_scores_and_orders_keep_their_dtypes(made, tmp_path, name, dtype, want):
    hostile = edit_safetensors(made[0], tmp_path / "odd.safetensors", tensors=_weights_as(dtype, name, ""))
    with pytest.raises(BundleError, match=f"{name} is stored as .*only as {want}"):
        ElasticBundle.open(hostile)


def test_a_complex_extra_tensor_is_refused(made, tmp_path):
    def add_extra(state: dict[str, torch.Tensor]) -> None:
        state["raw.mlp"] = torch.zeros(2, dtype=torch.complex64)

    hostile = edit_safetensors(
        made[0], tmp_path / "odd.safetensors", meta=lambda m: m.update(extras=["raw.mlp"]), tensors=add_extra
    )
    with pytest.raises(BundleError, match="raw.mlp is stored as C64, not a plain real dtype"):
        ElasticBundle.open(hostile)


@pytest.mark.parametrize("case", ["fp16 weights", "bf16 weights", "one fp64 tensor", "fp8 weights"])
def test_sliced_folder_with_odd_dtypes_is_refused_by_load_eval_and_push(made, tmp_path, case):
    dtype, only = WEIGHT_CASES[case]
    folder = sliced_folder(made[0], tmp_path / "sliced")
    weights = folder / "model.safetensors"
    edit_safetensors(weights, weights, tensors=_weights_as(dtype, "", only))
    with pytest.raises(BundleError, match="is stored as"):
        load_sliced(folder)
    push = ["push", str(folder), "--repo", "me/x", "--dry-run", str(tmp_path / "p"), "-q"]
    for args in (["eval", str(folder), "--data", "demo"], push):
        assert_one_line_error(runner.invoke(app, args), "is stored as")
    assert not (tmp_path / "p").exists()


def test_a_model_that_does_not_take_rgb_is_refused(made, tmp_path):
    def one_channel(state: dict[str, torch.Tensor]) -> None:
        for name in state:
            if name.endswith("patch_embed.proj.weight"):
                state[name] = state[name][:, :1].contiguous()

    def record(m: dict) -> None:
        m["source"]["model_args"]["in_chans"] = 1

    hostile = edit_safetensors(made[0], tmp_path / "gray.safetensors", meta=record, tensors=one_channel)
    with pytest.raises(BundleError, match="in_chans is 1; snapvit feeds RGB images"):
        ElasticBundle.open(hostile)
    folder = sliced_folder(made[0], tmp_path / "sliced")
    edit_safetensors(folder / "model.safetensors", folder / "model.safetensors", tensors=one_channel)
    edit_config(folder, lambda c: c["model_args"].update(in_chans=1))
    assert_one_line_error(runner.invoke(app, ["eval", str(folder), "--data", "demo"]), "3 input channels")


@pytest.mark.parametrize("crop_pct", [1e-4, 0.005, 1.5, 4.0])
def test_crop_pct_must_be_a_fraction_of_the_image(made, tmp_path, crop_pct):
    def record(m: dict) -> None:
        m["source"]["pretrained_cfg"]["crop_pct"] = crop_pct

    hostile = edit_safetensors(made[0], tmp_path / "crop.safetensors", meta=record)
    with pytest.raises(BundleError, match=r"crop_pct must lie in \[0.25, 1\]"):
        ElasticBundle.open(hostile)
    folder = edit_config(
        sliced_folder(made[0], tmp_path / "sliced"), lambda c: c["pretrained_cfg"].update(crop_pct=crop_pct)
    )
    result = runner.invoke(app, ["eval", str(folder), "--data", "demo", "--transform", "timm"])
    assert_one_line_error(result, "crop_pct must lie in [0.25, 1]")


def test_preprocess_refuses_tiny_crop_pct():
    from snapvit_cli.data.transforms import preprocess

    cfg = {"input_size": [3, 32, 32], "mean": [0.5] * 3, "std": [0.5] * 3}
    with pytest.raises(DataError, match="crop_pct must be in"):
        preprocess(cfg, crop_pct=1e-4)


@pytest.mark.parametrize("dtype", [torch.complex64, torch.float8_e4m3fn])
def test_a_checkpoint_of_complex_or_fp8_tensors_is_refused(tmp_path, dtype):
    """``--checkpoint``: loading would cast such tensors into the float32 model silently (complex loses its
    imaginary part, fp8 its scale); fp16/bf16 checkpoints are common and cast exactly."""
    from safetensors.torch import save_file

    from snapvit_cli.errors import ModelLoadError
    from snapvit_cli.models.checkpoint import read_checkpoint
    from tests.conftest import make_small_model

    state = {k: v.clone() for k, v in make_small_model("dino").state_dict().items()}
    state[FC1] = state[FC1].to(dtype)
    save_file(state, str(tmp_path / "odd.safetensors"))
    with pytest.raises(ModelLoadError, match=f"tensor {FC1} is {str(dtype).removeprefix('torch.')}"):
        read_checkpoint(tmp_path / "odd.safetensors")
    state[FC1] = state[FC1].to(torch.float16)
    save_file(state, str(tmp_path / "half.safetensors"))
    assert read_checkpoint(tmp_path / "half.safetensors")[FC1].dtype == torch.float16
