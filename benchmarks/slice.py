"""Slicing benchmark: how long cutting a ViT-B/16 bundle takes, and how much memory it needs.

Run from the repository root (Linux: it reads ``/proc`` for memory)::

    python benchmarks/slice.py                       # ViT-B/16, FLOPs fractions 0.9 0.75 0.5; updates README.md
    python benchmarks/slice.py --no-readme --fractions 0.5

It writes a random-init ViT-B/16 bundle (``snapvit score --no-pretrained --method magnitude``: no download) into a
temporary folder, then measures, each in a fresh process so that nothing is cached or shared between steps:

- ``snapvit slice`` as a whole process (wall time, peak RSS), and its slicing step alone;
- the in-process API: ``load_bundle(...)`` then ``.slice(flops=f)``, then switching to another budget and back;
- ``snapvit_cli.load(sliced_folder)``;
- the start-up alone (Python + the imports ``snapvit slice`` needs) and ``snapvit --help``.

A step's *memory* is what it adds to the process: its peak RSS minus the RSS just before it (the kernel's peak
counter is reset there through ``/proc/self/clear_refs``), so torch's ~0.7 GB of libraries is not counted against
slicing. It includes memory-mapped bundle pages that the step touched.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "benchmarks" / "README.md"
BEGIN, END = "<!-- slice-benchmark:begin -->", "<!-- slice-benchmark:end -->"
MB = 2**20

# Targets (issue 9): seconds, and memory as a multiple of the bundle file's size.
SLICE_S, SWITCH_S, CLI_S, MEMORY_X = 0.5, 0.5, 5.0, 1.5


# --- worker side: runs inside a fresh process ----------------------------------------------------------------------
def _status_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def _bytes_read() -> int:
    """Bytes this process has read with read(2)/pread(2) so far (memory-mapped page faults are not counted)."""
    with open("/proc/self/io") as f:
        return int(next(line for line in f if line.startswith("rchar:")).split()[1])


def _reset_peak() -> float:
    """Reset the kernel's peak-RSS counter (VmHWM) to the current RSS, and return that RSS."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return _status_mb("VmRSS")


@contextlib.contextmanager
def _timed(report: dict, name: str):
    start = time.perf_counter()
    yield
    report[f"{name}_s"] = time.perf_counter() - start


@contextlib.contextmanager
def _step(report: dict, name: str):
    """Time a block and record the memory it adds (peak RSS during it minus RSS before) and the bytes it reads."""
    before, read_before = _reset_peak(), _bytes_read()
    with _timed(report, name):
        yield
    report[f"{name}_mb"] = _status_mb("VmHWM") - before
    report[f"{name}_read_mb"] = (_bytes_read() - read_before) / MB


def _worker(kind: str, args: list[str]) -> dict:
    start = time.perf_counter()
    import snapvit_cli
    import snapvit_cli.bundle  # noqa: F401 - torch, timm and the rest that `snapvit slice` imports: the start-up
    from snapvit_cli import cli

    report: dict = {"import_s": time.perf_counter() - start, "rss_after_imports_mb": _status_mb("VmRSS")}
    if kind == "cli":  # the `snapvit slice` command, in this process
        with _step(report, "step"), contextlib.redirect_stdout(io.StringIO()):
            cli.app(args=["slice", *args], standalone_mode=False)
    elif kind == "api":  # in-process: open, first slice, then switch budgets
        path, flops, other = args[0], float(args[1]), float(args[2])
        with _step(report, "first"):  # the memory of opening and the first slice, together
            with _timed(report, "open"):
                bundle = snapvit_cli.load_bundle(path)
            with _timed(report, "slice"):
                model = bundle.slice(flops=flops)
        with _step(report, "switch"):  # to the other budget and back, twice: the median of four switches
            switches = []
            for budget in (other, flops, other, flops):
                start = time.perf_counter()
                model = bundle.slice(flops=budget)
                switches.append(time.perf_counter() - start)
        report["switch_s"] = statistics.median(switches)
        report["model_mb"] = sum(p.numel() * p.element_size() for p in model.parameters()) / MB
    elif kind == "load":  # load() maps the file; the memory counts the weights once read (as a forward pass would)
        with _step(report, "loaded"):
            with _timed(report, "load"):
                model = snapvit_cli.load(args[0])
            for p in model.parameters():
                p.sum()
    elif kind != "imports":
        raise ValueError(f"unknown worker {kind}")
    return report


