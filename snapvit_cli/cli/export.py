"""``snapvit export``: a sliced model (or budgets cut from a bundle) as a verified ONNX or torch.export file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, get_args

import typer
from rich.markup import escape

from snapvit_cli.cli._options import (
    BUDGET,
    OUTPUT,
    ExportFormat,
    FlopsOpt,
    ForceOpt,
    HeadsOpt,
    JsonOpt,
    MlpOpt,
    ParamsOpt,
    QuietOpt,
    budget_specs,
    examples,
    require_local,
)
from snapvit_cli.cli._output import emit_result, quiet_hub, say, user_errors
from snapvit_cli.cli._progress import status
from snapvit_cli.elastic.defaults import DEFAULT_HEAD_OFFSET

EPILOG = examples(
    "snapvit export dino-b16-half --format onnx -o dino-b16-half.onnx",
    "snapvit export dino_vitb16.safetensors --flops 0.25,0.5,0.75 --format onnx -o onnx/ --json",
    "snapvit export dino-b16-half --format pt2 -o dino-b16-half.pt2",
)


@user_errors
def export(
    source: Annotated[
        str,
        typer.Argument(
            help="Sliced-model folder, or elastic bundle (.safetensors) to cut with --flops/--params/--mlp/--heads "
            "(without a budget: its dense model); or hf-hub:OWNER/NAME[@REV] of either."
        ),
    ],
    fmt: Annotated[
        ExportFormat | None,
        typer.Option(
            "--format",
            help="onnx (opset 18, needs the export extra) or pt2 (torch.export.save); default: the extension of "
            "-o, else onnx.",
            rich_help_panel=OUTPUT,
        ),
    ] = None,
    flops: FlopsOpt = None,
    params: ParamsOpt = None,
    mlp: MlpOpt = None,
    heads: HeadsOpt = None,
    head_offset: Annotated[
        float,
        typer.Option(
            help="With --flops/--params: heads are removed at max(0, mlp_ratio - OFFSET).",
            metavar="OFFSET",
            rich_help_panel=BUDGET,
        ),
    ] = DEFAULT_HEAD_OFFSET,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            help="Output file (default: <source>[-<budget>].<format>); with several budgets, the folder that gets "
            "one <budget>.<format> file each.",
            metavar="FILE",
            rich_help_panel=OUTPUT,
        ),
    ] = None,
    tolerance: Annotated[
        float,
        typer.Option(help="Largest |exported - PyTorch| output difference accepted (float32).", rich_help_panel=OUTPUT),
    ] = 1e-4,
    force: ForceOpt = False,
    quiet: QuietOpt = False,
    json_output: JsonOpt = False,
) -> None:
    """Write a deployable file (ONNX or .pt2) with a dynamic batch axis, checked against PyTorch at batch 1 and 7."""
    from snapvit_cli.elastic.grid import output_paths, write_each
    from snapvit_cli.fileio import check_output

    fmt = _format(fmt, output)
    require_local(source)  # the trivial refusals come before torch is imported
    if output is not None and not (flops or params or mlp or heads):
        check_output(output, force)
    from snapvit_cli.export import export_model, require_onnx

    if fmt == "onnx":
        require_onnx()
    specs = budget_specs(flops, params, mlp, heads)
    artifact = _resolve(source, quiet)
    kind, path = artifact.kind, artifact.path
    if kind == "sliced" and specs:
        raise typer.BadParameter("a sliced model has its budget already; --flops/--params/--mlp/--heads need a bundle")
    stem = artifact.name.removeprefix("hf-hub:").split("@")[0].split("/")[-1]
    outputs = output_paths(specs, output, stem, f".{fmt}") if specs else [output or Path(f"{stem}.{fmt}")]
    for target in outputs:
        check_output(target, force)
    results = []
    models = _models(kind, path, specs, outputs, head_offset)

    def write(_: int) -> Path:  # the files in order; a disk that fills says which were written (write_each)
        model, budget, target = next(models)
        with status(not quiet, f"exporting {target}"):
            result = export_model(model, target, fmt, force=force, tolerance=tolerance)
        results.append({**result.to_json(), "budget": budget})
        if not json_output:
            opset = f", opset {result.opset}" if result.opset else ""
            say(
                f"wrote [bold]{escape(result.path)}[/] ({result.format}{opset}, input {result.input_shape}, "
                f"{result.bytes / 2**20:.1f} MiB) in {result.export_s:.1f} s; max |diff| vs PyTorch at batch "
                f"{' and '.join(map(str, result.checked_batches))}: {result.max_abs_diff:.2e}"
            )
        return target

    write_each(outputs, write)
    if json_output:
        emit_result("export", [r["path"] for r in results], results)


def _format(fmt: str | None, output: Path | None) -> str:
    """The format -o's extension names (refusing a --format that contradicts it), else --format, else onnx."""
    suffix = output.suffix.lower().lstrip(".") if output is not None else ""
    if suffix in get_args(ExportFormat):
        if fmt is not None and fmt != suffix:
            message = f"--format {fmt} contradicts -o {output} (a .{suffix} file)"
            raise typer.BadParameter(message, param_hint="--format")
        return suffix
    return fmt or "onnx"


def _resolve(source: str, quiet: bool):
    """The artifact ``source`` names (a bundle file or a sliced-model folder, local or ``hf-hub:``)."""
    from snapvit_cli.elastic.artifacts import resolve_artifact

    with quiet_hub(quiet):
        return resolve_artifact(source)


def _models(kind: str, path: Path, specs: list, outputs: list[Path], head_offset: float):
    """``(model, budget as JSON, output)`` for each file to write; a bundle is opened once for every budget. The
    budget is written as the eval report writes it (:meth:`Budget.to_json`, ``"dense"`` for a dense model)."""
    from snapvit_cli.elastic.sliced import load_sliced

    if kind == "sliced":
        model = load_sliced(path)
        yield model, model.snapvit_config.budget.to_json(), outputs[0]
        return
    from snapvit_cli.elastic.bundle import ElasticBundle
    from snapvit_cli.elastic.grid import plan_grid

    bundle = ElasticBundle.open(path)
    if not specs:
        yield _labelled(bundle, bundle.plan(mlp=0.0, heads=0.0)), "dense", outputs[0]
        return
    for plan, target in zip(plan_grid(bundle, specs, head_offset=head_offset), outputs, strict=True):
        yield _labelled(bundle, plan), plan.budget.to_json(), target


def _labelled(bundle, plan):
    """``bundle`` sliced to ``plan``, carrying the ``config.json`` record a saved slice would have (the exported
    file's metadata comes from it)."""
    from snapvit_cli.elastic.sliced import sliced_config

    model = bundle.slice(plan)
    model.snapvit_config = sliced_config(bundle.metadata, plan, bundle_sha256=bundle.sha256())
    return model
