"""Slicing benchmark: how long cutting a ViT-B/16 bundle takes, and how much memory it needs.

Run from the repository root (Linux: it reads ``/proc`` for memory)::

    python -m benchmarks.slice                       # ViT-B/16, FLOPs fractions 0.9 0.75 0.5; updates README.md
    python -m benchmarks.slice --no-readme --fractions 0.5

It writes a random-init ViT-B/16 bundle (``snapvit score --no-pretrained --method magnitude``: no download) into a
temporary folder, then measures, each in a fresh process so that nothing is cached or shared between steps:

- ``snapvit slice`` as a whole process (wall and CPU time, peak RSS);
- the same command in a process that first imports what it needs: the start-up, then the slicing step alone;
- in a third process, ``snapvit_cli.load(sliced_folder)``, then the in-process API: ``load_bundle(...)``,
  ``.slice(flops=f)``, and switching to another budget and back;
- ``snapvit --help``;
- ``snapvit slice --flops F1,F2,F3`` (every fraction in one call) against the single-fraction runs: its slicing step's
  time and the bytes it reads with read(2)/pread(2), which show that the bundle is hashed once and its weights
  mapped once rather than once per budget.

A step's *memory* is what it adds to the process: its peak RSS minus the RSS just before it (the kernel's peak
counter is reset there through ``/proc/self/clear_refs``), so the ~0.9 GB that importing torch and timm takes is
not counted against slicing. It includes the memory-mapped bundle pages that the step touched.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

# The worker (``--worker``) times the start-up of `snapvit slice` in a fresh process, so nothing but the standard
# library may be imported at module level here: benchmarks.common imports torch and the evaluation package, and
# importing it first made the timed imports measure nothing. The driver imports it when it runs.
ROOT = Path(__file__).resolve().parents[1]
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
    """Record a block's wall time and its CPU time (all threads; less sensitive to a busy machine)."""
    start, cpu = time.perf_counter(), time.process_time()
    yield
    report[f"{name}_s"] = time.perf_counter() - start
    report[f"{name}_cpu_s"] = time.process_time() - cpu


@contextlib.contextmanager
def _step(report: dict, name: str):
    """Time a block and record the memory it adds (peak RSS during it minus RSS before) and the bytes it reads."""
    before, read_before = _reset_peak(), _bytes_read()
    with _timed(report, name):
        yield
    report[f"{name}_mb"] = _status_mb("VmHWM") - before
    report[f"{name}_read_mb"] = (_bytes_read() - read_before) / MB


def _worker(kind: str, args: list[str]) -> dict:
    report: dict = {}
    heavy = sorted(m for m in ("torch", "timm", "snapvit_cli") if m in sys.modules)
    if heavy:
        raise RuntimeError(f"the worker imported {heavy} before timing the start-up")
    with _timed(report, "import"):  # what `snapvit slice` imports: the entry point, then its command's imports
        import snapvit_cli
        import snapvit_cli.api  # noqa: F401 - load_bundle: torch, timm, the format, the correction it may compose
        import snapvit_cli.elastic.grid  # noqa: F401
        import snapvit_cli.slicing  # noqa: F401
        from snapvit_cli import cli
    report["rss_after_imports_mb"] = _status_mb("VmRSS")
    modules = set(sys.modules)
    if kind == "cli":  # the `snapvit slice` command, in this process, through the same entry point
        sys.argv = ["snapvit", "slice", *args]
        with _step(report, "step"), contextlib.redirect_stdout(io.StringIO()):
            try:
                cli.main()
            except SystemExit as done:
                if done.code:
                    raise
    elif kind == "api":  # in-process: load a sliced folder; then open a bundle, first slice, switch budgets
        folder, path, flops, other = args[0], args[1], float(args[2]), float(args[3])
        with _step(report, "loaded"):  # load() maps the file: count the weights once read, as a forward pass would
            with _timed(report, "load"):
                model = snapvit_cli.load(folder)
            sum(float(p.sum()) for p in model.parameters())
        del model  # unmaps the sliced file before the bundle is measured
        with _step(report, "first"):  # the memory of opening and the first slice, together
            with _timed(report, "open"):
                bundle = snapvit_cli.load_bundle(path)
            with _timed(report, "slice"):
                model = bundle.slice(flops=flops)
        with _step(report, "switch"):  # to the other budget and back, twice: the median of four switches
            switches = []
            for budget in (other, flops, other, flops):
                with _timed(timing := {}, "slice"):
                    model = bundle.slice(flops=budget)
                switches.append(timing)
        for key in ("s", "cpu_s"):
            report[f"switch_{key}"] = statistics.median(t[f"slice_{key}"] for t in switches)
        widths = bundle.plan(flops=flops).widths  # what `snapvit slice` reads: kept units only, then with checks
        with _timed(report, "read"):
            bundle.read_state_dict(widths)
        with _timed(report, "verified"):
            bundle.read_verified(widths)  # + sha256 of the file and of the un-permuted weights, in two threads
        report["model_mb"] = sum(p.numel() * p.element_size() for p in model.parameters()) / MB
    else:
        raise ValueError(f"unknown worker {kind}")
    report["imported_after_startup"] = sorted(m for m in set(sys.modules) - modules if m.startswith(("torch", "timm")))
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
    run = _run([sys.executable, "-m", "benchmarks.slice", "--worker", kind, *args])
    return run, json.loads(run.stdout.strip().splitlines()[-1])


