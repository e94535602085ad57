"""Importance scoring methods (one score per MLP neuron and per attention head of every block).

:func:`score_model` is the single entry point; each method lives in its own module.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from snapvit_cli.adapters import get_adapter
from snapvit_cli.bundle import ScoreSet
from snapvit_cli.errors import SnapvitError

METHODS = ("magnitude",)


def score_model(model: nn.Module, method: str = "magnitude", **settings: Any) -> ScoreSet:
    """Score every unit of ``model`` with ``method``."""
    adapter = get_adapter(model)
    if method == "magnitude":
        from snapvit_cli.scoring.magnitude import magnitude_scores

        return magnitude_scores(model, adapter)
    raise SnapvitError(f"unknown scoring method '{method}'; choose one of: {', '.join(METHODS)}")
