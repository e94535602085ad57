"""The loaders of the public API; both take a local path or a Hub id ``hf-hub:OWNER/NAME[@REVISION]``."""

from __future__ import annotations

import os

import torch
from torch import nn

from snapvit_cli.elastic.artifacts import require_kind, resolve_artifact
from snapvit_cli.elastic.bundle import ElasticBundle
from snapvit_cli.elastic.sliced import load_sliced


def load(source: str | os.PathLike, *, revision: str | None = None, device: str | torch.device = "cpu") -> nn.Module:
    """A ready ``nn.Module`` (eval mode) from a sliced model; an elastic bundle gives its dense model.

    ``source`` is a sliced-model folder (or its ``config.json`` / ``model.safetensors``), a bundle file, or
    ``hf-hub:OWNER/NAME[@REVISION]`` of a repository pushed by ``snapvit push`` (downloaded through the
    ``huggingface_hub`` cache; ``revision`` overrides ``@REVISION``).
    """
    artifact = resolve_artifact(source, revision=revision)
    if artifact.kind == "sliced":
        return load_sliced(artifact.path, device=device)
    return ElasticBundle.open(artifact.path).dense_model().to(device)


def load_bundle(source: str | os.PathLike, *, revision: str | None = None) -> ElasticBundle:
    """An :class:`ElasticBundle` whose ``.slice(flops=...)`` switches budget at run time without reloading.

    ``source`` is a bundle file or ``hf-hub:OWNER/NAME[@REVISION]`` of a bundle pushed by ``snapvit push``.
    """
    artifact = require_kind(resolve_artifact(source, revision=revision), "bundle")
    return ElasticBundle.open(artifact.path)
