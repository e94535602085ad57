"""Weight-correction benchmark: kNN accuracy of the real ViT-Tiny sliced with and without ``--correct``.

Run from the repository root (needs ``../shared/data`` or ``$SNAPVIT_SHARED_DATA``; CPU is fine, a GPU is used
when present)::

    python -m benchmarks.correction                    # FLOPs fractions 0.75 0.6 0.5; updates benchmarks/README.md
    python -m benchmarks.correction --fractions 0.5 --no-readme

The pretrained ViT-Tiny/16 (Tiny-ImageNet fine-tune) is scored into a bundle (``--method``, default
``magnitude``), then sliced at each FLOPs fraction three ways: plain slicing, correction with dense inputs (the
reference) and correction with sequential inputs. Calibration: ``--samples`` (1000) seeded random images of the
CIFAR-10 subset's ``x_train``. Evaluation: kNN (k = 20, majority vote, L2-normalised CLS features after the final
norm) with all of ``x_train`` as memory and ``x_test`` as queries, images resized to 224 bicubic, mean = std = 0.5.
Every model gets its own train and test features. Features of each model are cached in ``--work`` so an
interrupted run resumes; results go to ``--work/results.json`` as they come.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from benchmarks.common import REAL_CHECKPOINT as CHECKPOINT
from benchmarks.common import REAL_DATA as DATA
from benchmarks.common import features, machine, shared_data, write_readme_block
from snapvit_cli.correction.apply import correct_bundle_slice
from snapvit_cli.correction.solver import parse_damping
from snapvit_cli.data import ImageSet, load_images, preprocess
from snapvit_cli.devices import resolve_device
from snapvit_cli.elastic.bundle import ElasticBundle, load_bundle, write_bundle
from snapvit_cli.elastic.surgery import build_model
from snapvit_cli.evaluation.knn import knn_accuracy
from snapvit_cli.models.loading import load_model
from snapvit_cli.scoring import score_model

VARIANTS = ("plain", "dense", "sequential")


def make_bundle(work: Path, method: str) -> ElasticBundle:
    """Score the real ViT-Tiny once (cached in ``work``)."""
    path = work / f"vit_tiny.{method}.bundle.safetensors"
    if not path.is_file():
        model, source = load_model("vit_tiny_patch16_224", checkpoint=shared_data() / CHECKPOINT)
        write_bundle(path, model, source, score_model(model, method))
    return load_bundle(path)


def evaluate(
    name: str, model: torch.nn.Module, sets: dict[str, ImageSet], cfg: dict, work: Path, device: torch.device
) -> float:
    """kNN top-1 of ``model`` (features cached under ``name``)."""
    cache = work / f"features-{name}.pt"
    if cache.is_file():
        feats = torch.load(cache)
    else:
        feats = {split: features(model, images, preprocess(cfg), device=device) for split, images in sets.items()}
        torch.save(feats, cache)
    train, test = sets["train"], sets["test"]
    return knn_accuracy(feats["train"], train.labels, feats["test"], test.labels, k=20, vote="majority")


def run(args: argparse.Namespace) -> dict:
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    results_path = work / "results.json"
    results = json.loads(results_path.read_text()) if results_path.is_file() else {}
    device = resolve_device(args.device)
    damping = parse_damping(args.damping)
    bundle = make_bundle(work, args.method)
    cfg = bundle.source.pretrained_cfg
    npz = str(shared_data() / DATA)
    sets = {"train": load_images(npz, "train"), "test": load_images(npz, "test")}
    calibration = load_images(npz, "train", samples=args.samples, seed=args.seed)

    def save() -> None:
        results_path.write_text(json.dumps(results, indent=2) + "\n")

    if "dense" not in results:
        results["dense"] = {"accuracy": evaluate("dense", bundle.dense_model(), sets, cfg, work, device)}
        save()
    for fraction in args.fractions:
        plan = bundle.plan(flops=fraction)
        for variant in VARIANTS:
            key = f"{fraction:g}-{variant}"
            if key in results:
                continue
            entry: dict = {"flops_fraction": plan.flops_fraction, "params": plan.params}
            if variant == "plain":
                model = bundle.slice(plan)
            else:
                corrected = correct_bundle_slice(
                    bundle,
                    plan,
                    calibration,
                    batch_size=args.batch_size,
                    damping=damping,
                    sequential=variant == "sequential",
                    device=device,
                )
                model = build_model(bundle.skeleton(), plan.widths, corrected.state)
                entry["correction_s"] = corrected.seconds
                entry["layers"] = [vars(layer) for layer in corrected.layers]
            entry["accuracy"] = evaluate(key, model, sets, cfg, work, device)
            results[key] = entry
            save()
            print(f"{key}: {entry['accuracy']:.4f}", flush=True)
    results["setup"] = {
        "method": args.method,
        "samples": args.samples,
        "seed": args.seed,
        "damping": str(damping),
        "batch_size": args.batch_size,
        "device": str(device),
        "cpu_threads": torch.get_num_threads(),
        "machine": machine(),
        "torch": torch.__version__,
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
    }
    save()
    return results


def table(results: dict, fractions: list[float]) -> str:
    setup = results["setup"]
    lines = [
        f"Dense ViT-Tiny: kNN top-1 **{results['dense']['accuracy']:.3f}**. Scores: `{setup['method']}`; "
        f"calibration: {setup['samples']} images of `x_train` (seed {setup['seed']}), damping `{setup['damping']}`, "
        f"batch {setup['batch_size']}, {setup['device']} ({setup['cpu_threads']} threads), "
        f"torch {setup['torch']}, {setup['date']}.",
        "",
        "| FLOPs kept | plain slice | corrected, dense inputs | corrected, sequential inputs "
        "| correction time dense / sequential |",
        "|---|---|---|---|---|",
    ]
    for fraction in fractions:
        row = {v: results[f"{fraction:g}-{v}"] for v in VARIANTS}
        lines.append(
            f"| {row['plain']['flops_fraction']:.3f} | {row['plain']['accuracy']:.3f} "
            f"| {row['dense']['accuracy']:.3f} | {row['sequential']['accuracy']:.3f} "
            f"| {row['dense']['correction_s']:.0f} s / {row['sequential']['correction_s']:.0f} s |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.75, 0.6, 0.5])
    parser.add_argument("--method", default="magnitude", help="scoring method for the bundle")
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--damping", default="mean:0.01")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default=None)
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "snapvit-correction-benchmark")
    parser.add_argument("--no-readme", action="store_true", help="print the table only")
    args = parser.parse_args()
    if not (shared_data() / CHECKPOINT).is_file():
        sys.exit(f"{shared_data() / CHECKPOINT} not found; set SNAPVIT_SHARED_DATA")
    started = time.perf_counter()
    results = run(args)
    text = table(results, args.fractions)
    print(text)
    print(f"total {time.perf_counter() - started:.0f} s")
    if not args.no_readme:
        write_readme_block("correction-benchmark", text)


if __name__ == "__main__":
    main()
