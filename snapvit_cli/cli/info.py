"""``snapvit info``: what a bundle, sliced folder, ``.onnx`` or ``.pt2`` file holds, as text or ``--json``."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.markup import escape

from snapvit_cli.cli._options import JsonOpt, examples
from snapvit_cli.cli._output import emit_json, say, user_errors

EPILOG = examples(
    "snapvit info demo.safetensors",
    "snapvit info demo-half --json",
    "snapvit info demo-half.onnx",
)


@user_errors
def info(
    path: Annotated[
        str,
        typer.Argument(
            help="Elastic bundle, sliced-model folder (or its config.json / model.safetensors), .onnx or .pt2 file.",
            metavar="PATH",
        ),
    ],
    json_output: JsonOpt = False,
) -> None:
    """Show what an artifact holds: model and origin, widths, budget and cost, scoring, correction, hashes."""
    from snapvit_cli.info import describe

    record = describe(path)
    if json_output:
        emit_json(record)
        return
    for line in _lines(record):
        say(escape(line))


def _lines(record: dict[str, Any], indent: str = "") -> list[str]:
    """``key: value`` lines, nested records indented, lists of records one per line."""
    lines = []
    for key, value in record.items():
        if isinstance(value, dict):
            lines.append(f"{indent}{key}:")
            lines += _lines(value, indent + "  ")
        elif isinstance(value, list) and value and isinstance(value[0], dict):
            lines.append(f"{indent}{key}:")
            lines += [f"{indent}  " + ", ".join(f"{k} {v}" for k, v in item.items()) for item in value]
        elif isinstance(value, list):
            lines.append(f"{indent}{key}: {' '.join(map(str, value))}")
        else:
            lines.append(f"{indent}{key}: {'-' if value is None else value}")
    return lines
