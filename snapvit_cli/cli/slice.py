"""``snapvit slice``: cut a bundle to a budget and write a sliced-model folder."""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path
from types import SimpleNamespace
from typing import Annotated, Any

import typer
from rich.table import Table

from snapvit_cli.cli._options import ForceOpt, JsonOpt
from snapvit_cli.cli._output import emit_json, err, out, quiet_hub, user_errors
from snapvit_cli.correction.settings import CorrectionSettings
from snapvit_cli.elastic.defaults import DEFAULT_HEAD_OFFSET

# The defaults shown in --help, read off the fields (an instance would validate its damping with torch).
CORRECTION = SimpleNamespace(**{f.name: f.default for f in fields(CorrectionSettings)})


@user_errors(flags={"samples": "--correct-samples"})
def slice_(
    bundle: Annotated[
        str,
        typer.Argument(
            help="Elastic bundle (.safetensors) written by `snapvit score`, or hf-hub:OWNER/NAME[@REV] of one "
            "pushed with `snapvit push`."
        ),
    ],
    flops: Annotated[float | None, typer.Option(help="Fraction of the dense GMACs to keep, in (0, 1].")] = None,
    params: Annotated[float | None, typer.Option(help="Fraction of the dense parameters to keep, in (0, 1].")] = None,
    mlp: Annotated[
        float | None, typer.Option(help="Fraction of MLP neurons to remove, in [0, 1) (paper convention).")
    ] = None,
    heads: Annotated[float | None, typer.Option(help="Fraction of attention heads to remove, in [0, 1).")] = None,
    head_offset: Annotated[
        float,
        typer.Option(
            help="With --flops/--params: heads are removed at max(0, mlp_ratio - OFFSET). "
            "0.15 follows the paper's grid, 0 prunes both alike, 1 prunes MLP only."
        ),
    ] = DEFAULT_HEAD_OFFSET,
    resolution: Annotated[int | None, typer.Option(help="Input resolution for GMACs (default: the model's).")] = None,
    round_to: Annotated[
        int,
        typer.Option(
            help="Round every block's kept MLP width to a multiple of N (e.g. 8 or 64 for GPU kernels); the budget "
            "is still met within 1 %. 1 keeps the method's exact counts."
        ),
    ] = 1,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Output folder (default: <bundle>-<budget>/).")
    ] = None,
    force: ForceOpt = False,
    dry_run: Annotated[bool, typer.Option(help="Report widths and cost without writing anything.")] = False,
    correct: Annotated[
        bool,
        typer.Option(
            "--correct",
            help="Re-fit the kept columns of fc2 and attn.proj by least squares on calibration images (--data).",
        ),
    ] = False,
    data: Annotated[
        str | None,
        typer.Option(help="With --correct: calibration images (image folder, .npz, hf:NAME[:CONFIG] or demo)."),
    ] = None,
    correct_samples: Annotated[
        int, typer.Option(help="With --correct: random training images used (seeded by --seed).")
    ] = CORRECTION.samples,
    damping: Annotated[
        str, typer.Option(help="With --correct: mean:F, max:F or pNN:F (F × that statistic of diag H).")
    ] = CORRECTION.damping,
    sequential: Annotated[
        bool,
        typer.Option(
            "--sequential/--dense-inputs",
            help="With --correct: feed each block the corrected sliced outputs of the blocks before it, or the "
            "dense model's activations (the reference).",
        ),
    ] = CORRECTION.sequential,
    batch_size: Annotated[int, typer.Option(help="With --correct: images per forward pass.")] = CORRECTION.batch_size,
    seed: Annotated[int, typer.Option(help="With --correct: seed of the calibration subset.")] = CORRECTION.seed,
    device: Annotated[
        str, typer.Option(help="With --correct: auto, cpu, cuda or mps (auto: cuda, else mps, else cpu).")
    ] = CORRECTION.device,
    json_output: JsonOpt = False,
) -> None:
    """Cut a bundle to a budget and write a dense, smaller model (model.safetensors + config.json)."""
    from snapvit_cli.api import load_bundle
    from snapvit_cli.fileio import check_output

    if mlp is None and heads is None and flops is None and params is None:
        raise typer.BadParameter("give a budget: --flops F, --params P, or --mlp R --heads R")
    if correct != (data is not None):
        raise typer.BadParameter("--correct and --data go together: --correct --data FOLDER|FILE.npz|hf:NAME|demo")
    if output is None:
        given = {"flops": flops, "params": params, "mlp": mlp, "heads": heads}
        tag = "-".join(f"{k}{v:g}" for k, v in given.items() if v is not None)
        output = Path(f"{_bundle_stem(bundle)}-{tag}")
    settings = None
    if correct:
        settings = CorrectionSettings(
            data=data,
            samples=correct_samples,
            seed=seed,
            damping=damping,
            sequential=sequential,
            batch_size=batch_size,
            device=device,
        )
    if not dry_run:
        check_output(output, force)
    with quiet_hub(json_output):
        elastic = load_bundle(bundle)
    plan = elastic.plan(
        flops=flops,
        params=params,
        mlp=mlp,
        heads=heads,
        resolution=resolution,
        head_offset=head_offset,
        round_to=round_to,
    )
    result = {"output": None if dry_run else str(output), **plan.to_json()}
    if correct and not dry_run:
        result["correction"] = _save_corrected(elastic, plan, output, settings, force)
    elif not dry_run:
        elastic.save_slice(output, plan, force=force)
    if json_output:
        emit_json(result)
        return
    _print_plan(plan, output if not dry_run else None)


