"""The two loaders of the public API; both accept local paths (``hf-hub:`` ids arrive with the Hub module)."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from snapvit_cli.bundle import ElasticBundle
from snapvit_cli.errors import BundleError
from snapvit_cli.sliced import load_sliced


def load(path: str | os.PathLike, *, device: str | torch.device = "cpu") -> nn.Module:
    """A ready ``nn.Module`` (eval mode) from a sliced-model folder; a bundle file gives its dense model."""
    path = Path(path)
    if path.is_dir():
        return load_sliced(path, device=device)
    if path.suffix == ".safetensors" and path.is_file():
        return ElasticBundle.open(path).dense_model().to(device)
    raise BundleError(f"{path} is neither a sliced-model folder nor a bundle file")


def load_bundle(path: str | os.PathLike) -> ElasticBundle:
    """An :class:`ElasticBundle` whose ``.slice(flops=...)`` switches budget at run time without reloading."""
    return ElasticBundle.open(path)
