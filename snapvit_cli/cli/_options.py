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

# Budgets of `slice` and `export`: one value, or several separated by commas (one output per budget).
FlopsOpt = Annotated[
    str | None,
    typer.Option(help="Fraction of the dense GMACs to keep, in (0, 1]; several: 0.25,0.5,0.75.", metavar="F[,F...]"),
]
ParamsOpt = Annotated[
    str | None,
    typer.Option(help="Fraction of the dense parameters to keep, in (0, 1]; several: comma-separated.", metavar="P"),
]
MlpOpt = Annotated[
    str | None,
    typer.Option(
        help="Fraction of MLP neurons to remove, in [0, 1) (paper convention); several pair up with --heads.",
        metavar="R",
    ),
]
HeadsOpt = Annotated[
    str | None,
    typer.Option(help="Fraction of attention heads to remove, in [0, 1); several pair up with --mlp.", metavar="R"),
]


def parse_fractions(text: str | None, option: str) -> list[float] | None:
    """``"0.25,0.5"`` -> ``[0.25, 0.5]``; ``None`` stays ``None``."""
    if text is None:
        return None
    try:
        values = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise typer.BadParameter(
            f"{option} takes numbers separated by commas, such as 0.25,0.5, not {text!r}"
        ) from None
    if not values:
        raise typer.BadParameter(f"{option} is empty")
    return values


def budget_specs(flops: str | None, params: str | None, mlp: str | None, heads: str | None) -> list:
    """The :class:`~snapvit_cli.elastic.grid.BudgetSpec` list of the budget options (empty when none is given)."""
    from snapvit_cli.elastic.grid import budget_grid

    return budget_grid(
        flops=parse_fractions(flops, "--flops"),
        params=parse_fractions(params, "--params"),
        mlp=parse_fractions(mlp, "--mlp"),
        heads=parse_fractions(heads, "--heads"),
    )
