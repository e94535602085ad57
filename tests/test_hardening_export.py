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
