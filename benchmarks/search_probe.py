"""What limits the search (issue 28, part 2): the search's own fitness, measured on every bundle of the accuracy
study (``benchmarks/study.py``) on the images it was searched on and on images it never saw, per budget, and how
well each predicts the accuracy the study measured.

For each bundle (model, ranking, seed) the fitness of method snapvit (docs/method.md §5.3: 1 − mean cosine
similarity of pruned to dense CLS features in the dense features' PCA space) is computed for each FLOPs-matched
pair the default search uses, i.e. for exactly the slice ``plan(flops=f)`` cuts, on

- ``search``: the seed's search draw of x_calib (``subset(256 // 3, seed + 1)``, the default preset's images);
- ``held-out``: 256 x_calib images in neither the seed's gradient draw nor its search draws.

If a search lowers ``search`` but not ``held-out``, it fits its images; if ``held-out`` does not order the bundles
as their accuracy does, the fitness is not what the protocols reward. Two other distances of the same pruned
features are measured on the held-out images to see whether they would: ``cka`` (1 − linear CKA with the dense
features: similarity structure, blind to rotations and scale, which kNN and linear probes are blind to too) and
``overlap`` (1 − the mean share of each image's 10 nearest held-out neighbours, by cosine, that the pruned and the
dense features agree on: what a kNN classifier reads). A last table asks whether the held-out fitness could choose,
per budget, between the search's ranking and SNIP's (a bundle with one score set per budget band would have to):
for each seed it picks the ``default`` or the ``snip`` slice by held-out fitness and compares with their measured
accuracy. Run after (or while) the study runs::

    OMP_NUM_THREADS=1 python -m benchmarks.search_probe --work /work/study       # probes every bundle; a table
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from benchmarks.common import log, machine, write_json, write_readme_block
from benchmarks.study import FRACTIONS, MODELS, PROTOCOLS, RANKINGS, TINY_DATA, Cell, Study
from snapvit_cli.adapters import get_adapter
from snapvit_cli.elastic.bundle import load_bundle
from snapvit_cli.scoring.calibration import input_config, preprocessed
from snapvit_cli.scoring.search import FeatureFitness, removed_units
from snapvit_cli.scoring.settings import ScoreSettings


def probe(study: Study, model_name: str, ranking: str, seed: int) -> dict:
    """Per-budget fitness of the bundle's slices on the seed's search images and on held-out images."""
    model, _ = study.model(model_name)
    adapter = get_adapter(model)
    bundle = load_bundle(study.bundle_path(model_name, ranking, seed))
    scores = bundle.source_scores()
    settings = ScoreSettings(ga_flops=FRACTIONS, device="cpu")
    calib = study.images(TINY_DATA, "calib")
    search_count = ScoreSettings(samples=study.samples).ga_sample_count
    search = calib.subset(search_count, seed + 1)
    used = {int(i) for s in (study.samples, search_count) for i in calib.subset(s, seed + 1).indices}
    used |= {int(i) for i in calib.subset(study.samples, seed).indices}
    heldout = calib.subset(len(calib), 0)
    keep = torch.tensor([i for i, j in enumerate(heldout.indices.tolist()) if j not in used][: study.samples])
    heldout.indices = heldout.indices[keep]
    out = {}
    config, cpu = input_config(model, settings), torch.device("cpu")
    with torch.no_grad():
        for name, images in (("search", search), ("heldout", heldout)):
            fitness = FeatureFitness(model, adapter, preprocessed(images, config), scores, settings, cpu)
            candidates = [removed_units(scores, pair, settings.min_keep) for pair in fitness.pairs]
            pruned = fitness.pruned_features(candidates)  # [pairs, n, E]
            out[name] = [
                1.0 - float(torch.cosine_similarity(fitness.project(z), fitness.target, dim=1).mean()) for z in pruned
            ]
            out[f"{name}_images"] = len(images)
            if name == "heldout":
                dense = fitness.features()[0]
                out["cka"] = [1.0 - linear_cka(z, dense) for z in pruned]
                out["overlap"] = [1.0 - neighbour_overlap(z, dense) for z in pruned]
    return out


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Linear CKA of two feature sets [n, E] of the same images (1: the same similarity structure)."""
    x, y = x.double() - x.double().mean(0), y.double() - y.double().mean(0)
    return float((x.T @ y).pow(2).sum() / ((x.T @ x).norm() * (y.T @ y).norm()))


