"""Runs snapvit CLI commands in this process, one after another, and measures each: exit code, stderr, stdout, wall
time and peak-RSS growth. Used by ``test_hostile_artifacts.py`` in a subprocess, so that memory is measured on a
process of its own, after torch and timm are imported and warmed up (their import is not what is being measured).

Usage: ``python tests/hostile_runner.py CASES.json RESULTS.json WARMUP_BUNDLE``; CASES is ``[[name, [args...]], ...]``.
"""

from __future__ import annotations

import contextlib
import io
import json
import resource
import sys
import time
from pathlib import Path


def _peak_mb() -> float:
    """Peak RSS since the last reset (VmHWM, resettable on Linux), else the process's lifetime peak."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _reset_peak() -> float:
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")
    return _peak_mb()


def main() -> None:
    cases, results_path, warmup = json.loads(Path(sys.argv[1]).read_text()), Path(sys.argv[2]), sys.argv[3]
    from snapvit_cli.cli.app import app
    from snapvit_cli.elastic.bundle import ElasticBundle

    ElasticBundle.open(warmup).plan(flops=0.8)  # timm's registry and lazy imports, paid once
    results = []
    for name, args in cases:
        captured, printed, real = io.StringIO(), io.StringIO(), (sys.stderr, sys.stdout)
        before = _reset_peak()
        start = time.perf_counter()
        sys.stderr, sys.stdout = captured, printed
        try:
            code = app(args, standalone_mode=False)  # click returns a command's exit code, or None on success
            code = 0 if code is None else code
        except SystemExit as exc:
            code = exc.code
        except Exception as exc:  # noqa: BLE001 - a traceback is a failure the test reports
            code = f"uncaught {type(exc).__name__}: {exc}"
        finally:
            sys.stderr, sys.stdout = real
        seconds = time.perf_counter() - start
        results.append(
            {
                "name": name,
                "code": code,
                "stderr": captured.getvalue(),
                "stdout": printed.getvalue(),
                "seconds": seconds,
                "rss_mb": _peak_mb() - before,
            }
        )
    results_path.write_text(json.dumps(results))


if __name__ == "__main__":
    main()
