"""``snapvit slice``: cut a bundle to one or several budgets and write a sliced-model folder for each."""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path
from types import SimpleNamespace
from typing import Annotated, Any

import typer
from rich.markup import escape

from snapvit_cli.cli._options import (
    BUDGET,
    CORRECTION,
    OUTPUT,
    Device,
    Dtype,
    FlopsOpt,
    ForceOpt,
    HeadsOpt,
    JsonOpt,
    MlpOpt,
    ParamsOpt,
    QuietOpt,
    Tokens,
    budget_specs,
    examples,
    require_local,
)
from snapvit_cli.cli._output import emit_result, note, print_table, quiet_hub, say, user_errors
from snapvit_cli.cli._progress import progress_bars, transfer
from snapvit_cli.cli.profile import Clock
from snapvit_cli.correction.settings import CorrectionSettings
from snapvit_cli.elastic.defaults import DEFAULT_HEAD_OFFSET

# The defaults shown in --help, read off the fields (an instance would validate its damping with torch).
CORRECT_DEFAULTS = SimpleNamespace(**{f.name: f.default for f in fields(CorrectionSettings)})

EPILOG = examples(
    "snapvit slice demo.safetensors --flops 0.5 -o demo-half",
    "snapvit slice hf-hub:OWNER/NAME --params 0.7 --dry-run --json",
    "snapvit slice tiny.safetensors --flops 0.5 --correct -d cifar10.npz -o tiny-half-corrected",
    "snapvit slice tiny.safetensors --flops 0.25,0.5,0.75 --correct -o sliced/ --json  # stored statistics",
)


