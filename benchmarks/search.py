"""Search study (issue 17): kNN accuracy of method ``snapvit`` under several xNES search settings at about equal
search cost, on the real ViT-Tiny and the CIFAR-10 subset, against its gradient scores alone and SNIP.

The gradient pass does not depend on the search settings, so it runs once per seed (``--samples`` images, seed s,
the ``snapvit score`` defaults otherwise) and is cached; ``gradient`` (the raw ``sqgrad`` scores, i.e.
``ga_evals=0``) and ``snip`` (SNIP-magnitude of the same gradients: what ``score_model(..., "snip")`` computes from
the identical pass) are read from it. Each setting then runs only the search, wired as method ``snapvit`` does
(:class:`~snapvit_cli.scoring.search.FeatureFitness` on a second draw of ``ga_samples`` images with seed s + 1,
:func:`~snapvit_cli.scoring.search.search_multipliers`). Its scores go through the product path: an elastic bundle
(``write_bundle`` + ``load_bundle``), ``bundle.plan(flops=f)`` (heads removed at the MLP ratio − 0.15) and
``bundle.slice``. Evaluation: kNN top-1 (k = 20, majority vote, L2-normalised CLS features), memory = ``x_train``
(all 5000 by default), queries = ``x_test`` (1000), as in ``benchmarks/accuracy.py``.

Equal cost: a search evaluation runs the sliced model of each pair on every search image, so the cost is about
evaluations × search images (× pairs, the same four everywhere). The reference point is the paper's search
(``paper``, the default before this study): 50 evaluations on ``ga_samples`` = ``samples`` images.

    python -m benchmarks.search --seeds 0 &  python -m benchmarks.search --seeds 1 &     # two processes, one core each
    python -m benchmarks.search --table                    # the table of what is measured so far; updates the README

Everything is cached in ``--work`` (gradients per seed, scores per setting and seed, features per model) and every
result is written to ``--work/results/SETTING-seedS.json`` as it comes, so an interrupted run resumes and several
processes (one per seed) can share the folder.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

import torch

from benchmarks.accuracy import balanced_subset
from benchmarks.common import (
    REAL_CHECKPOINT,
    REAL_DATA,
    features,
    log,
    machine,
    shared_data,
    write_json,
    write_readme_block,
)
from snapvit_cli.adapters import HEADS, MLP, get_adapter
from snapvit_cli.data import load_images, preprocess
from snapvit_cli.elastic.bundle import load_bundle, write_bundle
from snapvit_cli.evaluation.knn import knn_accuracy
from snapvit_cli.models.loading import load_model
from snapvit_cli.scoreset import ScoreSet
from snapvit_cli.scoring.baselines import snip_unit_scores
from snapvit_cli.scoring.calibration import calibration_images, input_config, preprocessed, scoring_mode
from snapvit_cli.scoring.gradient import gradient_pass, unit_scores
from snapvit_cli.scoring.search import (
    FeatureFitness,
    check_evaluations,
    check_pairs,
    search_multipliers,
    search_pairs,
)
from snapvit_cli.scoring.settings import DEFAULT_GA_FLOPS, PAPER_GA_PAIRS, ScoreSettings, format_pairs

FRACTIONS = DEFAULT_GA_FLOPS
# What a search depends on besides the gradients and its seed: the key of its cached scores.
SEARCH_KEYS = (
    "ga_batch_size",
    "ga_evals",
    "ga_sigma",
    "ga_bounds",
    "ga_pairs",
    "ga_init",
    "ga_evaluation",
    "pca_components",
    "cka_init",
    "min_keep",
    "ga_samples",
    "ga_population",
)
BASELINES = ("gradient", "snip")
# name -> search settings; "images" is a fraction of --samples (1.0: the default ga_samples = samples), "pairs"
# "flops" means the (MLP, heads) removal pairs that slice to the FLOPs fractions above (the default search since
# this study; "paper": PAPER_GA_PAIRS). Most informative first.
SETTINGS: dict[str, dict] = {
    "paper": {"ga_evals": 50, "images": 1.0},
    "evals150": {"ga_evals": 150, "images": 1 / 3},
    "pairs-flops": {"ga_evals": 50, "images": 1.0, "ga_pairs": "flops"},
    "pairs-flops-evals150": {"ga_evals": 150, "images": 1 / 3, "ga_pairs": "flops"},
    "init-ones": {"ga_evals": 50, "images": 1.0, "ga_init": (1.0, 1.0)},
    "evals400": {"ga_evals": 400, "images": 1 / 8},
    "evals150-sigma0.15": {"ga_evals": 150, "images": 1 / 3, "ga_sigma": 0.15},
    "evals150-pop8": {"ga_evals": 150, "images": 1 / 3, "ga_population": 8},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--settings", default=",".join([*SETTINGS, *BASELINES]), help="comma-separated, in order")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--fractions", default=",".join(map(str, FRACTIONS)), help="FLOPs fractions to keep")
    parser.add_argument("--memory", type=int, default=5000, help="kNN memory images from x_train (class-balanced)")
    parser.add_argument("--queries", type=int, default=1000, help="query images from x_test (class-balanced)")
    parser.add_argument("--samples", type=int, default=128, help="gradient images (and the default search images)")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "snapvit-search-study")
    parser.add_argument("--table", action="store_true", help="only print the table of the results in --work")
    parser.add_argument("--no-readme", action="store_true", help="with --table: do not update benchmarks/README.md")
    args = parser.parse_args()

    names = [n for n in args.settings.split(",") if n]
    unknown = sorted(set(names) - set(SETTINGS) - set(BASELINES))
    if unknown:
        sys.exit(f"unknown settings: {', '.join(unknown)}; known: {', '.join([*SETTINGS, *BASELINES])}")
    seeds = [int(s) for s in args.seeds.split(",") if s]
    fractions = [float(f) for f in args.fractions.split(",") if f]
    if args.table:
        rows = load_results(args.work, names)
        table = render(rows, FRACTIONS, args)
        print(table)
        if not args.no_readme:
            write_readme_block("search-benchmark", table)
        return

    data_dir = shared_data()
    if not (data_dir / REAL_CHECKPOINT).is_file():
        sys.exit(f"{data_dir / REAL_CHECKPOINT} not found: set SNAPVIT_SHARED_DATA to the shared data folder")
    npz = str(data_dir / REAL_DATA)
    model, source = load_model("vit_tiny_patch16_224", checkpoint=data_dir / REAL_CHECKPOINT)
    adapter = get_adapter(model)
    transform = preprocess(source.pretrained_cfg)
    memory = balanced_subset(load_images(npz, "train"), args.memory, 0)
    queries = balanced_subset(load_images(npz, "test"), args.queries, 0)
    flops_pairs = matched_pairs(adapter, FRACTIONS)
    log(
        f"memory {len(memory)}, queries {len(queries)}, threads {torch.get_num_threads()}; FLOPs-matched pairs "
        f"{format_pairs(flops_pairs)}"
    )
    study = Study(args, model, source, adapter, transform, memory, queries, npz, flops_pairs)
    for name in names:
        for seed in seeds:
            study.run(name, seed, fractions)


def matched_pairs(adapter, fractions) -> tuple[tuple[float, float], ...]:
    """The (MLP, heads) removal ratios that ``plan(flops=f)`` resolves each fraction to, as the default search, but
    rounded to 4 decimals as the study measured them (at most one MLP neuron apart; the cache keys depend on them)."""
    pairs = search_pairs(adapter, ScoreSettings(ga_flops=tuple(fractions)))
    return tuple((round(mlp, 4), round(heads, 4)) for mlp, heads in pairs)


class Study:
    """The cached steps of one (setting, seed): gradient pass, search, bundle, slices, kNN."""

    def __init__(self, args, model, source, adapter, transform, memory, queries, npz, flops_pairs) -> None:
        self.args, self.model, self.source, self.adapter = args, model, source, adapter
        self.transform, self.memory, self.queries, self.npz = transform, memory, queries, npz
        self.flops_pairs = flops_pairs
        self.device = torch.device("cpu")
        for sub in ("gradients", "scores", "features", "results", "bundles"):
            (args.work / sub).mkdir(parents=True, exist_ok=True)

    def settings(self, seed: int, name: str | None = None) -> ScoreSettings:
        """ScoreSettings of the gradient pass (``name`` None) or of a search setting."""
        values: dict = {"data": self.npz, "samples": self.args.samples, "seed": seed, "device": "cpu"}
        if name is not None:
            spec = SETTINGS[name]
            values.update({k: v for k, v in spec.items() if k.startswith("ga_")})
            values["ga_samples"] = max(1, round(self.args.samples * spec["images"]))
            values["ga_pairs"] = self.flops_pairs if spec.get("ga_pairs") == "flops" else PAPER_GA_PAIRS
        return ScoreSettings(**values)

    def key(self, *parts) -> str:
        return hashlib.sha256(
            json.dumps([REAL_CHECKPOINT, self.args.samples, *parts], default=str).encode()
        ).hexdigest()[:12]

    def raw_scores(self, seed: int) -> dict:
        """The gradient pass of ``seed``, reduced to sqgrad (``gradient``) and SNIP scores; cached."""
        path = self.args.work / "gradients" / f"seed{seed}-{self.key('gradients', seed)}.pt"
        if path.is_file():
            return torch.load(path)
        settings = self.settings(seed)
        log(f"gradient pass, seed {seed}: {settings.samples} images")
        with scoring_mode(self.model, self.device):
            run = gradient_pass(self.model, self.adapter, settings, self.device)
        out = {
            "gradient": unit_scores(run.grads, settings.score),
            "snip": snip_unit_scores(run.grads, settings.snip_alpha),
            "seconds": run.seconds,
        }
        _save(out, path)
        log(f"gradient pass, seed {seed}: {run.seconds:.0f} s")
        return out

    def scores(self, name: str, seed: int) -> tuple[dict[str, torch.Tensor], dict]:
        """Scores of a setting at ``seed`` and what its search did; cached."""
        raw = self.raw_scores(seed)
        if name in BASELINES:
            return raw[name], {"gradients_s": raw["seconds"]}
        settings = self.settings(seed, name)
        path = self.args.work / "scores" / f"{name}-seed{seed}-{self.key(_search_record(settings))}.pt"
        if path.is_file():
            return torch.load(path)
        check_pairs(self.adapter, settings)
        check_evaluations(self.adapter, settings)
        log(f"{name} seed {seed}: search, {settings.ga_evals} evaluations on {settings.ga_sample_count} images")
        start = time.perf_counter()
        with scoring_mode(self.model, self.device):
            images = calibration_images(settings, settings.ga_sample_count, settings.seed + 1)
            settings = replace(settings, progress=_progress(f"{name} seed {seed}"))
            fitness = FeatureFitness(
                self.model,
                self.adapter,
                preprocessed(images, input_config(self.model, settings)),
                raw["gradient"],
                settings,
                self.device,
            )
            result = search_multipliers(fitness, settings)
        seconds = time.perf_counter() - start
        scores = {
            MLP: raw["gradient"][MLP] * result.mlp_weight[:, None],
            HEADS: raw["gradient"][HEADS] * result.head_weight,
        }
        info = {
            "gradients_s": raw["seconds"],
            "search_s": seconds,
            "ga_samples": len(images),
            "population": result.population,
            "evaluations": result.evaluations,
            "updates": result.updates,
            "initial_fitness": result.initial_fitness,
            "best_fitness": result.best_fitness,
            "settings": _search_record(settings),
        }
        log(
            f"{name} seed {seed}: search {seconds:.0f} s, fitness {result.initial_fitness:.4f} -> "
            f"{result.best_fitness:.4f} ({result.updates} updates)"
        )
        _save((scores, info), path)
        return scores, info

    def run(self, name: str, seed: int, fractions: list[float]) -> None:
        result_path = self.args.work / "results" / f"{name}-seed{seed}.json"
        record = json.loads(result_path.read_text()) if result_path.is_file() else {}
        scores, info = self.scores(name, seed)
        spec = SETTINGS.get(name, {})
        record.update({"setting": name, "seed": seed, **info, "accuracy": record.get("accuracy", {})})
        record["pairs"] = "flops" if spec.get("ga_pairs") == "flops" else ("paper" if name in SETTINGS else None)
        record["gmacs"] = record.get("gmacs", {})
        bundle_path = self.args.work / "bundles" / f"{name}-seed{seed}-{self.key(name, seed, info)}.safetensors"
        method = "snapvit" if name in SETTINGS else name
        if not bundle_path.is_file():
            record_settings = {"study_setting": name, "seed": seed, **info.get("settings", {})}
            write_bundle(
                bundle_path, self.model, self.source, ScoreSet(scores[MLP], scores[HEADS], method, record_settings)
            )
        bundle = load_bundle(bundle_path)
        for fraction in fractions:
            if str(fraction) in record["accuracy"]:
                continue
            plan = bundle.plan(flops=fraction)
            label = f"{name} seed {seed} @ {fraction}"
            key = self.key(name, seed, fraction, info, self.memory.indices.tolist(), self.queries.indices.tolist())
            path = self.args.work / "features" / f"{name}-seed{seed}-{fraction}-{key}.pt"
            if path.is_file():
                train, test = torch.load(path)
            else:
                sliced = bundle.slice(plan)
                train = features(sliced, self.memory, self.transform, label=f"{label} memory", batch_size=50)
                test = features(sliced, self.queries, self.transform, label=f"{label} queries", batch_size=50)
                _save((train, test), path)
            accuracy = knn_accuracy(train, self.memory.labels, test, self.queries.labels, k=20)
            record["accuracy"][str(fraction)] = accuracy
            record["gmacs"][str(fraction)] = plan.gmacs
            record["memory"], record["queries"] = len(self.memory), len(self.queries)
            record["samples"] = self.args.samples
            write_json(result_path, record)
            log(f"{label}: kNN top-1 {accuracy:.4f} ({plan.gmacs:.3f} GMACs)")
        write_json(result_path, record)


def load_results(work: Path, names: list[str]) -> list[list[dict]]:
    """Per setting (in ``names`` order), the result records of every seed found in ``work``."""
    rows = []
    for name in names:
        found = sorted((work / "results").glob(f"{name}-seed*.json"))
        records = [json.loads(p.read_text()) for p in found]
        records = [r for r in records if r["setting"] == name]
        if records:
            rows.append(records)
    return rows


def render(rows: list[list[dict]], fractions, args) -> str:
    head = (
        "| setting | search images | evals | population | σ | init | pairs | search wall s | fitness initial → best | "
        + " | ".join(f"kNN @ {f:g}" for f in fractions)
        + " |"
    )
    lines = [head, "|---|---:|---:|---:|---:|---|---|---:|---|" + "---:|" * len(fractions)]
    for records in rows:
        first = records[0]
        s = first.get("settings") or {}
        searched = "search_s" in first
        cells = [
            first["setting"],
            str(first["ga_samples"]) if searched else "–",
            str(first["evaluations"]) if searched else "0",
            str(first["population"]) if searched else "–",
            f"{s['ga_sigma']:g}" if searched else "–",
            f"{s['ga_init'][0]:g}→{s['ga_init'][1]:g}" if searched else "–",
            first["pairs"] or "–",
            _mean_spread([r["search_s"] for r in records], "{:.0f}") if searched else "–",
            _fitness(records) if searched else "–",
        ]
        for f in fractions:
            values = [100 * r["accuracy"][str(f)] for r in records if str(f) in r["accuracy"]]
            cells.append(_mean_spread(values, "{:.1f}") + (f" (n={len(values)})" if len(values) == 1 else ""))
        lines.append("| " + " | ".join(cells) + " |")
    seeds = sorted({r["seed"] for records in rows for r in records})
    protocol = sorted(
        {(r.get("samples", args.samples), r.get("memory"), r.get("queries")) for records in rows for r in records}
    )
    described = "; ".join(f"{s} gradient images, kNN memory {m}, queries {q}" for s, m, q in protocol)
    note = (
        f"\nTable of `python -m benchmarks.search --table` at {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; "
        f"{machine()}, load average {os.getloadavg()[0]:.1f}. Seeds {', '.join(map(str, seeds))}: mean ± half the "
        f"spread (max − min) over them; (n=1): one seed only; –: not measured. {described}. Search wall times are "
        "per seed, each seed's process on one core of a machine shared with other jobs."
    )
    return "\n".join(lines) + note


def _search_record(settings: ScoreSettings) -> dict:
    """What a search depends on besides the gradients (the seed is in the file name)."""
    return settings.record(SEARCH_KEYS)


def _mean_spread(values: list[float], fmt: str) -> str:
    if not values:
        return "–"
    mean = sum(values) / len(values)
    half = (max(values) - min(values)) / 2
    return fmt.format(mean) + (f" ± {fmt.format(half)}" if len(values) > 1 else "")


def _fitness(records: list[dict]) -> str:
    initial = sum(r["initial_fitness"] for r in records) / len(records)
    best = sum(r["best_fitness"] for r in records) / len(records)
    return f"{initial:.4f} → {best:.4f}"


def _progress(label: str):
    last: dict[str, int] = {}

    def report(stage: str, done: int, total: int, best: float | None) -> None:
        if stage != "xnes":
            return
        step = max(1, total // 5)
        if done == total or done - last.get(stage, 0) >= step:
            last[stage] = done
            log(f"  {label}: xnes {done}/{total}" + (f", best {best:.5f}" if best is not None else ""))

    return report


def _save(obj, path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    tmp.replace(path)


if __name__ == "__main__":
    main()
