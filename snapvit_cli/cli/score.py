"""``snapvit score``: score every unit of a dense model once and write an elastic bundle."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from snapvit_cli.cli._options import (
    BUDGET,
    CORRECTION,
    DATA,
    MODEL,
    OUTPUT,
    SCORING,
    SEARCH,
    CheckpointOpt,
    Crops,
    Device,
    ForceOpt,
    JsonOpt,
    Loss,
    Method,
    Preset,
    PretrainedOpt,
    QuietOpt,
    RevisionOpt,
    ScoreFormula,
    examples,
    require_file,
)
from snapvit_cli.cli._output import emit_result, quiet_hub, say, user_errors
from snapvit_cli.cli._progress import progress_bars, status
from snapvit_cli.correction.settings import DEFAULT_HOLDOUT
from snapvit_cli.elastic.defaults import DEFAULT_MIN_KEEP
from snapvit_cli.errors import SnapvitError
from snapvit_cli.scoring.settings import ScoreSettings

DEFAULTS = ScoreSettings()  # the defaults shown in --help

EPILOG = examples(
    "snapvit score --model demo --samples 16 --ga-evals 31 -o demo.safetensors",
    "snapvit score -m dino_vitb16 -d ~/imagenet/train -o dino_vitb16.safetensors",
    "snapvit score -m deit_tiny --checkpoint deit_tiny.pth -d photos/ --samples 512 -o deit.safetensors",
    "snapvit score -m vit_tiny_patch16_224 -d cifar10.npz --correction-stats -o tiny.safetensors",
)
STAGES = {"gradients": "gradient pass (images)", "features": "dense features (images)", "xnes": "xNES evaluations"}


# Options a --preset sets unless they are given on the command line.
PRESET_OPTIONS = ("ga_samples", "ga_evals", "ga_sigma", "ga_pairs", "ga_flops")


@user_errors
def score(
    ctx: typer.Context,
    model: Annotated[
        str,
        typer.Option(
            "--model",
            "-m",
            help="Alias (see `snapvit models`), timm name, hf-hub:org/repo, or 'demo'.",
            metavar="NAME",
            rich_help_panel=MODEL,
        ),
    ] = "demo",
    checkpoint: CheckpointOpt = None,
    revision: RevisionOpt = None,
    pretrained: PretrainedOpt = True,
    method: Annotated[
        Method,
        typer.Option(
            help="snapvit (gradient scores + xNES re-weighting), gradient (no re-weighting), magnitude, random, "
            "snip, lamp.",
            rich_help_panel=SCORING,
        ),
    ] = "snapvit",
    data: Annotated[
        str | None,
        typer.Option(
            "--data",
            "-d",
            help="Calibration images: an image folder, an .npz (x/y uint8 NHWC), hf:NAME[:CONFIG], or demo "
            "(the built-in images; the default only for --model demo). Labels are needed only by --loss ce.",
            metavar="SOURCE",
            show_default=False,
            rich_help_panel=DATA,
        ),
    ] = None,
    samples: Annotated[
        int,
        typer.Option(help="Images for the gradient pass (a seeded random draw).", metavar="N", rich_help_panel=DATA),
    ] = DEFAULTS.samples,
    ga_samples: Annotated[
        int | None,
        typer.Option(
            help="Images for the xNES fitness, a second draw (default: a third of --samples; --preset paper: as many).",
            metavar="N",
            rich_help_panel=DATA,
        ),
    ] = None,
    seed: Annotated[
        int,
        typer.Option(help="Seeds the image draws, crops, random scores and xNES.", metavar="N", rich_help_panel=DATA),
    ] = DEFAULTS.seed,
    batch_size: Annotated[
        int,
        typer.Option(
            help="Images per gradient step (the loss is averaged over it).", metavar="N", rich_help_panel=SCORING
        ),
    ] = DEFAULTS.batch_size,
    micro_batch: Annotated[
        int,
        typer.Option(
            help="Images whose crops go through one forward/backward: bounds memory, not results.",
            metavar="N",
            rich_help_panel=SCORING,
        ),
    ] = DEFAULTS.micro_batch,
    grad_checkpointing: Annotated[
        bool,
        typer.Option(
            "--grad-checkpointing",
            help="Recompute each block in the gradient pass's backward (timm's set_grad_checkpointing): memory for "
            "one block's activations instead of all, for about a third more compute; the same scores.",
            rich_help_panel=SCORING,
        ),
    ] = DEFAULTS.grad_checkpointing,
    device: Annotated[
        Device, typer.Option(help="auto: cuda, else mps, else cpu.", rich_help_panel=SCORING)
    ] = DEFAULTS.device,
    crops: Annotated[
        Crops,
        typer.Option(
            help="independent: every view draws its own crop; legacy: the reference's identical views.",
            rich_help_panel=SCORING,
        ),
    ] = DEFAULTS.crops,
    loss: Annotated[
        Loss, typer.Option(help="dino (label-free self-distillation) or ce (needs labels).", rich_help_panel=SCORING)
    ] = DEFAULTS.loss,
    score_formula: Annotated[
        ScoreFormula,
        typer.Option(
            "--score",
            help="sqgrad (mean squared summed gradient, as the paper), fisher, taylor or snip (what --method snip "
            "ranks by, for the search to re-weight).",
            rich_help_panel=SCORING,
        ),
    ] = DEFAULTS.score,
    preset: Annotated[
        Preset,
        typer.Option(
            help="Search settings to start from; the --ga-* options given override them. default: 150 evaluations "
            "on a third of --samples over --ga-flops; paper: the paper's search (50 evaluations on --samples images "
            "over its four MLP:HEADS pairs).",
            rich_help_panel=SEARCH,
        ),
    ] = DEFAULTS.preset,
    ga_evals: Annotated[
        int,
        typer.Option(
            help="xNES fitness evaluations, the first being the starting point; at least two generations' worth "
            "(2 x population + 1; 31 for ViT-Tiny, 39 for ViT-B), or 0 for no search.",
            metavar="N",
            rich_help_panel=SEARCH,
        ),
    ] = DEFAULTS.ga_evals,
    ga_sigma: Annotated[
        float,
        typer.Option(
            help="xNES initial step size around the starting multipliers.", metavar="S", rich_help_panel=SEARCH
        ),
    ] = DEFAULTS.ga_sigma,
    ga_bounds: Annotated[
        bool,
        typer.Option(
            help="Keep xNES candidates inside [0, 2] (--no-ga-bounds: unbounded, as the reference).",
            rich_help_panel=SEARCH,
        ),
    ] = DEFAULTS.ga_bounds is not None,
    ga_flops: Annotated[
        str,
        typer.Option(
            help="FLOPs fractions the fitness averages over, each sliced as `slice --flops` would.",
            metavar="F,...",
            rich_help_panel=SEARCH,
        ),
    ] = ",".join(f"{f:g}" for f in DEFAULTS.ga_flops or ()),
    ga_pairs: Annotated[
        str | None,
        typer.Option(
            help="MLP:HEADS removal ratios the fitness averages over, instead of --ga-flops (paper: "
            "0.15:0,0.35:0.2,0.55:0.4,0.65:0.5).",
            metavar="M:H,...",
            show_default=False,
            rich_help_panel=SEARCH,
        ),
    ] = None,
    pca_components: Annotated[
        int,
        typer.Option(
            help="PCA components of the dense features compared in the fitness (none if >= dim).",
            metavar="N",
            rich_help_panel=SEARCH,
        ),
    ] = DEFAULTS.pca_components,
    cka_init: Annotated[
        bool,
        typer.Option(
            "--cka-init",
            help="Start xNES with a covariance from the CKA similarity of units' activations.", rich_help_panel=SEARCH
        ),
    ] = DEFAULTS.cka_init,
    min_keep_mlp: Annotated[
        float,
        typer.Option(help="Fraction of each block's MLP neurons never removed.", metavar="F", rich_help_panel=BUDGET),
    ] = DEFAULT_MIN_KEEP["mlp"],
    min_keep_heads: Annotated[
        float, typer.Option(help="Fraction of each block's heads never removed.", metavar="F", rich_help_panel=BUDGET)
    ] = DEFAULT_MIN_KEEP["heads"],
    correction_stats: Annotated[
        bool,
        typer.Option(
            "--correction-stats",
            help="Also store the dense model's input statistics of every fc2/attn.proj on the scoring images "
            "(--samples, --seed), so that `slice --correct` needs no images at any budget. Grows the bundle by "
            "about 2·(mlp_hidden² + embed_dim²)·4 bytes per block (ViT-Tiny: +~60 MB, ViT-B: +~0.96 GB).",
            rich_help_panel=CORRECTION,
        ),
    ] = False,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            help="Bundle to write (default: <model>.bundle.safetensors).",
            metavar="FILE",
            rich_help_panel=OUTPUT,
        ),
    ] = None,
    force: ForceOpt = False,
    quiet: QuietOpt = False,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run",
            help="Print the images, passes and estimated memory and time of every stage on this device, without "
            "reading weights or scoring.",
            rich_help_panel=OUTPUT,
        ),
    ] = False,
    json_output: JsonOpt = False,
) -> None:
    """Score every MLP neuron and attention head once and write an elastic bundle."""
    from snapvit_cli.fileio import check_output

    require_file(checkpoint, "checkpoint")  # the trivial refusals come before torch is imported
    if not dry_run:
        output = output or Path(f"{model.replace('/', '_').replace(':', '_')}.bundle.safetensors")
        check_output(output, force, inputs=(data, checkpoint, model))
    from snapvit_cli.devices import resolve_device
    from snapvit_cli.elastic.bundle import write_bundle
    from snapvit_cli.models.loading import load_model
    from snapvit_cli.scoring import DATA_METHODS, default_data, distributed, score_model

    given = _given(ctx, PRESET_OPTIONS)
    if {"ga_pairs", "ga_flops"} <= given:
        raise typer.BadParameter("give --ga-pairs or --ga-flops, not both", param_hint="--ga-pairs")
    min_keep = {"mlp": min_keep_mlp, "heads": min_keep_heads}
    settings = dict(
        data=data if data is not None else default_data(model),
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
        preset=preset,
        ga_evals=ga_evals,
        ga_sigma=ga_sigma,
        ga_bounds=(0.0, 2.0) if ga_bounds else None,
        ga_pairs=ga_pairs,
        ga_flops=ga_flops,
        pca_components=pca_components,
        cka_init=cka_init,
        min_keep=min_keep,
    )
    # the options a preset sets count only when given; left at their defaults, the preset's values apply
    settings = {k: v for k, v in settings.items() if k not in PRESET_OPTIONS or k in given}
    config = ScoreSettings.from_kwargs(settings)  # reject bad settings before loading anything
    if not dry_run:  # an estimate reads no image, so it needs no --data
        config.check_method(method)
    if correction_stats and config.samples < 2 * DEFAULT_HOLDOUT:
        raise SnapvitError(
            f"--correction-stats holds every {DEFAULT_HOLDOUT}th scoring image back and needs at least "
            f"{2 * DEFAULT_HOLDOUT}: use --samples {2 * DEFAULT_HOLDOUT} or more"
        )
    if method in DATA_METHODS:
        resolve_device(device)
    if dry_run:
        _print_estimate(model, method, config, json_output)
        return
    primary = not distributed.is_secondary()  # under torchrun, rank 0 alone shows progress, writes and prints
    with distributed.failures_end_all_ranks():
        distributed.start(device)
        try:
            with status(primary and not quiet, f"loading {model}"), quiet_hub(quiet or not primary):
                dense, source = load_model(
                    model, checkpoint=checkpoint, revision=revision, pretrained=None if pretrained else False
                )
            detail = lambda best: f"best fitness {best:.5f}"  # noqa: E731
            with progress_bars(primary and not quiet and method in DATA_METHODS, STAGES, detail) as progress:
                scores = score_model(dense, method, config, preprocessing=source.pretrained_cfg, progress=progress)
        finally:
            distributed.stop()
    if not primary:
        return
    stats = _correction_statistics(dense, source, config, quiet) if correction_stats else None
    path = write_bundle(output, dense, source, scores, min_keep=min_keep, correction_stats=stats, force=force)
    result = {
        "path": str(path),
        "model": source.timm_name,
        "method": scores.method,
        "timings_s": {key.removesuffix("_s"): seconds for key, seconds in scores.timings.items()},
    }
    if stats is not None:
        result["correction_stats"] = _stats_summary(stats, dense)
    search = scores.settings.get("xnes")
    if search is not None:
        result["fitness"] = {"initial": search["initial_fitness"], "best": search["best_fitness"]}
        result["xnes_updates"] = search["updates"]
    if json_output:
        emit_result("score", [path], [result])
        return
    summary = f"{source.timm_name}, method {scores.method}, {scores.timings['total_s']:.1f} s"
    if search is not None:
        summary += (
            f"; xNES fitness {search['initial_fitness']:.4f} -> {search['best_fitness']:.4f} "
            f"in {search['updates']} updates"
        )
    elif method == "snapvit":
        summary += "; no xNES search (--ga-evals 0)"
    if stats is not None:
        added = result["correction_stats"]
        summary += (
            f"; correction statistics of {added['images']} images (+{added['heldout_images']} held back), "
            f"{added['bytes'] / 1e6:.1f} MB ({added['bytes_vs_weights']:.1f}x the weights)"
        )
    say(f"wrote [bold]{escape(str(path))}[/] ({escape(summary)})")


def _given(ctx: typer.Context, names: tuple[str, ...]) -> set[str]:
    """The options among ``names`` that were given, not left at their defaults. By the source's name: recent typer
    versions vendor click, so its ``ParameterSource`` is not one importable class."""
    return {name for name in names if getattr(ctx.get_parameter_source(name), "name", "DEFAULT") != "DEFAULT"}


def _correction_statistics(dense, source, config: ScoreSettings, quiet: bool):
    """``--correction-stats``: one pass of the dense model over the scoring images, with progress."""
    from snapvit_cli.correction.statistics import collect_correction_statistics
    from snapvit_cli.devices import resolve_device
    from snapvit_cli.scoring.calibration import calibration_images

    images = calibration_images(config, config.samples, config.seed)
    labels = {"capture": "correction statistics: image batches", "blocks": "correction statistics: blocks"}
    with progress_bars(not quiet, labels) as progress:
        return collect_correction_statistics(
            dense, images, source.pretrained_cfg, device=resolve_device(config.device), progress=progress
        )


def _stats_summary(stats, dense) -> dict:
    """What --correction-stats added, for --json and the summary line."""
    from snapvit_cli.adapters import get_adapter
    from snapvit_cli.elastic.stats_layout import stored_bytes

    added = stored_bytes(get_adapter(dense))
    weights = sum(t.numel() * t.element_size() for t in dense.state_dict().values())
    return {
        "images": stats.record.images,
        "heldout_images": stats.record.heldout_images,
        "bytes": added,
        "bytes_vs_weights": round(added / weights, 3),
        "seconds": round(stats.seconds, 3),
    }


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
        estimate = {"path": None, "device": str(target), "matmul_tflop_per_s": speed / 1e12}
        estimate["stages"] = [s.to_json() for s in stages]
        emit_result("score", [], [estimate])
        return
    say(f"{model} on {target} (matmul {speed / 1e12:.2f} TFLOP/s measured; times are lower bounds)", markup=False)
    for s in stages:
        host = f" (+ {s.host_gb:.2f} GB host)" if s.host_gb else ""
        say(
            f"  {s.stage}: {s.images} images, {s.passes}; {s.tflop:.2f} TFLOP, ≥ {duration(s.seconds)}; "
            f"memory {s.device_gb:.2f} GB{host}",
            markup=False,
        )
