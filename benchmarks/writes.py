"""What safe writes cost: replacing a ViT-B/16-sized sliced folder with ``save_sliced`` (temporary folder, umask
permissions, fsync of every file and folder, atomic exchange) against a plain ``save_file`` + ``config.json``
written straight over the old folder's files (fast, but an interrupt leaves a mix and a crash can lose both).

Run from the repository root::

    python -m benchmarks.writes                  # 5 interleaved repeats of each, in a temporary folder
    python -m benchmarks.writes --repeats 3 --dir /some/disk

It prints the median wall time of each and their ratio, measured in the same run. fsync makes the writer wait for
the disk, so the cost depends on the disk (and on what else writes to it) far more than on the CPU.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import timm
import torch
from safetensors.torch import save_file

from benchmarks.common import machine
from snapvit_cli.elastic.sliced import CONFIG_NAME, WEIGHTS_NAME, save_sliced

MB = 2**20


def plain_write(folder: Path, state: dict[str, torch.Tensor], config: dict) -> None:
    folder.mkdir(exist_ok=True)
    save_file(state, str(folder / WEIGHTS_NAME))
    (folder / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dir", type=Path, default=None, help="where to write (default: a temporary folder)")
    args = parser.parse_args()

    torch.manual_seed(0)
    state = {k: v.contiguous() for k, v in timm.create_model("vit_base_patch16_224").state_dict().items()}
    size = sum(v.numel() * v.element_size() for v in state.values())
    config = {"kind": "sliced-model", "note": "benchmark"}
    times: dict[str, list[float]] = {"save_sliced (safe)": [], "plain overwrite": []}
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        safe, plain = Path(tmp) / "safe", Path(tmp) / "plain"
        save_sliced(safe, state, config)  # an existing output to replace, as with --force
        plain_write(plain, state, config)
        for _ in range(args.repeats):
            started = time.perf_counter()
            save_sliced(safe, state, config, force=True)
            times["save_sliced (safe)"].append(time.perf_counter() - started)
            started = time.perf_counter()
            plain_write(plain, state, config)
            times["plain overwrite"].append(time.perf_counter() - started)
    print(f"machine: {machine()}")
    print(f"replacing a {size / MB:.0f} MB sliced folder (ViT-B/16 weights), median of {args.repeats}:")
    medians = {name: statistics.median(values) for name, values in times.items()}
    for name, value in medians.items():
        print(f"  {name:20s} {value:6.2f} s   (runs: {', '.join(f'{v:.2f}' for v in times[name])})")
    print(f"  ratio safe / plain   {medians['save_sliced (safe)'] / medians['plain overwrite']:.2f}")


if __name__ == "__main__":
    main()
