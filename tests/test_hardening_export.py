"""The export parity gate refuses a model whose outputs (or whose differences from the file) are not finite: NaN
compares false with everything, so a gate that takes ``max(worst, diff)`` would report 0 and write the file."""

from __future__ import annotations

import pytest
import torch

from snapvit_cli.export import ExportError, export_model
from tests.conftest import make_small_model

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")


def _overflowing_model() -> torch.nn.Module:
    """Finite weights (3e38 fits float32) whose outputs overflow to infinity, and whose differences are NaN."""
    model = make_small_model("augreg-classifier")
    with torch.no_grad():
        model.norm.weight.fill_(3e38)
        model.head.weight.fill_(3e38)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    return model


@pytest.mark.parametrize("fmt", ["onnx", "pt2"])
def test_export_refuses_non_finite_outputs_and_writes_nothing(tmp_path, fmt):
    target = tmp_path / f"model.{fmt}"
    with pytest.raises(ExportError, match="not finite") as info:
        export_model(_overflowing_model(), target, fmt)
    assert "\n" not in str(info.value) and "nothing was written" in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_a_file_that_outputs_nan_fails_the_parity_gate(tmp_path, monkeypatch):
    """A finite model whose written file gives NaN (as a file from a broken exporter would): max(0.0, nan) is 0.0,
    so a gate built on Python's max would pass it."""
    import snapvit_cli.export as export

    real = export._pt2_runner

    def nan_runner(path):
        run = real(path)
        return lambda x: torch.full_like(run(x), float("nan"))

    monkeypatch.setattr(export, "_pt2_runner", nan_runner)
    with pytest.raises(ExportError, match="exported file's output is not finite.*nothing was written"):
        export_model(make_small_model("dino"), tmp_path / "model.pt2", "pt2")
    assert list(tmp_path.iterdir()) == []
