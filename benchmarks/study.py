"""Accuracy study (issue 28): every ranking, budget and correction on two real models and three protocols, with seeds.

Models and protocols (``../shared/data``, see its README):

- ``tiny``: the ViT-Tiny/16 fine-tuned on Tiny-ImageNet. ``tiny-knn``: kNN on ``tinyimagenet50_dev.npz`` (its own
  domain; memory ``x_train`` 2500, queries ``x_test`` 2500). ``cifar-knn``: kNN on the CIFAR-10 subset (another
  domain; memory ``x_train`` 5000, queries ``x_test`` 1000). kNN: k = 20, majority vote, L2-normalised CLS features
  after the final norm, 224 bicubic, the model's mean/std.
  Forward passes run under bfloat16 autocast (``snapvit eval --dtype bfloat16``): a ViT-Tiny forward took 12.4 ms
  per image against 41 ms in float32 on this CPU (AMX; batch 50, one thread, same load), and the dense
  ``tiny-knn`` differs from float32 by 3 of 2500 queries (0.7396 against 0.7408).
- ``in1k``: the ImageNet-1k ViT-Tiny/16 classifier. ``tiny-top1``: top-1 of its logits on ``x_test`` (2500), in the
  1000-way output (``top1``, the headline) and among the 50 classes' logits (``top1_50``).

Both models are scored on ``x_calib`` (1000 images of 50 Tiny-ImageNet classes the protocols never query; no labels
used): ``--samples`` images drawn with the seed, through ``score_model`` exactly as ``snapvit score`` runs it.
Rankings: ``default`` (method snapvit, today's default search), ``paper`` (``--preset paper``), ``gradient`` and
``snip``. Each bundle is sliced with ``plan(flops=f)`` and evaluated as:

- ``plain``: the slice;
- ``stored`` / ``stored-unguarded``: ``slice --correct`` on statistics of the same calibration images stored in the
  bundle, with and without the per-layer guard;
- ``images`` / ``images-unguarded``: ``slice --correct --data`` on those images, with and without the guards;
- ``images-readout``: ``images`` with the stored correction's per-layer class-token guard as well (``slice --correct
  --data``'s default since this study; ``images`` measures the default before it);
- ``corp-like``: CORP's compensation (arXiv 2602.05243) as it applies to whole heads and neurons: a ridge fit of
  each consumer layer on those images, every token alike, dense inputs, ridge 0.01 × mean diag H, no guard
  (CORP's intercept, a bias update, is left out: snapvit's correction re-fits weights only);
- ``stored-cls``: stored statistics, class-token rows only (``--correct-tokens cls``: all a class-token store needs);
- ``stored-f32``: stored statistics rounded to float32 (what ``score --correction-stats`` stores since this study;
  ``stored`` and the other ``stored-*`` variants use float64 ones, the layout of earlier bundles).

Every step is a cached task in ``--work`` (bundles, statistics, one JSON per result), claimed with a lock file, so any
number of worker processes share the folder and an interrupted run resumes where it stopped::

    OMP_NUM_THREADS=1 python -m benchmarks.study --work /work/study &    # one worker per core
    OMP_NUM_THREADS=1 python -m benchmarks.study --work /work/study &
    python -m benchmarks.study --work /work/study --table              # what is measured so far; updates the README

Phases (``--phases`` runs them in the order given; by default 1, 2, 3, 5, 4, 13, 15, 12, 14, 9, 16, 17, 10, 18, 6,
7, 8, 11):
1 the plain slices at 0.75/0.5 on the Tiny-ImageNet protocols for the first seed; 2 those of ``tiny-knn`` for the
other seeds; 3 every correction of the first seed's ``default`` and ``gradient`` bundles; 4 the plain ``tiny-top1``
slices of the other seeds; 5 the first seed's candidate searches on ``tiny-knn`` (``snip-search``, ``relative``,
``mild``: docs/method.md §5); 6 the guarded corrections; 7 the unguarded ones and ``corp-like``; 8 the statistics
variants; 9 the budgets 0.9/0.6; 10 the CIFAR protocol; 11 every candidate on both Tiny-ImageNet protocols;
12 ``images-readout``; 13 the stored corrections and the image-driven ones at 0.5 of the other seeds' ``default``
and ``gradient`` bundles; 14 ``mild-all`` (``mild`` on all the calibration images) for the first seed; 15 the first
seed's stored corrections at 0.75 and the plain ``cifar-knn`` slices at 0.75/0.5; 16 the guard checks: every main
bundle's corrections at 0.5, guarded and unguarded, on both Tiny-ImageNet protocols; 17 the image-driven and
unguarded stored corrections at 0.9 of the searched bundles on ``tiny-knn`` (where the stored one lost); 18 the
rows of phases 3, 13 and 15 that had fewer than three seeds, and ``paper``'s stored correction at 0.75. A worker
finishes its step and stops when ``--work/STOP`` exists.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

import torch

from benchmarks.common import log, machine, revision, shared_data, write_json, write_readme_block
from snapvit_cli.correction.apply import correct_bundle_slice
from snapvit_cli.correction.result import DEFAULT_TOKENS
from snapvit_cli.correction.solver import DEFAULT_DAMPING
from snapvit_cli.correction.statistics import CorrectionStatistics, collect_correction_statistics
from snapvit_cli.correction.stored import correct_from_bundle
from snapvit_cli.data import ImageSet, load_images, make_loader, preprocess
from snapvit_cli.elastic.bundle import load_bundle, write_bundle
from snapvit_cli.elastic.records import STATS_STORAGE, STATS_STORAGE_FLOAT64
from snapvit_cli.elastic.surgery import build_model
from snapvit_cli.evaluation.evaluate import extract_features
from snapvit_cli.evaluation.knn import knn_accuracy
from snapvit_cli.models.loading import load_model
from snapvit_cli.scoring import score_model

TINY_DATA = "tinyimagenet50_dev.npz"
CIFAR_DATA = "cifar10_subset.npz"
MODELS = {
    "tiny": "vit_tiny_patch16_224.tinyimagenet.safetensors",
    "in1k": "vit_tiny_patch16_224.in1k.safetensors",
}
# protocol -> (model, headline metric)
PROTOCOLS = {"tiny-knn": ("tiny", "knn"), "tiny-top1": ("in1k", "top1"), "cifar-knn": ("tiny", "knn")}
# protocol -> every metric it reports, in table order
METRICS = {"tiny-knn": ("knn",), "tiny-top1": ("top1", "top1_50"), "cifar-knn": ("knn",)}
# ranking -> (scoring method, score_model keywords besides data, samples and seed)
RANKINGS: dict[str, tuple[str, dict]] = {
    "default": ("snapvit", {}),
    "paper": ("snapvit", {"preset": "paper"}),
    "gradient": ("gradient", {}),
    "snip": ("snip", {}),
    # candidates for the default search (docs/method.md §5.3), screened on the first seed
    "relative": ("snapvit", {"ga_fitness": "relative"}),
    "block-heads": ("snapvit", {"ga_heads": "block"}),
    "mean-result": ("snapvit", {"ga_result": "mean"}),
    "snip-search": ("snapvit", {"score": "snip"}),
    # one score set per budget band (issue 28): the search over the mild budgets only
    "mild": ("snapvit", {"ga_flops": (0.9, 0.75)}),
    # the same on all the calibration images instead of a third (the probe found "mild" fitting its 85 images)
    "mild-all": ("snapvit", {"ga_flops": (0.9, 0.75), "ga_sample_fraction": 1.0}),
}
MAIN = ("default", "paper", "gradient", "snip")
CANDIDATES = ("snip-search", "relative", "mild", "mild-all", "block-heads", "mean-result")
VARIANTS = (
    "plain",
    "stored",
    "images",
    "images-readout",
    "stored-unguarded",
    "images-unguarded",
    "corp-like",
    "stored-cls",
    "stored-f32",
)
FRACTIONS = (0.9, 0.75, 0.6, 0.5)
# The dtype of every evaluation forward pass (see the module docstring).
DTYPE = "bfloat16"


@dataclass(frozen=True)
class Cell:
    """One measured number: a ranking's bundle, sliced to ``fraction``, corrected as ``variant``, on ``protocol``."""

    protocol: str
    ranking: str
    seed: int
    fraction: float
    variant: str

    @property
    def model(self) -> str:
        return PROTOCOLS[self.protocol][0]

    @property
    def name(self) -> str:
        return f"{self.protocol}-{self.ranking}-seed{self.seed}-{self.fraction:g}-{self.variant}"


