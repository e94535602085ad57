"""Importance scoring methods (one score per MLP neuron and per attention head of every block).

:func:`score_model` is the single entry point; each method lives in its own module:

- ``snapvit`` (:mod:`.snapvit`): label-free gradient scores re-weighted by xNES, the paper's method;
- ``gradient`` (:mod:`.gradient`): the same gradient scores without re-weighting;
- ``magnitude`` (:mod:`.magnitude`): L2 norm of the unit's weights, data-free;
- ``random``, ``lamp``, ``snip`` (:mod:`.baselines`): the paper's baselines.
"""

from __future__ import annotations

import time
from typing import Any

from torch import nn

from snapvit_cli.adapters import get_adapter
from snapvit_cli.elastic.bundle import ScoreSet
from snapvit_cli.errors import SnapvitError
from snapvit_cli.scoring.settings import ScoreSettings

METHODS = ("snapvit", "gradient", "magnitude", "random", "snip", "lamp")
DATA_METHODS = frozenset({"snapvit", "gradient", "snip"})


def score_model(model: nn.Module, method: str = "magnitude", **settings: Any) -> ScoreSet:
    """Score every unit of ``model`` with ``method``; ``settings`` are the fields of :class:`ScoreSettings`.

    The data-driven methods (``snapvit``, ``gradient``, ``snip``) read calibration images from ``data`` (a
    ``--data`` string or an :class:`~snapvit_cli.data.ImageSet`; default: the built-in ``demo`` images). The model
    is left as it was: same device, mode, weights and ``requires_grad`` flags.
    """
    if method not in METHODS:
        raise SnapvitError(f"unknown scoring method '{method}'; choose one of: {', '.join(METHODS)}")
    config = ScoreSettings.from_kwargs(settings)
    adapter = get_adapter(model)
    start = time.perf_counter()
    scores = _run(method, model, adapter, config)
    scores.timings["total_s"] = time.perf_counter() - start
    return scores


def _run(method: str, model: nn.Module, adapter, settings: ScoreSettings) -> ScoreSet:
    if method == "magnitude":
        from snapvit_cli.scoring.magnitude import magnitude_scores

        return magnitude_scores(model, adapter)
    if method == "random":
        from snapvit_cli.scoring.baselines import random_scores

        return random_scores(adapter, settings)
    if method == "lamp":
        from snapvit_cli.scoring.baselines import lamp_scores

        return lamp_scores(adapter)
    if method == "snip":
        from snapvit_cli.scoring.baselines import snip_scores

        return snip_scores(model, adapter, settings)
    if method == "gradient":
        from snapvit_cli.scoring.gradient import gradient_scores

        return gradient_scores(model, adapter, settings)
    from snapvit_cli.scoring.snapvit import snapvit_scores

    return snapvit_scores(model, adapter, settings)


__all__ = ["DATA_METHODS", "METHODS", "ScoreSettings", "score_model"]
