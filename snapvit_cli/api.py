"""The loaders and the evaluation of the public API; each takes a local path or ``hf-hub:OWNER/NAME[@REVISION]``."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from snapvit_cli.elastic.artifacts import require_kind, resolve_artifact
from snapvit_cli.elastic.bundle import ElasticBundle
from snapvit_cli.elastic.sliced import load_sliced
from snapvit_cli.evaluation.evaluate import evaluate_target
from snapvit_cli.evaluation.report import EvalReport
from snapvit_cli.evaluation.settings import EvalSettings
from snapvit_cli.slicing import Bundle


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


def load_bundle(source: str | os.PathLike, *, revision: str | None = None) -> Bundle:
    """An :class:`ElasticBundle` whose ``.slice(flops=...)`` switches budget at run time without reloading, and
    whose ``.save_slice(..., correction=...)`` writes corrected folders (:class:`snapvit_cli.slicing.Bundle`).

    ``source`` is a bundle file or ``hf-hub:OWNER/NAME[@REVISION]`` of a bundle pushed by ``snapvit push``.
    """
    artifact = require_kind(resolve_artifact(source, revision=revision), "bundle")
    return Bundle.open(artifact.path)


def evaluate(
    target: str | os.PathLike,
    data: str,
    settings: EvalSettings | None = None,
    *,
    budgets: Sequence[float] | None = None,
    checkpoint: str | os.PathLike | None = None,
    revision: str | None = None,
) -> EvalReport:
    """What ``snapvit eval`` measures (``.to_json()`` is what ``--json`` prints): kNN (and with ``settings.probe``
    linear-probe) accuracy, GMACs, params and measured speed of ``target`` — a bundle (one row per FLOPs fraction
    in ``budgets``), a sliced model or a model name — on ``data`` (an image folder, ``.npz``, ``hf:NAME`` or
    ``demo`` with train and test splits)."""
    return evaluate_target(
        str(target), data, settings or EvalSettings(), budgets=budgets, checkpoint=checkpoint, revision=revision
    )


def import_scores(
    scores_file: str | os.PathLike,
    output: str | os.PathLike,
    model: str | None = None,
    *,
    checkpoint: str | os.PathLike | None = None,
    revision: str | None = None,
    pretrained: bool | None = None,
    force: bool = False,
) -> Path:
    """What ``snapvit import-scores`` does: a published SnapViT score file (read with a restricted unpickler) and
    the model it names (or ``model``) written as an elastic bundle at ``output``; returns its path."""
    from snapvit_cli.reference.importing import import_reference_scores, write_imported_bundle

    imported = import_reference_scores(
        scores_file, model, checkpoint=checkpoint, revision=revision, pretrained=pretrained
    )
    return write_imported_bundle(imported, output, force=force)