def plan_cells(seeds: list[int], phases: list[int]) -> Iterator[Cell]:
    """The cells of the study in the order they are worth measuring (see the module docstring)."""
    tiny = ("tiny-knn", "tiny-top1")
    first, rest = seeds[:1], seeds[1:]
    searched = ("default", "paper")
    corrections = ("stored-unguarded", "images-unguarded", "corp-like")
    every = ("stored", "images", *corrections, "stored-cls", "stored-f32")
    guard_checks = ("stored", "stored-unguarded", "images-readout", "images-unguarded")
    order = {
        1: [(first, p, f, MAIN, ("plain",)) for f in (0.75, 0.5) for p in tiny],
        2: [(rest, "tiny-knn", f, MAIN, ("plain",)) for f in (0.75, 0.5)],
        3: [(first, p, f, ("default", "gradient"), every) for f in (0.5, 0.75) for p in tiny],
        4: [(rest, "tiny-top1", f, MAIN, ("plain",)) for f in (0.75, 0.5)],
        5: [(first, "tiny-knn", f, CANDIDATES[:3], ("plain",)) for f in (0.75, 0.5)],
        6: [(seeds, p, f, MAIN, ("stored", "images")) for f in (0.5, 0.75) for p in tiny],
        7: [(seeds, p, f, MAIN, corrections) for f in (0.5, 0.75) for p in tiny],
        8: [(seeds, p, f, searched, ("stored-cls", "stored-f32")) for f in (0.5, 0.75) for p in tiny],
        9: [(seeds, p, f, MAIN, ("plain",)) for f in (0.9, 0.6) for p in tiny]
        + [(seeds, p, f, searched, ("stored",)) for f in (0.9, 0.6) for p in tiny],
        10: [(seeds, "cifar-knn", f, MAIN, ("plain",)) for f in (0.75, 0.5, 0.9, 0.6)]
        + [(seeds, "cifar-knn", f, searched, ("stored",)) for f in (0.75, 0.5, 0.9, 0.6)],
        11: [(first, p, f, CANDIDATES, ("plain",)) for f in (0.75, 0.5) for p in tiny],
        12: [(seeds, p, f, MAIN, ("images-readout",)) for f in (0.5, 0.75) for p in tiny],
        13: [(rest, p, f, ("default", "gradient"), ("stored", "stored-f32")) for f in (0.5, 0.75) for p in tiny]
        + [(rest, "tiny-knn", 0.5, ("default", "gradient"), ("images-readout", "images"))],
        14: [(first, "tiny-knn", f, ("mild-all",), ("plain",)) for f in (0.75, 0.5)],
        15: [(first, p, 0.75, ("default", "gradient"), ("stored",)) for p in tiny]
        + [(seeds, "cifar-knn", f, MAIN, ("plain",)) for f in (0.75, 0.5)],
        16: [(seeds, p, 0.5, MAIN, guard_checks) for p in tiny],
        17: [(seeds, "tiny-knn", 0.9, searched, ("images-readout", "stored-unguarded"))],
        18: [(seeds, p, 0.75, ("paper",), ("stored",)) for p in tiny]
        + [(seeds, p, 0.75, ("default", "gradient"), ("stored-f32",)) for p in tiny]
        + [(seeds, p, 0.5, ("default", "gradient"), ("corp-like", "stored-cls")) for p in tiny]
        + [(seeds, "tiny-top1", 0.5, ("default", "gradient"), ("images",))],
    }
    for phase in phases:
        for group, protocol, fraction, rankings, variants in order[phase]:
            for seed in group:
                for ranking in rankings:
                    for variant in variants:
                        yield Cell(protocol, ranking, seed, fraction, variant)


