"""Structural adapters: one per model architecture, chosen by :func:`get_adapter`.

A new family is an addition: subclass :class:`~snapvit_cli.adapters.base.ModelAdapter`, append it to
:data:`ADAPTERS` and describe the family in :data:`snapvit_cli.models.families.FAMILIES`.
"""

from __future__ import annotations

from torch import nn

from snapvit_cli.adapters.base import HEADS, MLP, UNIT_KINDS, ModelAdapter, UnitTensor, Widths, unit_rows
from snapvit_cli.adapters.eva import EvaAdapter
from snapvit_cli.adapters.vit import ViTAdapter
from snapvit_cli.errors import UnsupportedModelError
from snapvit_cli.models.families import supported_summary

ADAPTERS: list[type[ModelAdapter]] = [ViTAdapter, EvaAdapter]

SUPPORTED_FAMILIES = supported_summary()


def get_adapter(model: nn.Module) -> ModelAdapter:
    """The adapter for ``model``'s family, or a clear error listing what is supported."""
    for adapter_cls in ADAPTERS:
        if adapter_cls.matches(model):
            try:
                return adapter_cls(model)
            except UnsupportedModelError as exc:
                raise UnsupportedModelError(f"{exc}. snapvit prunes: {SUPPORTED_FAMILIES}") from None
    name = type(model).__name__
    raise UnsupportedModelError(f"{name} is not a supported model; snapvit prunes: {SUPPORTED_FAMILIES}")


__all__ = [
    "ADAPTERS",
    "HEADS",
    "MLP",
    "SUPPORTED_FAMILIES",
    "UNIT_KINDS",
    "ModelAdapter",
    "UnitTensor",
    "Widths",
    "get_adapter",
    "unit_rows",
]
