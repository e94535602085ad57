"""Weight-correction benchmark: kNN accuracy of the real ViT-Tiny sliced with and without ``--correct``.

Run from the repository root (needs ``../shared/data`` or ``$SNAPVIT_SHARED_DATA``; CPU is fine, a GPU is used
when present)::

    python -m benchmarks.correction                  # snapvit + gradient bundles at 0.9 0.75 0.5; updates the README
    python -m benchmarks.correction --methods magnitude --fractions 0.5 --variants plain,default --no-readme
    python -m benchmarks.correction --variants reference-dense,reference-sequential --memory 1000 --no-readme
    python -m benchmarks.correction --variants plain,stored,default --fractions 0.75 0.5   # issue 17's stored stats
    python -m benchmarks.correction --methods snapvit-default --variants plain,stored --fractions 0.75 0.5
    python -m benchmarks.correction --layers gradient-0.75-reference-sequential   # per-layer errors of a result

The pretrained ViT-Tiny/16 (Tiny-ImageNet fine-tune) is scored into a bundle per ``--methods`` (the data-driven
methods with the accuracy benchmark's settings: 128 gradient images, 64 search images, the paper's search of 50
evaluations, seed 0; ``snapvit-default``: method snapvit with the default search on the same 128 images), then
sliced at each FLOPs fraction in the ``--variants`` ways:

- ``plain``: no correction;
- ``reference-dense`` / ``reference-sequential``: the least-squares fit before issue 18, every token alike, damping
  ``mean:0.01``, no guard, dense or sequential inputs (fitted on the same images as the default: every 4th
  calibration image is held back, here only to measure errors on images the fit did not see);
- ``default`` / ``default-dense``: ``snapvit slice --correct`` as it is now (token weighting, damping chosen on
  held-back images, guard), sequential or dense inputs;
- ``stored``: ``snapvit slice --correct`` without images, on statistics of the same calibration images stored in
  the bundle (``score --correction-stats``; added here to the cached bundle with ``save_with_statistics``).

Calibration: ``--samples`` (256) seeded random images of the CIFAR-10 subset's ``x_train``. Evaluation: kNN (k = 20,
majority vote, L2-normalised CLS features after the final norm), memory = ``x_train`` (all 5000, or a
class-balanced ``--memory`` subset), queries = ``x_test`` (1000), images resized to 224 bicubic, mean = std = 0.5.
Features of each model are cached in ``--work`` (a subset of a cached memory is read from it), so an interrupted
run resumes; results go to ``--work/results.json`` as they come, with every correction's per-layer errors.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import torch

from benchmarks.accuracy import balanced_subset
from benchmarks.common import README, shared_data
from benchmarks.common import REAL_CHECKPOINT as CHECKPOINT
from benchmarks.common import REAL_DATA as DATA
from snapvit_cli.adapters import get_adapter
from snapvit_cli.correction.apply import correct_bundle_slice
from snapvit_cli.correction.solver import DEFAULT_DAMPING
from snapvit_cli.correction.statistics import collect_correction_statistics
from snapvit_cli.correction.stored import correct_from_bundle
from snapvit_cli.data import ImageSet, load_images, make_loader, preprocess
from snapvit_cli.devices import resolve_device
from snapvit_cli.elastic.bundle import ElasticBundle, load_bundle, write_bundle
from snapvit_cli.elastic.surgery import build_model
from snapvit_cli.evaluation.knn import knn_accuracy
from snapvit_cli.models.loading import load_model
from snapvit_cli.scoring import score_model

BEGIN, END = "<!-- correction-benchmark:begin -->", "<!-- correction-benchmark:end -->"
#: The fit before issue 18 (every token alike, damping mean:0.01, no guard), on the same fit images as the
#: default: every 4th calibration image is held back, only to measure errors on images the fit did not see.
REFERENCE = {"tokens": "all", "damping": DEFAULT_DAMPING, "guard": False}
#: variant -> keyword arguments of correct_bundle_slice (None: the plain slice)
VARIANTS: dict[str, dict | None] = {
    "plain": None,
    "reference-dense": {**REFERENCE, "sequential": False},
    "reference-sequential": {**REFERENCE, "sequential": True},
    "default": {},
    "default-dense": {"sequential": False},
    "stored": {},  # handled apart: the statistics come from the bundle
}
# The data-driven methods' settings (the paper's search, as the table was first measured), and for the pseudo-method
# ``snapvit-default`` method snapvit with the current default search on the same 128 gradient images (150
# evaluations on a third of them, FLOPs-matched pairs).
SCORING = {"preset": "paper", "samples": 128, "ga_samples": 64, "ga_evals": 50, "seed": 0}
DEFAULT_SCORING = {"samples": 128, "seed": 0}


def with_statistics(work: Path, bundle: ElasticBundle, method: str, calibration: ImageSet, device) -> ElasticBundle:
    """The bundle with correction statistics of ``calibration`` (cached in ``work``, keyed by the images)."""
    path = work / f"vit_tiny.{method}.stats-{calibration.samples}-{calibration.seed}.safetensors"
    if not path.is_file():
        stats = collect_correction_statistics(
            bundle.dense_model(),
            calibration,
            bundle.source.pretrained_cfg,
            resolution=bundle.cost().resolution,
            device=device,
        )
        print(f"{method}: statistics of {calibration.samples} images collected in {stats.seconds:.1f} s", flush=True)
        bundle.save_with_statistics(path, stats)
    return load_bundle(path)


def make_bundle(work: Path, method: str) -> ElasticBundle:
    """Score the real ViT-Tiny once per method (cached in ``work``)."""
    path = work / f"vit_tiny.{method}.bundle.safetensors"
    if not path.is_file():
        model, source = load_model("vit_tiny_patch16_224", checkpoint=shared_data() / CHECKPOINT)
        data = {"data": str(shared_data() / DATA)}
        if method == "snapvit-default":
            scores = score_model(model, "snapvit", **data, **DEFAULT_SCORING)
        elif method in ("magnitude", "random", "lamp"):
            scores = score_model(model, method)
        else:
            scores = score_model(model, method, **data, **SCORING)
        write_bundle(path, model, source, scores)
    return load_bundle(path)


@torch.no_grad()
def features(model: torch.nn.Module, images: ImageSet, cfg: dict, device: torch.device) -> torch.Tensor:
    """Pooled embeddings (classifier disabled) of every image, in batches."""
    adapter = get_adapter(model.eval().to(device))
    loader = make_loader(images, preprocess(cfg), batch_size=100)
    return torch.cat([adapter.features(x.to(device)).float().cpu() for x, _ in loader])


def evaluate(
    name: str, make: Callable[[], torch.nn.Module], memory: ImageSet, queries: ImageSet, cfg: dict, work: Path, device
) -> float:
    """kNN top-1 of the model ``make()`` builds; features cached under ``name`` with their image indices (a cached
    superset of the memory is subset, and then the model is not even built)."""
    cache = work / f"features-{name}.pt"
    feats = torch.load(cache) if cache.is_file() else None
    if feats is None or not set(memory.indices.tolist()) <= set(feats["train_indices"]):
        model = make()
        feats = {
            "train_indices": memory.indices.tolist(),
            "train": features(model, memory, cfg, device),
            "test": features(model, queries, cfg, device),
        }
        temporary = cache.with_suffix(f".{os.getpid()}.tmp")  # runs sharing --work never read half a file
        torch.save(feats, temporary)
        temporary.replace(cache)
    row = {index: i for i, index in enumerate(feats["train_indices"])}
    train = feats["train"][[row[i] for i in memory.indices.tolist()]]
    return knn_accuracy(train, memory.labels, feats["test"], queries.labels, k=20, vote="majority")


def run(args: argparse.Namespace) -> dict:
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    results_path = work / "results.json"
    results = json.loads(results_path.read_text()) if results_path.is_file() else {}
    device = resolve_device(args.device)
    npz = str(shared_data() / DATA)
    memory = balanced_subset(load_images(npz, "train"), args.memory, seed=0)
    queries = load_images(npz, "test")
    calibration = load_images(npz, "train", samples=args.samples, seed=args.seed)
    tag = f"m{len(memory)}"

    mine: set[str] = set()

    def save() -> None:
        """Merge this run's entries into the file (other runs may share ``--work``) and replace it atomically."""
        current = json.loads(results_path.read_text()) if results_path.is_file() else {}
        current.update({key: results[key] for key in mine})
        results.update(current)
        temporary = results_path.with_suffix(f".{os.getpid()}.tmp")
        temporary.write_text(json.dumps(current, indent=2) + "\n")
        temporary.replace(results_path)

    for method in args.methods:
        bundle = make_bundle(work, method)
        cfg = bundle.source.pretrained_cfg
        if f"dense-{tag}" not in results and not args.no_dense:
            results[f"dense-{tag}"] = evaluate("dense", bundle.dense_model, memory, queries, cfg, work, device)
            mine.add(f"dense-{tag}")
            save()
        for fraction in args.fractions:
            plan = bundle.plan(flops=fraction)
            for variant in args.variants:
                key = f"{method}-{fraction:g}-{variant}"
                if f"{key}-{tag}" in results:
                    continue
                entry: dict = results.get(key, {"flops_fraction": plan.flops_fraction, "params": plan.params})
                settings = VARIANTS[variant]

                def make(bundle=bundle, plan=plan, settings=settings, entry=entry, variant=variant, method=method):
                    if settings is None:
                        return bundle.slice(plan)
                    if variant == "stored":
                        stored = with_statistics(work, bundle, method, calibration, device)
                        corrected = correct_from_bundle(stored, plan)
                    else:
                        corrected = correct_bundle_slice(
                            bundle, plan, calibration, batch_size=args.batch_size, device=device, **settings
                        )
                    entry.update(correction_s=corrected.seconds, correction=corrected.to_json())
                    return build_model(bundle.skeleton(), plan.widths, corrected.state)

                entry[tag] = evaluate(key, make, memory, queries, cfg, work, device)
                results[key] = entry
                results[f"{key}-{tag}"] = entry[tag]
                mine.update((key, f"{key}-{tag}"))
                save()
                print(f"{key} ({tag}): {entry[tag]:.4f}", flush=True)
    mine.add("setup")
    results["setup"] = {
        "samples": args.samples,
        "seed": args.seed,
        "batch_size": args.batch_size,
        "device": str(device),
        "cpu_threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
    }
    save()
    return results


