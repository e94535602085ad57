"""Throughput benchmark: how much faster a sliced ViT runs than the dense one, against the ideal 1 / (FLOPs fraction).

Run from the repository root::

    python -m benchmarks.throughput                    # ViT-S/16 at 224, CPU, fractions 0.75 0.5; updates README.md
    python -m benchmarks.throughput --no-readme --profile --fractions 0.5
    python -m benchmarks.throughput --round-to 8 64 --threads 1 --clock cpu   # + the smallest fraction, rounded widths

A random-init ViT-S/16 (no download) is scored with the data-free ``magnitude`` method into a bundle in a temporary
folder, and the dense model and the models sliced at each FLOPs fraction are timed on the CPU with all cores, at a
fixed batch size, under ``torch.inference_mode`` in float32. Passes are interleaved: every round times one batch of
each model in turn, so load from other processes on a shared machine hits all models alike; after the warm-up
rounds, the median over the timed rounds is reported. ``--profile`` adds a per-operator breakdown
(``torch.profiler``) of the dense model and the smallest sliced one, to show which costs do not shrink with FLOPs.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path

import torch
from torch import nn

from benchmarks.common import machine, write_readme_block
from snapvit_cli.elastic.bundle import ElasticBundle, write_bundle
from snapvit_cli.models.loading import load_model
from snapvit_cli.scoring import score_model

TARGET_SPEEDUP_AT_HALF = 1.6  # issue 4: the 0.5-FLOPs model at >= 1.6x dense throughput on CPU

# Operator groups for --profile (aten op names as torch.profiler reports them on CPU).
OP_GROUPS = {
    "matmul (qkv, proj, fc1, fc2, head)": ("aten::addmm", "aten::mm", "aten::linear", "aten::matmul"),
    "attention core (q·kᵀ, softmax, attn·v)": (
        "aten::_scaled_dot_product_flash_attention_for_cpu",
        "aten::scaled_dot_product_attention",
        "aten::bmm",
        "aten::_softmax",
        "aten::softmax",
    ),
    "patch embedding (conv)": ("aten::convolution", "aten::_convolution", "aten::mkldnn_convolution", "aten::conv2d"),
    "layer norm": ("aten::layer_norm", "aten::native_layer_norm"),
    "GELU": ("aten::gelu",),
    "add / copy / reshape": ("aten::add", "aten::add_", "aten::copy_", "aten::contiguous", "aten::clone", "aten::cat"),
}


def build_models(
    arch: str, fractions: list[float], folder: Path, round_to: list[int]
) -> list[tuple[str, float, float, nn.Module]]:
    """(label, FLOPs fraction, GMACs, model) for the dense model and each slice of a magnitude-scored bundle, then
    the smallest fraction again with every block's MLP width rounded to each multiple in ``round_to``."""
    dense, source = load_model(arch, pretrained=False)
    path = write_bundle(folder / "bundle.safetensors", dense, source, score_model(dense, "magnitude"))
    bundle = ElasticBundle.open(path)
    rows = []
    for fraction in [1.0, *fractions]:
        plan = bundle.plan(flops=fraction)
        label = "dense" if fraction == 1.0 else f"sliced {fraction:g}"
        rows.append((label, plan.flops_fraction, plan.gmacs, bundle.slice(plan).eval()))
    for multiple in round_to:
        plan = bundle.plan(flops=min(fractions), round_to=multiple)
        label = f"sliced {min(fractions):g}, --round-to {multiple}"
        rows.append((label, plan.flops_fraction, plan.gmacs, bundle.slice(plan).eval()))
    return rows


def time_interleaved(
    models: list[nn.Module], batch: torch.Tensor, warmup: int, rounds: int, clock=time.perf_counter
) -> list[list[float]]:
    """Seconds per forward pass of each model, ``rounds`` rounds of one pass per model after ``warmup`` rounds, on
    ``clock`` (wall time, or ``time.process_time``: CPU time, which other processes on a busy machine do not
    stretch; with one thread it is the work of the pass alone)."""
    times: list[list[float]] = [[] for _ in models]
    with torch.inference_mode():
        for r in range(warmup + rounds):
            for i, model in enumerate(models):
                start = clock()
                model(batch)
                if r >= warmup:
                    times[i].append(clock() - start)
    return times


def profile_ops(models: dict[str, nn.Module], batch: torch.Tensor, rounds: int = 3) -> dict[str, dict[str, float]]:
    """Self CPU time (ms per pass) of each operator group of each model: the median of ``rounds`` profiled passes,
    interleaved across models like the timing."""
    from torch.profiler import ProfilerActivity, profile

    group_of = {op: group for group, ops in OP_GROUPS.items() for op in ops}
    samples = {label: defaultdict(list) for label in models}
    with torch.inference_mode():
        for _ in range(rounds):
            for label, model in models.items():
                with profile(activities=[ProfilerActivity.CPU]) as prof:
                    model(batch)
                totals: dict[str, float] = defaultdict(float)
                for event in prof.key_averages():
                    totals[group_of.get(event.key, "other")] += event.self_cpu_time_total / 1000
                for group in [*OP_GROUPS, "other"]:
                    samples[label][group].append(totals[group])
    return {label: {g: statistics.median(v) for g, v in groups.items()} for label, groups in samples.items()}