# --- driver side ---------------------------------------------------------------------------------------------------
@dataclass
class Run:
    wall_s: float
    cpu_s: float
    peak_mb: float
    stdout: str


def _run(cmd: list[str]) -> Run:
    """Run ``cmd`` in a fresh process from the repo root; its wall time and its own peak RSS (``wait4``)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, cwd=ROOT, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{err.read().decode()[-2000:]}")
        return Run(wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, out.read().decode())


def _worker_run(kind: str, *args: str) -> tuple[Run, dict]:
    run = _run([sys.executable, __file__, "--worker", kind, *args])
    return run, json.loads(run.stdout.strip().splitlines()[-1])


def _snapvit(*args: str) -> Run:
    return _run([sys.executable, "-m", "snapvit_cli", *args])


def measure(model: str, fractions: list[float], workdir: Path, repeat: int) -> dict:
    load_before = os.getloadavg()[0]
    bundle = workdir / "bundle.safetensors"
    score = _snapvit("score", "--model", model, "--no-pretrained", "--method", "magnitude", "-o", str(bundle))
    bundle_mb = bundle.stat().st_size / MB
    help_runs = [_snapvit("--help").wall_s for _ in range(repeat)]
    imports = [_worker_run("imports") for _ in range(repeat)]
    rows = []
    for i, flops in enumerate(fractions):
        other = fractions[(i + 1) % len(fractions)] if len(fractions) > 1 else 1.0
        out = workdir / f"flops{flops:g}"
        args = (str(bundle), "--flops", f"{flops:g}", "-o", str(out), "--force", "--json")
        cli = [_snapvit("slice", *args) for _ in range(repeat)]
        cli_steps = [_worker_run("cli", *args)[1] for _ in range(repeat)]
        api = [_worker_run("api", str(bundle), f"{flops:g}", f"{other:g}")[1] for _ in range(repeat)]
        load = [_worker_run("load", str(out))[1] for _ in range(repeat)]
        rows.append(
            {
                "flops": flops,
                "other": other,
                "cli_wall_s": _median(r.wall_s for r in cli),
                "cli_cpu_s": _median(r.cpu_s for r in cli),
                "cli_peak_mb": max(r.peak_mb for r in cli),
                "cli_step_s": _median(r["step_s"] for r in cli_steps),
                "cli_step_mb": max(r["step_mb"] for r in cli_steps),
                "open_s": _median(r["open_s"] for r in api),
                "slice_s": _median(r["slice_s"] for r in api),
                "slice_mb": max(r["first_mb"] for r in api),
                "switch_s": _median(r["switch_s"] for r in api),
                "switch_read_mb": max(r["switch_read_mb"] for r in api),
                "model_mb": api[0]["model_mb"],
                "load_s": _median(r["load_s"] for r in load),
                "load_mb": max(r["loaded_mb"] for r in load),
            }
        )
    return {
        "model": model,
        "bundle_mb": bundle_mb,
        "score_wall_s": score.wall_s,
        "help_s": _median(help_runs),
        "startup_s": _median(r.wall_s for r, _ in imports),
        "startup_cpu_s": _median(r.cpu_s for r, _ in imports),
        "startup_peak_mb": max(r.peak_mb for r, _ in imports),
        "startup_rss_mb": _median(w["rss_after_imports_mb"] for _, w in imports),
        "repeat": repeat,
        "load_avg": (load_before, os.getloadavg()[0]),
        "rows": rows,
    }


def _median(values) -> float:
    return statistics.median(list(values))


def _mark(ok: bool) -> str:
    return "✓" if ok else "✗"


def render(result: dict, command: str) -> str:
    """The Markdown section: set-up, one row per FLOPs fraction, and the targets checked against the numbers."""
    b = result["bundle_mb"]
    lines = [
        f"Command: `{command}` — {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, {_machine()}; "
        f"load average {result['load_avg'][0]:.1f} before and {result['load_avg'][1]:.1f} after the run.",
        f"Bundle: `{result['model']}` (random init, magnitude scores), {b:.0f} MB. Each number is the median of "
        f"{result['repeat']} fresh process(es); memory is what a step adds to its process (peak RSS minus RSS "
        f"before it), and *× bundle* divides it by the bundle's size.",
        "",
        "| FLOPs kept | `snapvit slice` process (CPU) | its slicing step | step memory | `.slice()` first "
        "| `.slice()` switch | in-process memory | sliced model | `load(folder)` | memory once read |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['flops']:g} | {r['cli_wall_s']:.2f} s ({r['cli_cpu_s']:.2f} s) | {r['cli_step_s']:.2f} s "
            f"| {r['cli_step_mb']:.0f} MB ({r['cli_step_mb'] / b:.2f}× bundle) | {r['slice_s']:.2f} s "
            f"| {r['switch_s']:.2f} s | {r['slice_mb']:.0f} MB ({r['slice_mb'] / b:.2f}×) | {r['model_mb']:.0f} MB "
            f"| {r['load_s']:.2f} s | {r['load_mb']:.0f} MB |"
        )
    rows = result["rows"]
    worst = {k: max(r[k] for r in rows) for k in ("cli_wall_s", "cli_step_mb", "slice_s", "switch_s")}
    startup, help_s = result["startup_s"], result["help_s"]
    switch_read = max(r["switch_read_mb"] for r in rows)
    lines += [
        "",
        "| target | measured (worst fraction) | |",
        "|---|---|---|",
        f"| in-process `.slice()` ≤ {SLICE_S} s | {worst['slice_s']:.2f} s | {_mark(worst['slice_s'] <= SLICE_S)} |",
        f"| switching budget ≤ {SWITCH_S} s, no file re-read | {worst['switch_s']:.2f} s, "
        f"{switch_read:.1f} MB read | {_mark(worst['switch_s'] <= SWITCH_S and switch_read < 1)} |",
        f"| `snapvit slice` process ≤ {CLI_S} s | {worst['cli_wall_s']:.2f} s, of which start-up "
        f"{startup:.2f} s ({startup / worst['cli_wall_s']:.0%}) | {_mark(worst['cli_wall_s'] <= CLI_S)} |",
        f"| slicing memory ≤ {MEMORY_X} × bundle | {worst['cli_step_mb'] / b:.2f}× (`snapvit slice`) "
        f"| {_mark(worst['cli_step_mb'] <= MEMORY_X * b)} |",
        f"| `snapvit --help` without torch (asserted by `tests/test_cli.py`) | {help_s:.2f} s | |",
        "",
        f"Start-up alone (Python + torch + timm + snapvit imports): {startup:.2f} s "
        f"({result['startup_cpu_s']:.2f} s CPU), "
        f"{result['startup_rss_mb']:.0f} MB RSS after imports ({result['startup_peak_mb']:.0f} MB peak). "
        f"Writing the bundle (`snapvit score --no-pretrained`): {result['score_wall_s']:.1f} s.",
    ]
    return "\n".join(lines)


def _machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError, StopIteration), open("/proc/cpuinfo") as f:
        cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, torch {torch.__version__}"


def write_readme(section: str) -> None:
    """Replace the marked block of ``benchmarks/README.md`` (the rest of the file is hand-written)."""
    text = README.read_text()
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    README.write_text(f"{head}{BEGIN}\n{section}\n{END}{tail}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vit_base_patch16_224", help="timm architecture (random init)")
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.9, 0.75, 0.5], help="FLOPs fractions")
    parser.add_argument("--repeat", type=int, default=1, help="fresh processes per measurement (median)")
    parser.add_argument("--no-readme", action="store_true", help="print only; leave benchmarks/README.md alone")
    parser.add_argument("--worker", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(_worker(args.worker[0], args.worker[1:])))
        return
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="snapvit-bench-") as tmp:
        result = measure(args.model, args.fractions, Path(tmp), args.repeat)
    command = " ".join(["python benchmarks/slice.py", *sys.argv[1:]])
    section = render(result, command)
    print(section)
    print(f"\n(benchmark took {time.perf_counter() - start:.0f} s)")
    if not args.no_readme and args.model == "vit_base_patch16_224":
        write_readme(section)


if __name__ == "__main__":
    main()
