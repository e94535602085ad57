"""Correction on stored statistics: what ``score --correction-stats`` costs and what ``slice --correct`` then takes.

Run from the repository root (no real data needed: a random-init model and the built-in demo images)::

    python -m benchmarks.stored_correction                       # ViT-B/16, 64 images; updates benchmarks/README.md
    python -m benchmarks.stored_correction --model vit_tiny_patch16_224 --images 256 --no-readme

One process, one run: the model is scored with ``magnitude`` (scores do not matter here), the statistics of
``--images`` demo images are collected (timed), the bundle is written without and with them (sizes), and then, at
each FLOPs fraction, the correction is timed in process on the stored statistics (``correct_from_bundle``, the
step ``slice --correct`` adds; auto damping and a fixed ``mean:0.01``) and, for comparison, the image-driven
correction on the same images (``--correct --data``, sequential inputs, the default). Times are wall-clock with
the process's CPU time (all threads) in brackets: on a shared machine the CPU time is the steadier figure.
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from benchmarks.common import log, machine, write_readme_block
from snapvit_cli.correction.apply import correct_bundle_slice
from snapvit_cli.correction.solver import Damping
from snapvit_cli.correction.statistics import collect_correction_statistics
from snapvit_cli.correction.stored import correct_from_bundle
from snapvit_cli.data import load_images
from snapvit_cli.elastic.bundle import load_bundle, write_bundle
from snapvit_cli.models.loading import load_model
from snapvit_cli.scoring import score_model


def timed(step):
    """Run ``step()``; return its result, wall seconds and CPU seconds of this process."""
    cpu, wall = time.process_time(), time.perf_counter()
    result = step()
    return result, time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="vit_base_patch16_224")
    parser.add_argument("--images", type=int, default=64, help="calibration images (demo), every 4th held back")
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.9, 0.75, 0.5])
    parser.add_argument("--no-data-driven", action="store_true", help="skip the image-driven comparison")
    parser.add_argument("--no-readme", action="store_true")
    args = parser.parse_args()

    load_before = os.getloadavg()[0]
    model, source = load_model(args.model, pretrained=False)
    images = load_images("demo", "train", samples=args.images, seed=0)
    scores = score_model(model, "magnitude")
    stats, collect_s, collect_cpu = timed(lambda: collect_correction_statistics(model, images, source.pretrained_cfg))
    log(f"statistics of {args.images} images: {collect_s:.1f} s ({collect_cpu:.1f} s CPU)")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        plain = write_bundle(Path(tmp) / "plain.safetensors", model, source, scores)
        path = write_bundle(Path(tmp) / "stats.safetensors", model, source, scores, correction_stats=stats)
        sizes = plain.stat().st_size, path.stat().st_size
        log(f"bundle {sizes[0] / 1e6:.1f} MB without, {sizes[1] / 1e6:.1f} MB with statistics")
        del stats
        bundle, open_s, _ = timed(lambda: load_bundle(path))
        for fraction in args.fractions:
            plan = bundle.plan(flops=fraction)
            row = {"fraction": fraction}
            for label, damping in (("auto", None), ("mean:0.01", Damping("mean", 0.01))):
                result, wall, cpu = timed(lambda d=damping, p=plan: correct_from_bundle(bundle, p, damping=d))
                row[label] = (wall, cpu, len(result.layers))
                log(f"{fraction}: stored, damping {label}: {wall:.2f} s ({cpu:.2f} s CPU), {len(result.layers)} layers")
            if not args.no_data_driven:
                _, wall, cpu = timed(lambda p=plan: correct_bundle_slice(bundle, p, images))
                row["images"] = (wall, cpu)
                log(f"{fraction}: from images (sequential): {wall:.2f} s ({cpu:.2f} s CPU)")
            rows.append(row)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    text = report(args, sizes, (collect_s, collect_cpu), open_s, rows, peak_mb, (load_before, os.getloadavg()[0]))
    print(text)
    if not args.no_readme:
        write_readme_block("stored-correction-benchmark", text)


def report(args, sizes, collect, open_s, rows, peak_mb, load) -> str:
    weights = sizes[0]
    command = (
        "python -m benchmarks.stored_correction"
        + (f" --model {args.model}" if args.model != "vit_base_patch16_224" else "")
        + (f" --images {args.images}" if args.images != 64 else "")
    )
    lines = [
        f"Command: `{command}` — {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, {machine()}, "
        f"{torch.get_num_threads()} threads; load average {load[0]:.1f} before and {load[1]:.1f} after.",
        f"Model `{args.model}` (random init), {args.images} demo calibration images "
        f"({args.images - args.images // 4} fit + {args.images // 4} held back).",
        "",
        f"- Bundle: {weights / 1e6:.1f} MB without statistics, {sizes[1] / 1e6:.1f} MB with "
        f"(+{(sizes[1] - weights) / 1e6:.1f} MB, {sizes[1] / weights:.2f}× the size).",
        f"- Collecting the statistics (one pass of the dense model): {collect[0]:.1f} s ({collect[1]:.1f} s CPU).",
        f"- Opening the bundle with statistics: {open_s:.2f} s; peak RSS of the whole run {peak_mb:.0f} MB.",
        "",
        "| FLOPs kept | layers corrected | stored, damping auto | stored, mean:0.01 | from images, sequential |",
        "|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        cells = [f"{row[k][0]:.2f} s ({row[k][1]:.2f})" for k in ("auto", "mean:0.01")]
        images = f"{row['images'][0]:.2f} s ({row['images'][1]:.2f})" if "images" in row else "–"
        lines.append(f"| {row['fraction']:g} | {row['auto'][2]} | {cells[0]} | {cells[1]} | {images} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
