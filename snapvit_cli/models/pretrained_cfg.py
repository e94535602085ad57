"""The ``pretrained_cfg`` a model built by snapvit carries: what timm's data helpers need, and nothing it lacks.

``timm.create_model(arch, pretrained=False)`` attaches the default tag's config of ``arch``: the download URL and
Hub id of weights the model does not hold, their licence, and their classifier width (1000), which is wrong for a
model with another head. snapvit replaces it with the preprocessing recorded from the source model and the model's
real ``num_classes``, so ``timm.data.resolve_data_config(model=model)`` gives what the model needs and nothing
points at weights it was not built from.
"""

from __future__ import annotations

from typing import Any

from torch import nn

# Describe the architecture, not the weights: kept from timm's default config.
_STRUCTURAL = ("architecture", "first_conv", "classifier", "fixed_input_size")
# Preprocessing as recorded from the source model (bundle metadata / config.json).
_PREPROCESSING = ("input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode")


def honest_pretrained_cfg(
    model: nn.Module, preprocessing: dict[str, Any], license: str | None = None
) -> dict[str, Any]:
    """``model``'s new ``pretrained_cfg``: structural keys of timm's default, the recorded preprocessing, the real
    classifier width, and ``license`` only when the provenance record knows it (Hub weights); no ``url``,
    ``hf_hub_id``, ``file``, ``tag`` or label names of weights the model does not hold."""
    default = getattr(model, "pretrained_cfg", None) or {}
    cfg = {key: default[key] for key in _STRUCTURAL if default.get(key) is not None}
    for key in _PREPROCESSING:
        value = preprocessing.get(key)
        if value is not None:
            cfg[key] = tuple(value) if isinstance(value, list) else value
    cfg["num_classes"] = int(getattr(model, "num_classes", 0))
    if license:
        cfg["license"] = license
    return cfg
