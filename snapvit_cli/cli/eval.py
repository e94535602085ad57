"""``snapvit eval``: accuracy, cost and speed of a dense model and its sliced budgets."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from snapvit_cli.cli._options import ForceOpt, JsonOpt
from snapvit_cli.cli._output import emit_json, err, out, quiet_hub, user_errors


@user_errors
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
    from snapvit_cli.evaluation.evaluate import EvalSettings, evaluate_target
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
        from snapvit_cli.evaluation.plot import require_matplotlib

        require_matplotlib()
        check_output(plot, force)  # fail before the expensive part
    with quiet_hub(json_output), _progress_bars() as progress:
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
        from snapvit_cli.evaluation.plot import plot_accuracy_vs_gmacs

        plot_accuracy_vs_gmacs(report, plot)
    if json_output:
        emit_json(report)
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
    from snapvit_cli.evaluation.evaluate import budget_label

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
