"""Where a ranking's accuracy comes from (issue 28, part 2): how many units each block keeps (the allocation) or
which units it keeps (the order within each block).

Method snapvit's search multiplies the raw scores by one value per block for its MLP neurons and one per head
(docs/method.md §5.1): it can move units between blocks, but never changes which neuron of a block goes first. So
two rankings can be crossed without any new scoring: a hybrid of allocation A and order O gives block l's k-th
highest score of A to the neuron (head) that O ranks k-th in block l. Every block then holds the same score
values as under A, so any budget keeps exactly A's per-block widths, filled with O's choice of units.

For each seed, every (allocation, order) pair of the study's bundles (``benchmarks/study.py``: ``default``,
``gradient``, ``snip``) is written as a bundle, sliced to 0.75 and 0.5 FLOPs and evaluated on the study's
protocols, with the study's evaluation (the diagonal pairs are the study's own bundles, measured again here)::

    OMP_NUM_THREADS=1 python -m benchmarks.decompose --work /work/study --seeds 0
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from benchmarks.common import log, machine, write_json, write_readme_block
from benchmarks.study import MODELS, PROTOCOLS, Study
from snapvit_cli.adapters import HEADS, MLP
from snapvit_cli.data import preprocess
from snapvit_cli.elastic.bundle import load_bundle, write_bundle
from snapvit_cli.scoreset import ScoreSet

SOURCES = ("default", "gradient", "snip")


def crossed(allocation: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """Scores [blocks, units] holding ``allocation``'s values of each block, assigned in ``order``'s ranking."""
    values = allocation.sort(dim=1, descending=True, stable=True).values
    ranks = torch.argsort(order, dim=1, descending=True, stable=True)
    out = torch.empty_like(values)
    out.scatter_(1, ranks, values)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True, help="the study's --work folder")
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--fractions", default="0.75,0.5")
    parser.add_argument("--table", action="store_true", help="only print the table of what is measured")
    parser.add_argument("--no-readme", action="store_true", help="do not update benchmarks/README.md")
    args = parser.parse_args()
    study = Study(args.work, args.samples)
    folder = args.work / "decompose"
    folder.mkdir(exist_ok=True)
    fractions = [float(f) for f in args.fractions.split(",")]
    for seed in [] if args.table else [int(s) for s in args.seeds.split(",")]:
        for model_name in MODELS:
            paths = {r: study.bundle_path(model_name, r, seed) for r in SOURCES}
            if not all(p.is_file() for p in paths.values()):
                continue
            model, source = study.model(model_name)
            scores = {r: load_bundle(p).source_scores() for r, p in paths.items()}
            for allocation in SOURCES:
                for order in SOURCES:
                    name = f"{model_name}-{allocation}-x-{order}-seed{seed}-n{args.samples}"
                    bundle_path = folder / f"{name}.safetensors"
                    if not bundle_path.is_file():
                        mixed = {k: crossed(scores[allocation][k], scores[order][k]) for k in (MLP, HEADS)}
                        record = {"allocation": allocation, "order": order, "seed": seed}
                        write_bundle(bundle_path, model, source, ScoreSet(mixed[MLP], mixed[HEADS], "crossed", record))
                    bundle = load_bundle(bundle_path)
                    for fraction in fractions:
                        for protocol, (owner, _) in PROTOCOLS.items():
                            path = folder / f"{protocol}-{allocation}-x-{order}-seed{seed}-{fraction:g}.json"
                            if owner != model_name or protocol == "cifar-knn" or path.is_file():
                                continue
                            start = time.perf_counter()
                            plan = bundle.plan(flops=fraction)
                            metrics = study.evaluate(bundle.slice(plan), protocol, preprocess(source.pretrained_cfg))
                            widths = {"mlp": list(plan.widths.mlp), "heads": list(plan.widths.heads)}
                            result = {"allocation": allocation, "order": order, "seed": seed, "fraction": fraction}
                            write_json(path, {**result, **metrics, "widths": widths})
                            log(f"{path.name}: {metrics} ({time.perf_counter() - start:.0f} s)")
    text = table(folder)
    print(text)
    if not args.no_readme:
        write_readme_block("decompose-benchmark", text)


def table(folder: Path) -> str:
    """Per protocol and budget: rows = allocation, columns = order; mean over the seeds measured."""
    lines = []
    found = [
        json.loads(p.read_text()) | {"protocol": p.name.split("-")[0] + "-" + p.name.split("-")[1]}
        for p in sorted(folder.glob("*.json"))
    ]
    for protocol, (_, metric) in PROTOCOLS.items():
        for fraction in sorted({r["fraction"] for r in found}, reverse=True):
            mine = [r for r in found if r["protocol"] == protocol and r["fraction"] == fraction]
            if not mine:
                continue
            lines += ["", f"**{protocol} @ {fraction:g} FLOPs** ({metric}; rows: allocation, columns: order)", ""]
            lines += ["| allocation \\ order | " + " | ".join(SOURCES) + " |", "|---|" + "---:|" * len(SOURCES)]
            for allocation in SOURCES:
                cells = []
                for order in SOURCES:
                    values = [100 * r[metric] for r in mine if (r["allocation"], r["order"]) == (allocation, order)]
                    cells.append(f"{sum(values) / len(values):.1f} ({len(values)})" if values else "–")
                lines.append(f"| {allocation} | " + " | ".join(cells) + " |")
    lines.append(
        f"\nTable of `python -m benchmarks.decompose --work {folder.parent} --table` at "
        f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; {machine()}. Each cell: mean over the seeds measured (n)."
    )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