class Study:
    """The cached steps: models, bundles, correction statistics, evaluations. Files are written atomically."""

    def __init__(self, work: Path, samples: int) -> None:
        self.work, self.samples = work, samples
        self.data = shared_data()
        for sub in ("bundles", "stats", "results", "claims", "dense"):
            (work / sub).mkdir(parents=True, exist_ok=True)
        self._models: dict[str, tuple] = {}
        self._images: dict[str, ImageSet] = {}

    # inputs -------------------------------------------------------------------------------------------------
    def model(self, name: str):
        if name not in self._models:
            self._models[name] = load_model("vit_tiny_patch16_224", checkpoint=self.data / MODELS[name])
        return self._models[name]

    def images(self, data: str, split: str) -> ImageSet:
        key = f"{data}:{split}"
        if key not in self._images:
            self._images[key] = load_images(str(self.data / data), split)
        return self._images[key]

    def calibration(self, seed: int) -> ImageSet:
        """The ``samples`` x_calib images of ``seed``: gradient pass, statistics and image-driven correction."""
        return self.images(TINY_DATA, "calib").subset(self.samples, seed)

    # cached steps -------------------------------------------------------------------------------------------
    def bundle_path(self, model: str, ranking: str, seed: int) -> Path:
        return self.work / "bundles" / f"{model}-{ranking}-seed{seed}-n{self.samples}.safetensors"

    def stats_path(self, model: str, ranking: str, seed: int, rounded: bool = False) -> Path:
        kind = "stats-f32" if rounded else "stats"
        return self.work / "bundles" / f"{model}-{ranking}-seed{seed}-n{self.samples}.{kind}.safetensors"

    def score(self, model_name: str, ranking: str, seed: int) -> None:
        model, source = self.model(model_name)
        method, options = RANKINGS[ranking]
        log(f"score {model_name} {ranking} seed {seed}: {method} {options} on {self.samples} x_calib images")
        start = time.perf_counter()
        data = self.images(TINY_DATA, "calib")
        progress = _progress(f"{model_name} {ranking} seed {seed}")
        scores = score_model(model, method, data=data, samples=self.samples, seed=seed, progress=progress, **options)
        path = self.bundle_path(model_name, ranking, seed)
        write_bundle(path, model, source, scores)
        log(f"score {model_name} {ranking} seed {seed}: {time.perf_counter() - start:.0f} s -> {path.name}")

    def statistics(self, model_name: str, ranking: str, seed: int) -> None:
        """A copy of the bundle holding correction statistics of the seed's calibration images, as
        ``score --correction-stats`` stores them (collected on the bundle's dense model: its unit order)."""
        _, source = self.model(model_name)
        bundle = load_bundle(self.bundle_path(model_name, ranking, seed))
        stats = collect_correction_statistics(
            bundle.dense_model(), self.calibration(seed), source.pretrained_cfg, storage=STATS_STORAGE_FLOAT64
        )
        record = replace(stats.record, storage=STATS_STORAGE)  # float32, as score --correction-stats stores them
        rounded = CorrectionStatistics(record, {k: v.float() for k, v in stats.tensors.items()})
        bundle.save_with_statistics(self.stats_path(model_name, ranking, seed, rounded=True), rounded)
        bundle.save_with_statistics(self.stats_path(model_name, ranking, seed), stats)
        log(f"statistics {model_name} {ranking} seed {seed}: {stats.seconds:.0f} s")

    def sliced(self, cell: Cell) -> tuple[torch.nn.Module, dict]:
        """The cell's model and what its correction did."""
        stored = cell.variant.startswith("stored")
        if stored:
            path = self.stats_path(cell.model, cell.ranking, cell.seed, rounded=cell.variant == "stored-f32")
        else:
            path = self.bundle_path(cell.model, cell.ranking, cell.seed)
        bundle = load_bundle(path)
        plan = bundle.plan(flops=cell.fraction)
        info: dict = {"gmacs": plan.gmacs, "widths": {"mlp": list(plan.widths.mlp), "heads": list(plan.widths.heads)}}
        if cell.variant == "plain":
            return bundle.slice(plan), info
        guard = not cell.variant.endswith("unguarded")
        start = time.perf_counter()
        tokens = "cls" if cell.variant == "stored-cls" else DEFAULT_TOKENS
        if stored:
            result = correct_from_bundle(bundle, plan, tokens=tokens, guard=guard, guard_readout=guard)
        elif cell.variant == "corp-like":
            images = self.calibration(cell.seed)
            result = correct_bundle_slice(
                bundle, plan, images, tokens="all", damping=DEFAULT_DAMPING, sequential=False, guard=False
            )
        else:
            readout = cell.variant == "images-readout"  # the default since this study; "images": the default before
            result = correct_bundle_slice(bundle, plan, self.calibration(cell.seed), guard=guard, guard_readout=readout)
        info["correction"] = {
            "seconds": time.perf_counter() - start,
            "layers": len(result.layers),
            "kept_plain": len(result.kept_plain),
            "reverted": len(result.reverted),
            "feature_error": result.feature_error,
        }
        return build_model(bundle.skeleton(), plan.widths, result.state), info

    def evaluate(self, model: torch.nn.Module, protocol: str, transform: Callable) -> dict[str, float]:
        if protocol == "tiny-top1":
            return self.top1(model, transform)
        data = TINY_DATA if protocol == "tiny-knn" else CIFAR_DATA
        memory, queries = self.images(data, "train"), self.images(data, "test")
        train = extract_features(model, memory, transform, batch_size=50, dtype=DTYPE)
        test = extract_features(model, queries, transform, batch_size=50, dtype=DTYPE)
        return {"knn": knn_accuracy(train, memory.labels, test, queries.labels, k=20)}

    def top1(self, model: torch.nn.Module, transform: Callable) -> dict[str, float]:
        """Top-1 of the ImageNet classifier on x_test: 1000-way, and among the benchmark's 50 classes."""
        from timm.data import ImageNetInfo

        queries = self.images(TINY_DATA, "test")
        synsets = ImageNetInfo().label_names()
        columns = torch.tensor([synsets.index(wnid) for wnid in queries.class_names])
        logits = []
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
            for batch, _ in make_loader(queries, transform, 50):
                logits.append(model.eval()(batch).float())
        out = torch.cat(logits)
        labels = queries.labels
        return {
            "top1": float((out.argmax(1) == columns[labels]).float().mean()),
            "top1_50": float((out[:, columns].argmax(1) == labels).float().mean()),
        }

    def dense(self, protocol: str) -> dict[str, float]:
        path = self.work / "dense" / f"{protocol}.json"
        if not path.is_file():
            model, source = self.model(PROTOCOLS[protocol][0])
            write_json(path, self.evaluate(model, protocol, preprocess(source.pretrained_cfg)))
        return json.loads(path.read_text())

    def measure(self, cell: Cell) -> None:
        start = time.perf_counter()
        model, info = self.sliced(cell)
        _, source = self.model(cell.model)
        metrics = self.evaluate(model, cell.protocol, preprocess(source.pretrained_cfg))
        record = {**cell.__dict__, "samples": self.samples, **metrics, **info, "seconds": time.perf_counter() - start}
        write_json(self.result_path(cell), record)
        log(f"{cell.name}: {metrics} ({record['seconds']:.0f} s)")

    def result_path(self, cell: Cell) -> Path:
        return self.work / "results" / f"{cell.name}-n{self.samples}.json"

    # tasks --------------------------------------------------------------------------------------------------
    def steps(self, cell: Cell) -> list[tuple[str, Path, Callable[[], None]]]:
        """What ``cell`` needs, in order: (claim name, output, action)."""
        model, ranking, seed = cell.model, cell.ranking, cell.seed
        steps = [
            (
                f"dense-{cell.protocol}",
                self.work / "dense" / f"{cell.protocol}.json",
                lambda: self.dense(cell.protocol),
            ),
            (
                f"score-{model}-{ranking}-seed{seed}",
                self.bundle_path(model, ranking, seed),
                lambda: self.score(model, ranking, seed),
            ),
        ]
        if cell.variant.startswith("stored"):
            steps.append(
                (
                    f"stats-{model}-{ranking}-seed{seed}",
                    self.stats_path(model, ranking, seed),
                    lambda: self.statistics(model, ranking, seed),
                )
            )
        steps.append((cell.name, self.result_path(cell), lambda: self.measure(cell)))
        return steps