def table(results: dict, methods: list[str], fractions: list[float], variants: list[str], tag: str) -> str:
    setup = results["setup"]
    lines = [
        f"Dense ViT-Tiny: kNN top-1 **{results[f'dense-{tag}']:.3f}** (memory {tag[1:]} images). Calibration: "
        f"{setup['samples']} images of `x_train` (seed {setup['seed']}), batch {setup['batch_size']}, "
        f"{setup['device']} ({setup['cpu_threads']} threads), torch {setup['torch']}, {setup['date']}.",
        "",
        "| scores | FLOPs kept | " + " | ".join(variants) + " |",
        "|---|---|" + "---|" * len(variants),
    ]
    for method in methods:
        for fraction in fractions:
            cells = []
            for variant in variants:
                entry = results.get(f"{method}-{fraction:g}-{variant}", {})
                value = entry.get(tag)
                reverted = len(entry.get("correction", {}).get("reverted", []))
                cells.append("–" if value is None else f"{value:.3f}" + (f" ({reverted} reverted)" if reverted else ""))
            entries = [results.get(f"{method}-{fraction:g}-{variant}", {}) for variant in variants]
            flops = next((e["flops_fraction"] for e in entries if "flops_fraction" in e), fraction)
            lines.append(f"| `{method}` | {flops:.3f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def layers_table(entry: dict) -> str:
    """Per corrected layer: damping chosen and mean squared output error before → after, for the class token and
    the other tokens, on the fit images and on the held-back ones (from a results entry's correction record)."""
    record = entry["correction"]
    distances = record["feature_error"] or {}  # none without images (stored statistics)
    if distances and "cka_distance" not in distances:  # from before the CKA guard: relative squared distance only
        distances = {"relative_mse": distances}
    measured = "; ".join(
        f"{name} plain {values['plain']:.3f}, corrected {values['corrected']:.3f}, final {values['final']:.3f}"
        for name, values in distances.items()
    )
    lines = [
        f"tokens `{record['tokens']}`, damping `{record['damping']}`, {record['inputs']} inputs, "
        f"{record['images']} fit + {record['heldout_images']} held-back images; final features against the dense "
        f"model's on the held-back images: {measured}"
        + (f"; reverted {record['reverted']}" if record["reverted"] else ""),
        "",
        "| layer | damping | CLS fit | CLS held-back | patches fit | patches held-back |",
        "|---|---|---|---|---|---|",
    ]
    for layer in record["layers"]:
        pairs = [layer[k] for k in ("readout_fit", "readout_heldout", "rest_fit", "rest_heldout")]
        cells = " | ".join(f"{b:.3g} → {a:.3g}" + (" ✗" if a > b else "") for b, a in pairs)
        lines.append(f"| {layer['tensor'].removesuffix('.weight')} | {layer['damping']} | {cells} |")
    return "\n".join(lines)


def update_readme(text: str) -> None:
    content = README.read_text()
    start, end = content.index(BEGIN) + len(BEGIN), content.index(END)
    README.write_text(content[:start] + "\n" + text + "\n" + content[end:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", type=lambda s: s.split(","), default=["snapvit", "gradient"])
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.9, 0.75, 0.5])
    parser.add_argument("--variants", type=lambda s: s.split(","), default=["plain", "default"])
    parser.add_argument("--samples", type=int, default=256, help="calibration images for the correction")
    parser.add_argument("--memory", type=int, default=5000, help="kNN memory images (class-balanced subset)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default=None)
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "snapvit-correction-benchmark")
    parser.add_argument("--no-readme", action="store_true", help="print the table only")
    parser.add_argument("--no-dense", action="store_true", help="skip the dense model (a parallel run measures it)")
    parser.add_argument("--layers", metavar="KEY", help="print the per-layer errors of a stored result and exit")
    parser.add_argument("--table-only", action="store_true", help="build the table from stored results only")
    args = parser.parse_args()
    if args.layers:
        print(layers_table(json.loads((args.work / "results.json").read_text())[args.layers]))
        return
    unknown = set(args.variants) - set(VARIANTS)
    if unknown:
        sys.exit(f"unknown variants {sorted(unknown)}; choose from {list(VARIANTS)}")
    if not (shared_data() / CHECKPOINT).is_file():
        sys.exit(f"{shared_data() / CHECKPOINT} not found; set SNAPVIT_SHARED_DATA")
    started = time.perf_counter()
    results = json.loads((args.work / "results.json").read_text()) if args.table_only else run(args)
    if args.no_dense:
        print(json.dumps({k: v for k, v in results.items() if k.endswith(f"-m{min(args.memory, 5000)}")}, indent=1))
        return
    text = table(results, args.methods, args.fractions, args.variants, f"m{min(args.memory, 5000)}")
    print(text)
    print(f"total {time.perf_counter() - started:.0f} s")
    if not args.no_readme:
        update_readme(text)


if __name__ == "__main__":
    main()
