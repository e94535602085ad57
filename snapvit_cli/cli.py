"""The ``snapvit`` command line: parses arguments, calls the library, prints results. Nothing else.

torch and timm are imported inside the commands so that ``snapvit --help`` starts instantly. Errors the user can
fix (:class:`~snapvit_cli.errors.SnapvitError`) print one line on stderr and exit with code 1; ``--json`` puts the
machine-readable result on stdout and everything else on stderr.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import json
import os
import re
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from snapvit_cli import __version__
from snapvit_cli.errors import SnapvitError

app = typer.Typer(
    name="snapvit",
    help="Elastic Vision Transformers from pretrained models without retraining (SnapViT): "
    "score once, slice to any budget.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)
out = Console()
err = Console(stderr=True)


def _user_errors(func):
    """Turn a :class:`SnapvitError` into one line on stderr and its exit code, without a traceback."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except SnapvitError as exc:
            _report(exc)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            err.print("interrupted; nothing was written")
            raise typer.Exit(130) from None

    return wrapper


def _report(exc: SnapvitError) -> None:
    """The one line of a user error. Under torchrun rank 0 alone speaks, and once it does, the launcher's SIGTERM
    (sent when another rank failed) is ignored, so that a failure ends with one line."""
    launched = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if launched:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if not launched or int(os.environ.get("RANK", "0")) == 0:
        err.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)


def _stopped_by_launcher(_signum, _frame) -> None:
    """torchrun sends SIGTERM to the other ranks when one fails: end this one as a user error (one line, no bundle)."""
    raise SnapvitError("stopped: another rank of the torchrun job failed; no bundle was written")


def _emit_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2) + "\n")


@contextlib.contextmanager
def _quiet_hub(json_output: bool) -> Iterator[None]:
    """Keep huggingface_hub's progress bars and retry warnings off stderr unless a person is watching it."""
    if not json_output and sys.stderr.isatty():
        yield
        return
    from huggingface_hub.utils import (
        are_progress_bars_disabled,
        disable_progress_bars,
        enable_progress_bars,
        logging,
    )

    bars_were_off, verbosity = are_progress_bars_disabled(), logging.get_verbosity()
    disable_progress_bars()
    logging.set_verbosity_error()
    try:
        yield
    finally:
        logging.set_verbosity(verbosity)
        if not bars_were_off:
            enable_progress_bars()


