"""`snapvit export`: ONNX and .pt2 files that run where neither snapvit nor timm is installed, at any batch size."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from snapvit_cli.api import load_bundle
from snapvit_cli.cli.app import app
from snapvit_cli.elastic.bundle import write_bundle
from snapvit_cli.errors import OutputExistsError
from snapvit_cli.export import ExportError, export_model, require_onnx
from snapvit_cli.scoring import score_model
from tests.conftest import make_small_model, small_model_source
from tests.isolated import run_without

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

# The families the issue names: plain ViT, distilled DeiT, DINOv2 with registers, DINOv3 (Eva, RoPE), SigLIP2 (MAP).
FAMILIES = ("augreg-classifier", "deit-distilled", "dinov2-registers", "dinov3", "siglip2")
BATCHES = (1, 7)
runner = CliRunner()


def small_bundle(directory, name):
    model = make_small_model(name)
    path = directory / f"{name}.safetensors"
    write_bundle(path, model, small_model_source(name, model), score_model(model, "magnitude"))
    return path


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Every family cut to half its FLOPs, written in both formats, with seeded inputs and PyTorch's outputs."""
    folder = tmp_path_factory.mktemp("export")
    cases = []
    for name in FAMILIES:
        model = load_bundle(small_bundle(folder, name)).slice(flops=0.5)
        size = tuple(model.patch_embed.img_size)
        for batch in BATCHES:
            x = torch.randn(batch, 3, *size, generator=torch.Generator().manual_seed(batch))
            np.save(folder / f"{name}-x{batch}.npy", x.numpy())
            with torch.no_grad():
                np.save(folder / f"{name}-ref{batch}.npy", model(x).numpy())
        for fmt in ("onnx", "pt2"):
            result = export_model(model, folder / f"{name}.{fmt}", fmt)
            assert result.max_abs_diff <= 1e-4 and result.checked_batches == [1, 7]
        cases.append(name)
    return folder, cases


def test_onnx_runs_in_onnxruntime_without_snapvit_torch_or_timm(exported):
    folder, names = exported
    code = f"""
    import numpy as np, onnxruntime as ort
    for name in {names!r}:
        session = ort.InferenceSession(f"{{name}}.onnx", providers=["CPUExecutionProvider"])
        assert session.get_inputs()[0].shape[0] == "batch", session.get_inputs()[0].shape
        for batch in {BATCHES!r}:
            x = np.load(f"{{name}}-x{{batch}}.npy")
            np.save(f"{{name}}-onnx{{batch}}.npy", session.run(None, {{"pixel_values": x}})[0])
    """
    run_without({"snapvit_cli", "timm", "torch"}, code, folder)
    for name in names:
        for batch in BATCHES:
            got, ref = np.load(folder / f"{name}-onnx{batch}.npy"), np.load(folder / f"{name}-ref{batch}.npy")
            assert got.shape == ref.shape and got.shape[0] == batch
            assert np.abs(got - ref).max() <= 1e-4, name


def test_pt2_loads_with_torch_export_without_snapvit_or_timm(exported):
    folder, names = exported
    code = f"""
    import numpy as np, torch
    for name in {names!r}:
        program = torch.export.load(f"{{name}}.pt2").module()
        for batch in {BATCHES!r}:
            with torch.no_grad():
                y = program(torch.from_numpy(np.load(f"{{name}}-x{{batch}}.npy")))
            np.save(f"{{name}}-pt2{{batch}}.npy", y.numpy())
    """
    run_without({"snapvit_cli", "timm"}, code, folder)
    for name in names:
        for batch in BATCHES:
            got, ref = np.load(folder / f"{name}-pt2{batch}.npy"), np.load(folder / f"{name}-ref{batch}.npy")
            assert got.shape == ref.shape
            assert np.abs(got - ref).max() <= 1e-4, name


def test_a_file_outside_the_tolerance_is_not_written(exported, tmp_path):
    folder, _ = exported
    model = load_bundle(folder / "augreg-classifier.safetensors").slice(flops=0.5)
    with pytest.raises(ExportError, match="nothing was written"):
        export_model(model, tmp_path / "m.pt2", "pt2", tolerance=-1.0)  # no file can pass
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(OutputExistsError, match=r"augreg-classifier\.pt2 already exists"):
        export_model(model, folder / "augreg-classifier.pt2", "pt2")


