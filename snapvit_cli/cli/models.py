"""``snapvit models``: the supported model families and aliases."""

from __future__ import annotations

from rich.table import Table

from snapvit_cli.cli._options import JsonOpt
from snapvit_cli.cli._output import emit_json, out, user_errors


@user_errors
def models(json_output: JsonOpt = False) -> None:
    """List the supported models: family, timm name, aliases, and what is pruned."""
    from dataclasses import asdict

    from snapvit_cli.models.aliases import ALIASES, DEMO_MODEL
    from snapvit_cli.models.families import supported_models, supported_summary

    rows = supported_models()
    if json_output:
        emit_json(
            {
                "models": [asdict(r) for r in rows],
                "aliases": ALIASES,
                "demo": DEMO_MODEL,
                "supported": supported_summary(),
            }
        )
        return
    table = Table(show_edge=False)
    for column in ("family", "timm model", "aliases", "heads pruned", "MLP pruned"):
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(row.family, row.timm_name, ", ".join(row.aliases), row.heads, row.mlp)
    out.print(table)
    notes = {row.family: row.notes for row in rows}
    for family, note in notes.items():
        out.print(f"[bold]{family}[/]: {note}", highlight=False)
    out.print("Any other timm name or hf-hub:org/repo of these architectures also works; other models are refused.")
