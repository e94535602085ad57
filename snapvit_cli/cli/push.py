"""``snapvit push``: upload a sliced model or a bundle to the Hugging Face Hub."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from snapvit_cli.cli._options import HUB, OUTPUT, JsonOpt, QuietOpt, examples
from snapvit_cli.cli._output import emit_result, quiet_hub, say, user_errors
from snapvit_cli.cli._progress import status, transfer

EPILOG = examples(
    "snapvit push demo-half --repo OWNER/demo-half",
    "snapvit push dino_vitb16.safetensors --repo OWNER/dino-vitb16-elastic --private",
    "snapvit push demo-half --repo OWNER/demo-half --eval-results eval.json --create-pr --message 'add eval'",
    "snapvit push demo-half --repo OWNER/demo-half --dry-run preview/",
)


@user_errors
def push(
    path: Annotated[
        Path,
        typer.Argument(
            help="Sliced-model folder (from `snapvit slice`) or elastic bundle (.safetensors).", metavar="PATH"
        ),
    ],
    repo: Annotated[
        str,
        typer.Option(
            "--repo", help="Hub repository OWNER/NAME; created if missing.", metavar="OWNER/NAME", rich_help_panel=HUB
        ),
    ],
    private: Annotated[
        bool, typer.Option("--private", help="Create the repository as private.", rich_help_panel=HUB)
    ] = False,
    revision: Annotated[
        str | None,
        typer.Option(
            help="Branch to push to, created from main if missing (default: main).",
            metavar="BRANCH",
            rich_help_panel=HUB,
        ),
    ] = None,
    create_pr: Annotated[
        bool,
        typer.Option(
            "--create-pr", help="Open a pull request instead of committing to the branch.", rich_help_panel=HUB
        ),
    ] = False,
    message: Annotated[
        str | None, typer.Option("--message", help="Commit message.", metavar="TEXT", rich_help_panel=HUB)
    ] = None,
    token: Annotated[
        str | None,
        typer.Option(
            help="Hugging Face token with write access (default: $HF_TOKEN, else the saved `hf auth login`). "
            "Prefer those: a token on the command line ends up in your shell history.",
            show_default=False,
            metavar="TOKEN",
            rich_help_panel=HUB,
        ),
    ] = None,
    eval_results: Annotated[
        Path | None,
        typer.Option(
            help="`snapvit eval --json` output to put in the model card.", metavar="FILE.json", rich_help_panel=OUTPUT
        ),
    ] = None,
    dry_run: Annotated[
        Path | None,
        typer.Option(
            "--dry-run",
            help="Write the folder that would be uploaded to DIR; send nothing.",
            metavar="DIR",
            rich_help_panel=OUTPUT,
        ),
    ] = None,
    allow_random: Annotated[
        bool,
        typer.Option(
            "--allow-random", help="Push a model scored from random weights (the card says so).", rich_help_panel=HUB
        ),
    ] = False,
    base_model: Annotated[
        str | None,
        typer.Option(
            help="--checkpoint weights only: the Hub model OWNER/NAME they derive from, as you state it.",
            metavar="OWNER/NAME",
            rich_help_panel=HUB,
        ),
    ] = None,
    license_id: Annotated[
        str | None,
        typer.Option(
            "--license",
            help="Licence of the weights: a Hub licence id (apache-2.0, mit, cc-by-4.0...), or 'other' with "
            "--license-name and --license-link; for --checkpoint weights (else the card says 'other').",
            metavar="ID",
            rich_help_panel=HUB,
        ),
    ] = None,
    license_name: Annotated[
        str | None,
        typer.Option(
            help="With --license other: a short lowercase name of the licence.", metavar="NAME", rich_help_panel=HUB
        ),
    ] = None,
    license_link: Annotated[
        str | None,
        typer.Option(
            help="With --license other: an https link to the licence text.", metavar="URL", rich_help_panel=HUB
        ),
    ] = None,
    export: Annotated[
        str | None,
        typer.Option(
            "--export",
            help="Also upload the sliced model as model.onnx and/or model.pt2 (onnx, pt2 or onnx,pt2), each checked "
            "against PyTorch, with a card section that runs them without snapvit.",
            metavar="FORMATS",
            rich_help_panel=OUTPUT,
        ),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", "-f", help="Replace a non-empty --dry-run folder.", rich_help_panel=OUTPUT)
    ] = False,
    quiet: QuietOpt = False,
    follow_links: Annotated[
        bool,
        typer.Option(
            "--follow-links",
            help="Upload the target of each symbolic link that points inside the folder (links are refused "
            "without it; links pointing outside always are).",
        ),
    ] = False,
    json_output: JsonOpt = False,
) -> None:
    """Upload a sliced model or an elastic bundle to the Hugging Face Hub, with a generated model card."""
    from snapvit_cli.hub.model_card import check_license
    from snapvit_cli.hub.push import push as push_to_hub

    try:
        check_license(license_id, license_name, license_link)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    formats = tuple(f.strip() for f in export.split(",")) if export is not None else ()
    if any(f not in ("onnx", "pt2") for f in formats):
        raise typer.BadParameter(f"--export takes onnx, pt2 or onnx,pt2, not {export!r}")
    if "onnx" in formats:
        from snapvit_cli.export import require_onnx

        require_onnx()
    results = _read_eval_results(eval_results) if eval_results is not None else None
    if dry_run is not None:
        action = status(not quiet, f"writing {dry_run}")
    else:
        action = transfer(not quiet, f"uploading {path} to {repo}")
    with action, quiet_hub(quiet):
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
            allow_random=allow_random,
            base_model=base_model,
            license=license_id,
            license_name=license_name,
            license_link=license_link,
            follow_links=follow_links,
            export=formats,
        )
    if json_output:
        staged = None if result.dry_run_dir is None else str(result.dry_run_dir)
        record = {
            "path": staged,
            "repo": result.repo_id,
            "hf_id": result.hf_id,
            "kind": result.kind,
            "files": list(result.files),
            "card_generated": result.card_generated,
            "revision": result.revision,
            "commit_url": result.commit_url,
            "pr_url": result.pr_url,
        }
        emit_result("push", [staged] if staged else [], [record])
        return
    card = "generated model card" if result.card_generated else "your README.md"
    if result.dry_run_dir is not None:
        say(
            f"dry run: wrote [bold]{escape(str(result.dry_run_dir))}[/] ({escape(', '.join(result.files))}; {card}); "
            "nothing was sent"
        )
        return
    say(f"pushed {result.kind} to [bold]{escape(result.commit_url)}[/] ({escape(', '.join(result.files))}; {card})")
    if result.pr_url:
        say(f"pull request: {result.pr_url}", markup=False)
    loader = "load" if result.kind == "sliced" else "load_bundle"
    say(f"load it with snapvit_cli.{loader}({result.hf_id!r})", markup=False)


def _read_eval_results(path: Path):
    """``snapvit eval --json`` output, validated as an :class:`~snapvit_cli.evaluation.report.EvalReport`."""
    from snapvit_cli.evaluation.report import read_report

    return read_report(path)
