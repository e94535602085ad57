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
from snapvit_cli.correction.solver import DEFAULT_DAMPING, InputStatistics, parse_damping
from snapvit_cli.devices import resolve_device
from snapvit_cli.elastic.bundle import load_bundle, write_bundle
from snapvit_cli.elastic.surgery import build_model, keep_prefix
from snapvit_cli.errors import SnapvitError
from snapvit_cli.scoring import score_model
from tests.conftest import image_batch, make_small_model, small_model_source

CONSUMERS = ("mlp.fc2", "attn.proj")
#: The plain least-squares fit of the reference: every token alike, all images, fixed damping, no guard.
PLAIN_FIT = {"tokens": "all", "holdout": 0, "guard": False, "damping": DEFAULT_DAMPING}


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

    result = correct_slice(copy.deepcopy(model), widths, batches, sequential=False, **PLAIN_FIT)
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
        result = correct_slice(copy.deepcopy(model), widths, batches, sequential=sequential, **PLAIN_FIT)
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
    dense = correct_slice(copy.deepcopy(model), widths, batches, sequential=False, **PLAIN_FIT)
    sequential = correct_slice(copy.deepcopy(model), widths, batches, sequential=True, **PLAIN_FIT)
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
        assert one_at_a_time.images == batched.images == 9  # every 4th image is held back
        assert one_at_a_time.heldout_images == batched.heldout_images == 3
        assert one_at_a_time.reverted == batched.reverted
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
    # Per corrected layer and batch: the class-token rows and the other rows, of the 3 fit images and of the
    # held-back one (every 4th image).
    assert len(calls) == 4 * len(result.layers) * len(batches)
    assert sorted({shape[0] for shape in calls}) == [1, 3]
    assert all(not m._forward_pre_hooks for m in model.modules())


def test_damping_setting_is_used_and_recorded() -> None:
    model = make_small_model("dino")
    widths = small_widths(model)
    fixed = {"tokens": "all", "holdout": 0, "guard": False}
    weak = correct_slice(copy.deepcopy(model), widths, calibration(model), damping=parse_damping("mean:1e-4"), **fixed)
    strong = correct_slice(copy.deepcopy(model), widths, calibration(model), damping=parse_damping("max:10"), **fixed)
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
    report = json.loads(result.stdout)["results"][0]
    config = json.loads((out / "config.json").read_text())
    record = config["correction"]
    assert report["correction"] == {**record, "seconds": report["correction"]["seconds"]}
    assert "seconds" not in record  # timings go to --json and stderr, never into the folder
    assert record["damping"] == "p90:0.05" and record["inputs"] == "dense"
    assert record["images"] == 18 and record["heldout_images"] == 6  # every 4th image is held back
    assert record["data"]["source"] == "demo" and record["data"]["samples"] == 24 and record["data"]["seed"] == 3
    corrected_layers = [layer for layer in record["layers"] if layer["damping"] is not None]
    assert corrected_layers and all(layer["error_after"] < layer["error_before"] for layer in corrected_layers)
    assert report["correction"]["seconds"] > 0

    bundle = load_bundle(small_bundle)
    plain = bundle.slice(flops=0.6).state_dict()
    corrected = load(out).state_dict()
    changed = {layer["tensor"] for layer in corrected_layers} - set(record["reverted"])
    assert changed
    for name, tensor in plain.items():
        assert corrected[name].shape == tensor.shape
        assert torch.equal(corrected[name], tensor) != (name in changed), name