def _version_callback(value: bool) -> None:
    if value:
        out.print(f"snapvit {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version_callback, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    """Elastic ViTs: `snapvit score` once, then `snapvit slice` to any budget."""


JsonOpt = Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout.")]
ForceOpt = Annotated[bool, typer.Option("--force", "-f", help="Overwrite an existing output.")]
CheckpointOpt = Annotated[
    Path | None, typer.Option("--checkpoint", help="Local weights (.safetensors or torch state dict).")
]
RevisionOpt = Annotated[str | None, typer.Option(help="Hub revision (branch, tag or commit) of the weights.")]
PretrainedOpt = Annotated[
    bool,
    typer.Option(help="Download pretrained weights; --no-pretrained builds random weights (tests, benchmarks)."),
]


@app.command()
@_user_errors
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
    ] = "demo",
    samples: Annotated[int, typer.Option(help="Images for the gradient pass (a seeded random draw).")] = 1000,
    ga_samples: Annotated[
        int | None, typer.Option(help="Images for the xNES fitness, a second draw (default: as many as --samples).")
    ] = None,
    batch_size: Annotated[int, typer.Option(help="Images per gradient step (the loss is averaged over it).")] = 16,
    micro_batch: Annotated[
        int, typer.Option(help="Images whose crops go through one forward/backward: bounds memory, not results.")
    ] = 4,
    grad_checkpointing: Annotated[
        bool,
        typer.Option(
            "--grad-checkpointing",
            help="Recompute each block in the gradient pass's backward (timm's set_grad_checkpointing): memory for "
            "one block's activations instead of all, for about a third more compute; the same scores.",
        ),
    ] = False,
    seed: Annotated[int, typer.Option(help="Seeds the image draws, crops, random scores and xNES.")] = 42,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or mps (auto: cuda, else mps, else cpu).")] = "auto",
    crops: Annotated[
        str,
        typer.Option(help="independent: every view draws its own crop; legacy: the reference's identical views."),
    ] = "independent",
    loss: Annotated[str, typer.Option(help="dino (label-free self-distillation) or ce (needs labels).")] = "dino",
    score_formula: Annotated[
        str, typer.Option("--score", help="sqgrad (mean squared summed gradient, as the paper), fisher or taylor.")
    ] = "sqgrad",
    ga_evals: Annotated[int, typer.Option(help="xNES fitness evaluations (the first is the starting point).")] = 50,
    ga_sigma: Annotated[float, typer.Option(help="xNES initial step size around the starting multipliers.")] = 0.3,
    ga_bounds: Annotated[
        bool, typer.Option(help="Keep xNES candidates inside [0, 2] (--no-ga-bounds: unbounded, as the reference).")
    ] = True,
    ga_pairs: Annotated[
        str, typer.Option(help="MLP:HEADS removal ratios the fitness averages over.")
    ] = "0.15:0,0.35:0.2,0.55:0.4,0.65:0.5",
    pca_components: Annotated[
        int, typer.Option(help="PCA components of the dense features compared in the fitness (none if >= dim).")
    ] = 192,
    cka_init: Annotated[
        bool, typer.Option(help="Start xNES with a covariance from the CKA similarity of units' activations.")
    ] = False,
    min_keep_mlp: Annotated[float, typer.Option(help="Fraction of each block's MLP neurons never removed.")] = 0.05,
    min_keep_heads: Annotated[float, typer.Option(help="Fraction of each block's heads never removed.")] = 0.2,
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
    from snapvit_cli.bundle import write_bundle
    from snapvit_cli.devices import resolve_device
    from snapvit_cli.fileio import check_output
    from snapvit_cli.models import load_model
    from snapvit_cli.scoring import DATA_METHODS, METHODS, ScoreSettings, distributed, score_model
    from snapvit_cli.scoring.settings import parse_pairs

    if method not in METHODS:
        raise typer.BadParameter(f"--method must be one of {', '.join(METHODS)}")
    for name, value in (("--min-keep-mlp", min_keep_mlp), ("--min-keep-heads", min_keep_heads)):
        if not 0.0 <= value < 1.0:
            raise typer.BadParameter(f"{name} must lie in [0, 1)")
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
        _emit_json(result)
        return
    summary = f"{source.timm_name}, method {scores.method}, {scores.timings['total_s']:.1f} s"
    if search is not None:
        summary += f"; xNES fitness {search['initial_fitness']:.4f} -> {search['best_fitness']:.4f}"
    out.print(f"wrote [bold]{path}[/] ({summary})")


def _print_estimate(model: str, method: str, settings, json_output: bool) -> None:
    """``score --dry-run``: the closed-form estimate of every stage (snapvit_cli.scoring.estimate)."""
    from snapvit_cli.adapters import get_adapter
    from snapvit_cli.devices import resolve_device
    from snapvit_cli.models import meta_architecture
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
        _emit_json({"device": str(target), "matmul_tflop_per_s": speed / 1e12, "stages": [s.to_json() for s in stages]})
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


@app.command("slice")
@_user_errors
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
    ] = 0.15,
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
    ] = 1000,
    damping: Annotated[
        str, typer.Option(help="With --correct: mean:F, max:F or pNN:F (F × that statistic of diag H).")
    ] = "mean:0.01",
    sequential: Annotated[
        bool,
        typer.Option(
            "--sequential/--dense-inputs",
            help="With --correct: feed each block the corrected sliced outputs of the blocks before it, or the "
            "dense model's activations (the reference).",
        ),
    ] = True,
    batch_size: Annotated[int, typer.Option(help="With --correct: images per forward pass.")] = 64,
    seed: Annotated[int, typer.Option(help="With --correct: seed of the calibration subset.")] = 0,
    device: Annotated[
        str | None, typer.Option(help="With --correct: torch device (default: cuda if available, else cpu).")
    ] = None,
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
    if not dry_run:
        check_output(output, force)
    with _quiet_hub(json_output):
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
        result["correction"] = _save_corrected(
            elastic, plan, output, data, correct_samples, seed, damping, sequential, batch_size, device, force
        )
    elif not dry_run:
        elastic.save_slice(output, plan, force=force)
    if json_output:
        _emit_json(result)
        return
    _print_plan(plan, output if not dry_run else None)


def _save_corrected(
    elastic,
    plan,
    output: Path,
    data: str,
    samples: int,
    seed: int,
    damping: str,
    sequential: bool,
    batch_size: int,
    device: str | None,
    force: bool,
) -> dict[str, Any]:
    """``slice --correct``: calibrate, correct, and write the folder; returns the correction record."""
    from snapvit_cli.correct import correct_bundle_slice
    from snapvit_cli.correction import parse_damping
    from snapvit_cli.data import load_images
    from snapvit_cli.devices import resolve_device
    from snapvit_cli.fileio import sha256_file
    from snapvit_cli.sliced import save_sliced, sliced_config

    if samples < 1:
        raise typer.BadParameter("--correct-samples must be positive")
    spec = parse_damping(damping)
    torch_device = resolve_device(device)
    images = load_images(data, "train", samples=samples, seed=seed)

    with err.status("correcting") as status:

        def progress(stage: str, done: int, total: int) -> None:
            what = "calibration batches" if stage == "capture" else "blocks"
            status.update(f"correcting: {done}/{total or '?'} {what}")

        corrected = correct_bundle_slice(
            elastic,
            plan,
            images,
            batch_size=batch_size,
            damping=spec,
            sequential=sequential,
            device=torch_device,
            progress=progress,
        )
    record = corrected.to_json()
    config = {**sliced_config(elastic.metadata, plan, bundle_sha256=sha256_file(elastic.path)), "correction": record}
    save_sliced(output, corrected.state, config, force=force)
    err.print(
        f"corrected {len(corrected.layers)} layers on {corrected.images} images in {corrected.seconds:.1f} s "
        f"({record['inputs']} inputs, damping {record['damping']})",
        highlight=False,
    )
    return record


@app.command("import-scores")
@_user_errors
def import_scores(
    ref: Annotated[
        Path, typer.Argument(help="Score file published with the SnapViT paper (e.g. imagenet-1k_dino_vitb16.pt).")
    ],
    model: Annotated[
        str | None,
        typer.Option("--model", "-m", help="Model the scores belong to (default: the model type the file names)."),
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Bundle to write (default: <file stem>.bundle.safetensors)."),
    ] = None,
    checkpoint: CheckpointOpt = None,
    revision: RevisionOpt = None,
    pretrained: PretrainedOpt = True,
    force: ForceOpt = False,
    json_output: JsonOpt = False,
) -> None:
    """Turn a published SnapViT score file into an elastic bundle, without running `score`.

    The file is read with a restricted unpickler (nothing in it can run) and must fit the model's structure.
    """
    from snapvit_cli.fileio import check_output
    from snapvit_cli.importing import import_reference_scores, write_imported_bundle

    output = output or Path(f"{ref.stem}.bundle.safetensors")
    check_output(output, force)  # fail before loading the model
    with err.status(f"importing {ref.name}"):
        imported = import_reference_scores(
            ref, model, checkpoint=checkpoint, revision=revision, pretrained=None if pretrained else False
        )
    source, reference = imported.source, imported.reference
    if not imported.same_model_as_file:
        err.print(
            f"warning: {reference.file_name} was scored on {imported.scored_model or reference.model_type}, "
            f"not {source.timm_name}; the structures match, so it is imported anyway",
            highlight=False,
            soft_wrap=True,
        )
    path = write_imported_bundle(imported, output, force=force)
    result = {
        "bundle": str(path),
        "model": source.timm_name,
        "method": imported.scores.method,
        "scores_file": reference.file_name,
        "scores_sha256": reference.sha256,
        "model_type": reference.model_type,
        "min_keep": imported.min_keep,
    }
    if json_output:
        _emit_json(result)
    else:
        out.print(f"wrote [bold]{path}[/] ({source.timm_name}, scores from {reference.file_name})")


def _bundle_stem(bundle: str) -> str:
    """A folder-name stem for a bundle path, or ``NAME[-REV]`` for ``hf-hub:OWNER/NAME[@REV]``."""
    from snapvit_cli.hub import is_hf_id, parse_hf_id

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


@app.command()
@_user_errors
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
    from snapvit_cli.hub import push as push_to_hub

    results = _read_eval_results(eval_results) if eval_results is not None else None
    with _quiet_hub(json_output):
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
        _emit_json(
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


@app.command("eval")
@_user_errors
def eval_(
    target: Annotated[
        str,
        typer.Argument(
            help="Elastic bundle (each --budgets FLOPs fraction is sliced from it), sliced-model folder "
            "(or its config.json / model.safetensors), hf-hub:OWNER/NAME of either, or a model name (dense)."
        ),
    ],
    data: Annotated[
        str,
        typer.Option("--data", "-d", help="Labelled train/test data: image folder, .npz, hf:NAME[:CONFIG] or demo."),
    ],
    budgets: Annotated[
        str | None,
        typer.Option(help="Bundles only: comma-separated FLOPs fractions to keep (default: 1.0,0.9,0.75,0.5)."),
    ] = None,
    knn_k: Annotated[int, typer.Option("--knn-k", help="Neighbours of the kNN classifier.")] = 20,
    vote: Annotated[
        str, typer.Option(help="kNN vote: majority (uniform, the paper's protocol) or weighted (DINO's).")
    ] = "majority",
    temperature: Annotated[float, typer.Option(help="Temperature of the weighted vote.")] = 0.07,
    probe: Annotated[
        bool, typer.Option("--probe", help="Also train a linear probe (validation split carved from train).")
    ] = False,
    probe_epochs: Annotated[int, typer.Option(help="Linear-probe epochs.")] = 100,
    probe_lr: Annotated[float, typer.Option(help="Linear-probe SGD learning rate.")] = 1e-3,
    checkpoint: Annotated[
        Path | None, typer.Option("--checkpoint", help="Model names only: local weights (.safetensors or state dict).")
    ] = None,
    revision: Annotated[str | None, typer.Option(help="Hub revision of the target's weights.")] = None,
    resolution: Annotated[
        int | None, typer.Option(help="Input resolution (default: the model's); also the resolution of GMACs.")
    ] = None,
    batch_size: Annotated[int, typer.Option(help="Batch size of feature extraction.")] = 64,
    workers: Annotated[int, typer.Option(help="Data-loading worker processes.")] = 0,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    dtype: Annotated[str, typer.Option(help="float32, or bfloat16 (autocast, as the paper's protocol on GPU).")] = (
        "float32"
    ),
    speed: Annotated[bool, typer.Option(help="Measure throughput and batch-1 latency.")] = True,
    speed_batch_size: Annotated[int, typer.Option(help="Batch size of the throughput measurement.")] = 32,
    speed_repeats: Annotated[int, typer.Option(help="Timed passes per speed measurement (median reported).")] = 5,
    samples_train: Annotated[int | None, typer.Option(help="Seeded random subset of the train split.")] = None,
    samples_test: Annotated[int | None, typer.Option(help="Seeded random subset of the test split.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the subsets and of the linear probe.")] = 0,
    plot: Annotated[
        Path | None, typer.Option(help="Write a PNG of accuracy against GMACs (needs matplotlib: the plot extra).")
    ] = None,
    force: ForceOpt = False,
    json_output: JsonOpt = False,
) -> None:
    """Accuracy (kNN, linear probe), GMACs, params and measured speed of a dense model and its sliced budgets."""
    from snapvit_cli.evaluate import EvalSettings, evaluate_target
    from snapvit_cli.fileio import check_output

    settings = EvalSettings(
        k=knn_k,
        vote=vote,
        temperature=temperature,
        probe=probe,
        probe_epochs=probe_epochs,
        probe_lr=probe_lr,
        resolution=resolution,
        batch_size=batch_size,
        workers=workers,
        device=device,
        dtype=dtype,
        speed=speed,
        speed_batch_size=speed_batch_size,
        speed_repeats=speed_repeats,
        samples_train=samples_train,
        samples_test=samples_test,
        seed=seed,
    )
    if plot is not None:
        from snapvit_cli.plot import require_matplotlib

        require_matplotlib()
        check_output(plot, force)  # fail before the expensive part
    with _quiet_hub(json_output), _progress_bars() as progress:
        report = evaluate_target(
            target,
            data,
            settings,
            budgets=_parse_budgets(budgets),
            checkpoint=checkpoint,
            revision=revision,
            progress=progress,
        )
    if plot is not None:
        from snapvit_cli.plot import plot_accuracy_vs_gmacs

        plot_accuracy_vs_gmacs(report, plot)
    if json_output:
        _emit_json(report)
        return
    _print_eval(report)
    if plot is not None:
        out.print(f"wrote [bold]{plot}[/]")


def _parse_budgets(text: str | None) -> list[float] | None:
    if text is None:
        return None
    try:
        values = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise typer.BadParameter(
            f"--budgets takes comma-separated fractions such as 1.0,0.75,0.5, not {text!r}"
        ) from None
    if not values:
        raise typer.BadParameter("--budgets is empty")
    return values


@contextlib.contextmanager
def _progress_bars() -> Iterator[Any]:
    """A ``progress(label, done, total)`` callback drawing one transient bar per stage on stderr."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    tasks: dict[str, Any] = {}
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=True,
    ) as bars:

        def progress(label: str, done: int, total: int) -> None:
            if label not in tasks:
                tasks[label] = bars.add_task(label, total=total)
            bars.update(tasks[label], completed=done, total=total)

        yield progress