@user_errors(flags={"samples": "--correct-samples", "tokens": "--correct-tokens"})
def slice_(
    bundle: Annotated[
        str,
        typer.Argument(
            help="Elastic bundle (.safetensors) written by `snapvit score`, or hf-hub:OWNER/NAME\\[@REV] of one "
            "pushed with `snapvit push`.",
            metavar="BUNDLE",
        ),
    ],
    flops: FlopsOpt = None,
    params: ParamsOpt = None,
    mlp: MlpOpt = None,
    heads: HeadsOpt = None,
    speedup: Annotated[
        str | None,
        typer.Option(
            help="Run S times faster than the dense model on --device at --batch-size, as a latency profile "
            "measured there predicts (measured once and cached; see `snapvit profile`); several: 1.5,2.",
            metavar="S[,S...]",
            rich_help_panel=BUDGET,
        ),
    ] = None,
    latency: Annotated[
        str | None,
        typer.Option(
            help="Take MS milliseconds per forward pass of a batch of --batch-size images on --device, as the "
            "latency profile predicts; several: comma-separated.",
            metavar="MS[,MS...]",
            rich_help_panel=BUDGET,
        ),
    ] = None,
    dtype: Annotated[
        Dtype,
        typer.Option(help="With --speedup/--latency: the dtype the model will run in.", rich_help_panel=BUDGET),
    ] = "float32",
    clock: Annotated[
        Clock,
        typer.Option(
            help="With --speedup/--latency: time the profile in wall time, or cpu: the calling thread's CPU time "
            "(a CPU shared with other processes; 1 thread).",
            rich_help_panel=BUDGET,
        ),
    ] = "wall",
    head_offset: Annotated[
        float,
        typer.Option(
            help="With --flops/--params: heads are removed at max(0, mlp_ratio - OFFSET). "
            "0.15 follows the paper's grid, 0 prunes both alike, 1 prunes MLP only.",
            metavar="OFFSET",
            rich_help_panel=BUDGET,
        ),
    ] = DEFAULT_HEAD_OFFSET,
    resolution: Annotated[
        int | None,
        typer.Option(help="Input resolution for GMACs (default: the model's).", metavar="PX", rich_help_panel=BUDGET),
    ] = None,
    round_to: Annotated[
        int,
        typer.Option(
            help="Round every block's kept MLP width to a multiple of N (e.g. 8 or 64 for GPU kernels); the budget "
            "is still met within 1 %. 1 keeps the method's exact counts.",
            metavar="N",
            rich_help_panel=BUDGET,
        ),
    ] = 1,
    correct: Annotated[
        bool,
        typer.Option(
            "--correct",
            help="Re-fit the kept columns of fc2 and attn.proj by least squares: on calibration images (--data), "
            "or without --data on the statistics stored in the bundle (`score --correction-stats`; dense inputs).",
            rich_help_panel=CORRECTION,
        ),
    ] = False,
    data: Annotated[
        str | None,
        typer.Option(
            "--data",
            "-d",
            help="With --correct: calibration images (image folder, .npz, hf:NAME[:CONFIG] or demo); without it, "
            "--correct uses the bundle's stored statistics.",
            metavar="SOURCE",
            rich_help_panel=CORRECTION,
        ),
    ] = None,
    correct_samples: Annotated[
        int,
        typer.Option(
            help="With --correct --data: random training images used (seeded by --seed).",
            metavar="N",
            rich_help_panel=CORRECTION,
        ),
    ] = CORRECT_DEFAULTS.samples,
    damping: Annotated[
        str,
        typer.Option(
            help="With --correct: auto (chosen per layer on held-back calibration images), or mean:F, max:F or "
            "pNN:F (F × that statistic of diag H).",
            metavar="auto|STAT:F",
            rich_help_panel=CORRECTION,
        ),
    ] = CORRECT_DEFAULTS.damping,
    correct_tokens: Annotated[
        Tokens,
        typer.Option(
            help="With --correct: which tokens the fit weighs: weighted (class token and patch tokens half each), "
            "cls (the class token only) or all (every token alike, the reference).",
            rich_help_panel=CORRECTION,
        ),
    ] = CORRECT_DEFAULTS.tokens,
    sequential: Annotated[
        bool,
        typer.Option(
            "--sequential/--dense-inputs",
            help="With --correct --data: feed each block the corrected sliced outputs of the blocks before it, or "
            "the dense model's activations (the reference; stored statistics are always dense).",
            rich_help_panel=CORRECTION,
        ),
    ] = CORRECT_DEFAULTS.sequential,
    batch_size: Annotated[
        int | None,
        typer.Option(
            help=f"Images per forward pass: with --correct --data (default {CORRECT_DEFAULTS.batch_size}); with "
            "--speedup/--latency, the batch size the model will run at (default 1).",
            metavar="N",
            rich_help_panel=CORRECTION,
        ),
    ] = None,
    seed: Annotated[
        int,
        typer.Option(
            help="With --correct --data: seed of the calibration subset.", metavar="N", rich_help_panel=CORRECTION
        ),
    ] = CORRECT_DEFAULTS.seed,
    device: Annotated[
        Device,
        typer.Option(
            help="Torch device (auto: cuda, else mps, else cpu): of --correct --data, and the one --speedup/--latency "
            "budgets are measured on.",
            rich_help_panel=CORRECTION,
        ),
    ] = CORRECT_DEFAULTS.device,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            help="Output folder (default: <bundle>-<budget>/); with several budgets, the parent of one folder per "
            "budget (<budget>/, e.g. flops0.5/).",
            metavar="DIR",
            rich_help_panel=OUTPUT,
        ),
    ] = None,
    dry_run: Annotated[
        bool,
        typer.Option("--dry-run", help="Report widths and cost without writing anything.", rich_help_panel=OUTPUT),
    ] = False,
    force: ForceOpt = False,
    quiet: QuietOpt = False,
    json_output: JsonOpt = False,
) -> None:
    """Cut a bundle to one or several budgets and write dense, smaller models (model.safetensors + config.json)."""
    from snapvit_cli.elastic.artifacts import SLICED_FILES
    from snapvit_cli.elastic.grid import output_paths
    from snapvit_cli.fileio import check_output

    specs = budget_specs(flops, params, mlp, heads, speedup, latency)
    if not specs:
        raise typer.BadParameter(
            "give a budget: --flops F[,F...], --params P[,P...], --mlp R --heads R, --speedup S or --latency MS"
        )
    if data is not None and not correct:
        raise typer.BadParameter("--data is for --correct: --correct --data FOLDER|FILE.npz|hf:NAME|demo")
    require_local(bundle, "bundle")  # "not a bundle" before "the output exists", and before torch is imported
    outputs = output_paths(specs, output, _bundle_stem(bundle))
    settings = None
    if correct:
        settings = CorrectionSettings(
            data=data,
            samples=correct_samples,
            seed=seed,
            damping=damping,
            tokens=correct_tokens,
            sequential=sequential,
            batch_size=CORRECT_DEFAULTS.batch_size if batch_size is None else batch_size,
            device=device,
        )
    if not dry_run:  # before the download
        for path in outputs:
            check_output(path, force, directory=True, inputs=(bundle, data), owned=SLICED_FILES)
    from snapvit_cli.api import load_bundle
    from snapvit_cli.elastic.grid import plan_grid

    with transfer(not quiet and bundle.startswith("hf-hub:"), f"downloading {bundle}"), quiet_hub(quiet):
        elastic = load_bundle(bundle)  # opened and validated once, whatever the number of budgets
    if correct and data is None:
        from snapvit_cli.correction.stored import require_statistics

        require_statistics(elastic)  # in a dry run too
    if specs[0].timed:
        from snapvit_cli.cli.profile import lookup_profile
        from snapvit_cli.latency.chooser import plan_bundle

        lookup = lookup_profile(
            elastic,
            quiet,
            device=device,
            dtype=dtype,
            batch_size=1 if batch_size is None else batch_size,
            resolution=resolution,
            clock=clock,
        )
        budget = {"head_offset": head_offset, "round_to": round_to}
        plans = [plan_bundle(elastic, lookup.profile, **spec.kwargs(), **budget) for spec in specs]
        if not quiet:
            note(_profile_note(lookup))
    else:
        plans = plan_grid(elastic, specs, resolution=resolution, head_offset=head_offset, round_to=round_to)
    if dry_run:
        results = [{"path": None, **plan.to_json()} for plan in plans]
    else:
        saved = _save(elastic, plans, outputs, settings, force, quiet)
        results = [{"path": str(s.path), **s.plan.to_json(), **_correction_of(s)} for s in saved]
    if json_output:
        emit_result("slice", [r["path"] for r in results if r["path"] is not None], results)
        return
    for plan, path in zip(plans, outputs, strict=True):
        _print_plan(plan, path if not dry_run else None)


