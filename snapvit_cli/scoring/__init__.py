"""Importance scoring methods (one score per MLP neuron and per attention head of every block).

:func:`score_model` (in :mod:`.run`) is the single entry point; :mod:`.registry` lists the methods, each in its own
module:

- ``snapvit`` (:mod:`.snapvit`): label-free gradient scores re-weighted by xNES, the paper's method;
- ``gradient`` (:mod:`.gradient`): the same gradient scores without re-weighting;
- ``magnitude`` (:mod:`.magnitude`): L2 norm of the unit's weights, data-free;
- ``random``, ``lamp``, ``snip`` (:mod:`.baselines`): the paper's baselines.

This package's root stays free of torch (the CLI reads the registry and the settings for ``--help``).
"""

from __future__ import annotations

from typing import Any

from snapvit_cli.scoring.registry import DATA_METHODS, METHODS, REGISTRY
from snapvit_cli.scoring.settings import ScoreSettings, default_data

__all__ = ["DATA_METHODS", "METHODS", "REGISTRY", "ScoreSet", "ScoreSettings", "default_data", "score_model"]


def __getattr__(name: str) -> Any:
    if name == "score_model":
        from snapvit_cli.scoring.run import score_model

        return score_model
    if name == "ScoreSet":
        from snapvit_cli.scoreset import ScoreSet

        return ScoreSet
    raise AttributeError(f"module 'snapvit_cli.scoring' has no attribute {name!r}")
