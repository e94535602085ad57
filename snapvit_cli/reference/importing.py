"""Turn a score file published with the SnapViT reference code into an elastic bundle.

The published scores are the reference's final (xNES-scaled) importance per MLP neuron and head, in the original unit
order, so they slot into a bundle unchanged; slicing it then applies the §4 selection rule to exactly the values
the paper ranked. Nothing is re-scored: the weights come from the named model (or ``--checkpoint``), the scores and
min-keep ratios from the file, and the file's name, sha256 and metadata are recorded as the bundle's scoring
settings.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from snapvit_cli.adapters import HEADS, MLP, get_adapter
from snapvit_cli.elastic.bundle import write_bundle
from snapvit_cli.errors import UnsupportedModelError
from snapvit_cli.models.aliases import resolve_name
from snapvit_cli.models.loading import ModelSource, load_model
from snapvit_cli.reference.scores import (
    MODEL_TYPE_TO_TIMM,
    ReferenceScores,
    check_matches,
    read_reference_scores,
    timm_name_for,
)
from snapvit_cli.scoreset import ScoreSet

IMPORTED_METHOD = "imported"


@dataclass(frozen=True, eq=False)
class ImportedScores:
    """A model together with the published scores that fit it, ready for :func:`write_bundle`."""

    model: nn.Module
    source: ModelSource
    scores: ScoreSet
    reference: ReferenceScores

    @property
    def min_keep(self) -> dict[str, float]:
        """The file's per-block minimum keep ratios (0.05 / 0.2 in every published file)."""
        return {MLP: self.reference.min_mlp_keep, HEADS: self.reference.min_head_keep}

    @property
    def scored_model(self) -> str | None:
        """The timm model the file's ``model_type`` names, or None when it names none we know."""
        return MODEL_TYPE_TO_TIMM.get(self.reference.model_type)

    @property
    def same_model_as_file(self) -> bool:
        """Whether the loaded model is the one the file was scored on (same timm name, any revision)."""
        return self.scored_model is not None and resolve_name(self.source.model_id) == self.scored_model


def import_reference_scores(
    ref_path: str | os.PathLike,
    model_name: str | None = None,
    *,
    checkpoint: str | os.PathLike | None = None,
    revision: str | None = None,
    pretrained: bool | None = None,
) -> ImportedScores:
    """Read a published score file safely, load the model it belongs to, and check that the two fit.

    ``model_name`` defaults to the file's own ``model_type`` (an alias in :data:`snapvit_cli.models.aliases.ALIASES`).
    The file is read before the model is loaded, so a bad or unsafe file fails before any download.
    """
    reference = read_reference_scores(ref_path)
    if model_name is None:
        timm_name_for(reference)  # a clear error when the file's model type has no timm equivalent
        model_name = reference.model_type
    model, source = load_model(model_name, checkpoint=checkpoint, revision=revision, pretrained=pretrained)
    adapter = get_adapter(model)
    check_matches(
        reference,
        num_blocks=adapter.num_blocks,
        hidden_dim=adapter.width(MLP, 0),
        num_heads=adapter.width(HEADS, 0),
        head_dim=adapter.head_dim,
        embed_dim=adapter.embed_dim,
        model_name=source.timm_name,
    )
    mlp_type = adapter.structure().get("mlp_type")
    if mlp_type != reference.mlp_architecture:
        raise UnsupportedModelError(
            f"score file {reference.file_name} scores a {reference.mlp_architecture} MLP, but model "
            f"{source.timm_name} has a {mlp_type} MLP"
        )
    return ImportedScores(model=model, source=source, scores=_score_set(reference), reference=reference)


def write_imported_bundle(imported: ImportedScores, path: str | os.PathLike, *, force: bool = False) -> Path:
    """Write the elastic bundle of an import, with the file's min-keep ratios."""
    return write_bundle(path, imported.model, imported.source, imported.scores, min_keep=imported.min_keep, force=force)


def _score_set(reference: ReferenceScores) -> ScoreSet:
    """The file's scores as a ScoreSet whose settings are the file's metadata plus where the scores came from."""
    provenance = {
        "file": reference.file_name,
        "sha256": reference.sha256,
        "model_type": reference.model_type,
        "mlp_architecture": reference.mlp_architecture,
        "min_hidden_dim_keep_ratio": reference.min_mlp_keep,
        "min_head_keep_ratio": reference.min_head_keep,
    }
    return ScoreSet(
        mlp=reference.mlp_scores,
        heads=reference.head_scores,
        method=IMPORTED_METHOD,
        settings={**reference.metadata, "provenance": provenance},
    )
