"""``snapvit models``: the supported model families and aliases."""

from __future__ import annotations

from rich.markup import escape

from snapvit_cli.cli._options import JsonOpt, examples
from snapvit_cli.cli._output import emit_json, print_table, say, user_errors

EPILOG = examples("snapvit models", "snapvit models | grep dinov2", "snapvit models --json")


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
    columns = [(name, "left") for name in ("family", "timm model", "aliases", "heads pruned", "MLP pruned")]
    print_table(columns, [(r.family, r.timm_name, ", ".join(r.aliases), r.heads, r.mlp) for r in rows])
    notes = {row.family: row.notes for row in rows}
    for family, note in notes.items():
        say(f"[bold]{escape(family)}[/]: {escape(note)}")
    say("Any other timm name or hf-hub:org/repo of these architectures also works; other models are refused.")