def run_worker(study: Study, cells: list[Cell]) -> None:
    """Run the most important missing step that no live worker holds, again and again, until every cell is
    measured; wait while the only missing steps are held by other workers."""
    while True:
        if (study.work / "STOP").exists():
            log("STOP found: stopping")
            return
        step, busy = _next_step(study, cells)
        if step is not None:
            lock, output, action = step
            try:
                if not output.is_file():
                    action()
            finally:
                lock.unlink(missing_ok=True)
        elif busy:
            time.sleep(20)
        else:
            log("every cell is measured")
            return


def _next_step(study: Study, cells: list[Cell]) -> tuple[tuple[Path, Path, Callable[[], None]] | None, bool]:
    """(lock, output, action) of the first missing step this worker could claim, and whether another worker holds
    a missing step."""
    busy = False
    for cell in cells:
        for claim, output, action in study.steps(cell):
            if output.is_file():
                continue
            lock = study.work / "claims" / f"{claim}.lock"
            if _claim(lock):
                return (lock, output, action), busy
            busy = True
            break  # the cell's later steps need this one
    return None, busy


def _claim(lock: Path) -> bool:
    """Take ``lock`` for this process; a lock whose process has died is taken over."""
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                pid = int(lock.read_text() or "0")
                os.kill(pid, 0)
                return False
            except (ProcessLookupError, ValueError):
                lock.unlink(missing_ok=True)
                continue
            except FileNotFoundError:
                continue
        with os.fdopen(fd, "w") as f:
            f.write(str(os.getpid()))
        return True
    return False