def _snapvit(*args: str) -> Run:
    return _run([sys.executable, "-m", "snapvit_cli", *args])


def measure(model: str, fractions: list[float], workdir: Path, repeat: int) -> dict:
    load_before = os.getloadavg()[0]
    bundle = workdir / "bundle.safetensors"
    score = _snapvit("score", "--model", model, "--no-pretrained", "--method", "magnitude", "-o", str(bundle))
    bundle_mb = bundle.stat().st_size / MB
    help_runs = [_snapvit("--help").wall_s for _ in range(3)]
    rows, imports = [], []
    for i, flops in enumerate(fractions):
        other = fractions[(i + 1) % len(fractions)] if len(fractions) > 1 else 1.0
        out = workdir / f"flops{flops:g}"
        args = (str(bundle), "--flops", f"{flops:g}", "-o", str(out), "--force", "--json")
        cli = [_snapvit("slice", *args) for _ in range(repeat)]
        cli_steps = [_worker_run("cli", *args) for _ in range(repeat)]
        api = [_worker_run("api", str(out), str(bundle), f"{flops:g}", f"{other:g}")[1] for _ in range(repeat)]
        imports += [r for _, r in cli_steps] + api
        rows.append(
            {
                "flops": flops,
                "other": other,
                "cli_wall_s": _median(r.wall_s for r in cli),
                "cli_cpu_s": _median(r.cpu_s for r in cli),
                "cli_peak_mb": max(r.peak_mb for r in cli),
                "cli_step_s": _median(r["step_s"] for _, r in cli_steps),
                "cli_step_cpu_s": _median(r["step_cpu_s"] for _, r in cli_steps),
                "cli_step_mb": max(r["step_mb"] for _, r in cli_steps),
                "cli_step_read_mb": _median(r["step_read_mb"] for _, r in cli_steps),
                # start-up share, measured within one process (the worker runs the same command)
                "cli_import_share": _median(r["import_s"] / run.wall_s for run, r in cli_steps),
                "open_s": _median(r["open_s"] for r in api),
                "slice_s": _median(r["slice_s"] for r in api),
                "slice_cpu_s": _median(r["slice_cpu_s"] for r in api),
                "slice_mb": max(r["first_mb"] for r in api),
                "switch_s": _median(r["switch_s"] for r in api),
                "switch_cpu_s": _median(r["switch_cpu_s"] for r in api),
                "switch_read_mb": max(r["switch_read_mb"] for r in api),
                "model_mb": api[0]["model_mb"],
                "load_s": _median(r["load_s"] for r in api),
                "read_s": _median(r["read_s"] for r in api),
                "read_cpu_s": _median(r["read_cpu_s"] for r in api),
                "verified_s": _median(r["verified_s"] for r in api),
                "verified_cpu_s": _median(r["verified_cpu_s"] for r in api),
                "load_mb": max(r["loaded_mb"] for r in api),
            }
        )
    grid_args = (str(bundle), "--flops", ",".join(f"{f:g}" for f in fractions), "-o", str(workdir / "grid"))
    grid = [_worker_run("cli", *grid_args, "--force", "--json")[1] for _ in range(repeat)]
    return {
        "model": model,
        "bundle_mb": bundle_mb,
        "grid": {
            "step_s": _median(r["step_s"] for r in grid),
            "step_cpu_s": _median(r["step_cpu_s"] for r in grid),
            "step_read_mb": _median(r["step_read_mb"] for r in grid),
        },
        "score_wall_s": score.wall_s,
        "help_s": _median(help_runs),
        "import_s": _median(r["import_s"] for r in imports),
        "import_cpu_s": _median(r["import_cpu_s"] for r in imports),
        "import_rss_mb": _median(r["rss_after_imports_mb"] for r in imports),
        "imported_after_startup": sorted({m for r in imports for m in r["imported_after_startup"]}),
        "repeat": repeat,
        "load_avg": (load_before, os.getloadavg()[0]),
        "rows": rows,
    }


