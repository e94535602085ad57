"""Accuracy of every scoring method at several FLOPs budgets: the real ViT-Tiny on the CIFAR-10 subset.

Protocol (docs/method.md §10.2): each method scores the dense model once into an elastic bundle; the bundle is sliced
to each FLOPs fraction; CLS features (classifier removed, images resized to 224 bicubic, the model's mean/std) of
a kNN memory from ``x_train`` and queries from ``x_test`` are classified with k = 20, majority vote, on
L2-normalised features. Calibration images for scoring are drawn from ``x_train`` by the scorer itself (labels are
not used by any method here). Dense features are cached, keyed by the images and weights.

    python -m benchmarks.accuracy                      # every method, the defaults below
    python -m benchmarks.accuracy --methods snapvit,random --memory 5000 --queries 1000

Prints progress on stderr and a Markdown table on stdout; ``--json FILE`` also writes every number.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from benchmarks.common import REAL_CHECKPOINT as CHECKPOINT
from benchmarks.common import REAL_DATA as DATA
from benchmarks.common import features, log, machine, shared_data
from snapvit_cli.data import ImageSet, load_images, preprocess
from snapvit_cli.elastic.bundle import load_bundle, write_bundle
from snapvit_cli.evaluation.knn import knn_accuracy
from snapvit_cli.models.loading import load_model
from snapvit_cli.scoring import METHODS, score_model

FRACTIONS = (1.0, 0.9, 0.75, 0.6, 0.5)


def balanced_subset(images: ImageSet, count: int, seed: int) -> ImageSet:
    """``count`` images with (as nearly as possible) the same number per class, seeded; all when count ≥ N."""
    if count >= len(images):
        return images
    generator = torch.Generator().manual_seed(seed)
    classes = images.num_classes
    per_class = [torch.nonzero(images.labels == c).flatten() for c in range(classes)]
    picked = [rows[torch.randperm(len(rows), generator=generator)] for rows in per_class]
    order = torch.cat([torch.stack([p[i] for p in picked if i < len(p)]) for i in range(max(map(len, picked)))])
    chosen = order[:count].sort().values
    subset = copy.copy(images)  # shares the reader
    subset.indices, subset.labels = images.indices[chosen], images.labels[chosen]
    subset.samples, subset.seed = count, seed
    return subset


def evaluate(model, memory: ImageSet, queries: ImageSet, transform, label: str) -> float:
    train = features(model, memory, transform, label=f"{label} memory", batch_size=50)
    test = features(model, queries, transform, label=f"{label} queries", batch_size=50)
    return knn_accuracy(train, memory.labels, test, queries.labels, k=20)


def cached_dense(model, memory, queries, transform, cache: Path, weights_sha: str) -> tuple[torch.Tensor, torch.Tensor]:
    key = hashlib.sha256(
        json.dumps([weights_sha, memory.indices.tolist(), queries.indices.tolist()]).encode()
    ).hexdigest()[:16]
    path = cache / f"dense-{key}.pt"
    if path.is_file():
        log(f"dense features from cache {path}")
        return torch.load(path)
    pair = (
        features(model, memory, transform, label="dense memory", batch_size=50),
        features(model, queries, transform, label="dense queries", batch_size=50),
    )
    cache.mkdir(parents=True, exist_ok=True)
    torch.save(pair, path)
    return pair


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated scoring methods")
    parser.add_argument("--fractions", default=",".join(map(str, FRACTIONS)), help="FLOPs fractions to keep")
    parser.add_argument("--memory", type=int, default=5000, help="kNN memory images from x_train (class-balanced)")
    parser.add_argument("--queries", type=int, default=1000, help="query images from x_test (class-balanced)")
    parser.add_argument("--samples", type=int, default=128, help="calibration images (gradient pass and search)")
    parser.add_argument("--ga-samples", type=int, default=64, help="search images (a second seeded draw)")
    parser.add_argument("--ga-evals", type=int, default=50)
    parser.add_argument(
        "--preset", default="paper", help="search preset (the table in benchmarks/README.md: paper; or default)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "snapvit-accuracy-cache")
    parser.add_argument("--json", type=Path, default=None, help="also write all results to this file")
    args = parser.parse_args()

    data_dir = shared_data()
    if not (data_dir / CHECKPOINT).is_file():
        sys.exit(f"{data_dir / CHECKPOINT} not found: set SNAPVIT_SHARED_DATA to the shared data folder")
    methods = [m for m in args.methods.split(",") if m]
    fractions = [float(f) for f in args.fractions.split(",")]
    npz = str(data_dir / DATA)

    model, source = load_model("vit_tiny_patch16_224", checkpoint=data_dir / CHECKPOINT)
    transform = preprocess(source.pretrained_cfg)
    memory = balanced_subset(load_images(npz, "train"), args.memory, args.seed)
    queries = balanced_subset(load_images(npz, "test"), args.queries, args.seed)
    log(f"kNN memory {len(memory)} (x_train), queries {len(queries)} (x_test); torch threads {torch.get_num_threads()}")
    dense_train, dense_test = cached_dense(model, memory, queries, transform, args.cache, source.weights_sha256)
    dense_acc = knn_accuracy(dense_train, memory.labels, dense_test, queries.labels, k=20)
    log(f"dense kNN top-1 {dense_acc:.4f}")

    settings = {
        "data": npz,
        "samples": args.samples,
        "ga_samples": args.ga_samples,
        "ga_evals": args.ga_evals,
        "preset": args.preset,
    }
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for method in methods:
            log(f"{method}: scoring")
            start = time.perf_counter()
            scores = score_model(model, method, seed=args.seed, progress=_progress(method), **settings)
            seconds = time.perf_counter() - start
            bundle = load_bundle(write_bundle(Path(tmp) / f"{method}.safetensors", model, source, scores))
            row = {"method": method, "score_s": seconds, "timings": scores.timings, "accuracy": {}, "gmacs": {}}
            for fraction in fractions:
                if fraction >= 1.0:
                    row["accuracy"][fraction], row["gmacs"][fraction] = dense_acc, bundle.plan(flops=1.0).gmacs
                    continue
                plan = bundle.plan(flops=fraction)
                accuracy = evaluate(bundle.slice(plan), memory, queries, transform, f"{method} @ {fraction}")
                row["accuracy"][fraction], row["gmacs"][fraction] = accuracy, plan.gmacs
                log(f"{method} @ {fraction}: {accuracy:.4f} ({plan.gmacs:.3f} GMACs)")
            if method == "snapvit":
                row["xnes"] = scores.settings["xnes"]
            results.append(row)

    print(_table(results, fractions))
    report = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{machine()}, {torch.get_num_threads()} threads",
        "args": {k: str(v) for k, v in vars(args).items()},
        "memory": len(memory),
        "queries": len(queries),
        "dense_accuracy": dense_acc,
        "results": results,
    }
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    print(f"\n{report['date']}, {report['machine']}")


def _progress(method: str):
    last = {}

    def report(stage: str, done: int, total: int, best: float | None) -> None:
        step = max(1, total // 10)
        if done == total or done - last.get(stage, 0) >= step:
            last[stage] = done
            extra = f", best fitness {best:.5f}" if best is not None else ""
            log(f"  {method}: {stage} {done}/{total}{extra}")

    return report


def _table(results: list[dict], fractions: list[float]) -> str:
    head = "| method | " + " | ".join(f"{f:g}" for f in fractions) + " | scoring wall time (s) |"
    rule = "|---|" + "---:|" * (len(fractions) + 1)
    rows = [
        f"| {r['method']} | "
        + " | ".join(f"{100 * r['accuracy'][f]:.1f}" for f in fractions)
        + f" | {r['score_s']:.0f} |"
        for r in results
    ]
    return "\n".join([head, rule, *rows])


if __name__ == "__main__":
    main()