# the table ----------------------------------------------------------------------------------------------------
def render(work: Path, samples: int, seeds: list[int]) -> str:
    records = [json.loads(p.read_text()) for p in sorted((work / "results").glob(f"*-n{samples}.json"))]
    records = [r for r in records if r["seed"] in seeds]
    lines = []
    for protocol, metric in ((p, m) for p in PROTOCOLS for m in METRICS[p]):
        mine = [r for r in records if r["protocol"] == protocol]
        if not mine:
            continue
        dense_path = work / "dense" / f"{protocol}.json"
        dense = json.loads(dense_path.read_text())[metric] if dense_path.is_file() else None
        title = f"**{protocol}** ({metric}" + (f", dense {100 * dense:.1f})" if dense is not None else ")")
        lines += ["", title, "", "| ranking | correction | " + " | ".join(f"{f:g} FLOPs" for f in FRACTIONS) + " |"]
        lines.append("|---|---|" + "---:|" * len(FRACTIONS))
        for ranking in [*MAIN, *CANDIDATES]:
            for variant in VARIANTS:
                cells = []
                for fraction in FRACTIONS:
                    values = [
                        100 * r[metric]
                        for r in mine
                        if r["ranking"] == ranking and r["variant"] == variant and r["fraction"] == fraction
                    ]
                    cells.append(_mean_spread(values))
                if any(c != "–" for c in cells):
                    lines.append(f"| {ranking} | {variant} | " + " | ".join(cells) + " |")
    note = (
        f"\nTable of `python -m benchmarks.study --table` at {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; "
        f"{machine()}. Each cell: mean ± half the spread (max − min) over the seeds measured, (n) seeds; –: not "
        f"measured. {samples} x_calib calibration images per seed (seeds {', '.join(map(str, seeds))})."
    )
    return "\n".join(lines) + note


