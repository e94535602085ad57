"""``snapvit score``: score every unit of a dense model once and write an elastic bundle."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer

from snapvit_cli.cli._options import CheckpointOpt, ForceOpt, JsonOpt, PretrainedOpt, RevisionOpt
from snapvit_cli.cli._output import emit_json, err, out, user_errors
from snapvit_cli.elastic.defaults import DEFAULT_MIN_KEEP
from snapvit_cli.errors import SnapvitError
from snapvit_cli.scoring.settings import ScoreSettings, format_pairs

DEFAULTS = ScoreSettings()  # the defaults shown in --help


@user_errors
def score(
    model: Annotated[
        str,
        typer.Option("--model", "-m", help="Alias (see `snapvit models`), timm name, hf-hub:org/repo, or 'demo'."),
    ] = "demo",
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Bundle to write (default: <model>.bundle.safetensors)."),
    ] = None,
    checkpoint: CheckpointOpt = None,
    revision: RevisionOpt = None,
    pretrained: PretrainedOpt = True,
    method: Annotated[
        str,
        typer.Option(
            help="snapvit (gradient scores + xNES re-weighting), gradient (no re-weighting), magnitude, random, "
            "snip, lamp."
        ),
    ] = "snapvit",
    data: Annotated[
        str,
        typer.Option(
            help="Calibration images: an image folder, an .npz (x/y uint8 NHWC), hf:NAME[:CONFIG], or demo "
            "(the built-in images). Labels are needed only by --loss ce."
        ),
    ] = str(DEFAULTS.data),
    samples: Annotated[
        int, typer.Option(help="Images for the gradient pass (a seeded random draw).")
    ] = DEFAULTS.samples,
    ga_samples: Annotated[
        int | None, typer.Option(help="Images for the xNES fitness, a second draw (default: as many as --samples).")
    ] = None,
    batch_size: Annotated[
        int, typer.Option(help="Images per gradient step (the loss is averaged over it).")
    ] = DEFAULTS.batch_size,
    micro_batch: Annotated[
        int, typer.Option(help="Images whose crops go through one forward/backward: bounds memory, not results.")
    ] = DEFAULTS.micro_batch,
    grad_checkpointing: Annotated[
        bool,
        typer.Option(
            "--grad-checkpointing",
            help="Recompute each block in the gradient pass's backward (timm's set_grad_checkpointing): memory for "
            "one block's activations instead of all, for about a third more compute; the same scores.",
        ),
    ] = DEFAULTS.grad_checkpointing,
    seed: Annotated[int, typer.Option(help="Seeds the image draws, crops, random scores and xNES.")] = DEFAULTS.seed,
    device: Annotated[
        str, typer.Option(help="auto, cpu, cuda or mps (auto: cuda, else mps, else cpu).")
    ] = DEFAULTS.device,
    crops: Annotated[
        str,
        typer.Option(help="independent: every view draws its own crop; legacy: the reference's identical views."),
    ] = DEFAULTS.crops,
    loss: Annotated[
        str, typer.Option(help="dino (label-free self-distillation) or ce (needs labels).")
    ] = DEFAULTS.loss,
    score_formula: Annotated[
        str, typer.Option("--score", help="sqgrad (mean squared summed gradient, as the paper), fisher or taylor.")
    ] = DEFAULTS.score,
    ga_evals: Annotated[
        int, typer.Option(help="xNES fitness evaluations (the first is the starting point).")
    ] = DEFAULTS.ga_evals,
    ga_sigma: Annotated[
        float, typer.Option(help="xNES initial step size around the starting multipliers.")
    ] = DEFAULTS.ga_sigma,
    ga_bounds: Annotated[
        bool, typer.Option(help="Keep xNES candidates inside [0, 2] (--no-ga-bounds: unbounded, as the reference).")
    ] = DEFAULTS.ga_bounds is not None,
    ga_pairs: Annotated[str, typer.Option(help="MLP:HEADS removal ratios the fitness averages over.")] = format_pairs(
        DEFAULTS.ga_pairs
    ),
    pca_components: Annotated[
        int, typer.Option(help="PCA components of the dense features compared in the fitness (none if >= dim).")
    ] = DEFAULTS.pca_components,
    cka_init: Annotated[
        bool, typer.Option(help="Start xNES with a covariance from the CKA similarity of units' activations.")
    ] = DEFAULTS.cka_init,
    min_keep_mlp: Annotated[
        float, typer.Option(help="Fraction of each block's MLP neurons never removed.")
    ] = DEFAULT_MIN_KEEP["mlp"],
    min_keep_heads: Annotated[
        float, typer.Option(help="Fraction of each block's heads never removed.")
    ] = DEFAULT_MIN_KEEP["heads"],
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
    force: ForceOpt = False,
    dry_run: Annotated[
        bool,
        typer.Option(
            help="Print the images, passes and estimated memory and time of every stage on this device, without "
            "reading weights or scoring."
        ),
    ] = False,
    json_output: JsonOpt = False,
) -> None:
    """Score every MLP neuron and attention head once and write an elastic bundle."""
    from snapvit_cli.devices import resolve_device
    from snapvit_cli.elastic.bundle import write_bundle
    from snapvit_cli.fileio import check_output
    from snapvit_cli.models.loading import load_model
    from snapvit_cli.scoring import DATA_METHODS, METHODS, ScoreSettings, distributed, score_model
    from snapvit_cli.scoring.settings import parse_pairs

    if method not in METHODS:
        raise typer.BadParameter(f"--method must be one of {', '.join(METHODS)}")
    min_keep = {"mlp": min_keep_mlp, "heads": min_keep_heads}
    settings = dict(
        data=data,
        samples=samples,
        ga_samples=ga_samples,
        batch_size=batch_size,
        micro_batch=micro_batch,
        grad_checkpointing=grad_checkpointing,
        seed=seed,
        device=device,
        crops=crops,
        loss=loss,
        score=score_formula,
        ga_evals=ga_evals,
        ga_sigma=ga_sigma,
        ga_bounds=(0.0, 2.0) if ga_bounds else None,
        ga_pairs=parse_pairs(ga_pairs),
        pca_components=pca_components,
        cka_init=cka_init,
        min_keep=min_keep,
    )
    config = ScoreSettings.from_kwargs(settings)  # reject bad settings before loading anything
    if method in DATA_METHODS:
        resolve_device(device)
    if dry_run:
        _print_estimate(model, method, config, json_output)
        return
    output = output or Path(f"{model.replace('/', '_').replace(':', '_')}.bundle.safetensors")
    check_output(output, force)  # fail before the expensive part
    primary = not distributed.is_secondary()
    show_progress = primary and not quiet and (sys.stderr.isatty() or not json_output)
    with distributed.failures_end_all_ranks():
        distributed.start(device)
        try:
            with err.status(f"loading {model}") if primary else contextlib.nullcontext():
                dense, source = load_model(
                    model, checkpoint=checkpoint, revision=revision, pretrained=None if pretrained else False
                )
            with _score_progress(show_progress and method in DATA_METHODS) as progress:
                scores = score_model(dense, method, preprocessing=source.pretrained_cfg, progress=progress, **settings)
        finally:
            distributed.stop()
    if not primary:
        return
    path = write_bundle(output, dense, source, scores, min_keep=min_keep, force=force)
    result = {
        "bundle": str(path),
        "model": source.timm_name,
        "method": scores.method,
        "timings_s": scores.timings,
    }
    search = scores.settings.get("xnes")
    if search is not None:
        result["fitness"] = {"initial": search["initial_fitness"], "best": search["best_fitness"]}
    if json_output:
        emit_json(result)
        return
    summary = f"{source.timm_name}, method {scores.method}, {scores.timings['total_s']:.1f} s"
    if search is not None:
        summary += f"; xNES fitness {search['initial_fitness']:.4f} -> {search['best_fitness']:.4f}"
    out.print(f"wrote [bold]{path}[/] ({summary})")


def _print_estimate(model: str, method: str, settings, json_output: bool) -> None:
    """``score --dry-run``: the closed-form estimate of every stage (snapvit_cli.scoring.estimate)."""
    from snapvit_cli.adapters import get_adapter
    from snapvit_cli.devices import resolve_device
    from snapvit_cli.models.loading import meta_architecture
    from snapvit_cli.scoring import DATA_METHODS
    from snapvit_cli.scoring.estimate import duration, estimate_scoring, matmul_speed

    if method not in DATA_METHODS:
        raise SnapvitError(
            f"--method {method} reads no images and costs next to nothing; --dry-run estimates "
            f"{', '.join(sorted(DATA_METHODS))}"
        )
    architecture = meta_architecture(model)
    target = resolve_device(settings.device)
    speed = matmul_speed(target)
    stages = estimate_scoring(architecture, get_adapter(architecture), settings, target, speed, method)
    if json_output:
        emit_json({"device": str(target), "matmul_tflop_per_s": speed / 1e12, "stages": [s.to_json() for s in stages]})
        return
    out.print(f"{model} on {target} (matmul {speed / 1e12:.2f} TFLOP/s measured; times are lower bounds)")
    for s in stages:
        host = f" (+ {s.host_gb:.2f} GB host)" if s.host_gb else ""
        out.print(
            f"  {s.stage}: {s.images} images, {s.passes}; {s.tflop:.2f} TFLOP, ≥ {duration(s.seconds)}; "
            f"memory {s.device_gb:.2f} GB{host}",
            soft_wrap=True,
        )


@contextlib.contextmanager
def _score_progress(enabled: bool) -> Iterator[Any]:
    """A progress callback for :func:`snapvit_cli.scoring.score_model` drawing rich bars on stderr (or None)."""
    if not enabled:
        yield None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    labels = {"gradients": "gradient pass (images)", "features": "dense features (images)", "xnes": "xNES evaluations"}
    tasks: dict[str, Any] = {}
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[best]}"),
        console=err,
        transient=False,
    ) as bars:

        def update(stage: str, done: int, total: int, best: float | None) -> None:
            if stage not in tasks:
                tasks[stage] = bars.add_task(labels.get(stage, stage), total=total, best="")
            shown = "" if best is None else f"best fitness {best:.5f}"
            bars.update(tasks[stage], completed=done, total=total, best=shown)

        yield update
