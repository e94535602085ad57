"""``score_model``: the one entry point that runs any registered scoring method on a model."""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

from torch import nn

from snapvit_cli.adapters import get_adapter
from snapvit_cli.scoreset import ScoreSet
from snapvit_cli.scoring.registry import REGISTRY
from snapvit_cli.scoring.settings import ScoreSettings


def score_model(
    model: nn.Module, method: str = "snapvit", settings: ScoreSettings | None = None, **kwargs: Any
) -> ScoreSet:
    """Score every unit of ``model`` with ``method`` (default ``snapvit``, as ``snapvit score``).

    ``settings`` is a :class:`ScoreSettings`, or ``kwargs`` are its fields (presets and ``ga_pairs`` strings parsed
    as :meth:`ScoreSettings.from_kwargs` does); with both, ``kwargs`` replace those fields of ``settings``. The
    data-driven methods (``snapvit``, ``gradient``, ``snip``) read calibration images from ``data`` (a ``--data``
    string or an :class:`~snapvit_cli.data.ImageSet`), which they require: a model is never scored on images it was
    not given. The model is left as it was: same device, mode, weights and ``requires_grad`` flags.
    """
    if settings is None:
        config = ScoreSettings.from_kwargs(kwargs)
    else:
        config = replace(settings, **kwargs) if kwargs else settings
    config.check_method(method)
    adapter = get_adapter(model)
    start = time.perf_counter()
    scores = REGISTRY[method].load()(model, adapter, config)
    scores.timings["total_s"] = time.perf_counter() - start
    return scores