def _mean_spread(values: list[float]) -> str:
    if not values:
        return "–"
    mean = sum(values) / len(values)
    return f"{mean:.1f} ± {(max(values) - min(values)) / 2:.1f} ({len(values)})"


def _progress(label: str):
    last: dict[str, int] = {}

    def report(stage: str, done: int, total: int, best: float | None) -> None:
        step = max(1, total // 5)
        if done == total or done - last.get(stage, 0) >= step:
            last[stage] = done
            log(f"  {label}: {stage} {done}/{total}" + (f", best {best:.5f}" if best is not None else ""))

    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "snapvit-study")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--phases", default="1,2,3,5,4,13,15,12,14,9,16,17,10,18,6,7,8,11")
    parser.add_argument("--samples", type=int, default=256, help="x_calib images per seed")
    parser.add_argument("--table", action="store_true", help="only print the table of what is measured")
    parser.add_argument("--no-readme", action="store_true", help="with --table: do not update benchmarks/README.md")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",") if s]
    if args.table:
        table = render(args.work, args.samples, seeds)
        print(table)
        if not args.no_readme:
            write_readme_block("study-benchmark", table)
        return
    if not (shared_data() / MODELS["in1k"]).is_file():
        sys.exit(f"{shared_data()} lacks the study's models: set SNAPVIT_SHARED_DATA to the shared data folder")
    torch.manual_seed(0)
    log(f"worker {os.getpid()} on {machine()}, commit {revision()}, {torch.get_num_threads()} threads")
    cells = list(plan_cells(seeds, [int(p) for p in args.phases.split(",") if p]))
    run_worker(Study(args.work, args.samples), cells)


if __name__ == "__main__":
    main()