def _correction_of(saved) -> dict[str, Any]:
    return {} if saved.correction is None else {"correction": saved.correction}


def _save(elastic, plans, outputs, settings: CorrectionSettings | None, force: bool, quiet: bool) -> list:
    """Write every folder (one library call), with progress bars while correcting and a note per corrected slice."""
    from snapvit_cli.slicing import save_slices

    stages = {"capture": "correction: calibration batches", "blocks": "correction: blocks"}
    with progress_bars(not quiet and settings is not None, stages) as progress:
        saved = save_slices(elastic, plans, outputs, force=force, correction=settings, progress=progress)
    for record in (s.correction for s in saved if s.correction is not None):
        _note_correction(record, quiet)
    return saved


def _note_correction(record: dict[str, Any], quiet: bool) -> None:
    """One line on what the correction did (when not quiet), and its guard's warning (always)."""
    if not quiet:
        source = "the bundle's statistics of " if record.get("statistics") == "bundle" else ""
        note(
            f"corrected {len(record['layers'])} layers on {source}{record['images']} images "
            f"(+{record['heldout_images']} held back) in {record['seconds']:.1f} s ({record['inputs']} inputs, "
            f"{record['tokens']} tokens, damping {record['damping']})"
        )
    if record.get("notice"):  # a warning: shown even when quiet
        note(record["notice"])


def _profile_note(lookup) -> str:
    """Where a latency profile came from, in one line."""
    profile = lookup.profile
    if lookup.cached:
        return f"latency profile: {profile.key.describe()}, from the cache ({lookup.path})"
    why = f" (the cached one was stale: {lookup.stale})" if lookup.stale else ""
    measured = f"measured {profile.key.describe()} in {profile.seconds:.1f} s"
    return f"latency profile: {measured}{why}; cached in {lookup.path}"


def _bundle_stem(bundle: str) -> str:
    """A folder-name stem for a bundle path, or ``NAME[-REV]`` for ``hf-hub:OWNER/NAME[@REV]``."""
    from snapvit_cli.elastic.artifacts import is_hf_id

    if not is_hf_id(bundle):
        return Path(bundle).stem.removesuffix(".bundle")
    from snapvit_cli.hub_client import parse_hf_id

    repo_id, revision = parse_hf_id(bundle)
    name = repo_id.split("/")[-1]
    return f"{name}-{re.sub(r'[^A-Za-z0-9._-]+', '_', revision)}" if revision else name


def _print_plan(plan, output: Path | None) -> None:
    rows = [(str(i), str(m), str(h)) for i, (m, h) in enumerate(zip(plan.widths.mlp, plan.widths.heads, strict=True))]
    print_table([("block", "right"), ("MLP hidden", "right"), ("heads", "right")], rows, title="per-block widths")
    say(
        f"GMACs @ {plan.resolution}px: {plan.gmacs:.3f} of {plan.dense_gmacs:.3f} ({plan.flops_fraction:.1%})   "
        f"params: {plan.params / 1e6:.2f} M of {plan.dense_params / 1e6:.2f} M ({plan.params_fraction:.1%})   "
        f"removed: {plan.mlp_ratio:.1%} of MLP neurons, {plan.head_ratio:.1%} of heads"
    )
    basis = plan.budget.latency
    if basis is not None:
        say(
            f"predicted: {basis.predicted_ms:.4g} ms per batch of {basis.batch_size} against {basis.dense_ms:.4g} ms "
            f"dense ({basis.speedup:.2f}× faster; ideal from GMACs {1 / plan.flops_fraction:.2f}×)"
        )
    if output is not None:
        say(f"wrote [bold]{escape(str(output))}[/]  (load it with snapvit_cli.load({escape(repr(str(output)))}))")
