"""Export benchmark: how long `snapvit export` takes for a ViT-S/16, how big the files are, and how much faster a
half-FLOPs model runs in onnxruntime on the CPU than the dense one.

Run from the repository root (needs the export extra: ``pip install onnx onnxruntime onnxscript``)::

    python -m benchmarks.export                 # ViT-S/16 at 224 px; rewrites the block in benchmarks/README.md
    python -m benchmarks.export --no-readme --batch-size 4 --rounds 3

A random-init ``vit_small_patch16_224`` (no download) is scored with ``magnitude`` into a bundle; its dense model and
its 0.5-FLOPs slice are exported to ONNX and ``.pt2`` through :func:`snapvit_cli.export.export_model` (each file is
verified at batch 1 and 7 as part of the export; that check is timed separately). Throughput is measured in one
process with one onnxruntime session per model, alternating dense and sliced runs so that both see the same machine
load; the speed-up is the ratio of their medians.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from benchmarks.common import log, machine, write_readme_block

ARCH = "vit_small_patch16_224"


def build_models(folder: Path):
    """The dense ViT-S/16 and its 0.5-FLOPs slice, through a magnitude-scored bundle."""
    from snapvit_cli.api import load_bundle
    from snapvit_cli.elastic.bundle import write_bundle
    from snapvit_cli.models.loading import load_model
    from snapvit_cli.scoring import score_model

    model, source = load_model(ARCH, pretrained=False)
    path = write_bundle(folder / "vits.safetensors", model, source, score_model(model, "magnitude"))
    bundle = load_bundle(path)
    plan = bundle.plan(flops=0.5)
    return {"dense": bundle.dense_model(), "flops 0.5": bundle.slice(plan)}, plan


def throughput(files: dict[str, Path], batch_size: int, rounds: int, repeats: int, threads: int) -> dict[str, float]:
    """Median images/s of each ONNX file in onnxruntime (CPU), runs of the models alternating."""
    import numpy as np
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    sessions = {
        name: ort.InferenceSession(str(f), options, providers=["CPUExecutionProvider"]) for name, f in files.items()
    }
    x = np.random.default_rng(0).standard_normal((batch_size, 3, 224, 224), dtype=np.float32)
    for session in sessions.values():  # warm-up
        session.run(None, {"pixel_values": x})
    times: dict[str, list[float]] = {name: [] for name in sessions}
    for _ in range(rounds):
        for name, session in sessions.items():
            start = time.perf_counter()
            for _ in range(repeats):
                session.run(None, {"pixel_values": x})
            times[name].append((time.perf_counter() - start) / repeats)
    return {name: batch_size / statistics.median(t) for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5, help="alternating timed rounds per model (median)")
    parser.add_argument("--repeats", type=int, default=2, help="forward passes per round")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="onnxruntime intra-op threads")
    parser.add_argument("--no-readme", action="store_true", help="print only; leave benchmarks/README.md alone")
    args = parser.parse_args()

    from snapvit_cli.export import ONNX_OPSET, export_model

    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        models, plan = build_models(folder)
        rows, onnx_files = [], {}
        for name, model in models.items():
            params = sum(p.numel() for p in model.parameters())
            for fmt in ("onnx", "pt2"):
                target = folder / f"{name.replace(' ', '')}.{fmt}"
                result = export_model(model, target, fmt)
                rows.append((name, params, fmt, result))
                if fmt == "onnx":
                    onnx_files[name] = target
                log(
                    f"{name:9} {fmt:4}: export {result.export_s:6.1f} s, check {result.check_s:5.1f} s, "
                    f"{result.bytes / 2**20:6.1f} MiB, max |diff| {result.max_abs_diff:.1e}"
                )
        speed = throughput(onnx_files, args.batch_size, args.rounds, args.repeats, args.threads)
    load_after = os.getloadavg()[0]
    ratio = speed["flops 0.5"] / speed["dense"]
    for name, value in speed.items():
        print(f"onnxruntime CPU {name:9}: {value:7.1f} img/s")
    print(f"speed-up of the 0.5-FLOPs model: {ratio:.2f}x (GMACs ratio {plan.dense_gmacs / plan.gmacs:.2f}x)")

    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    command = "python -m benchmarks.export" + (f" --batch-size {args.batch_size}" if args.batch_size != 8 else "")
    lines = [
        f"Command: `{command}` — {when}, {machine()}, onnxruntime {_version('onnxruntime')}; "
        f"load average {load_before:.1f} before and {load_after:.1f} after the run.",
        f"Model: `{ARCH}` (random init, magnitude scores), 224 px; the 0.5-FLOPs slice has "
        f"{plan.gmacs:.2f} of {plan.dense_gmacs:.2f} GMACs. ONNX: opset {ONNX_OPSET}, dynamo exporter.",
        "",
        "| model | params (M) | format | export (s) | check at batch 1 and 7 (s) | file size (MiB) | max abs diff |",
        "|---|---:|---|---:|---:|---:|---:|",
    ]
    for name, params, fmt, r in rows:
        lines.append(
            f"| {name} | {params / 1e6:.2f} | {fmt} | {r.export_s:.1f} | {r.check_s:.1f} | {r.bytes / 2**20:.1f} | "
            f"{r.max_abs_diff:.1e} |"
        )
    lines += [
        "",
        f"onnxruntime CPU throughput (batch {args.batch_size}, {args.threads} intra-op threads, median of "
        f"{args.rounds} alternating rounds of {args.repeats} passes): dense {speed['dense']:.1f} img/s, "
        f"0.5 FLOPs {speed['flops 0.5']:.1f} img/s — **{ratio:.2f}× faster** (the GMACs ratio is "
        f"{plan.dense_gmacs / plan.gmacs:.2f}×).",
    ]
    block = "\n".join(lines)
    print(block)
    if not args.no_readme:
        write_readme_block("export-benchmark", block)


def _version(package: str) -> str:
    from importlib import metadata

    return metadata.version(package)


if __name__ == "__main__":
    main()
