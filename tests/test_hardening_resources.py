"""The resource rule (issue 23): no input file of S bytes makes a command use more than about 2·S + 1 GB of memory
beyond a bare ``import torch``, or run more than a few seconds, before its one-line refusal.

Each hostile input of items 1, 2, 6, 9, 13, 14 and 15 is given to the real CLI in a process of its own
(``python -m snapvit_cli``); the process's peak RSS (``wait4``'s ``ru_maxrss``) and wall time are compared with
those of ``python -c 'import torch'`` measured the same way, on the same (possibly busy) machine."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from tests.crafted import edit_config, edit_safetensors, sliced_folder, small_bundle

ROOT = Path(__file__).resolve().parents[1]
EXTRA_BYTES = 1 << 30  # the rule's 1 GB
# "A few seconds": at most twice a bare `import torch` plus 5 s, so that a busy machine (where importing torch alone
# takes seconds) stretches the bound with it.
EXTRA_SECONDS = 5.0
KILL_AFTER_S = 60.0
ADDRESS_LIMIT = 12 << 30  # a runaway child must not take the shared machine down with it


@dataclass
class Run:
    code: int
    stderr: str
    seconds: float
    peak_bytes: int


def measure(args: list[str], env: dict[str, str] | None = None, cwd: Path | None = None) -> Run:
    """Run ``python ARGS`` with stdout/stderr in files; its exit code, stderr, wall time and peak RSS."""
    base = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR")}
    full = {**base, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **(env or {})}
    err_path = Path(cwd or ROOT) / f".stderr-{os.getpid()}-{time.monotonic_ns()}"

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_LIMIT, ADDRESS_LIMIT))

    with open(err_path, "w") as err:
        started = time.monotonic()
        process = subprocess.Popen(
            [sys.executable, *args], env=full, cwd=cwd, stdout=subprocess.DEVNULL, stderr=err, preexec_fn=limit
        )
        while True:
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() - started > KILL_AFTER_S:
                process.kill()
                pid, status, usage = os.wait4(process.pid, 0)
                break
            time.sleep(0.02)
        seconds = time.monotonic() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    stderr = err_path.read_text(errors="replace")
    err_path.unlink()
    return Run(process.returncode, stderr, seconds, usage.ru_maxrss * 1024)


@pytest.fixture(scope="module")
def baseline() -> Run:
    """A bare ``import torch``: the floor every command starts from."""
    return min((measure(["-c", "import torch"]) for _ in range(2)), key=lambda r: r.seconds)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("resources")
    rope = small_bundle(folder / "rope.safetensors", "dinov3", patch_size=1, img_size=32)
    plain = small_bundle(folder / "plain.safetensors", "dino")
    made: dict[str, Path] = {}

    def claim(size: int, dynamic: bool = False) -> Callable[[dict], None]:
        def edit(record: dict) -> None:
            source = record.get("source", record)
            source["model_args"].update(img_size=size, **({"dynamic_img_size": True} if dynamic else {}))
            source["pretrained_cfg"]["input_size"] = [3, size, size]
            record["structure"]["img_size"] = [size, size]

        return edit

    made["tokens bundle"] = edit_safetensors(rope, folder / "tokens.safetensors", meta=claim(4096))
    made["tokens folder"] = edit_config(sliced_folder(rope, folder / "tokens"), claim(4096))
    made["dynamic folder"] = edit_config(sliced_folder(rope, folder / "dynamic"), claim(256, dynamic=True))

    def to(dtype: torch.dtype) -> Callable[[dict], None]:
        return lambda state: state.update({k: v.to(dtype) for k, v in state.items() if k.startswith("model.")})

    made["fp8 bundle"] = edit_safetensors(plain, folder / "fp8.safetensors", tensors=to(torch.float8_e4m3fn))
    fp16 = sliced_folder(plain, folder / "fp16")
    weights = fp16 / "model.safetensors"
    edit_safetensors(weights, weights, tensors=lambda s: s.update({k: v.half() for k, v in s.items()}))
    made["fp16 folder"] = fp16
    made["crop folder"] = edit_config(
        sliced_folder(plain, folder / "crop"), lambda c: c["pretrained_cfg"].update(crop_pct=1e-4)
    )
    nan = sliced_folder(plain, folder / "overflow")
    weights = nan / "model.safetensors"
    edit_safetensors(
        weights,
        weights,
        tensors=lambda s: s.update({"norm.weight": torch.full_like(s["norm.weight"], 3e38)}),  # finite, overflows
    )
    made["overflow folder"] = nan
    made["escape bundle"] = edit_safetensors(
        plain, folder / "escape.safetensors", meta=lambda m: m.update({"\x1b[2J\x1b]0;x\x07": 1})
    )
    made["plain bundle"] = plain
    return made


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size


CLI = ["-m", "snapvit_cli"]
SCORE = [*CLI, "score", "--model", "demo", "--no-pretrained", "--samples", "8", "--method", "magnitude"]
SLICE = ["slice", "{in}", "--flops", "0.5", "-o", "{out}"]
EVAL = ["eval", "{in}", "--data", "demo"]
# case: (input, python arguments ({in}: the input's path, {out}: an output that must not appear), environment,
# what the one error line says)
CASES: dict[str, tuple[str, list[str], dict[str, str], str]] = {
    "2: slice a bundle claiming 16M tokens": (
        "tokens bundle", [*CLI, "slice", "{in}", "--mlp", "0.5", "--heads", "0", "-o", "{out}"], {}, "patch tokens"
    ),
    "2: eval a folder claiming 16M tokens": ("tokens folder", [*CLI, *EVAL], {}, "patch tokens"),
    "2: push a folder claiming 16M tokens": (
        "tokens folder", [*CLI, "push", "{in}", "--repo", "me/x", "--dry-run", "{out}", "-q"], {}, "patch tokens"
    ),
    "2: eval a dynamic-size folder of 65k tokens": ("dynamic folder", [*CLI, *EVAL], {}, "patch tokens"),
    "6: slice an fp8 bundle": ("fp8 bundle", [*CLI, *SLICE], {}, "stored as F8_E4M3"),
    "6: eval an fp16 folder": ("fp16 folder", [*CLI, *EVAL], {}, "stored as F16"),
    "9: eval --transform timm, crop_pct 1e-4": ("crop folder", [*CLI, *EVAL, "--transform", "timm"], {}, "crop_pct"),
    "1: export a model whose outputs overflow": (
        "overflow folder", [*CLI, "export", "{in}", "--format", "pt2", "-o", "{out}", "-q"], {}, "not finite"
    ),
    "13: slice a bundle with an escape-sequence key": ("escape bundle", [*CLI, *SLICE], {}, "\\x1b[2J"),
    "15: slice --round-to 70000 --dry-run": (
        "plain bundle",
        [*CLI, "slice", "{in}", "--mlp", "0", "--heads", "0.5", "--round-to", "70000", "--dry-run"],
        {},
        "--round-to must lie in [1, 65536]",
    ),
    "15: score --seed 10^23": ("plain bundle", [*SCORE, "--seed", str(10**23), "-o", "{out}"], {}, "--seed"),
    "14: WORLD_SIZE=abc snapvit models": ("plain bundle", [*CLI, "models"], {"WORLD_SIZE": "abc"}, "WORLD_SIZE"),
    "14: WORLD_SIZE=2 without a rendezvous": (
        "plain bundle", [*SCORE, "-o", "{out}"], {"WORLD_SIZE": "2", "RANK": "0"}, "cannot join"
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_hostile_inputs_are_refused_within_the_resource_rule(inputs, baseline, tmp_path, case):
    name, args, env, message = CASES[case]
    path, out = inputs[name], tmp_path / "out"
    args = [a.replace("{in}", str(path)).replace("{out}", str(out)) for a in args]
    run = measure(args, env=env, cwd=tmp_path)
    lines = run.stderr.strip().splitlines()
    assert run.code == 1 and len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], run
    assert "\x1b" not in run.stderr
    assert not out.exists()
    allowed = baseline.peak_bytes + 2 * _size(path) + EXTRA_BYTES
    print(  # the measurements, for `pytest -s` (the closing note quotes them)
        f"{case}: {run.seconds:.1f} s, peak {run.peak_bytes / 2**20:.0f} MiB; bare import torch "
        f"{baseline.seconds:.1f} s, {baseline.peak_bytes / 2**20:.0f} MiB; input {_size(path) / 1024:.0f} KiB"
    )
    assert run.peak_bytes <= allowed, f"{run.peak_bytes / 2**20:.0f} MiB > {allowed / 2**20:.0f} MiB"
    took = f"{run.seconds:.1f} s (import torch: {baseline.seconds:.1f} s)"
    assert run.seconds <= 2 * baseline.seconds + EXTRA_SECONDS, took