def neighbour_overlap(x: torch.Tensor, y: torch.Tensor, k: int = 10) -> float:
    """Mean share of each image's ``k`` nearest other images (cosine) that the two feature sets agree on."""

    def neighbours(f: torch.Tensor) -> torch.Tensor:
        f = torch.nn.functional.normalize(f.double(), dim=1)
        sims = f @ f.T
        sims.fill_diagonal_(-2.0)
        return sims.topk(k, dim=1).indices

    a, b = neighbours(x), neighbours(y)
    shared = (a[:, :, None] == b[:, None, :]).any(dim=2).double().sum(dim=1)
    return float((shared / k).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True, help="the study's --work folder")
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--table", action="store_true", help="only print the table of what is probed")
    parser.add_argument("--no-readme", action="store_true", help="do not update benchmarks/README.md")
    args = parser.parse_args()
    study = Study(args.work, args.samples)
    seeds = [int(s) for s in args.seeds.split(",") if s]
    folder = args.work / "probes"
    folder.mkdir(exist_ok=True)
    if not args.table:
        log(f"probing on {machine()}")
        for seed in seeds:
            for model_name in MODELS:
                for ranking in RANKINGS:
                    path = folder / f"{model_name}-{ranking}-seed{seed}-n{args.samples}.json"
                    if path.is_file() or not study.bundle_path(model_name, ranking, seed).is_file():
                        continue
                    start = time.perf_counter()
                    record = probe(study, model_name, ranking, seed)
                    write_json(path, record)
                    log(f"{path.name}: {record} ({time.perf_counter() - start:.0f} s)")
    text = render(args.work, args.samples, seeds)
    print(text)
    if not args.no_readme:
        write_readme_block("search-probe-benchmark", text)


def render(work: Path, samples: int, seeds: list[int]) -> str:
    """Mean fitness per ranking and budget, and per protocol and budget the rank correlation (Spearman) of the
    fitness with the accuracy over all bundles with both."""
    probes = {}
    for path in sorted((work / "probes").glob(f"*-n{samples}.json")):
        model_name, rest = path.name.split("-", 1)
        ranking, seed = rest.rsplit("-seed", 1)
        seed = int(seed.split("-")[0])
        if seed in seeds:
            probes[model_name, ranking, seed] = json.loads(path.read_text())
    lines = ["| model | ranking | " + " | ".join(f"search / held-out @ {f:g}" for f in FRACTIONS) + " |"]
    lines.append("|---|---|" + "---:|" * len(FRACTIONS))
    for model_name in MODELS:
        for ranking in RANKINGS:
            found = [p for (m, r, _), p in probes.items() if (m, r) == (model_name, ranking)]
            if not found:
                continue
            cells = []
            for i in range(len(FRACTIONS)):
                s = sum(p["search"][i] for p in found) / len(found)
                h = sum(p["heldout"][i] for p in found) / len(found)
                cells.append(f"{s:.4f} / {h:.4f}")
            lines.append(f"| {model_name} | {ranking} ({len(found)}) | " + " | ".join(cells) + " |")
    measures = ("search", "heldout", "cka", "overlap")
    lines += ["", "| protocol | bundles | " + " | ".join(f"ρ @ {f:g}" for f in FRACTIONS) + " |"]
    lines.append("|---|---:|" + "---:|" * len(FRACTIONS))
    for protocol, (model_name, _) in PROTOCOLS.items():
        cells, count = [], 0
        for i, fraction in enumerate(FRACTIONS):
            pairs = []
            for (m, ranking, seed), p in probes.items():
                accuracy = _plain_accuracy(work, samples, Cell(protocol, ranking, seed, fraction, "plain"))
                if m == model_name and accuracy is not None and all(k in p for k in measures):
                    pairs.append(([p[k][i] for k in measures], accuracy))
            count = max(count, len(pairs))
            if len(pairs) < 3:
                cells.append("–")
                continue
            accuracy = [a for _, a in pairs]
            rho = [_spearman([x[j] for x, _ in pairs], accuracy) for j in range(len(measures))]
            cells.append(" / ".join(f"{r:+.2f}" for r in rho))
        if count:
            lines.append(f"| {protocol} | {count} | " + " | ".join(cells) + " |")
    lines += ["", *_choice_table(work, samples, probes)]
    lines.append(
        f"\nFitness: lower is closer to the dense model. ρ: Spearman correlation with accuracy of the fitness on the "
        "search images / on held-out images / of 1 − linear CKA / of 1 − neighbour overlap (both on held-out "
        f"images); −1: the measure orders the bundles exactly as their accuracy does. Choice: per seed, of the "
        f"`{CHOICE[0]}` and `{CHOICE[1]}` slices at a budget the one with the lower held-out fitness; `right`: "
        "seeds in which it is the more accurate one (a tie counts as right); accuracies are means over those "
        "seeds. Table of `python -m "
        f"benchmarks.search_probe --work {work} --table`; {machine()}, load average "
        f"{os.getloadavg()[0]:.1f}."
    )
    return "\n".join(lines)


