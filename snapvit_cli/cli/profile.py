"""``snapvit profile``: measure (or show the cached) latency profile of a bundle's architecture on a device."""

from __future__ import annotations

from typing import Annotated, Literal

import typer

from snapvit_cli.cli._options import BUDGET, OUTPUT, Device, Dtype, JsonOpt, QuietOpt, examples
from snapvit_cli.cli._output import emit_json, note, print_table, quiet_hub, say, user_errors
from snapvit_cli.cli._progress import progress_bars, transfer

Clock = Literal["wall", "cpu"]  # how a latency profile times (snapvit_cli.latency.model.CLOCKS)

EPILOG = examples(
    "snapvit profile tiny.safetensors --device cpu --batch-size 32",
    "snapvit profile tiny.safetensors --device cuda --batch-size 64 --dtype bfloat16 --remeasure --json",
)


@user_errors
def profile(
    bundle: Annotated[
        str,
        typer.Argument(help="Elastic bundle (.safetensors) or hf-hub:OWNER/NAME\\[@REV].", metavar="BUNDLE"),
    ],
    device: Annotated[Device, typer.Option(help="Torch device the model will run on.", rich_help_panel=BUDGET)] = (
        "auto"
    ),
    batch_size: Annotated[
        int, typer.Option(help="Images per forward pass.", metavar="N", rich_help_panel=BUDGET)
    ] = 1,
    resolution: Annotated[
        int | None,
        typer.Option(help="Input resolution (default: the model's).", metavar="PX", rich_help_panel=BUDGET),
    ] = None,
    dtype: Annotated[Dtype, typer.Option(help="The dtype the model will run in.", rich_help_panel=BUDGET)] = "float32",
    repeats: Annotated[
        int,
        typer.Option(help="Timed rounds (each item's time is their median).", metavar="N", rich_help_panel=BUDGET),
    ] = 5,
    clock: Annotated[
        Clock,
        typer.Option(
            help="wall time, or cpu: the calling thread's CPU time (a CPU shared with other processes; 1 thread).",
            rich_help_panel=BUDGET,
        ),
    ] = "wall",
    remeasure: Annotated[
        bool, typer.Option(help="Measure again even when a cached profile fits.", rich_help_panel=OUTPUT)
    ] = False,
    quiet: QuietOpt = False,
    json_output: JsonOpt = False,
) -> None:
    """Measure how long a block of each width takes on a device (cached; `slice --speedup/--latency` uses it)."""
    from snapvit_cli.api import load_bundle

    with transfer(not quiet and bundle.startswith("hf-hub:"), f"downloading {bundle}"), quiet_hub(quiet):
        elastic = load_bundle(bundle)
    lookup = lookup_profile(
        elastic,
        quiet,
        device=device,
        dtype=dtype,
        batch_size=batch_size,
        resolution=resolution,
        repeats=repeats,
        remeasure=remeasure,
        clock=clock,
    )
    result = lookup.profile
    if json_output:
        emit_json({"path": str(lookup.path), "cached": lookup.cached, "stale": lookup.stale, **result.to_json()})
        return
    if lookup.stale and not quiet:
        note(f"the cached profile was stale ({lookup.stale}); measured again")
    rows = [(str(m), f"{t:.3f}") for m, t in zip(result.mlp_widths, result.mlp_ms, strict=True)]
    print_table([("MLP width", "right"), ("block ms (all heads)", "right")], rows, title="block time by MLP width")
    rows = [(str(h), f"{t:.3f}") for h, t in zip(result.heads, result.heads_ms, strict=True)]
    print_table([("heads", "right"), ("block ms (full MLP)", "right")], rows, title="block time by heads")
    rounding = ", ".join(f"{k} {v:.3f}" for k, v in result.rounding.items()) or "not measured (narrow MLP)"
    source = "from the cache" if lookup.cached else f"measured in {result.seconds:.1f} s"
    say(
        f"{result.key.describe()}: fixed parts {result.fixed_ms:.3f} ms; dense model {result.dense_ms():.3f} ms "
        f"predicted, {result.dense_ms_measured:.3f} ms measured; spread over repeats {result.spread:.1%}",
        markup=False,
    )
    say(
        f"rounding time ratios: {rounding}; MLP widths that pay: multiples of {result.snap} "
        f"(--round-to {result.snap}); {source}; {lookup.path}",
        markup=False,
    )


def lookup_profile(elastic, quiet: bool, **options):
    """The cached latency profile of the bundle's architecture (measured now, with a progress bar, if none fits).

    ``options`` are :func:`~snapvit_cli.latency.cache.load_or_measure`'s (device, dtype, batch size, ...); shared by
    `snapvit profile` and `snapvit slice --speedup/--latency`.
    """
    from snapvit_cli.latency.cache import load_or_measure

    with progress_bars(not quiet, {"profile": "latency profile"}) as progress:
        return load_or_measure(
            elastic.skeleton(),
            min_keep_mlp=elastic.min_keep["mlp"],
            progress=None if progress is None else lambda done, total: progress("profile", done, total),
            **options,
        )
