"""Budgets in measured time: does ``slice --speedup S`` run S× faster than dense, and what does it cost in kNN?

Run from the repository root::

    python -m benchmarks.latency                       # real ViT-Tiny + random ViT-B, 1 and 2 threads, batch 1, 32
    python -m benchmarks.latency --models tiny --threads 2 --batches 32 --tiny-bundle tiny.safetensors --knn

For every model, thread count and batch size: a latency profile is measured (in a fresh cache folder, so its cost
is measured too), each target speed-up S gets its ``--speedup S`` slice, and a FLOPs-budget slice with the same
predicted time (the FLOPs fraction found by bisection) is cut beside it. The dense model and every slice are then
timed interleaved in this one process: each round runs one batch of each model in turn, after warm-up rounds; the
measured speed-up of a slice is the median over rounds of dense time / slice time within the round (spread: the
interquartile range of those ratios). With ``--knn`` (ViT-Tiny only), every distinct slice is scored by kNN on the
shared Tiny-ImageNet benchmark (``tinyimagenet50_dev.npz``: memory ``x_train``, queries ``x_test``, 224 bicubic,
mean = std = 0.5, CLS after the final norm, k = 20, majority vote; ``../shared/data/README.md``).

The real ViT-Tiny is the shared Tiny-ImageNet one, scored with the ``gradient`` method on ``--samples`` images of
``x_calib`` (or read from ``--tiny-bundle``); the ViT-B/16 is random-init, scored with ``magnitude`` (speed only).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import REAL_CHECKPOINT, features, log, machine, shared_data
from snapvit_cli.adapters import Widths
from snapvit_cli.data import load_images, preprocess
from snapvit_cli.elastic.bundle import ElasticBundle, load_bundle, write_bundle
from snapvit_cli.errors import BudgetError
from snapvit_cli.evaluation.knn import knn_accuracy
from snapvit_cli.latency.cache import load_or_measure
from snapvit_cli.latency.chooser import plan_bundle
from snapvit_cli.models.loading import load_model
from snapvit_cli.scoring import score_model

KNN_DATA = "tinyimagenet50_dev.npz"
MIN_SAMPLE_S = 0.05
TOLERANCE = 0.07  # the acceptance: measured speed-up within ±7 % of the target


def tiny_bundle(folder: Path, samples: int) -> Path:
    data = shared_data()
    model, source = load_model("vit_tiny_patch16_224", checkpoint=data / REAL_CHECKPOINT)
    calib = folder / "calib.npz"  # x_calib: 1000 images of 50 classes the benchmark does not query
    with np.load(data / KNN_DATA) as npz:
        np.savez(calib, x=npz["x_calib"])
    log(f"tiny: scoring with gradient on {samples} x_calib images")
    scores = score_model(model, "gradient", data=str(calib), samples=samples, seed=0)
    return write_bundle(folder / "tiny.safetensors", model, source, scores)


def base_bundle(folder: Path) -> Path:
    model, source = load_model("vit_base_patch16_224", pretrained=False)
    log("base: scoring with magnitude (random weights)")
    return write_bundle(folder / "base.safetensors", model, source, score_model(model, "magnitude"))


def flops_matched(bundle: ElasticBundle, profile, predicted_ms: float, head_offset: float):
    """The FLOPs-budget plan whose predicted time is closest to ``predicted_ms`` (bisection on the fraction)."""
    lo, hi = 0.05, 1.0
    for _ in range(40):
        mid = (lo + hi) / 2
        try:
            plan = bundle.plan(flops=mid, head_offset=head_offset, resolution=profile.key.resolution)
        except Exception:  # noqa: BLE001 - below the floors: go up
            lo = mid
            continue
        ms = profile.predict_ms(plan.widths.mlp, plan.widths.heads)
        lo, hi = (mid, hi) if ms < predicted_ms else (lo, mid)  # too fast: keep more
    return bundle.plan(flops=hi, head_offset=head_offset, resolution=profile.key.resolution)


def time_interleaved(models: list, batch: torch.Tensor, warmup: int, rounds: int) -> dict[str, list[list[float]]]:
    """Seconds per forward pass of each model in each round (one sample per model per round, in turn), on the wall
    clock and on this thread's CPU clock. A sample is the mean of as many passes as fill ``MIN_SAMPLE_S`` (counted
    in the first warm-up round), so a pass of a few ms is not at the mercy of one scheduler time slice."""
    wall: list[list[float]] = [[] for _ in models]
    cpu: list[list[float]] = [[] for _ in models]
    calls = [1] * len(models)
    with torch.inference_mode():
        for r in range(warmup + rounds):
            for i, model in enumerate(models):
                start, start_cpu = time.perf_counter(), time.thread_time()
                for _ in range(calls[i]):
                    model(batch)
                seconds = (time.perf_counter() - start) / calls[i]
                cpu_seconds = (time.thread_time() - start_cpu) / calls[i]
                if r == 0:
                    calls[i] = max(1, math.ceil(MIN_SAMPLE_S / seconds))
                if r >= warmup:
                    wall[i].append(seconds)
                    cpu[i].append(cpu_seconds)
    return {"wall": wall, "cpu": cpu}


def quartiles(values: list[float]) -> tuple[float, float]:
    q = statistics.quantiles(values, n=4) if len(values) > 1 else [values[0]] * 3
    return q[0], q[2]


def resolve_clock(clock: str, threads: int) -> str:
    """``auto``: the CPU clock with one thread (it leaves out the time other jobs took on a shared machine), the wall
    clock with more (the calling thread's CPU time leaves out the other threads' share of the work)."""
    if clock != "auto":
        return clock
    return "cpu" if threads == 1 else "wall"


def run_case(name: str, bundle: ElasticBundle, threads: int, batch_size: int, args, cache: Path) -> dict:
    torch.set_num_threads(threads)
    clock, judge = resolve_clock(args.clock, threads), resolve_clock(args.judge, threads)
    os.environ["SNAPVIT_CACHE_DIR"] = str(cache)
    load_before = os.getloadavg()
    lookup = load_or_measure(
        bundle.skeleton(), min_keep_mlp=bundle.min_keep["mlp"], device="cpu", batch_size=batch_size,
        repeats=args.profile_repeats, clock=clock,
    )  # fmt: skip
    profile = lookup.profile
    log(f"{name} {threads}t b{batch_size}: profile {profile.seconds:.1f} s, dense {profile.dense_ms():.1f} ms "
        f"predicted / {profile.dense_ms_measured:.1f} ms measured, spread {profile.spread:.1%}")  # fmt: skip
    rows = [{"label": "dense", "plan": bundle.plan(flops=1.0), "target": None}]
    unreachable = {}
    for target in args.targets:
        try:
            plan = plan_bundle(bundle, profile, speedup=target, head_offset=args.head_offset)
        except BudgetError as exc:  # the profile says no slice is that fast: recorded, not timed
            unreachable[target] = str(exc)
            log(f"  speedup {target:g}: {exc}")
            continue
        rows.append({"label": f"speedup {target:g}", "plan": plan, "target": target})
        matched = flops_matched(bundle, profile, plan.budget.latency.predicted_ms, args.head_offset)
        rows.append({"label": f"flops {matched.flops_fraction:.3f} (same predicted time)", "plan": matched,
                     "target": None, "pair": target})  # fmt: skip
    models = [bundle.slice(row["plan"]).eval() for row in rows]
    batch = torch.randn(batch_size, 3, profile.key.resolution, profile.key.resolution,
                        generator=torch.Generator().manual_seed(0))  # fmt: skip
    large = profile.dense_ms_measured > args.large_ms
    rounds, warmup = (args.rounds_large, args.warmup_large) if large else (args.rounds, args.warmup)
    started = time.perf_counter()
    clocks = time_interleaved(models, batch, warmup, rounds)
    took = time.perf_counter() - started
    load_after = os.getloadavg()
    out = []
    for i, row in enumerate(rows):
        measured = {}
        for clock, times in clocks.items():
            ratios = [d / s for d, s in zip(times[0], times[i], strict=True)]
            q1, q3 = quartiles(ratios)
            measured[clock] = {"median_ms": statistics.median(times[i]) * 1000, "speedup": statistics.median(ratios),
                               "q1": q1, "q3": q3}  # fmt: skip
        main = measured[judge]
        plan = row["plan"]
        record = {
            "label": row["label"],
            "flops_fraction": plan.flops_fraction,
            "ideal": 1 / plan.flops_fraction,
            "measured": measured,
            "median_ms": main["median_ms"],
            "speedup": main["speedup"],
            "speedup_q1": main["q1"],
            "speedup_q3": main["q3"],
            "predicted": plan.budget.latency.speedup if plan.budget.latency else None,
            "target": row["target"],
            "pair": row.get("pair"),
            "widths": plan.widths.to_json(),
        }
        if row["target"]:
            record["within"] = abs(record["speedup"] / row["target"] - 1) <= TOLERANCE
        out.append(record)
        log(f"  {row['label']}: {record['speedup']:.2f}× measured ({judge}) [{main['q1']:.2f}, {main['q3']:.2f}]; "
            f"other clock {measured['cpu' if judge == 'wall' else 'wall']['speedup']:.2f}×; "
            f"ideal {record['ideal']:.2f}×"
            + (f", predicted {record['predicted']:.2f}×" if record["predicted"] else ""))  # fmt: skip
    return {
        "model": name, "threads": threads, "batch_size": batch_size, "rounds": rounds, "warmup": warmup,
        "clock": clock, "judge": judge,
        "load_before": load_before, "load_after": load_after, "timing_s": took,
        "profile": {"seconds": profile.seconds, "repeats": profile.repeats, "spread": profile.spread,
                    "dense_predicted_ms": profile.dense_ms(), "dense_measured_ms": profile.dense_ms_measured,
                    "rounding": profile.rounding, "snap": profile.snap},
        "rows": out, "unreachable": unreachable,
    }  # fmt: skip


def knn(bundle: ElasticBundle, cases: list[dict], memory_n: int = 0, queries_n: int = 0) -> dict[str, float]:
    """kNN top-1 of every distinct slice of the ViT-Tiny cases, keyed by its widths (JSON); ``memory_n`` /
    ``queries_n``: class-balanced seeded subsets of ``x_train`` / ``x_test`` (0: all, the protocol)."""
    from benchmarks.accuracy import balanced_subset

    data = shared_data() / KNN_DATA
    memory, queries = load_images(str(data), "train"), load_images(str(data), "test")
    if memory_n:
        memory = balanced_subset(memory, memory_n, 0)
    if queries_n:
        queries = balanced_subset(queries, queries_n, 0)
    log(f"kNN: memory {len(memory)} of x_train, queries {len(queries)} of x_test")
    transform = preprocess(bundle.source.pretrained_cfg)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    results: dict[str, float] = {}
    for case in cases:
        for row in case["rows"]:
            key = json.dumps(row["widths"], sort_keys=True)
            if key in results or row["label"] == "dense":
                continue
            model = _slice_widths(bundle, Widths.from_json(row["widths"]))
            train = features(model, memory, transform, label=row["label"], batch_size=50)
            test = features(model, queries, transform, label=row["label"], batch_size=50)
            results[key] = knn_accuracy(train, memory.labels, test, queries.labels, k=20)
            log(f"  kNN {row['label']}: {results[key]:.4f}")
    return results


def _slice_widths(bundle: ElasticBundle, widths):
    from snapvit_cli.elastic.surgery import build_model

    return build_model(bundle.skeleton(), widths, bundle.state_dict(widths)).eval()


def clock_label(clock: str) -> str:
    return "cpu (1 thread) / wall (2+ threads)" if clock == "auto" else clock


def render(cases: list[dict], accuracy: dict[str, float], args) -> str:
    lines = [
        f"`{args.command}` on {machine()}.",
        "",
        f"Profile clock: {clock_label(args.clock)}; measured speed-up: median over rounds of dense/slice time within a "
        f"round, on the {clock_label(args.judge)} clock [interquartile range], and on the other clock; verdict on the "
        f"{clock_label(args.judge)} clock.",
        "",
        "| model | threads | batch | load avg (1 min) before→after | profile s | slice | FLOPs fraction | ideal | "
        f"predicted | measured ({'cpu/wall' if args.judge == 'auto' else args.judge}) [IQR] | other clock | vs target "
        "| kNN |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for case in cases:
        judge = case.get("judge", resolve_clock(args.judge, case["threads"]))
        for target, reason in case.get("unreachable", {}).items():
            lines.append(
                f"| {case['model']} | {case['threads']} | {case['batch_size']} | "
                f"{case['load_before'][0]:.1f}→{case['load_after'][0]:.1f} | {case['profile']['seconds']:.1f} | "
                f"speedup {float(target):g} | — | — | out of reach: {reason.rsplit('the fastest slice is ', 1)[-1]} | "
                "not timed | — "
                "| ✗ | — |"
            )
        for row in case["rows"]:
            if row["label"] == "dense":
                continue
            key = json.dumps(row["widths"], sort_keys=True)
            acc = f"{accuracy[key]:.4f}" if key in accuracy else "—"
            vs = (f"{row['speedup'] / row['target'] - 1:+.1%} {'✓' if row['within'] else '✗'}" if row["target"]
                  else "—")  # fmt: skip
            predicted = f"{row['predicted']:.2f}×" if row["predicted"] else "—"
            lines.append(
                f"| {case['model']} | {case['threads']} | {case['batch_size']} | "
                f"{case['load_before'][0]:.1f}→{case['load_after'][0]:.1f} | {case['profile']['seconds']:.1f} | "
                f"{row['label']} | {row['flops_fraction']:.3f} | {row['ideal']:.2f}× | {predicted} | "
                f"{row['speedup']:.2f}× [{row['speedup_q1']:.2f}, {row['speedup_q3']:.2f}] | "
                f"{row['measured']['cpu' if judge == 'wall' else 'wall']['speedup']:.2f}× | {vs} | {acc} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="tiny,base")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--batches", default="1,32")
    parser.add_argument("--targets", default="1.5,2")
    parser.add_argument("--head-offset", type=float, default=0.15)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=9, help="timed rounds")
    parser.add_argument("--rounds-large", type=int, default=5, help="timed rounds when a dense pass exceeds --large-ms")
    parser.add_argument("--warmup-large", type=int, default=1)
    parser.add_argument("--large-ms", type=float, default=5000.0, help="a dense pass longer than this is large")
    parser.add_argument("--profile-repeats", type=int, default=5)
    parser.add_argument("--samples", type=int, default=64, help="ViT-Tiny scoring images (gradient method)")
    parser.add_argument("--tiny-bundle", type=Path, default=None, help="use this ViT-Tiny bundle instead of scoring")
    parser.add_argument("--knn", action="store_true", help="kNN of every ViT-Tiny slice (the full benchmark)")
    parser.add_argument("--knn-cases", default="1:32", help="THREADS:BATCH cases whose slices get kNN")
    parser.add_argument("--clock", choices=("auto", "wall", "cpu"), default="auto",
                        help="how the latency profile times (auto: cpu with 1 thread, wall with more)")
    parser.add_argument("--judge", choices=("auto", "wall", "cpu"), default="auto",
                        help="the clock the ±7 %% verdict uses (auto: as --clock)")
    parser.add_argument("--knn-memory", type=int, default=0, help="class-balanced x_train subset (0: all 2500)")
    parser.add_argument("--knn-queries", type=int, default=0, help="class-balanced x_test subset (0: all 2500)")
    parser.add_argument("--knn-of", type=Path, default=None,
                        help="only the kNN of the --knn-cases slices of this --json file (written back into it)")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--render", type=Path, nargs="+", default=None,
                        help="print the table of these --json files (of runs made with this --clock/--judge)")
    args = parser.parse_args()
    args.command = "python -m benchmarks.latency " + " ".join(sys.argv[1:])
    if args.knn_of:
        run = json.loads(args.knn_of.read_text())
        wanted = {tuple(int(v) for v in c.split(":")) for c in args.knn_cases.split(",")}
        chosen = [c for c in run["cases"] if c["model"] == "tiny" and (c["threads"], c["batch_size"]) in wanted]
        run["knn"].update(knn(load_bundle(args.tiny_bundle), chosen, args.knn_memory, args.knn_queries))
        run["knn_subset"] = {"memory": args.knn_memory, "queries": args.knn_queries}
        args.knn_of.write_text(json.dumps(run, indent=1))
        return
    if args.render:
        runs = [json.loads(path.read_text()) for path in args.render]
        cases = [case for run in runs for case in run["cases"]]
        print(render(cases, {k: v for run in runs for k, v in run["knn"].items()}, args))
        return
    args.targets = [float(t) for t in args.targets.split(",")]
    if not (shared_data() / REAL_CHECKPOINT).is_file():
        sys.exit(f"{shared_data() / REAL_CHECKPOINT} not found: set SNAPVIT_SHARED_DATA to the shared data folder")
    cases, accuracy = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for name in args.models.split(","):
            path = (args.tiny_bundle or tiny_bundle(folder, args.samples)) if name == "tiny" else base_bundle(folder)
            bundle = load_bundle(path)
            model_cases = []
            for threads in (int(t) for t in args.threads.split(",")):
                for batch in (int(b) for b in args.batches.split(",")):
                    case = run_case(name, bundle, threads, batch, args, folder / f"cache-{name}")
                    model_cases.append(case)
                    if args.json:
                        args.json.write_text(json.dumps({"cases": cases + model_cases, "knn": accuracy}, indent=1))
            cases += model_cases
            if name == "tiny" and args.knn:
                wanted = {tuple(int(v) for v in c.split(":")) for c in args.knn_cases.split(",")}
                chosen = [c for c in model_cases if (c["threads"], c["batch_size"]) in wanted]
                accuracy.update(knn(bundle, chosen, args.knn_memory, args.knn_queries))
            if args.json:
                args.json.write_text(json.dumps({"cases": cases, "knn": accuracy}, indent=1))
    print(render(cases, accuracy, args))


if __name__ == "__main__":
    main()
