"""Option types and help panels shared by several commands, declared once.

Short flags mean the same in every command: ``-m`` --model, ``-o`` --output, ``-d`` --data, ``-f`` --force,
``-q`` --quiet, ``-h`` --help. The choices below are the library's (a test keeps them equal); they live here as
literals so that ``--help`` lists them without importing torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer
from rich.markup import escape

# Help panels, in the order a reader needs them.
MODEL = "Model"
BUDGET = "Budget"
DATA = "Data"
SCORING = "Scoring"
SEARCH = "Search"
CORRECTION = "Correction"
EVALUATION = "Evaluation"
HUB = "Hub"
OUTPUT = "Output"

Method = Literal["snapvit", "gradient", "magnitude", "random", "snip", "lamp"]
Device = Literal["auto", "cpu", "cuda", "mps"]
Crops = Literal["independent", "legacy"]
Loss = Literal["dino", "ce"]
ScoreFormula = Literal["sqgrad", "fisher", "taylor", "snip"]
Preset = Literal["default", "paper"]
Vote = Literal["majority", "weighted"]
Dtype = Literal["float32", "bfloat16"]
Transform = Literal["resize", "timm"]
Tokens = Literal["weighted", "cls", "all"]
ExportFormat = Literal["onnx", "pt2"]

JsonOpt = Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout.", rich_help_panel=OUTPUT)]
ForceOpt = Annotated[bool, typer.Option("--force", "-f", help="Overwrite an existing output.", rich_help_panel=OUTPUT)]
QuietOpt = Annotated[
    bool,
    typer.Option(
        "--quiet", "-q", help="No progress on stderr (errors and warnings still show).", rich_help_panel=OUTPUT
    ),
]
CheckpointOpt = Annotated[
    Path | None,
    typer.Option(
        "--checkpoint",
        help="Local weights (.safetensors or torch state dict).",
        metavar="FILE",
        rich_help_panel=MODEL,
    ),
]
RevisionOpt = Annotated[
    str | None,
    typer.Option(help="Hub revision (branch, tag or commit) of the weights.", metavar="REV", rich_help_panel=MODEL),
]
PretrainedOpt = Annotated[
    bool,
    typer.Option(
        help="Download pretrained weights; --no-pretrained builds random weights (tests, benchmarks).",
        rich_help_panel=MODEL,
    ),
]

# Budgets of `slice` and `export`: one value, or several separated by commas (one output per budget).
FlopsOpt = Annotated[
    str | None,
    typer.Option(
        help="Fraction of the dense GMACs to keep, in (0, 1]; several: 0.25,0.5,0.75.",
        metavar="F[,F...]",
        rich_help_panel=BUDGET,
    ),
]
ParamsOpt = Annotated[
    str | None,
    typer.Option(
        help="Fraction of the dense parameters to keep, in (0, 1]; several: comma-separated.",
        metavar="P",
        rich_help_panel=BUDGET,
    ),
]
MlpOpt = Annotated[
    str | None,
    typer.Option(
        help="Fraction of MLP neurons to remove, in [0, 1) (paper convention); several pair up with --heads.",
        metavar="R",
        rich_help_panel=BUDGET,
    ),
]
HeadsOpt = Annotated[
    str | None,
    typer.Option(
        help="Fraction of attention heads to remove, in [0, 1); several pair up with --mlp.",
        metavar="R",
        rich_help_panel=BUDGET,
    ),
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


def budget_specs(
    flops: str | None,
    params: str | None,
    mlp: str | None,
    heads: str | None,
    speedup: str | None = None,
    latency: str | None = None,
) -> list:
    """The :class:`~snapvit_cli.elastic.grid.BudgetSpec` list of the budget options (empty when none is given)."""
    from snapvit_cli.elastic.grid import budget_grid

    return budget_grid(
        flops=parse_fractions(flops, "--flops"),
        params=parse_fractions(params, "--params"),
        mlp=parse_fractions(mlp, "--mlp"),
        heads=parse_fractions(heads, "--heads"),
        speedup=parse_fractions(speedup, "--speedup"),
        latency=parse_fractions(latency, "--latency"),
    )


def examples(*lines: str) -> str:
    """A command's epilog: an Examples heading and one command per line (rich markup mode keeps the breaks)."""
    body = "\n\n".join(f"  [cyan]$ {escape(line)}[/]" for line in lines)
    return f"[bold]Examples[/]\n\n{body}"


def require_local(spec: str, kind: str | None = None) -> None:
    """The one-line refusal of a local input that is missing or not snapvit's (or not a ``kind``: "bundle" or
    "sliced"), given before torch is imported; ``hf-hub:`` ids are resolved later, by the library."""
    from snapvit_cli.elastic.artifacts import is_hf_id, require_kind, resolve_artifact

    if not is_hf_id(spec):
        artifact = resolve_artifact(spec)
        if kind is not None:
            require_kind(artifact, kind)


def require_file(path: Path | None, what: str) -> None:
    """``what PATH does not exist`` as one line, before torch is imported."""
    from snapvit_cli.errors import SnapvitError

    if path is not None and not Path(path).expanduser().is_file():
        problem = "is not a file" if Path(path).expanduser().exists() else "does not exist"
        raise SnapvitError(f"{what} {path} {problem}")