# The two rankings a bundle with one score set per budget band would choose between (issue 28): the search's and
# SNIP's raw ranking, which lead at opposite ends of the budget range.
CHOICE = ("default", "snip")


def _choice_table(work: Path, samples: int, probes: dict) -> list[str]:
    """Per protocol and budget: how often the held-out fitness picks the more accurate of the two CHOICE slices
    of one seed, and the mean accuracy of each and of the one picked."""
    lines = [
        f"| protocol | budget | seeds | right | `{CHOICE[0]}` | `{CHOICE[1]}` | picked by held-out fitness |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for protocol, (model_name, _) in PROTOCOLS.items():
        for i, fraction in enumerate(FRACTIONS):
            rows = []
            for seed in sorted({s for (m, _, s) in probes if m == model_name}):
                fitness, accuracy = [], []
                for ranking in CHOICE:
                    measured = _plain_accuracy(work, samples, Cell(protocol, ranking, seed, fraction, "plain"))
                    if (model_name, ranking, seed) not in probes or measured is None:
                        break
                    fitness.append(probes[model_name, ranking, seed]["heldout"][i])
                    accuracy.append(measured)
                else:
                    picked = accuracy[0] if fitness[0] <= fitness[1] else accuracy[1]
                    rows.append((*accuracy, picked, picked >= max(accuracy)))
            if rows:
                means = [100 * sum(r[j] for r in rows) / len(rows) for j in range(3)]
                right = sum(r[3] for r in rows)
                lines.append(
                    f"| {protocol} | {fraction:g} | {len(rows)} | {right} | "
                    + " | ".join(f"{m:.1f}" for m in means)
                    + " |"
                )
    return lines


def _plain_accuracy(work: Path, samples: int, cell: Cell) -> float | None:
    """The headline metric the study measured for ``cell``, or None when it is not measured yet."""
    path = work / "results" / f"{cell.name}-n{samples}.json"
    return json.loads(path.read_text())[PROTOCOLS[cell.protocol][1]] if path.is_file() else None


def _spearman(x: list[float], y: list[float]) -> float:
    def ranks(values: list[float]) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.float64).argsort().argsort().double()

    rx, ry = ranks(x), ranks(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    return float((rx * ry).sum() / (rx.norm() * ry.norm()).clamp_min(1e-12))


if __name__ == "__main__":
    main()
