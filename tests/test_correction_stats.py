"""Correction statistics stored in the bundle (``score --correction-stats``) and the image-free ``slice --correct``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

import snapvit_cli.correction.solver as solver
from snapvit_cli.cli.app import app
from snapvit_cli.correction.apply import correct_bundle_slice
from snapvit_cli.correction.statistics import collect_correction_statistics, stored_statistics
from snapvit_cli.correction.stored import correct_from_bundle
from snapvit_cli.data import load_images
from snapvit_cli.elastic.bundle import load_bundle, write_bundle
from snapvit_cli.elastic.records import STATS_STORAGE, STATS_STORAGE_FLOAT64
from snapvit_cli.elastic.stats_layout import STATS_PREFIX, storage_dtype, tensor_name
from snapvit_cli.errors import BundleError, SnapvitError
from snapvit_cli.scoring import score_model
from tests.conftest import SMALL_CONFIGS, assert_one_line_error, make_small_model, small_model_source

CALIBRATION = {"samples": 24, "seed": 5}


def bundle_with_stats(name: str, path: Path, stats: bool = True, storage: str = STATS_STORAGE) -> tuple[Path, object]:
    """A magnitude-scored bundle of a small config (its units permuted), with or without statistics (in the layout
    ``storage``), and the calibration images they were collected on."""
    model = make_small_model(name)
    source = small_model_source(name, model)
    images = load_images("demo", "train", **CALIBRATION)
    collected = None
    if stats:
        collected = collect_correction_statistics(model, images, source.pretrained_cfg, batch_size=7, storage=storage)
    write_bundle(path, model, source, score_model(model, "magnitude"), correction_stats=collected)
    return path, images


# stored layout -> largest relative weight difference from the correction on the images: float64 values are the
# image-driven solve's own; float32 ones are rounded (about 6e-8 relative), which the solve amplifies by its condition
@pytest.mark.parametrize(
    "storage, tolerance", [(STATS_STORAGE_FLOAT64, 1e-5), (STATS_STORAGE, 2e-4)], ids=["float64", "float32"]
)
@pytest.mark.parametrize("name", sorted(SMALL_CONFIGS))
def test_stored_statistics_correction_equals_the_dense_inputs_correction_on_the_same_images(
    name, storage, tolerance, tmp_path
):
    """Layer for layer the same solve: the weights agree within ``tolerance`` relative, and so do the choices
    (damping per layer, guards) and the errors recorded, for the default (auto damping, class-token guard) and a
    fixed damping; in both stored layouts (float32, written now; float64, in bundles written before)."""
    path, images = bundle_with_stats(name, tmp_path / "b.safetensors", storage=storage)
    bundle = load_bundle(path)
    plan = bundle.plan(flops=0.5)
    for damping, readout in ((None, True), (solver.Damping("mean", 0.01), False)):
        from_images = correct_bundle_slice(
            bundle,
            plan,
            images,
            batch_size=7,
            damping=damping,
            sequential=False,
            guard_features=False,
            guard_readout=readout,
        )
        stored = correct_from_bundle(bundle, plan, damping=damping, guard_readout=readout)
        assert from_images.state.keys() == stored.state.keys()
        changed = 0
        for key, expected in from_images.state.items():
            got = stored.state[key]
            scale = expected.abs().max().clamp_min(1e-12)
            assert float((got - expected).abs().max() / scale) < tolerance, key
            changed += not torch.equal(expected, bundle.state_dict(plan.widths)[key])
        assert changed >= len([x for x in stored.layers if x.damping is not None]) > 0  # it did correct layers
        assert [(x.tensor, x.damping) for x in stored.layers] == [(x.tensor, x.damping) for x in from_images.layers]
        for a, b in zip(stored.layers, from_images.layers, strict=True):
            assert a.error_after == pytest.approx(b.error_after, rel=1e-4, abs=1e-9)
            assert a.readout_heldout == pytest.approx(b.readout_heldout, rel=1e-4, abs=1e-9)
        assert (stored.images, stored.heldout_images) == (from_images.images, from_images.heldout_images) == (18, 6)


def test_stored_statistics_are_what_was_collected_with_the_units_permuted(tmp_path):
    model = make_small_model("dino")
    source = small_model_source("dino", model)
    collected = collect_correction_statistics(model, "demo", source.pretrained_cfg, **CALIBRATION)
    scores = score_model(model, "random", seed=1)
    bundle = load_bundle(write_bundle(tmp_path / "b.safetensors", model, source, scores, correction_stats=collected))
    order = torch.argsort(scores.mlp[1], descending=True, stable=True)  # block 1's permutation of its neurons
    fit, held = stored_statistics(bundle).layer("blocks.1.mlp.fc2.weight")
    original_fit, original_held = collected.layer("blocks.1.mlp.fc2.weight")
    for mine, theirs in ((fit, original_fit), (held, original_held)):
        for part in ("readout", "rest"):
            expected = getattr(theirs, part).gram[order][:, order]
            torch.testing.assert_close(getattr(mine, part).gram, expected, rtol=1e-12, atol=0)
            assert getattr(mine, part).count == getattr(theirs, part).count
    assert (fit.readout.count, held.readout.count) == (18, 6)
    assert fit.rest.count == 18 * 16  # 16 patch tokens of a 32 px image with 8 px patches


def test_slice_correct_without_data_reads_no_images(tmp_path, monkeypatch):
    path, _ = bundle_with_stats("dino", tmp_path / "b.safetensors")

    def touched(*_args, **_kwargs):
        raise AssertionError("the image-free correction touched the data source")

    import snapvit_cli.correction.apply as apply
    import snapvit_cli.data as data

    for module, name in ((data, "load_images"), (data, "make_loader"), (apply, "load_images"), (apply, "make_loader")):
        monkeypatch.setattr(module, name, touched, raising=False)
    out = tmp_path / "sliced"
    result = CliRunner().invoke(app, ["slice", str(path), "--flops", "0.6,0.5", "--correct", "-o", str(out), "--json"])
    assert result.exit_code == 0, result.output
    reports = json.loads(result.stdout)["results"]
    for report, folder in zip(reports, ("flops0.6", "flops0.5"), strict=True):
        record = json.loads((out / folder / "config.json").read_text())["correction"]
        assert record["statistics"] == "bundle" and record["inputs"] == "dense" and record["feature_error"] is None
        assert record["data"]["source"] == "demo" and record["images"] == 18 and record["layers"]
        assert report["correction"]["layers"] == record["layers"]
    assert "on the bundle's statistics of 18 images (+6 held back)" in result.stderr


def test_slice_correct_without_data_on_a_bundle_without_statistics_is_one_line(tmp_path):
    path, _ = bundle_with_stats("dino", tmp_path / "b.safetensors", stats=False)
    result = CliRunner().invoke(app, ["slice", str(path), "--flops", "0.5", "--correct", "-o", str(tmp_path / "o")])
    assert_one_line_error(result, "holds no correction statistics: give calibration images with --correct --data")
    assert not (tmp_path / "o").exists()
    with pytest.raises(SnapvitError, match="holds no correction statistics"):
        correct_from_bundle(load_bundle(path), load_bundle(path).plan(flops=0.5))


def test_data_without_correct_is_refused(tmp_path):
    path, _ = bundle_with_stats("dino", tmp_path / "b.safetensors", stats=False)
    result = CliRunner().invoke(app, ["slice", str(path), "--flops", "0.5", "--data", "demo"])
    assert result.exit_code == 2 and "--data is for --correct" in result.output


def test_stored_guard_keeps_plain_weights_when_the_correction_is_harmful(tmp_path, monkeypatch):
    path, _ = bundle_with_stats("dino", tmp_path / "b.safetensors")
    monkeypatch.setattr(solver, "_kept_delta", lambda h_kk, cross, lam: 1e3 * cross.T)
    bundle = load_bundle(path)
    plan = bundle.plan(flops=0.5)
    result = correct_from_bundle(bundle, plan)
    plain = bundle.state_dict(plan.widths)
    assert result.layers and all(layer.damping is None for layer in result.layers)
    assert all(torch.equal(result.state[k], plain[k]) for k in plain)
    assert result.notice.startswith(f"correction kept the plain weights of {len(result.layers)} of")


def test_score_correction_stats_cli_is_deterministic_and_reports_its_size(tmp_path):
    args = ["score", "--model", "demo", "--method", "magnitude", "--samples", "12", "--correction-stats", "--json"]
    first = CliRunner().invoke(app, [*args, "-o", str(tmp_path / "a.safetensors")])
    second = CliRunner().invoke(app, [*args, "-o", str(tmp_path / "b.safetensors")])
    assert first.exit_code == 0 and second.exit_code == 0, first.output + second.output
    assert (tmp_path / "a.safetensors").read_bytes() == (tmp_path / "b.safetensors").read_bytes()
    added = json.loads(first.stdout)["results"][0]["correction_stats"]
    plain = CliRunner().invoke(app, ["score", "--model", "demo", "--method", "magnitude", "-o", str(tmp_path / "p")])
    assert plain.exit_code == 0, plain.output
    growth = (tmp_path / "a.safetensors").stat().st_size - (tmp_path / "p").stat().st_size
    assert added["bytes"] <= growth < added["bytes"] + 64 * 1024  # the tensors plus their header entries
    assert (added["images"], added["heldout_images"]) == (9, 3)


# -- a stranger's bundle -----------------------------------------------------------------------------------------


def _rewrite(src: Path, dst: Path, meta=None, tensors=None) -> Path:
    state = load_file(src)
    with safe_open(str(src), "pt") as f:
        metadata = json.loads(f.metadata()["snapvit"])
    if meta is not None:
        meta(metadata)
    if tensors is not None:
        tensors(state)
    save_file(state, str(dst), metadata={"format": "pt", "snapvit": json.dumps(metadata)})
    return dst


FC2_FIT = tensor_name("blocks.0.mlp.fc2.weight", "fit", "readout")


@pytest.fixture(scope="module")
def stats_bundle(tmp_path_factory) -> Path:
    return bundle_with_stats("dino", tmp_path_factory.mktemp("stats") / "b.safetensors")[0]


@pytest.mark.parametrize(
    ("case", "meta", "tensors", "message"),
    [
        (
            "tensor too long",
            None,
            lambda s: s.update({FC2_FIT: torch.zeros(s[FC2_FIT].numel() + 1).double()}),
            "has shape",
        ),
        ("tensor missing", None, lambda s: s.pop(FC2_FIT), "missing"),
        ("record missing", lambda m: m.pop("correction_stats"), None, "does not list"),
        ("unknown layout", lambda m: m["correction_stats"].update(storage="bf16 packed"), None, "storage"),
        ("absurd row count", lambda m: m["correction_stats"].update(images=2**40), None, "images"),
        ("unknown key", lambda m: m["correction_stats"].update(shell="rm -rf /"), None, "unknown key shell"),
    ],
)
def test_hostile_statistics_are_refused_when_the_bundle_is_opened(stats_bundle, tmp_path, case, meta, tensors, message):
    crafted = _rewrite(stats_bundle, tmp_path / "crafted.safetensors", meta, tensors)
    with pytest.raises(BundleError, match=message):
        load_bundle(crafted)


@pytest.mark.parametrize(
    ("case", "value", "message"),
    [("NaN", float("nan"), "NaN or infinity"), ("negative variance", -1.0, "negative diagonal")],
)
def test_hostile_statistics_values_are_refused_before_anything_is_written(stats_bundle, tmp_path, case, value, message):
    def poison(state):
        state[FC2_FIT] = state[FC2_FIT].clone()
        state[FC2_FIT][0] = value  # the first diagonal entry of the packed upper triangle

    crafted = _rewrite(stats_bundle, tmp_path / "crafted.safetensors", tensors=poison)
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["slice", str(crafted), "--flops", "0.5", "--correct", "-o", str(out)])
    assert_one_line_error(result, message)
    assert not out.exists()


@pytest.mark.parametrize(
    ("layout", "dtype", "message"),
    [(STATS_STORAGE, torch.float64, "only as F32"), (STATS_STORAGE_FLOAT64, torch.float32, "only as F64")],
    ids=["float64-in-float32-layout", "float32-in-float64-layout"],
)
def test_statistics_of_another_dtype_than_their_layout_are_refused(stats_bundle, tmp_path, layout, dtype, message):
    """The record's layout names the dtype of every statistics tensor: one tensor of the other dtype is refused."""
    own = storage_dtype(layout)  # the dtype the layout names

    def relabelled(name: str, fc2_dtype: torch.dtype) -> Path:
        """The bundle with ``layout`` recorded, every statistics tensor in its dtype but FC2_FIT in ``fc2_dtype``."""

        def cast(state):
            for key in [k for k in state if k.startswith(STATS_PREFIX)]:
                state[key] = state[key].to(fc2_dtype if key == FC2_FIT else own)

        def record(meta):
            meta["correction_stats"]["storage"] = layout

        return _rewrite(stats_bundle, tmp_path / name, meta=record, tensors=cast)

    assert load_bundle(relabelled("ok.safetensors", own)).metadata.correction_stats.storage == layout
    crafted = relabelled("c.safetensors", dtype)
    with pytest.raises(BundleError, match=message):
        load_bundle(crafted)


