"""Scoring overhead benchmark: every stage of ``snapvit score`` against the bare model passes it needs, in one run.

Run from the repository root::

    python -m benchmarks.scoring          # ViT-S/16 random init (+ the real ViT-Tiny), 1 thread; updates README.md
    python -m benchmarks.scoring --models vit_small_patch16_224 --no-readme --ga-evals 2

For each model, the three stages of the ``snapvit`` method run as ``score_model`` runs them:

- **gradient pass**: draw the images, make 2 + 10 multi-crop views of each, forward/backward in micro-batches,
  accumulate float64 gradient sums. Bare passes: forward + backward of the *same views* (made beforehand), same
  micro-batches, same parameters requiring gradients, a plain feature-norm loss, nothing accumulated.
- **dense features**: draw and preprocess the search images, their dense features, the PCA. Bare passes: the
  forwards of the same preprocessed images at the same batch size.
- **search**: the xNES evaluations, each running every removal pair. Before (``ga_evaluation="masked"``): the
  dense model with masking hooks, all pairs in one batched forward; its bare passes are the same batched dense
  forwards without hooks. After (``"sliced"``): a physically sliced model per pair; its bare passes are forwards of
  the sliced models of the search's first candidate (μ₀), built beforehand.

Every stage is timed (wall and process CPU time, all threads) next to its bare passes in the same run, and the
overhead factor is stage ÷ bare. One torch thread by default: on a shared machine, idle OpenMP threads spin and
inflate the CPU time of whatever runs with several threads, which hides the differences measured here. Peak memory
is the process's peak RSS after the stage on the CPU, and
``torch.cuda.max_memory_allocated`` during the stage on a GPU.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone

import numpy as np
import torch

from benchmarks.common import REAL_CHECKPOINT, REAL_DATA, machine, shared_data, write_readme_block
from snapvit_cli.adapters import get_adapter
from snapvit_cli.models.loading import load_model
from snapvit_cli.scoring.calibration import autocast, calibration_images, input_config, preprocessed, scoring_mode
from snapvit_cli.scoring.crops import MultiCrop
from snapvit_cli.scoring.gradient import crop_generator, gradient_pass, score_parameters, unit_scores
from snapvit_cli.scoring.pruned import pruned_model
from snapvit_cli.scoring.search import FeatureFitness, initial_mean, removed_units, search_multipliers
from snapvit_cli.scoring.settings import PAPER_GA_PAIRS, ScoreSettings

BLOCK = "scoring-benchmark"
TARGET = 1.3  # issue 16: every stage at most 1.3x its bare passes


@dataclass
class Timed:
    wall: float
    cpu: float
    peak_mb: float


def timed(work: Callable[[], object], device: torch.device) -> tuple[object, Timed]:
    """Run ``work`` and measure wall and process CPU seconds and the peak memory (see the module docstring)."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    wall, cpu = time.perf_counter(), time.process_time()
    result = work()
    if device.type == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return result, Timed(time.perf_counter() - wall, time.process_time() - cpu, peak)