def _median(values) -> float:
    return statistics.median(list(values))


def _mark(ok: bool) -> str:
    return "✓" if ok else "✗"


def render(result: dict, command: str) -> str:
    """The Markdown section: set-up, times and memory per FLOPs fraction, and the targets checked."""
    from benchmarks.common import machine

    b, rows = result["bundle_mb"], result["rows"]

    def mem(mb: float) -> str:
        return f"{mb:.0f} MB ({mb / b:.2f}×)"

    lines = [
        f"Command: `{command}` — {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, {machine()}; "
        f"load average {result['load_avg'][0]:.1f} before and {result['load_avg'][1]:.1f} after the run.",
        f"Bundle: `{result['model']}` (random init, magnitude scores), {b:.0f} MB. Each number is the median of "
        f"{result['repeat']} fresh process(es); a switch is the median of four `.slice()` calls alternating "
        f"with the next fraction's budget.",
        "",
        "Times are wall-clock seconds, with CPU seconds (all threads) in brackets: on a busy shared machine the wall "
        "time stretches while the CPU time stays close to what an idle machine would take.",
        "",
        "| FLOPs kept | `snapvit slice` process | of which start-up | its slicing step | `load_bundle()` "
        "| `.slice()` first | `.slice()` switch | `load(folder)` |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
        *(
            f"| {r['flops']:g} | {r['cli_wall_s']:.2f} s ({r['cli_cpu_s']:.2f}) | {r['cli_import_share']:.0%} "
            f"| {r['cli_step_s']:.2f} s ({r['cli_step_cpu_s']:.2f}) | {r['open_s']:.2f} s "
            f"| {r['slice_s']:.2f} s ({r['slice_cpu_s']:.2f}) | {r['switch_s']:.2f} s ({r['switch_cpu_s']:.2f}) "
            f"| {r['load_s']:.2f} s |"
            for r in rows
        ),
        "",
        "Memory: *peak* is the whole process's peak RSS; *adds* is a step's peak RSS minus the RSS before it, and "
        "(×) divides by the bundle's size. The in-process API keeps the bundle memory-mapped (its pages count once "
        "touched) so that switching never re-reads the file; `load(folder)` maps the sliced file, and its memory is "
        "counted after every weight has been read once.",
        "",
        "| FLOPs kept | `snapvit slice` peak | its slicing step adds | `load_bundle()` + first `.slice()` add "
        "| sliced model | `load(folder)` adds |",
        "|---:|---:|---:|---:|---:|---:|",
        *(
            f"| {r['flops']:g} | {r['cli_peak_mb']:.0f} MB | {mem(r['cli_step_mb'])} | {mem(r['slice_mb'])} "
            f"| {mem(r['model_mb'])} | {mem(r['load_mb'])} |"
            for r in rows
        ),
    ]
    lines += [
        "",
        "Integrity checks of `snapvit slice` (`ElasticBundle.read_verified`): reading the kept units alone, then "
        "reading them while two threads hash the bundle file (its sha256 goes into `config.json`) and the "
        "un-permuted weights (checked against the recorded `weights_sha256`), all through the one open file.",
        "",
        "| FLOPs kept | read kept units | read + verify | verification adds |",
        "|---:|---:|---:|---:|",
        *(
            f"| {r['flops']:g} | {r['read_s']:.2f} s ({r['read_cpu_s']:.2f}) "
            f"| {r['verified_s']:.2f} s ({r['verified_cpu_s']:.2f}) | {r['verified_s'] - r['read_s']:.2f} s |"
            for r in rows
        ),
    ]
    keys = ("cli_wall_s", "cli_cpu_s", "cli_step_mb", "slice_s", "slice_cpu_s", "switch_s", "switch_cpu_s")
    worst = {k: max(r[k] for r in rows) for k in keys}
    share = min(r["cli_import_share"] for r in rows)
    switch_read = max(r["switch_read_mb"] for r in rows)
    lines += [
        "",
        "| target | measured (worst fraction) | |",
        "|---|---|---|",
        f"| in-process `.slice()` ≤ {SLICE_S} s | {worst['slice_s']:.2f} s ({worst['slice_cpu_s']:.2f} s CPU) "
        f"| {_mark(worst['slice_s'] <= SLICE_S)} |",
        f"| switching budget ≤ {SWITCH_S} s, no file re-read | {worst['switch_s']:.2f} s "
        f"({worst['switch_cpu_s']:.2f} s CPU), {switch_read:.1f} MB read "
        f"| {_mark(worst['switch_s'] <= SWITCH_S and switch_read < 1)} |",
        f"| `snapvit slice` process ≤ {CLI_S} s | {worst['cli_wall_s']:.2f} s ({worst['cli_cpu_s']:.2f} s CPU), "
        f"≥ {share:.0%} of it start-up | {_mark(worst['cli_wall_s'] <= CLI_S)} |",
        f"| `snapvit slice` memory ≤ {MEMORY_X} × bundle | {worst['cli_step_mb'] / b:.2f}× "
        f"| {_mark(worst['cli_step_mb'] <= MEMORY_X * b)} |",
        f"| `snapvit --help` without torch (asserted by `tests/test_cli.py`) | {result['help_s']:.2f} s | |",
        "",
        f"All {len(rows)} fractions in one call (`snapvit slice BUNDLE --flops "
        f"{','.join(format(r['flops'], 'g') for r in rows)}`): its slicing step took {result['grid']['step_s']:.2f} s "
        f"({result['grid']['step_cpu_s']:.2f} s CPU) and read {result['grid']['step_read_mb']:.0f} MB with "
        f"read/pread, against {sum(r['cli_step_s'] for r in rows):.2f} s "
        f"({sum(r['cli_step_cpu_s'] for r in rows):.2f} s CPU) and {sum(r['cli_step_read_mb'] for r in rows):.0f} MB "
        f"for the {len(rows)} single-fraction runs together (bundle {b:.0f} MB). One call opens, validates and hashes "
        "the bundle once and memory-maps its weights once (mapped pages are not counted as reads; each is read from "
        "the file at most once); every folder is byte-identical to its single-fraction run "
        "(`tests/test_slice_grid.py`).",
        "",
        f"Start-up (importing torch, timm and snapvit, median over the measuring processes): "
        f"{result['import_s']:.2f} s ({result['import_cpu_s']:.2f} s CPU), {result['import_rss_mb']:.0f} MB RSS "
        f"afterwards, timed in fresh processes that import nothing before it (torch or timm modules first imported "
        f"after it: {', '.join(result['imported_after_startup']) or 'none'}). Writing the bundle "
        f"(`snapvit score --no-pretrained`): {result['score_wall_s']:.1f} s.",
    ]
    return "\n".join(lines)


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
    command = " ".join(["python -m benchmarks.slice", *sys.argv[1:]])
    section = render(result, command)
    print(section)
    print(f"\n(benchmark took {time.perf_counter() - start:.0f} s)")
    if not args.no_readme and args.model == "vit_base_patch16_224":
        from benchmarks.common import write_readme_block

        write_readme_block("slice-benchmark", section)


if __name__ == "__main__":
    main()