def _print_eval(report: dict[str, Any]) -> None:
    from snapvit_cli.evaluate import budget_label

    results = report["results"]
    has_probe = any(r["accuracy"]["probe"] is not None for r in results)
    has_speed = any(r["throughput"] is not None for r in results)
    table = Table(title=f"snapvit eval {report['target']}", show_edge=False)
    for column in ("budget", "GMACs", "FLOPs", "params (M)", "kNN top-1"):
        table.add_column(column, justify="left" if column == "budget" else "right")
    if has_probe:
        table.add_column("probe top-1", justify="right")
    if has_speed:
        table.add_column("img/s", justify="right")
        table.add_column("latency (ms)", justify="right")
    for r in results:
        row = [
            budget_label(r["budget"]) + (" (dense)" if r["dense"] and isinstance(r["budget"], dict) else ""),
            f"{r['gmacs']:.3f}",
            f"{r['flops_fraction']:.1%}",
            f"{r['params'] / 1e6:.2f}",
            f"{r['accuracy']['knn']:.4f}",
        ]
        if has_probe:
            row.append(f"{r['accuracy']['probe']:.4f}")
        if has_speed:
            row += [f"{r['throughput']['images_per_s']:.1f}", f"{r['latency_ms']:.1f}"]
        table.add_row(*row)
    out.print(table)
    settings, train, test = report["settings"], report["dataset"]["train"], report["dataset"]["test"]
    vote = settings["vote"] + (f", T = {settings['temperature']:g}" if "temperature" in settings else "")
    lines = [
        f"data: {train['source']} ({train['n']} train / {test['n']} test images, {test['num_classes']} classes), "
        f"{report['resolution']} px; kNN: k = {settings['k']}, {vote} vote on L2-normalised features",
    ]
    if has_probe:
        lines.append(
            f"linear probe: {settings['probe_epochs']} epochs, lr {settings['probe_lr']:g}, best epoch on a "
            f"{settings['probe_val_fraction']:.0%} validation split of train; test accuracy of that epoch"
        )
    if has_speed:
        speed = results[0]["throughput"]
        lines.append(
            f"speed: {speed['device']}, {speed['dtype']}, {speed['threads']} threads, batch {speed['batch_size']} "
            f"(latency at batch 1), median of {speed['repeats']} runs after {speed['warmup']} warm-up"
        )
    lines.append(f"wall time: {report['wall_s']['total']:.1f} s")
    for line in lines:
        out.print(line, highlight=False, soft_wrap=True)


@app.command()
@_user_errors
def models(json_output: JsonOpt = False) -> None:
    """List the supported models: family, timm name, aliases, and what is pruned."""
    from dataclasses import asdict

    from snapvit_cli.families import supported_models, supported_summary
    from snapvit_cli.models import ALIASES, DEMO_MODEL

    rows = supported_models()
    if json_output:
        _emit_json(
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


def main() -> None:
    """Console-script entry point."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # launched by torchrun (see snapvit_cli.scoring.distributed)
        signal.signal(signal.SIGTERM, _stopped_by_launcher)
    try:
        app()
    except SnapvitError as exc:  # the launcher's SIGTERM outside a command
        _report(exc)
        sys.exit(exc.exit_code)
    finally:
        # torch, timm and torchvision leave millions of objects that the interpreter's shutdown collections would
        # traverse: freezing them first (nothing needs collecting at exit) saves about 0.8 s of CPU per command.
        gc.freeze()
