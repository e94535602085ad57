"""``snapvit eval``: accuracy, cost and speed of a dense model and its sliced budgets."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape

from snapvit_cli.cli._options import (
    BUDGET,
    DATA,
    EVALUATION,
    MODEL,
    OUTPUT,
    Device,
    Dtype,
    ForceOpt,
    JsonOpt,
    QuietOpt,
    Transform,
    Vote,
    examples,
    parse_fractions,
    require_file,
    require_local,
)
from snapvit_cli.cli._output import emit_json, print_table, quiet_hub, say, user_errors
from snapvit_cli.cli._progress import progress_bars, transfer

EPILOG = examples(
    "snapvit eval demo.safetensors -d demo --budgets 1.0,0.5",
    "snapvit eval dino_vitb16.safetensors -d ~/imagenet --probe --device cuda --json > eval.json",
    "snapvit eval dino-b16-half/ -d cifar10.npz --no-speed --samples-test 1000",
    "snapvit eval vit_base_patch16_224.dino -d hf:cifar10 --plot dense.png",
)

if TYPE_CHECKING:
    from snapvit_cli.evaluation.report import EvalReport


@user_errors(flags={"flops": "--budgets"})  # eval's budgets are FLOPs fractions
def eval_(
    target: Annotated[
        str,
        typer.Argument(
            help="Elastic bundle (each --budgets FLOPs fraction is sliced from it), sliced-model folder "
            "(or its config.json / model.safetensors), hf-hub:OWNER/NAME of either, or a model name (dense).",
            metavar="TARGET",
        ),
    ],
    data: Annotated[
        str,
        typer.Option(
            "--data",
            "-d",
            help="Labelled train/test data: image folder, .npz, hf:NAME[:CONFIG] or demo.",
            metavar="SOURCE",
            rich_help_panel=DATA,
        ),
    ],
    samples_train: Annotated[
        int | None, typer.Option(help="Seeded random subset of the train split.", metavar="N", rich_help_panel=DATA)
    ] = None,
    samples_test: Annotated[
        int | None, typer.Option(help="Seeded random subset of the test split.", metavar="N", rich_help_panel=DATA)
    ] = None,
    seed: Annotated[
        int, typer.Option(help="Seed of the subsets and of the linear probe.", metavar="N", rich_help_panel=DATA)
    ] = 0,
    workers: Annotated[int, typer.Option(help="Data-loading worker processes.", metavar="N", rich_help_panel=DATA)] = 0,
    budgets: Annotated[
        str | None,
        typer.Option(
            help="Bundles only: comma-separated FLOPs fractions to keep (default: 1.0,0.9,0.75,0.5).",
            metavar="F,...",
            rich_help_panel=BUDGET,
        ),
    ] = None,
    resolution: Annotated[
        int | None,
        typer.Option(
            help="Input resolution (default: the model's); also the resolution of GMACs.",
            metavar="PX",
            rich_help_panel=BUDGET,
        ),
    ] = None,
    checkpoint: Annotated[
        Path | None,
        typer.Option(
            "--checkpoint",
            help="Model names only: local weights (.safetensors or state dict).",
            metavar="FILE",
            rich_help_panel=MODEL,
        ),
    ] = None,
    revision: Annotated[
        str | None, typer.Option(help="Hub revision of the target's weights.", metavar="REV", rich_help_panel=MODEL)
    ] = None,
    knn_k: Annotated[
        int, typer.Option("--knn-k", help="Neighbours of the kNN classifier.", metavar="K", rich_help_panel=EVALUATION)
    ] = 20,
    vote: Annotated[
        Vote,
        typer.Option(
            help="kNN vote: majority (uniform, the paper's protocol) or weighted (DINO's).", rich_help_panel=EVALUATION
        ),
    ] = "majority",
    temperature: Annotated[
        float, typer.Option(help="Temperature of the weighted vote.", metavar="T", rich_help_panel=EVALUATION)
    ] = 0.07,
    probe: Annotated[
        bool,
        typer.Option(
            "--probe",
            help="Also train a linear probe (validation split carved from train).",
            rich_help_panel=EVALUATION,
        ),
    ] = False,
    probe_epochs: Annotated[
        int, typer.Option(help="Linear-probe epochs.", metavar="N", rich_help_panel=EVALUATION)
    ] = 100,
    probe_lr: Annotated[
        float, typer.Option(help="Linear-probe SGD learning rate.", metavar="LR", rich_help_panel=EVALUATION)
    ] = 1e-3,
    transform: Annotated[
        Transform,
        typer.Option(
            help="resize: the whole image resized to the input size (the method's kNN protocol, default); "
            "timm: timm's resolve_data_config + create_transform (crop_pct honoured).",
            rich_help_panel=EVALUATION,
        ),
    ] = "resize",
    batch_size: Annotated[
        int, typer.Option(help="Batch size of feature extraction.", metavar="N", rich_help_panel=EVALUATION)
    ] = 64,
    device: Annotated[Device, typer.Option(help="auto: cuda, else mps, else cpu.", rich_help_panel=EVALUATION)] = (
        "auto"
    ),
    dtype: Annotated[
        Dtype,
        typer.Option(
            help="float32, or bfloat16 (autocast, as the paper's protocol on GPU).", rich_help_panel=EVALUATION
        ),
    ] = "float32",
    speed: Annotated[
        bool, typer.Option(help="Measure throughput and batch-1 latency.", rich_help_panel=EVALUATION)
    ] = True,
    speed_batch_size: Annotated[
        int,
        typer.Option(help="Batch size of the throughput measurement.", metavar="N", rich_help_panel=EVALUATION),
    ] = 32,
    speed_repeats: Annotated[
        int,
        typer.Option(
            help="Timed passes per speed measurement (median reported).", metavar="N", rich_help_panel=EVALUATION
        ),
    ] = 5,
    plot: Annotated[
        Path | None,
        typer.Option(
            help="Write a chart of accuracy against GMACs: .png, .svg or .pdf (needs matplotlib: the plot extra).",
            metavar="FILE.png",
            rich_help_panel=OUTPUT,
        ),
    ] = None,
    reference: Annotated[
        str | None,
        typer.Option(
            help="Sliced models only: the bundle they were cut from; its dense model is evaluated too (and plotted).",
            metavar="BUNDLE",
            rich_help_panel=MODEL,
        ),
    ] = None,
    force: ForceOpt = False,
    quiet: QuietOpt = False,
    json_output: JsonOpt = False,
) -> None:
    """Accuracy (kNN, linear probe), GMACs, params and measured speed of a dense model and its sliced budgets."""
    from snapvit_cli.elastic.artifacts import looks_like_path
    from snapvit_cli.fileio import check_output

    if looks_like_path(target):  # the trivial refusals come before torch is imported
        require_local(target)
    require_file(checkpoint, "checkpoint")
    if reference is not None:
        require_local(reference, "bundle")
    if plot is not None:
        from snapvit_cli.evaluation.plot import plot_format

        plot_format(plot)
        check_output(plot, force, inputs=(target, data, checkpoint))
    from snapvit_cli.evaluation.evaluate import EvalSettings, evaluate_target

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
        transform=transform,
    )
    if plot is not None:
        from snapvit_cli.evaluation.plot import require_matplotlib

        require_matplotlib()
    hub = transfer(not quiet and target.startswith("hf-hub:"), f"downloading {target}")
    with hub, quiet_hub(quiet), progress_bars(not quiet, transient=True) as progress:
        report = evaluate_target(
            target,
            data,
            settings,
            budgets=parse_fractions(budgets, "--budgets"),
            checkpoint=checkpoint,
            revision=revision,
            reference=reference,
            progress=progress,
        )
    if plot is not None:
        from snapvit_cli.evaluation.plot import plot_accuracy_vs_gmacs

        plot_accuracy_vs_gmacs(report, plot, force=force)
    if json_output:
        emit_json(report.to_json())
        return
    _print_eval(report)
    if plot is not None:
        say(f"wrote [bold]{escape(str(plot))}[/]")


def _speed_up_cells(up) -> list[str]:
    """Measured speed-ups (with their range), the ideal, and measured / ideal at both batch sizes."""

    def measured(value: float, spread: tuple[float, float] | None) -> str:
        return f"{value:.2f}×" + ("" if spread is None else f" [{spread[0]:.2f}–{spread[1]:.2f}]")

    return [
        measured(up.at_batch, up.at_batch_range),
        measured(up.at_one, up.at_one_range),
        f"{up.ideal:.2f}×",
        f"{up.at_batch / up.ideal:.0%} / {up.at_one / up.ideal:.0%}",
    ]


def _print_eval(report: EvalReport) -> None:
    from snapvit_cli.evaluation.report import speed_ups

    results = report.results
    has_probe = any(r.probe is not None for r in results)
    has_speed = any(r.throughput is not None for r in results)
    columns = [(name, "left" if name == "budget" else "right") for name in ("budget", "GMACs", "FLOPs", "params (M)")]
    columns.append(("kNN top-1", "right"))
    if has_probe:
        columns.append(("probe top-1", "right"))
    ups = speed_ups(results)
    has_ups = any(u is not None for u in ups)
    if has_speed:
        columns += [("img/s", "right"), ("latency (ms)", "right")]
    if has_ups:
        batch = next(u.batch_size for u in ups if u is not None)
        columns += [(f"speed-up b{batch}", "right"), ("speed-up b1", "right"), ("ideal", "right"),
                    (f"of ideal b{batch} / b1", "right")]  # fmt: skip
    rows = []
    for r, up in zip(results, ups, strict=True):
        row = [
            "dense" if r.dense else r.label(),  # one name for the dense row, however it was asked for
            f"{r.gmacs:.3f}",
            f"{r.flops_fraction:.1%}",
            f"{r.params / 1e6:.2f}",
            f"{r.knn:.4f}",
        ]
        if has_probe:
            row.append(f"{r.probe:.4f}")
        if has_speed:
            row += [f"{r.throughput.images_per_s:.1f}", f"{r.latency_ms:.1f}"]
        if has_ups:
            row += ["", "", "", ""] if up is None else _speed_up_cells(up)
        rows.append(row)
    print_table(columns, rows, title=f"snapvit eval {report.target}")
    settings, train, test = report.settings, report.dataset["train"], report.dataset["test"]
    vote = settings["vote"] + (f", T = {settings['temperature']:g}" if "temperature" in settings else "")
    lines = [
        f"data: {train.get('source') or train['name']} ({train['n']} train / {test['n']} test images, "
        f"{test['num_classes']} classes), "
        f"{report.resolution} px; kNN: k = {settings['k']}, {vote} vote on L2-normalised features",
    ]
    if report.transform is not None:
        lines.append(f"transform: {report.transform['description']}")
    if has_probe:
        lines.append(
            f"linear probe: {settings['probe_epochs']} epochs, lr {settings['probe_lr']:g}, best epoch on a "
            f"{settings['probe_val_fraction']:.0%} validation split of train; test accuracy of that epoch"
        )
    if has_speed:
        speed = results[0].throughput
        lines.append(
            f"speed: {speed.device}, {speed.dtype}, {speed.threads} threads, batch {speed.batch_size} "
            f"(latency at batch 1), median of {speed.repeats} runs after {speed.warmup} warm-up"
        )
    if has_ups:
        lines.append(
            "speed-up: against the dense row, measured separately (not interleaved); [range]: from the quartiles of "
            "both measurements; ideal: dense GMACs / GMACs"
        )
        for r, up in zip(results, ups, strict=True):
            if up is not None and up.slower:
                lines.append(
                    f"SLOWER THAN DENSE: {r.name} ({r.label()}) measures {up.at_batch:.2f}× at batch "
                    f"{up.batch_size} and {up.at_one:.2f}× at batch 1 against the dense model"
                )
    lines.append(f"wall time: {report.wall_s['total']:.1f} s")
    for line in lines:
        say(line, markup=False)
