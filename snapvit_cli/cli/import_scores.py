"""``snapvit import-scores``: turn a published SnapViT score file into an elastic bundle."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from snapvit_cli.cli._options import (
    MODEL,
    OUTPUT,
    CheckpointOpt,
    ForceOpt,
    JsonOpt,
    PretrainedOpt,
    QuietOpt,
    RevisionOpt,
    examples,
    require_file,
)
from snapvit_cli.cli._output import emit_result, note, quiet_hub, say, user_errors
from snapvit_cli.cli._progress import status

EPILOG = examples(
    "snapvit import-scores imagenet-1k_dino_vitb16.pt -o dino_vitb16.safetensors",
    "snapvit import-scores deit-3-vit-s-16.pt -m deit3_small --checkpoint deit3_s.safetensors -o deit3_s.safetensors",
)


@user_errors
def import_scores(
    ref: Annotated[
        Path,
        typer.Argument(
            help="Score file published with the SnapViT paper (e.g. imagenet-1k_dino_vitb16.pt).", metavar="FILE"
        ),
    ],
    model: Annotated[
        str | None,
        typer.Option(
            "--model",
            "-m",
            help="Model the scores belong to (default: the model type the file names).",
            metavar="NAME",
            rich_help_panel=MODEL,
        ),
    ] = None,
    checkpoint: CheckpointOpt = None,
    revision: RevisionOpt = None,
    pretrained: PretrainedOpt = True,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            help="Bundle to write (default: <file stem>.bundle.safetensors).",
            metavar="FILE",
            rich_help_panel=OUTPUT,
        ),
    ] = None,
    force: ForceOpt = False,
    quiet: QuietOpt = False,
    json_output: JsonOpt = False,
) -> None:
    """Turn a published SnapViT score file into an elastic bundle, without running `score`.

    The file is read with a restricted unpickler (nothing in it can run) and must fit the model's structure.
    """
    from snapvit_cli.fileio import check_output

    require_file(ref, "score file")  # the trivial refusals come before torch is imported
    require_file(checkpoint, "checkpoint")
    output = output or Path(f"{ref.stem}.bundle.safetensors")
    check_output(output, force, inputs=(ref, checkpoint))
    from snapvit_cli.reference.importing import import_reference_scores, write_imported_bundle

    with status(not quiet, f"importing {ref.name}"), quiet_hub(quiet):
        imported = import_reference_scores(
            ref, model, checkpoint=checkpoint, revision=revision, pretrained=None if pretrained else False
        )
    source, reference = imported.source, imported.reference
    if not imported.same_model_as_file:
        note(
            f"warning: {reference.file_name} was scored on {imported.scored_model or reference.model_type}, "
            f"not {source.timm_name}; the structures match, so it is imported anyway"
        )
    path = write_imported_bundle(imported, output, force=force)
    result = {
        "path": str(path),
        "model": source.timm_name,
        "method": imported.scores.method,
        "scores_file": reference.file_name,
        "scores_sha256": reference.sha256,
        "model_type": reference.model_type,
        "min_keep": imported.min_keep,
    }
    if json_output:
        emit_result("import-scores", [path], [result])
    else:
        what = f"{source.timm_name}, scores from {reference.file_name}"
        say(f"wrote [bold]{escape(str(path))}[/] ({escape(what)})")
