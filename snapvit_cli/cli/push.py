"""``snapvit push``: upload a sliced model or a bundle to the Hugging Face Hub."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from snapvit_cli.cli._options import JsonOpt
from snapvit_cli.cli._output import emit_json, out, quiet_hub, user_errors


@user_errors
def push(
    path: Annotated[
        Path, typer.Argument(help="Sliced-model folder (from `snapvit slice`) or elastic bundle (.safetensors).")
    ],
    repo: Annotated[str, typer.Option("--repo", help="Hub repository OWNER/NAME; created if missing.")],
    private: Annotated[bool, typer.Option("--private", help="Create the repository as private.")] = False,
    revision: Annotated[
        str | None, typer.Option(help="Branch to push to, created from main if missing (default: main).")
    ] = None,
    create_pr: Annotated[
        bool, typer.Option("--create-pr", help="Open a pull request instead of committing to the branch.")
    ] = False,
    message: Annotated[str | None, typer.Option("--message", "-m", help="Commit message.")] = None,
    token: Annotated[
        str | None,
        typer.Option(
            help="Hugging Face token with write access (default: $HF_TOKEN, else the saved `hf auth login`). "
            "Prefer those: a token on the command line ends up in your shell history.",
            show_default=False,
        ),
    ] = None,
    dry_run: Annotated[
        Path | None,
        typer.Option("--dry-run", help="Write the folder that would be uploaded to DIR; send nothing.", metavar="DIR"),
    ] = None,
    eval_results: Annotated[
        Path | None,
        typer.Option(help="`snapvit eval --json` output to put in the model card.", metavar="FILE.json"),
    ] = None,
    force: Annotated[bool, typer.Option("--force", "-f", help="Replace a non-empty --dry-run folder.")] = False,
    json_output: JsonOpt = False,
) -> None:
    """Upload a sliced model or an elastic bundle to the Hugging Face Hub, with a generated model card."""
    from snapvit_cli.hub.push import push as push_to_hub

    results = _read_eval_results(eval_results) if eval_results is not None else None
    with quiet_hub(json_output):
        result = push_to_hub(
            path,
            repo,
            private=private,
            revision=revision,
            create_pr=create_pr,
            commit_message=message,
            token=token,
            dry_run_dir=dry_run,
            force=force,
            eval_results=results,
        )
    if json_output:
        emit_json(
            {
                "repo": result.repo_id,
                "hf_id": result.hf_id,
                "kind": result.kind,
                "files": list(result.files),
                "card_generated": result.card_generated,
                "revision": result.revision,
                "commit_url": result.commit_url,
                "pr_url": result.pr_url,
                "dry_run_dir": None if result.dry_run_dir is None else str(result.dry_run_dir),
            }
        )
        return
    card = "generated model card" if result.card_generated else "your README.md"
    if result.dry_run_dir is not None:
        out.print(f"dry run: wrote [bold]{result.dry_run_dir}[/] ({', '.join(result.files)}; {card}); nothing was sent")
        return
    out.print(f"pushed {result.kind} to [bold]{result.commit_url}[/] ({', '.join(result.files)}; {card})")
    if result.pr_url:
        out.print(f"pull request: {result.pr_url}")
    loader = "load" if result.kind == "sliced" else "load_bundle"
    out.print(f"load it with snapvit_cli.{loader}({result.hf_id!r})", highlight=False)


def _read_eval_results(path: Path) -> dict[str, Any]:
    """``snapvit eval --json`` output: a JSON object with a ``results`` list."""
    from snapvit_cli.errors import DataError

    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"--eval-results: cannot read {path}: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("results"), list):
        raise DataError(
            f"--eval-results: {path} is not `snapvit eval --json` output (a JSON object with a 'results' list)"
        )
    return data
