"""Structural adapters: one per model family, chosen by :func:`get_adapter`.

A new family is an addition: subclass :class:`~snapvit_cli.adapters.base.ModelAdapter` and append it to
:data:`ADAPTERS`.
"""

from __future__ import annotations

from torch import nn

from snapvit_cli.adapters.base import HEADS, MLP, UNIT_KINDS, ModelAdapter, UnitTensor, Widths
from snapvit_cli.adapters.vit import ViTAdapter
from snapvit_cli.errors import UnsupportedModelError

ADAPTERS: list[type[ModelAdapter]] = [ViTAdapter]

SUPPORTED_FAMILIES = (
    "timm VisionTransformer with standard blocks: DINO, DINOv2 (fc1/fc2 MLP, with or without registers), "
    "DeiT (incl. distilled), DeiT-III, AugReg"
)


def get_adapter(model: nn.Module) -> ModelAdapter:
    """The adapter for ``model``'s family, or a clear error listing what is supported."""
    for adapter_cls in ADAPTERS:
        if adapter_cls.matches(model):
            return adapter_cls(model)
    raise UnsupportedModelError(f"{type(model).__name__} is not a supported model; snapvit prunes {SUPPORTED_FAMILIES}")


__all__ = ["ADAPTERS", "HEADS", "MLP", "UNIT_KINDS", "ModelAdapter", "UnitTensor", "Widths", "get_adapter"]
