"""``snapvit import-scores``: turn a published SnapViT score file into an elastic bundle."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from snapvit_cli.cli._options import CheckpointOpt, ForceOpt, JsonOpt, PretrainedOpt, RevisionOpt
from snapvit_cli.cli._output import emit_json, err, out, user_errors


@user_errors
def import_scores(
    ref: Annotated[
        Path, typer.Argument(help="Score file published with the SnapViT paper (e.g. imagenet-1k_dino_vitb16.pt).")
    ],
    model: Annotated[
        str | None,
        typer.Option("--model", "-m", help="Model the scores belong to (default: the model type the file names)."),
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Bundle to write (default: <file stem>.bundle.safetensors)."),
    ] = None,
    checkpoint: CheckpointOpt = None,
    revision: RevisionOpt = None,
    pretrained: PretrainedOpt = True,
    force: ForceOpt = False,
    json_output: JsonOpt = False,
) -> None:
    """Turn a published SnapViT score file into an elastic bundle, without running `score`.

    The file is read with a restricted unpickler (nothing in it can run) and must fit the model's structure.
    """
    from snapvit_cli.fileio import check_output
    from snapvit_cli.reference.importing import import_reference_scores, write_imported_bundle

    output = output or Path(f"{ref.stem}.bundle.safetensors")
    check_output(output, force)  # fail before loading the model
    with err.status(f"importing {ref.name}"):
        imported = import_reference_scores(
            ref, model, checkpoint=checkpoint, revision=revision, pretrained=None if pretrained else False
        )
    source, reference = imported.source, imported.reference
    if not imported.same_model_as_file:
        err.print(
            f"warning: {reference.file_name} was scored on {imported.scored_model or reference.model_type}, "
            f"not {source.timm_name}; the structures match, so it is imported anyway",
            highlight=False,
            soft_wrap=True,
        )
    path = write_imported_bundle(imported, output, force=force)
    result = {
        "bundle": str(path),
        "model": source.timm_name,
        "method": imported.scores.method,
        "scores_file": reference.file_name,
        "scores_sha256": reference.sha256,
        "model_type": reference.model_type,
        "min_keep": imported.min_keep,
    }
    if json_output:
        emit_json(result)
    else:
        out.print(f"wrote [bold]{path}[/] ({source.timm_name}, scores from {reference.file_name})")