def render(rows, times, args, took: float) -> str:
    """Markdown: the command, the machine, and one table row per model."""
    dense_s = statistics.median(times[0])
    lines = [
        f"Measured {datetime.now(timezone.utc):%Y-%m-%d} with `{args.command}` on {machine()}; "
        f"{torch.get_num_threads()} threads, batch {args.batch_size}, float32, {args.resolution}×"
        f"{args.resolution}, {args.clock} time, median of {args.rounds} interleaved rounds after {args.warmup} warm-up "
        f"({took:.0f} s in all).",
        "",
        f"| model | GMACs | FLOPs fraction | images/{'CPU-' if args.clock == 'cpu' else ''}s | speed-up | ideal 1/f "
        "| speed-up / ideal |",
        "|---|---|---|---|---|---|---|",
    ]
    for (label, fraction, gmacs, _), seconds in zip(rows, times, strict=True):
        median = statistics.median(seconds)
        speedup, ideal = dense_s / median, 1 / fraction
        lines.append(
            f"| {label} | {gmacs:.3f} | {fraction:.3f} | {args.batch_size / median:.1f} | {speedup:.2f}× "
            f"| {ideal:.2f}× | {speedup / ideal:.0%} |"
        )
    return "\n".join(lines)


def render_profile(profiles: dict[str, dict[str, float]]) -> str:
    labels = list(profiles)
    groups = [*OP_GROUPS, "other"]
    lines = [
        "Per-operator self CPU time (ms per batch, torch.profiler, median of 3 interleaved passes; profiling adds "
        "overhead to every op):",
        "",
        "| operators | " + " | ".join(labels) + " | ratio |",
        "|---|" + "---|" * (len(labels) + 1),
    ]
    for group in groups:
        values = [profiles[label].get(group, 0.0) for label in labels]
        ratio = values[0] / values[-1] if values[-1] else float("nan")
        lines.append(f"| {group} | " + " | ".join(f"{v:.1f}" for v in values) + f" | {ratio:.2f}× |")
    totals = [sum(profiles[label].values()) for label in labels]
    lines.append("| **total** | " + " | ".join(f"**{t:.1f}**" for t in totals) + f" | {totals[0] / totals[-1]:.2f}× |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vit_small_patch16_224", help="timm architecture (random init)")
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.75, 0.5], help="FLOPs fractions")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--warmup", type=int, default=2, help="untimed rounds")
    parser.add_argument("--rounds", type=int, default=7, help="timed rounds (median reported)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads (default: all cores)")
    parser.add_argument(
        "--round-to", type=int, nargs="*", default=[], help="MLP width multiples at the smallest fraction"
    )
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall", help="cpu: process CPU time per pass")
    parser.add_argument("--profile", action="store_true", help="add a per-operator breakdown")
    parser.add_argument("--no-readme", action="store_true", help="print only; leave benchmarks/README.md alone")
    args = parser.parse_args()
    args.command = " ".join(["python -m benchmarks.throughput", *sys.argv[1:]])
    torch.set_num_threads(args.threads)

    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="snapvit-throughput-") as tmp:
        rows = build_models(args.model, args.fractions, Path(tmp), args.round_to)
    args.resolution = rows[0][3].patch_embed.img_size[0]
    batch = torch.randn(
        args.batch_size, 3, args.resolution, args.resolution, generator=torch.Generator().manual_seed(0)
    )
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    times = time_interleaved([model for *_, model in rows], batch, args.warmup, args.rounds, clock)
    section = render(rows, times, args, time.perf_counter() - start)
    if args.profile:
        smallest = min(rows, key=lambda row: row[1])
        profiles = profile_ops({label: model for label, _, _, model in (rows[0], smallest)}, batch)
        section += "\n\n" + render_profile(profiles)
    print(section)
    speedups = {row[0]: statistics.median(times[0]) / statistics.median(t) for row, t in zip(rows, times, strict=True)}
    if speedups.get("sliced 0.5", TARGET_SPEEDUP_AT_HALF) < TARGET_SPEEDUP_AT_HALF:
        print(f"\nsliced 0.5 reaches {speedups['sliced 0.5']:.2f}×, below the {TARGET_SPEEDUP_AT_HALF}× target")
    if not args.no_readme and args.model == "vit_small_patch16_224":
        write_readme_block("throughput-benchmark", section)


if __name__ == "__main__":
    main()
