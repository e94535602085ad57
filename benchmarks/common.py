"""What the benchmark scripts share: where the real model and data are, the machine a run was measured on,
timestamped progress on stderr, pooled features, and rewriting a script's marked block of ``benchmarks/README.md``."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from snapvit_cli.data import ImageSet
from snapvit_cli.evaluation.evaluate import extract_features

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "benchmarks" / "README.md"
REAL_CHECKPOINT = "vit_tiny_patch16_224.tinyimagenet.safetensors"
REAL_DATA = "cifar10_subset.npz"


def shared_data() -> Path:
    """The real ViT-Tiny and CIFAR-10 subset: ``$SNAPVIT_SHARED_DATA`` or ``../shared/data`` beside the clone."""
    return Path(os.environ.get("SNAPVIT_SHARED_DATA", ROOT.parent / "shared" / "data"))


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def machine() -> str:
    """CPU model (from /proc/cpuinfo on Linux, where platform.processor() is often empty), cores, Python, torch."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError, StopIteration), open("/proc/cpuinfo") as f:
        cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, torch {torch.__version__}"


def features(
    model: torch.nn.Module,
    images: ImageSet,
    transform: Callable[[torch.Tensor], torch.Tensor],
    *,
    label: str = "",
    batch_size: int = 100,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Pooled features (classifier disabled) of every image through ``transform`` (e.g. ``preprocess(cfg)``), float32
    on the CPU; with a ``label``, progress is logged every 500 images."""
    progress: Callable[[int, int], None] | None = None
    if label:

        def progress(done: int, total: int) -> None:
            if done % 500 < batch_size or done == total:
                log(f"  {label}: features {done}/{total}")

    model = model.eval().to(device)
    return extract_features(model, images, transform, batch_size=batch_size, device=device, progress=progress)


def write_json(path: Path, record: dict) -> None:
    """Write ``record`` to ``path`` atomically, through a temporary file of this process (several worker
    processes may write into one folder)."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(record, indent=2, default=str))
    tmp.replace(path)


def revision() -> str:
    """The commit of the code being measured (``git rev-parse``), with ``+changes`` when the package or the
    benchmark scripts differ from it; ``unknown`` outside a git checkout."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()

    try:
        head = git("rev-parse", "--short=10", "HEAD")
        changed = git("status", "--porcelain", "--", "snapvit_cli", ":(glob)benchmarks/*.py")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+changes" if changed else "")


def write_readme_block(name: str, text: str) -> None:
    """Replace the block between ``<!-- NAME:begin -->`` and ``<!-- NAME:end -->`` in ``benchmarks/README.md``
    (the rest of the file is hand-written); its first line names the commit measured."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    content = README.read_text()
    head, rest = content.split(begin, 1)
    _, tail = rest.split(end, 1)
    README.write_text(f"{head}{begin}\nCommit: `{revision()}` (the code measured).\n{text}\n{end}{tail}")