def bare_gradient(model, adapter, settings: ScoreSettings, views: list[torch.Tensor], device) -> None:
    """Forward + backward of prepared micro-batches of views, batch by batch, nothing accumulated."""
    specs = score_parameters(model, adapter)
    wanted = {id(p) for per_kind in specs.values() for block in per_kind for _, p in block}
    for param in model.parameters():
        param.requires_grad_(id(param) in wanted)
    per_batch = max(1, settings.batch_size // settings.micro_batch)
    for first in range(0, len(views), per_batch):
        for param in model.parameters():
            param.grad = None
        for chunk in views[first : first + per_batch]:
            with autocast(device):
                features = adapter.features(chunk.to(device))
            features.float().square().mean().backward()


def prepared_views(model, settings: ScoreSettings) -> list[torch.Tensor]:
    """The gradient pass's views, micro-batch by micro-batch (the same crops: same generators, same images)."""
    config = input_config(model, settings)
    images = calibration_images(settings, settings.samples, settings.seed)
    crop = MultiCrop(config.size, mean=config.mean, std=config.std, mode=settings.crops)
    chunks = []
    for start in range(0, len(images), settings.batch_size):
        stop = min(start + settings.batch_size, len(images))
        for first in range(start, stop, settings.micro_batch):
            chunk = range(first, min(first + settings.micro_batch, stop))
            views = torch.stack([crop(images[j][0], crop_generator(settings.seed, j)) for j in chunk])
            chunks.append(views.flatten(0, 1))
    return chunks


def bare_forwards(models, images: torch.Tensor, batch_size: int, copies: int, repeats: int, device) -> None:
    """``repeats`` × forward of every model in ``models`` over ``images`` (each batch repeated ``copies`` times)."""
    with torch.no_grad():
        for _ in range(repeats):
            for adapter in models:
                for start in range(0, len(images), batch_size):
                    batch = images[start : start + batch_size].to(device)
                    with autocast(device):
                        adapter.features(batch.repeat(copies, 1, 1, 1))


def run_model(label: str, model, settings: ScoreSettings, device: torch.device) -> dict:
    """Every stage and its bare passes; returns the rows for the table."""
    adapter = get_adapter(model)
    rows = {}
    with scoring_mode(model, device):
        views = prepared_views(model, settings)
        bare_gradient(model, adapter, settings, views[:1], device)  # warm-up (allocator, kernels)
        run, stage = timed(lambda: gradient_pass(model, adapter, settings, device), device)
        _, bare = timed(lambda: bare_gradient(model, adapter, settings, views, device), device)
        rows["gradient pass"] = (stage, bare, f"{settings.samples} images × 12 views, fwd+bwd")
        raw = unit_scores(run.grads, settings.score)

        def dense_stage():
            images = calibration_images(settings, settings.ga_sample_count, settings.seed + 1)
            return FeatureFitness(model, adapter, preprocessed(images, run.config), raw, settings, device)

        fitness, stage = timed(dense_stage, device)
        images = fitness.calibration
        _, bare = timed(lambda: bare_forwards([adapter], images, settings.ga_batch_size, 1, 1, device), device)
        rows["dense features"] = (stage, bare, f"{len(images)} images, fwd")

        pairs = len(fitness.pairs)
        evals = settings.ga_evals
        fitness.evaluation = "masked"
        masked_result, stage = timed(lambda: search_multipliers(fitness, settings), device)
        _, bare = timed(lambda: bare_forwards([adapter], images, settings.ga_batch_size, pairs, evals, device), device)
        rows["search, masked (before)"] = (stage, bare, f"{evals} evals × {pairs} pairs, dense fwd")
        dense_search_bare = bare

        blocks, heads = raw["heads"].shape
        start = fitness.scaled(initial_mean(blocks, heads, *settings.ga_init))
        sliced = [
            get_adapter(pruned_model(model, adapter, removed_units(start, pair, settings.min_keep)))
            for pair in fitness.pairs
        ]
        fitness.evaluation = "sliced"
        sliced_result, stage = timed(lambda: search_multipliers(fitness, settings), device)
        _, bare = timed(lambda: bare_forwards(sliced, images, settings.ga_batch_size, 1, evals, device), device)
        rows["search, sliced (after)"] = (stage, bare, f"{evals} evals × {pairs} pairs, sliced fwd (μ₀'s widths)")
        rows["search, sliced ÷ dense bare"] = (stage, dense_search_bare, "the after search ÷ the before bare")
        same = np.allclose(masked_result.trace.numpy(), sliced_result.trace.numpy(), atol=1e-5)
    return {"label": label, "rows": rows, "same_trace": same}


def render(results: list[dict], args, device: torch.device, took: float) -> str:
    memory = "peak RSS after the stage" if device.type == "cpu" else "peak allocated during the stage"
    lines = [
        f"Measured {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC with `{args.command}` on {machine()}; device "
        f"{device}, {torch.get_num_threads()} threads, float32"
        f"{' (bf16 autocast)' if device.type == 'cuda' else ''}; load average {args.load_before:.1f} before and "
        f"{os.getloadavg()[0]:.1f} after ({took:.0f} s in all). Settings: {args.samples} gradient images (batch "
        f"{args.batch_size}, micro-batch {args.micro_batch}), {args.ga_samples} search images (batch "
        f"{args.ga_batch_size}), {args.ga_evals} xNES evaluations × the paper's 4 pairs.",
        "",
        f"| model | stage | bare passes | stage wall (CPU) s | bare wall (CPU) s | overhead wall (CPU) | {memory} |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for result in results:
        for stage_name, (stage, bare, what) in result["rows"].items():
            lines.append(
                f"| {result['label']} | {stage_name} | {what} | {stage.wall:.1f} ({stage.cpu:.1f}) "
                f"| {bare.wall:.1f} ({bare.cpu:.1f}) | {stage.wall / bare.wall:.2f}× ({stage.cpu / bare.cpu:.2f}×) "
                f"| {stage.peak_mb:.0f} MB |"
            )
    lines.append("")
    for result in results:
        verdict = "identical" if result["same_trace"] else "DIFFERENT"
        lines.append(f"{result['label']}: masked and sliced fitness traces {verdict} (within 1e-5).")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["vit_small_patch16_224", "real"], help="'real': ViT-Tiny")
    parser.add_argument("--samples", type=int, default=4, help="gradient-pass images")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--micro-batch", type=int, default=2)
    parser.add_argument("--ga-samples", type=int, default=16, help="search images")
    parser.add_argument("--ga-batch-size", type=int, default=16)
    parser.add_argument("--ga-evals", type=int, default=4)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (see the module docstring)")
    parser.add_argument("--no-readme", action="store_true", help="print only; leave benchmarks/README.md alone")
    args = parser.parse_args()
    args.command = " ".join(["python -m benchmarks.scoring", *sys.argv[1:]])
    args.load_before = os.getloadavg()[0]
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    shared = shared_data()

    start = time.perf_counter()
    results = []
    for name in args.models:
        data = "demo"
        if name == "real":
            if not (shared / REAL_CHECKPOINT).is_file():
                print(f"skipping the real ViT-Tiny: {shared / REAL_CHECKPOINT} not found", file=sys.stderr)
                continue
            model, source = load_model("vit_tiny_patch16_224", checkpoint=shared / REAL_CHECKPOINT)
            label, data = "ViT-Ti/16 (real, CIFAR-10)", str(shared / REAL_DATA)
        else:
            model, source = load_model(name, pretrained=False)
            label = f"{name} (random init, demo images)"
        settings = ScoreSettings(
            data=data,
            samples=args.samples,
            batch_size=args.batch_size,
            micro_batch=args.micro_batch,
            ga_samples=args.ga_samples,
            ga_batch_size=args.ga_batch_size,
            ga_evals=args.ga_evals,
            ga_pairs=PAPER_GA_PAIRS,  # as measured in benchmarks/README.md
            preprocessing=source.pretrained_cfg,
            device=args.device,
        )
        print(f"{label}: measuring", file=sys.stderr)
        results.append(run_model(label, model, settings, device))
    section = render(results, args, device, time.perf_counter() - start)
    print(section)
    if not args.no_readme:
        write_readme_block(BLOCK, section)


if __name__ == "__main__":
    main()