def _save_corrected(elastic, plan, output: Path, settings: CorrectionSettings, force: bool) -> dict[str, Any]:
    """``slice --correct``: calibrate, correct and write the folder, showing progress; returns the correction record."""
    from snapvit_cli.elastic.sliced import read_config

    with err.status("correcting") as status:

        def progress(stage: str, done: int, total: int) -> None:
            what = "calibration batches" if stage == "capture" else "blocks"
            status.update(f"correcting: {done}/{total or '?'} {what}")

        elastic.save_slice(output, plan, force=force, correction=settings, progress=progress)
    record = read_config(output)["correction"]
    err.print(
        f"corrected {len(record['layers'])} layers on {record['images']} images in {record['seconds']:.1f} s "
        f"({record['inputs']} inputs, damping {record['damping']})",
        highlight=False,
    )
    return record


def _bundle_stem(bundle: str) -> str:
    """A folder-name stem for a bundle path, or ``NAME[-REV]`` for ``hf-hub:OWNER/NAME[@REV]``."""
    from snapvit_cli.hub.client import is_hf_id, parse_hf_id

    if not is_hf_id(bundle):
        return Path(bundle).stem.removesuffix(".bundle")
    repo_id, revision = parse_hf_id(bundle)
    name = repo_id.split("/")[-1]
    return f"{name}-{re.sub(r'[^A-Za-z0-9._-]+', '_', revision)}" if revision else name


def _print_plan(plan, output: Path | None) -> None:
    table = Table(title="per-block widths", show_edge=False)
    table.add_column("block", justify="right")
    table.add_column("MLP hidden", justify="right")
    table.add_column("heads", justify="right")
    for i, (m, h) in enumerate(zip(plan.widths.mlp, plan.widths.heads, strict=True)):
        table.add_row(str(i), str(m), str(h))
    out.print(table)
    out.print(
        f"GMACs @ {plan.resolution}px: {plan.gmacs:.3f} of {plan.dense_gmacs:.3f} ({plan.flops_fraction:.1%})   "
        f"params: {plan.params / 1e6:.2f} M of {plan.dense_params / 1e6:.2f} M ({plan.params_fraction:.1%})   "
        f"removed: {plan.mlp_ratio:.1%} of MLP neurons, {plan.head_ratio:.1%} of heads"
    )
    if output is not None:
        out.print(f"wrote [bold]{output}[/]  (load it with snapvit_cli.load({str(output)!r}))")
