"""The two loaders of the public API; both take a local path or a Hub id ``hf-hub:OWNER/NAME[@REVISION]``."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from snapvit_cli.elastic.bundle import ElasticBundle
from snapvit_cli.elastic.sliced import load_sliced
from snapvit_cli.errors import BundleError
from snapvit_cli.hub.client import download_bundle, is_hf_id, resolve_hub_artifact


def load(source: str | os.PathLike, *, revision: str | None = None, device: str | torch.device = "cpu") -> nn.Module:
    """A ready ``nn.Module`` (eval mode) from a sliced model; an elastic bundle gives its dense model.

    ``source`` is a sliced-model folder, a bundle file, or ``hf-hub:OWNER/NAME[@REVISION]`` of a repository
    pushed by ``snapvit push`` (downloaded through the ``huggingface_hub`` cache; ``revision`` overrides
    ``@REVISION``).
    """
    if is_hf_id(source):
        kind, path = resolve_hub_artifact(source, revision=revision)
        return load_sliced(path, device=device) if kind == "sliced" else _dense(path, device)
    _local_only(revision)
    path = Path(source)
    if path.is_dir():
        return load_sliced(path, device=device)
    if path.suffix == ".safetensors" and path.is_file():
        return _dense(path, device)
    raise BundleError(f"{path} is neither a sliced-model folder nor a bundle file")


def load_bundle(source: str | os.PathLike, *, revision: str | None = None) -> ElasticBundle:
    """An :class:`ElasticBundle` whose ``.slice(flops=...)`` switches budget at run time without reloading.

    ``source`` is a bundle file or ``hf-hub:OWNER/NAME[@REVISION]`` of a bundle pushed by ``snapvit push``.
    """
    if is_hf_id(source):
        return ElasticBundle.open(download_bundle(source, revision=revision))
    _local_only(revision)
    return ElasticBundle.open(source)


def _dense(path: Path, device: str | torch.device) -> nn.Module:
    return ElasticBundle.open(path).dense_model().to(device)


def _local_only(revision: str | None) -> None:
    if revision is not None:
        raise ValueError("revision= selects a Hub revision and only applies to hf-hub: ids")
