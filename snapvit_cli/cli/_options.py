"""Option types shared by several commands, declared once."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

JsonOpt = Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout.")]
ForceOpt = Annotated[bool, typer.Option("--force", "-f", help="Overwrite an existing output.")]
CheckpointOpt = Annotated[
    Path | None, typer.Option("--checkpoint", help="Local weights (.safetensors or torch state dict).")
]
RevisionOpt = Annotated[str | None, typer.Option(help="Hub revision (branch, tag or commit) of the weights.")]
PretrainedOpt = Annotated[
    bool,
    typer.Option(help="Download pretrained weights; --no-pretrained builds random weights (tests, benchmarks)."),
]