def test_statistics_added_to_an_existing_bundle_equal_scoring_with_them(tmp_path):
    """``save_with_statistics`` on the bundle's own dense model gives the bundle that scoring with them writes (the
    same metadata and tensors; statistics equal up to the float rounding of the permuted model's forward pass)."""
    model = make_small_model("dino")
    source = small_model_source("dino", model)
    scores = score_model(model, "magnitude")
    images = load_images("demo", "train", **CALIBRATION)
    plain = load_bundle(write_bundle(tmp_path / "plain.safetensors", model, source, scores))
    later = collect_correction_statistics(plain.dense_model(), images, source.pretrained_cfg)
    added = plain.save_with_statistics(tmp_path / "added.safetensors", later)
    at_scoring = collect_correction_statistics(model, images, source.pretrained_cfg)
    direct = write_bundle(tmp_path / "direct.safetensors", model, source, scores, correction_stats=at_scoring)
    a, b = load_bundle(added), load_bundle(direct)
    assert a.metadata == b.metadata
    for name in ("blocks.0.mlp.fc2.weight", "blocks.2.attn.proj.weight"):
        pairs = zip(stored_statistics(a).layer(name), stored_statistics(b).layer(name), strict=True)
        for mine, theirs in pairs:
            scale = float(theirs.rest.gram.abs().max())
            torch.testing.assert_close(mine.rest.gram, theirs.rest.gram, rtol=1e-5, atol=1e-6 * scale)
    with pytest.raises(SnapvitError, match="exists"):
        plain.save_with_statistics(added, later)


def test_score_refuses_too_few_images_for_statistics_before_scoring(tmp_path):
    args = ["score", "--model", "demo", "--method", "magnitude", "--samples", "7", "--correction-stats"]
    result = CliRunner().invoke(app, [*args, "-o", str(tmp_path / "b.safetensors")])
    assert_one_line_error(result, "--correction-stats holds every 4th scoring image back and needs at least 8")
    assert not (tmp_path / "b.safetensors").exists()
