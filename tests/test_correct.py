"""Tests for the block-by-block correction driver and ``snapvit slice --correct`` (method §8)."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import Tensor, nn
from typer.testing import CliRunner

from snapvit_cli.adapters import Widths, get_adapter
from snapvit_cli.api import load
from snapvit_cli.cli.app import app
from snapvit_cli.correction.apply import correct_slice
from snapvit_cli.correction.solver import InputStatistics, parse_damping
from snapvit_cli.devices import resolve_device
from snapvit_cli.elastic.bundle import load_bundle, write_bundle
from snapvit_cli.elastic.surgery import build_model, keep_prefix
from snapvit_cli.errors import SnapvitError
from snapvit_cli.scoring import score_model
from tests.conftest import image_batch, make_small_model, small_model_source

CONSUMERS = ("mlp.fc2", "attn.proj")


def small_widths(model: nn.Module) -> Widths:
    """Every block pruned differently; block 1 keeps all neurons and block 2 all heads (nothing to correct)."""
    adapter = get_adapter(model)
    dense = adapter.widths()
    assert adapter.num_blocks == 3
    return Widths((dense.mlp[0] // 2, dense.mlp[1], dense.mlp[2] // 4), (2, 1, dense.heads[2]))


def calibration(model: nn.Module, n: int = 16) -> list[Tensor]:
    return list(image_batch(model, n=n, seed=3).split(4))


@torch.no_grad()
def layer_inputs(model: nn.Module, batches: list[Tensor]) -> dict[str, Tensor]:
    """Every consumer layer's input rows (float64) over the calibration batches; fine for a test's tiny model."""
    rows: dict[str, list[Tensor]] = {}
    handles = []

    def recorder(store: list[Tensor]):
        return lambda _module, args: store.append(args[0].reshape(-1, args[0].shape[-1]))

    for i, block in enumerate(get_adapter(model).blocks()):
        for name in CONSUMERS:
            store = rows.setdefault(f"blocks.{i}.{name}.weight", [])
            handles.append(block.get_submodule(name).register_forward_pre_hook(recorder(store)))
    for x in batches:
        model(x)
    for handle in handles:
        handle.remove()
    return {k: torch.cat(v).double() for k, v in rows.items()}


def mean_output_error(x: Tensor, dense_weight: Tensor, kept_weight: Tensor) -> float:
    """``‖W x − W̃ x_K‖²`` per row: the dense layer against a sliced one (kept columns = a prefix)."""
    k = kept_weight.shape[1]
    return float(((x @ dense_weight.double().T - x[:, :k] @ kept_weight.double().T) ** 2).sum(1).mean())


def test_correction_lowers_the_output_error_of_every_corrected_layer(small_name: str) -> None:
    model = make_small_model(small_name)
    widths = small_widths(model)
    batches = calibration(model)
    dense_state = {k: v.clone() for k, v in model.state_dict().items()}
    inputs = layer_inputs(model, batches)

    result = correct_slice(copy.deepcopy(model), widths, batches, sequential=False)
    plain = keep_prefix(dense_state, get_adapter(model), widths)

    corrected_names = {layer.tensor for layer in result.layers}
    assert corrected_names == {
        "blocks.0.mlp.fc2.weight",
        "blocks.0.attn.proj.weight",
        "blocks.1.attn.proj.weight",
        "blocks.2.mlp.fc2.weight",
    }
    for layer in result.layers:
        x, dense_weight = inputs[layer.tensor], dense_state[layer.tensor]
        before = mean_output_error(x, dense_weight, plain[layer.tensor])
        after = mean_output_error(x, dense_weight, result.state[layer.tensor])
        assert after < 0.5 * before, layer
        # The record is the same quantity, computed from the accumulated statistics.
        assert layer.error_before == pytest.approx(before, rel=1e-6)
        assert layer.error_after == pytest.approx(after, rel=1e-6)
    for name, tensor in plain.items():
        if name not in corrected_names:
            assert torch.equal(result.state[name], tensor), name


def test_corrected_sliced_model_tracks_the_dense_features_better() -> None:
    model = make_small_model("dino")
    widths = small_widths(model)
    batches = calibration(model, n=16)
    adapter = get_adapter(model)
    plain = build_model(copy.deepcopy(model), widths, keep_prefix(model.state_dict(), adapter, widths))
    for sequential in (False, True):
        result = correct_slice(copy.deepcopy(model), widths, batches, sequential=sequential)
        corrected = build_model(copy.deepcopy(model), widths, result.state)
        with torch.no_grad():
            x = torch.cat(batches)
            want = model.forward_features(x)
            plain_err = (plain.forward_features(x) - want).pow(2).sum()
            corrected_err = (corrected.forward_features(x) - want).pow(2).sum()
        assert corrected_err < 0.5 * plain_err, sequential


def test_sequential_inputs_match_dense_inputs_up_to_the_first_corrected_block() -> None:
    model = make_small_model("deit3-layerscale")
    widths = small_widths(model)
    batches = calibration(model)
    dense = correct_slice(copy.deepcopy(model), widths, batches, sequential=False)
    sequential = correct_slice(copy.deepcopy(model), widths, batches, sequential=True)
    assert not dense.sequential and sequential.sequential
    first = [n for n in dense.state if n.startswith("blocks.0.")]
    later = ["blocks.1.attn.proj.weight", "blocks.2.mlp.fc2.weight"]
    for name in first:
        assert torch.equal(dense.state[name], sequential.state[name]), name
    for name in later:  # fed the corrected sliced block 0's outputs instead of the dense ones
        assert not torch.allclose(dense.state[name], sequential.state[name]), name
    assert [layer.tensor for layer in dense.layers] == [layer.tensor for layer in sequential.layers]
    assert all(layer.error_after < layer.error_before for layer in sequential.layers)


def test_nothing_pruned_changes_nothing() -> None:
    model = make_small_model("augreg-classifier")
    dense_state = {k: v.clone() for k, v in model.state_dict().items()}
    for sequential in (False, True):
        result = correct_slice(
            copy.deepcopy(model), get_adapter(model).widths(), calibration(model), sequential=sequential
        )
        assert result.layers == []
        assert result.state.keys() == dense_state.keys()
        for name, tensor in dense_state.items():
            assert torch.equal(result.state[name], tensor), name


def test_batch_size_does_not_change_the_result() -> None:
    model = make_small_model("qk-norm")
    widths = small_widths(model)
    images = image_batch(model, n=12, seed=5)
    for sequential in (False, True):
        one_at_a_time = correct_slice(copy.deepcopy(model), widths, list(images.split(1)), sequential=sequential)
        batched = correct_slice(copy.deepcopy(model), widths, [images], sequential=sequential)
        assert one_at_a_time.images == batched.images == 12
        for name, tensor in batched.state.items():
            torch.testing.assert_close(one_at_a_time.state[name], tensor, rtol=1e-4, atol=1e-5)


def test_statistics_accumulate_per_batch_and_hooks_are_removed(monkeypatch: pytest.MonkeyPatch) -> None:
    """Memory is bounded by construction: each batch is folded into X Xᵀ as it passes, then dropped."""
    calls: list[tuple[int, ...]] = []
    original = InputStatistics.update

    def counting_update(self: InputStatistics, x: Tensor) -> None:
        calls.append(tuple(x.shape))
        original(self, x)

    monkeypatch.setattr(InputStatistics, "update", counting_update)
    model = make_small_model("dino")
    batches = calibration(model)  # 4 batches of 4 images
    result = correct_slice(model, small_widths(model), batches, sequential=True)
    assert len(calls) == len(result.layers) * len(batches)  # one update per corrected layer and batch
    assert all(shape[0] == 4 for shape in calls)
    assert all(not m._forward_pre_hooks for m in model.modules())


def test_damping_setting_is_used_and_recorded() -> None:
    model = make_small_model("dino")
    widths = small_widths(model)
    weak = correct_slice(copy.deepcopy(model), widths, calibration(model), damping=parse_damping("mean:1e-4"))
    strong = correct_slice(copy.deepcopy(model), widths, calibration(model), damping=parse_damping("max:10"))
    assert weak.to_json()["damping"] == "mean:0.0001" and strong.to_json()["damping"] == "max:10"
    # Heavy damping shrinks the update towards the plain slice, so it fits the calibration data worse.
    assert sum(a.error_after for a in weak.layers) < sum(a.error_after for a in strong.layers)


def test_no_calibration_images_is_an_error() -> None:
    model = make_small_model("dino")
    with pytest.raises(SnapvitError, match="no calibration images"):
        correct_slice(model, small_widths(model), [])


def test_resolve_device() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(None).type in ("cpu", "cuda")
    with pytest.raises(SnapvitError, match="not usable"):
        resolve_device("cuda:99" if not torch.cuda.is_available() else "mps")
    with pytest.raises(SnapvitError, match="not a device"):
        resolve_device("warp-drive")


# --- the command line ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small_bundle(tmp_path_factory):
    model = make_small_model("dino")
    path = tmp_path_factory.mktemp("bundle") / "small.safetensors"
    write_bundle(path, model, small_model_source("dino", model), score_model(model, "magnitude"))
    return path


def test_cli_slice_correct_writes_a_loadable_corrected_model(small_bundle, tmp_path) -> None:
    out = tmp_path / "corrected"
    args = ["slice", str(small_bundle), "--flops", "0.6", "-o", str(out), "--json"]
    extra = ["--correct", "--data", "demo", "--correct-samples", "24", "--batch-size", "5", "--seed", "3"]
    result = CliRunner().invoke(app, [*args, *extra, "--damping", "p90:0.05", "--dense-inputs", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    config = json.loads((out / "config.json").read_text())
    record = config["correction"]
    assert report["correction"] == {**record, "seconds": report["correction"]["seconds"]}
    assert "seconds" not in record  # timings go to --json and stderr, never into the folder
    assert record["damping"] == "p90:0.05" and record["inputs"] == "dense" and record["images"] == 24
    assert record["data"]["source"] == "demo" and record["data"]["samples"] == 24 and record["data"]["seed"] == 3
    assert record["layers"] and all(layer["error_after"] < layer["error_before"] for layer in record["layers"])
    assert report["correction"]["seconds"] > 0

    bundle = load_bundle(small_bundle)
    plain = bundle.slice(flops=0.6).state_dict()
    corrected = load(out).state_dict()
    changed = {layer["tensor"] for layer in record["layers"]}
    assert changed
    for name, tensor in plain.items():
        assert corrected[name].shape == tensor.shape
        assert torch.equal(corrected[name], tensor) != (name in changed), name


def test_cli_slice_without_correct_writes_no_correction_record(small_bundle, tmp_path) -> None:
    out = tmp_path / "plain"
    result = CliRunner().invoke(app, ["slice", str(small_bundle), "--flops", "0.6", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "correction" not in json.loads((out / "config.json").read_text())


@pytest.mark.parametrize(
    ("extra", "code", "message"),
    [
        (["--correct"], 2, "--correct and --data go together"),
        (["--data", "demo"], 2, "--correct and --data go together"),
        (["--correct", "--data", "demo", "--damping", "median:1"], 1, "bad damping"),
        (["--correct", "--data", "no/such/folder"], 1, "not found"),
    ],
)
def test_cli_slice_correct_rejects_bad_options(small_bundle, tmp_path, extra, code, message) -> None:
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["slice", str(small_bundle), "--flops", "0.6", "-o", str(out), *extra])
    assert result.exit_code == code
    assert message in result.output
    assert not out.exists()
