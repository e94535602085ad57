"""Host memory of the xNES search, evaluation by evaluation, with and without handing freed memory back.

    python -m benchmarks.search_memory                    # real ViT-Tiny + CIFAR subset if ../shared is there
    python -m benchmarks.search_memory --images 256 --evals 6

One process: the gradient scores and the search's dense features are computed once, then ``--evals`` fitness
evaluations run first with :func:`snapvit_cli.scoring.heap.release_freed_memory` disabled, then as shipped; the
resident set size (``/proc/self/statm``) is printed after each. Linux only.
"""

from __future__ import annotations

import argparse
from unittest import mock

import numpy as np
import torch

from benchmarks.common import REAL_CHECKPOINT, REAL_DATA, log, machine, shared_data
from snapvit_cli.adapters import get_adapter
from snapvit_cli.scoring import search
from snapvit_cli.scoring.calibration import calibration_images, input_config, preprocessed, scoring_mode
from snapvit_cli.scoring.gradient import gradient_pass, unit_scores
from snapvit_cli.scoring.search import FeatureFitness
from snapvit_cli.scoring.settings import ScoreSettings


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=128, help="search images")
    parser.add_argument("--evals", type=int, default=4)
    args = parser.parse_args()

    from snapvit_cli.models.loading import load_model

    data = shared_data()
    if (data / REAL_CHECKPOINT).is_file():
        model, _ = load_model("vit_tiny_patch16_224", checkpoint=data / REAL_CHECKPOINT)
        npz = str(data / REAL_DATA)
    else:
        model, _ = load_model("vit_tiny_patch16_224", pretrained=False)
        npz = "demo"
    adapter = get_adapter(model)
    device = torch.device("cpu")
    settings = ScoreSettings(data=npz, samples=8, ga_samples=args.images, seed=0, device="cpu")
    with scoring_mode(model, device):
        raw = unit_scores(gradient_pass(model, adapter, settings, device).grads, settings.score)
        images = preprocessed(calibration_images(settings, args.images, 1), input_config(model, settings))
        fitness = FeatureFitness(model, adapter, images, raw, settings, device)
        width = adapter.num_blocks * (1 + adapter.widths().heads[0])
        rows = []
        for label, patch in (("without malloc_trim", True), ("as shipped", False)):
            context = mock.patch.object(search, "release_freed_memory", lambda: None) if patch else mock.MagicMock()
            with context:
                sizes = []
                for i in range(args.evals):
                    fitness(np.random.default_rng(i).uniform(0.0, 2.0, width))
                    sizes.append(rss_mb())
                    log(f"{label}: evaluation {i + 1}: {sizes[-1]:.0f} MB")
            rows.append((label, sizes))
    print(f"{machine()}; {args.images} search images, ViT-Tiny; RSS after each evaluation (MB):\n")
    print("| | " + " | ".join(str(i + 1) for i in range(args.evals)) + " |")
    print("|---|" + "---:|" * args.evals)
    for label, sizes in rows:
        print(f"| {label} | " + " | ".join(f"{s:.0f}" for s in sizes) + " |")


if __name__ == "__main__":
    main()