def test_cli_slice_correct_says_when_it_kept_plain_weights(small_bundle, tmp_path, monkeypatch) -> None:
    """A correction that only makes things worse (forced here) leaves the plain slice, with one line saying so."""
    import snapvit_cli.correction.solver as correction

    def harmful(h_kk: Tensor, cross: Tensor, lam: float) -> Tensor:
        return 1e3 * cross.T  # a change of the kept columns orders of magnitude too large

    monkeypatch.setattr(correction, "_kept_delta", harmful)
    out = tmp_path / "guarded"
    args = ["slice", str(small_bundle), "--flops", "0.6", "-o", str(out), "--correct", "--data", "demo"]
    result = CliRunner().invoke(app, [*args, "--correct-samples", "16", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    record = json.loads((out / "config.json").read_text())["correction"]
    n = len(record["layers"])
    assert n and record["tokens"] == "weighted" and record["damping"] == "auto" and record["heldout_images"] == 4
    notice = f"correction kept the plain weights of {n} of {n} layers ({n} did not lower their own error"
    assert record["notice"].startswith(notice)
    assert [line for line in result.output.splitlines() if line.startswith("correction kept")] == [record["notice"]]
    plain = load_bundle(small_bundle).slice(flops=0.6).state_dict()
    corrected = load(out).state_dict()
    assert all(torch.equal(corrected[name], tensor) for name, tensor in plain.items())


def test_cli_slice_without_correct_writes_no_correction_record(small_bundle, tmp_path) -> None:
    out = tmp_path / "plain"
    result = CliRunner().invoke(app, ["slice", str(small_bundle), "--flops", "0.6", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "correction" not in json.loads((out / "config.json").read_text())


@pytest.mark.parametrize(
    ("extra", "code", "message"),
    [
        (["--correct"], 1, "holds no correction statistics"),  # without --data: the bundle's stored statistics
        (["--data", "demo"], 2, "--data is for --correct"),
        (["--correct", "--data", "demo", "--damping", "median:1"], 1, "bad damping"),
        (["--correct", "--data", "no/such/folder"], 1, "not found"),
        (["--correct", "--data", "demo", "--correct-tokens", "patch"], 2, "'patch' is not one of"),
        (["--correct", "--data", "demo", "--correct-samples", "3"], 1, "too few calibration images"),
    ],
)
def test_cli_slice_correct_rejects_bad_options(small_bundle, tmp_path, extra, code, message) -> None:
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["slice", str(small_bundle), "--flops", "0.6", "-o", str(out), *extra])
    assert result.exit_code == code
    assert message in result.output
    assert not out.exists()


# --- token weighting and the guard (issue 18) ----------------------------------------------------------------------
@torch.no_grad()
def class_token_trap(model: nn.Module, keep_unit: int = 0) -> nn.Module:
    """Block 0's MLP gets a pruned neuron ``p`` that duplicates the kept neuron ``keep_unit`` on every patch token
    but stays silent on the class token, where the kept one fires.

    Channels 0 and 1 of the residual stream are zero for all patch tokens (patch embedding, position embedding and
    the attention output write nothing there), while the class token is a large vector along channel 0. So along
    ``u = e0 − e1`` the normalised patch tokens are exactly 0 and the class token is not. fc1 rows: kept =
    base + 0.45·u, pruned = base − 20·u. Fitting every token alike, least squares hands the pruned neuron's output
    to its duplicate (right for 16 patch tokens, wrong for the one class token); the class token's output moves.
    """
    model.patch_embed.proj.weight[[0, 1]] = 0
    model.patch_embed.proj.bias[[0, 1]] = 0
    model.pos_embed[..., [0, 1]] = 0
    model.cls_token.zero_()
    model.cls_token[..., 0] = 20.0
    block = model.blocks[0]
    block.attn.proj.weight[[0, 1]] = 0
    block.attn.proj.bias[[0, 1]] = 0
    u = torch.zeros(model.embed_dim)
    u[0], u[1] = 1.0, -1.0
    fc1, fc2 = block.mlp.fc1, block.mlp.fc2
    pruned = fc1.out_features - 1
    base = fc1.weight[keep_unit] * 30.0  # patch activations of the pair comparable to the class token's
    base[[0, 1]] = 0
    fc1.weight[keep_unit] = base + 0.45 * u
    fc1.weight[pruned] = base - 20.0 * u
    fc1.bias[pruned] = fc1.bias[keep_unit]
    fc2.weight[:, pruned] *= 10.0
    return model


def trap_widths(model: nn.Module) -> Widths:
    """Only block 0's MLP is pruned (half its neurons, the trap's pruned neuron among them)."""
    dense = get_adapter(model).widths()
    return Widths((dense.mlp[0] // 2, *dense.mlp[1:]), dense.heads)


@torch.no_grad()
def feature_error(model: nn.Module, widths: Widths, state: dict[str, Tensor], images: Tensor) -> float:
    """Squared distance of the sliced model's features (CLS after the norm) to the dense ones, relative."""
    want = get_adapter(model).features(images)
    got = get_adapter(build_model(copy.deepcopy(model), widths, state)).features(images)
    return float((got - want).pow(2).sum() / want.pow(2).sum())


def test_all_token_fit_moves_the_class_token_and_the_default_does_not() -> None:
    model = class_token_trap(make_small_model("dino"))
    widths = trap_widths(model)
    batches = list(image_batch(model, n=64, seed=3).split(16))
    unseen = image_batch(model, n=64, seed=9)  # images used by no fit and no guard
    plain = feature_error(model, widths, keep_prefix(model.state_dict(), get_adapter(model), widths), unseen)

    everything = correct_slice(copy.deepcopy(model), widths, batches, **PLAIN_FIT)
    (layer,) = everything.layers
    before, after = layer.readout_fit
    assert after > 10 * before  # the layer's class-token output moved away
    assert layer.rest_fit[1] < 0.1 * layer.rest_fit[0]  # while the patch tokens improved
    assert feature_error(model, widths, everything.state, unseen) > 10 * plain

    default = correct_slice(copy.deepcopy(model), widths, batches)
    assert default.tokens == "weighted" and default.reverted == []
    (layer,) = default.layers
    assert layer.readout_fit[1] < layer.readout_fit[0] and layer.readout_heldout[1] < layer.readout_heldout[0]
    assert feature_error(model, widths, default.state, unseen) < plain


def test_feature_guard_gives_back_the_plain_weights_of_a_harmful_layer() -> None:
    """All-token statistics with the feature guard alone: the layer's held-back error drops (so the layer guard keeps
    the fit), but the final features move away from the dense model's, so the layer gets its plain weights back.
    (By default the class-token guard keeps the layer plain first: the next test.)"""
    model = class_token_trap(make_small_model("dino"))
    widths = trap_widths(model)
    batches = list(image_batch(model, n=64, seed=3).split(16))
    result = correct_slice(copy.deepcopy(model), widths, batches, tokens="all", guard_readout=False)
    (layer,) = result.layers
    assert layer.damping is not None and layer.error_after < layer.error_before
    assert result.reverted == ["blocks.0.mlp.fc2.weight"]
    # The class-token shift is the same for every image: CKA cannot see it, the squared distance does.
    distance = result.feature_error["relative_mse"]
    assert distance["corrected"] > distance["plain"] == distance["final"]
    plain = keep_prefix(model.state_dict(), get_adapter(model), widths)
    assert all(torch.equal(result.state[name], tensor) for name, tensor in plain.items())
    assert "kept the plain weights of 1 of 1 layers (1 moved the final features" in result.notice
    assert result.to_json()["reverted"] == ["blocks.0.mlp.fc2.weight"] and result.to_json()["notice"]


@torch.no_grad()
def red_duplicate(model: nn.Module, keep_unit: int = 0) -> nn.Module:
    """Block 0's MLP gets a pruned neuron that equals the kept neuron ``keep_unit`` exactly on images without a red
    channel, and is silenced by red: residual channel 0 holds the mean red of each patch and nothing else
    (channel 1 is always 0), and the pruned neuron's fc1 row is the kept one's − 20·(e0 − e1)."""
    proj = model.patch_embed.proj
    proj.weight[:, 0] = 0  # red feeds channel 0 only
    proj.weight[[0, 1]] = 0
    proj.weight[0, 0] = 1.0 / proj.weight[0, 0].numel()
    proj.bias[[0, 1]] = 0
    model.pos_embed[..., [0, 1]] = 0
    model.cls_token[..., [0, 1]] = 0
    block = model.blocks[0]
    block.attn.proj.weight[[0, 1]] = 0
    block.attn.proj.bias[[0, 1]] = 0
    fc1, fc2 = block.mlp.fc1, block.mlp.fc2
    pruned = fc1.out_features - 1
    fc1.weight[keep_unit] *= 30.0
    fc1.weight[pruned] = fc1.weight[keep_unit]
    fc1.weight[pruned, 0] -= 20.0
    fc1.weight[pruned, 1] += 20.0
    fc1.bias[pruned] = fc1.bias[keep_unit]
    fc2.weight[:, pruned] *= 10.0
    return model


def test_guard_keeps_the_plain_weights_when_the_fit_is_harmful() -> None:
    """Every 4th image is held back: here only those have a red channel, so the fit merges the pruned neuron into
    its duplicate, which is exact on the fit images and harmful on the held-back ones: the plain weights stay."""
    model = red_duplicate(make_small_model("dino"))
    widths = trap_widths(model)
    images = image_batch(model, n=64, seed=3)
    fit = torch.arange(64) % 4 != 3
    images[fit, 0] = 0  # no red in the images the fit sees, plenty in the held-back ones
    images[~fit, 0] = images[~fit, 0].abs() + 1.0
    result = correct_slice(copy.deepcopy(model), widths, list(images.split(8)))
    assert result.heldout_images == 16 and result.images == 48
    (layer,) = result.layers
    assert layer.error_after == layer.error_before and layer.damping is None  # fit-error pair of the plain weights
    assert layer.rest_heldout[1] == layer.rest_heldout[0]
    plain = keep_prefix(model.state_dict(), get_adapter(model), widths)
    assert all(torch.equal(result.state[name], tensor) for name, tensor in plain.items())
    assert result.notice == (
        "correction kept the plain weights of 1 of 1 layers (1 did not lower their own error on held-back "
        "calibration images)"
    )
    assert result.to_json()["notice"] == result.notice

    unguarded = correct_slice(copy.deepcopy(model), widths, list(images.split(8)), guard=False)
    (layer,) = unguarded.layers
    assert layer.error_after < 0.1 * layer.error_before  # a good fit on the fit images ...
    assert layer.rest_heldout[1] > layer.rest_heldout[0]  # ... that is worse than nothing on the held-back ones


def test_class_token_guard_keeps_a_layer_whose_fit_moves_the_class_token() -> None:
    """The per-layer class-token guard (on by default; the stored-statistics correction's only guard beyond the
    layer's own error): all-token statistics lower the layer's held-back error, so the plain guard keeps the fit;
    the class-token guard sees that the class token's held-back error rose and keeps the plain weights."""
    model = class_token_trap(make_small_model("dino"))
    widths = trap_widths(model)
    batches = list(image_batch(model, n=64, seed=3).split(16))
    common = {"tokens": "all", "sequential": False, "guard_features": False}
    (fitted,) = correct_slice(copy.deepcopy(model), widths, batches, guard_readout=False, **common).layers
    assert fitted.damping is not None and fitted.readout_heldout[1] > fitted.readout_heldout[0]
    result = correct_slice(copy.deepcopy(model), widths, batches, **common)  # guard_readout: the default
    (layer,) = result.layers
    assert layer.damping is None and layer.error_after == layer.error_before
    plain = keep_prefix(model.state_dict(), get_adapter(model), widths)
    assert all(torch.equal(result.state[name], tensor) for name, tensor in plain.items())
    assert "kept the plain weights of 1 of 1 layers" in result.notice