def test_missing_export_extra_is_one_line(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # makes `import onnxruntime` fail
    with pytest.raises(ExportError, match=r"needs onnxruntime: pip install onnx onnxruntime onnxscript"):
        require_onnx()
    bundle = small_bundle(tmp_path, "dino")  # a real input: a missing one is refused first, before torch
    result = runner.invoke(app, ["export", str(bundle), "--format", "onnx", "-o", str(tmp_path / "m.onnx")])
    assert result.exit_code == 1 and "pip install onnx onnxruntime onnxscript" in result.stderr
    assert "Traceback" not in result.output


def test_cli_exports_several_budgets_from_a_bundle(tmp_path):
    bundle = small_bundle(tmp_path, "dino")
    out = tmp_path / "files"
    result = runner.invoke(
        app, ["export", str(bundle), "--flops", "0.5,0.75", "--format", "pt2", "-o", str(out), "--json"]
    )
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout)
    records = printed["results"]
    assert printed["written"] == [r["path"] for r in records]
    assert [r["path"] for r in records] == [str(out / "flops0.5.pt2"), str(out / "flops0.75.pt2")]
    assert [r["budget"]["target"] for r in records] == [0.5, 0.75]
    sizes = [(out / name).stat().st_size for name in ("flops0.5.pt2", "flops0.75.pt2")]
    assert sizes[0] < sizes[1]  # the smaller budget holds fewer weights
    # a sliced folder exports as it is; a budget on it is refused in one line
    sliced = tmp_path / "half"
    assert runner.invoke(app, ["slice", str(bundle), "--flops", "0.5", "-o", str(sliced)]).exit_code == 0
    refused = runner.invoke(app, ["export", str(sliced), "--flops", "0.5", "--format", "pt2"])
    assert refused.exit_code != 0 and "need a bundle" in refused.output
    single = runner.invoke(app, ["export", str(sliced), "--format", "pt2", "-o", str(tmp_path / "h.pt2"), "--json"])
    assert single.exit_code == 0, single.output
    assert (tmp_path / "h.pt2").read_bytes() == (out / "flops0.5.pt2").read_bytes()  # deterministic bytes


def test_exported_files_carry_their_metadata_and_name_their_output(tmp_path):
    """Whoever holds only the file can read its preprocessing, budget, widths, provenance and bundle hash, and the
    output is named for what it is (issue 24); no stack trace names a file of the exporting machine."""
    from snapvit_cli.elastic.sliced import read_config
    from snapvit_cli.export_metadata import read_export_metadata

    for name, output in (("dino", "features"), ("augreg-classifier", "logits")):
        bundle = small_bundle(tmp_path, name)
        sliced = tmp_path / f"{name}-half"
        assert runner.invoke(app, ["slice", str(bundle), "--flops", "0.5", "-o", str(sliced)]).exit_code == 0
        config = read_config(sliced)
        for fmt in ("onnx", "pt2"):
            target = tmp_path / f"{name}.{fmt}"
            result = runner.invoke(app, ["export", str(bundle), "--flops", "0.5", "--format", fmt, "-o", str(target)])
            assert result.exit_code == 0, result.output
            record = read_export_metadata(target)
            assert record["output"]["name"] == output and record["input"]["name"] == "pixel_values"
            assert record["preprocessing"]["mean"] == config.pretrained_cfg["mean"]
            assert record["preprocessing"]["std"] == config.pretrained_cfg["std"]
            assert record["preprocessing"]["interpolation"] == config.pretrained_cfg["interpolation"]
            assert record["preprocessing"]["input_size"] == config.pretrained_cfg["input_size"]
            assert record["budget"] == config.budget.to_json() and record["widths"] == config.widths
            assert record["source"] == config.base_model and record["bundle_sha256"] == config.bundle_sha256
            data = target.read_bytes()
            assert b"stack_trace" not in data
            assert b"site-packages" not in data and str(tmp_path).encode() not in data
        # read by onnxruntime and torch.export alone, as a user of the bare file would
        import onnxruntime as ort

        session = ort.InferenceSession(str(tmp_path / f"{name}.onnx"), providers=["CPUExecutionProvider"])
        assert [o.name for o in session.get_outputs()] == [output]
        assert json.loads(session.get_modelmeta().custom_metadata_map["snapvit"]) == read_export_metadata(
            tmp_path / f"{name}.onnx"
        )
        extra = {"snapvit.json": ""}
        torch.export.load(str(tmp_path / f"{name}.pt2"), extra_files=extra)
        assert json.loads(extra["snapvit.json"]) == read_export_metadata(tmp_path / f"{name}.pt2")


def test_reading_metadata_of_a_file_without_it_is_one_line(tmp_path):
    from snapvit_cli.errors import BundleError
    from snapvit_cli.export_metadata import read_export_metadata

    (tmp_path / "x.onnx").write_bytes(b"\x00not onnx")
    for path in (tmp_path / "x.onnx", tmp_path / "missing.pt2"):
        with pytest.raises(BundleError):
            read_export_metadata(path)
