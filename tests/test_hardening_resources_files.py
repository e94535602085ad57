"""The resource rule (docs/safety.md) for the hostile files of issue 23's items 3, 7 and 8: each is given to the
real CLI in a process of its own and must be refused in one line within 2·S + 1 GB of peak memory beyond a bare
``import torch`` and a few seconds (the measurement is tests/test_hardening_resources.py's)."""

from __future__ import annotations

import io
import os
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.test_hardening_files import npy_bytes, write_npz
from tests.test_hardening_resources import EXTRA_BYTES, EXTRA_SECONDS, _size, baseline, measure  # noqa: F401
from tests.test_hardening_scores import rewrite_pickle, with_metadata

CLI = ["-m", "snapvit_cli"]
EVAL = [*CLI, "eval", "demo", "--data", "{in}", "--no-speed"]
IMPORT = [*CLI, "import-scores", "{in}", "-o", "{out}"]


def deflate_bomb(folder: Path) -> Path:
    """1.1 GiB of zero pixels deflated to about a megabyte."""
    path, shape = folder / "bomb.npz", (1100, 1024, 1024, 1)
    zeros = bytes(1 << 24)
    with (
        zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as archive,
        archive.open("x.npy", "w", force_zip64=True) as member,
    ):
        member.write(npy_bytes(shape))
        for _ in range(int(np.prod(shape)) >> 24):
            member.write(zeros)
    return path


def huge_label(folder: Path) -> Path:
    buffer = io.BytesIO()
    np.save(buffer, np.array([0, 10**12], np.int64))
    return write_npz(folder / "label.npz", {"x": npy_bytes((2, 8, 8, 3), data=b"\0" * 384), "y": buffer.getvalue()})


def shared_lists(folder: Path) -> Path:
    bomb: list = [0]
    for _ in range(6):
        bomb = [bomb] * 20
    return with_metadata(folder, {"bomb": bomb}, "shared.pt")


def deflated_tensor(folder: Path) -> Path:
    """A 200 MB tensor in the metadata, its record deflated to well under a megabyte."""
    plain = with_metadata(folder, {"zeros": torch.zeros(50_000_000)}, "tensor.pt")
    packed = rewrite_pickle(plain, b"zeros", b"zeroz", compression=zipfile.ZIP_DEFLATED)
    plain.unlink()
    return packed


def fifo(folder: Path) -> Path:
    os.mkfifo(folder / "pipe.npz")
    return folder / "pipe.npz"


# case: (make the input, python arguments ({in}: the input, {out}: an output that must not appear), the error says)
CASES: dict[str, tuple[Callable[[Path], Path], list[str], str]] = {
    "8: eval on a 1.1 GiB deflate bomb": (deflate_bomb, EVAL, "refusing to decompress"),
    "8: eval on an npy header claiming 2^62 bytes": (
        lambda f: write_npz(f / "liar.npz", {"x": npy_bytes((1 << 40, 1 << 10, 1 << 10, 3), data=b"\0" * 64)}),
        EVAL,
        "declares shape",
    ),
    "8: eval on a label of 10^12": (huge_label, EVAL, "class ids must be below"),
    "7: import-scores, 20^6 shared lists": (shared_lists, IMPORT, "more than 100000 values"),
    "7: import-scores, a deflated 200 MB tensor": (deflated_tensor, IMPORT, "compressed members"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_hostile_files_are_refused_within_the_resource_rule(baseline, tmp_path, case):  # noqa: F811
    make, args, message = CASES[case]
    path, out = make(tmp_path), tmp_path / "out"
    run = measure([a.replace("{in}", str(path)).replace("{out}", str(out)) for a in args], cwd=tmp_path)
    lines = [line for line in run.stderr.strip().splitlines() if not line[:2].isdigit()]  # eval's progress lines
    assert run.code == 1 and len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], run
    assert not out.exists()
    allowed = baseline.peak_bytes + 2 * _size(path) + EXTRA_BYTES
    print(  # the measurements, for `pytest -s`
        f"{case}: {run.seconds:.1f} s, peak {run.peak_bytes / 2**20:.0f} MiB; bare import torch "
        f"{baseline.seconds:.1f} s, {baseline.peak_bytes / 2**20:.0f} MiB; input {_size(path) / 1024:.0f} KiB"
    )
    assert run.peak_bytes <= allowed, f"{run.peak_bytes / 2**20:.0f} MiB > {allowed / 2**20:.0f} MiB"
    assert run.seconds <= 2 * baseline.seconds + EXTRA_SECONDS, f"{run.seconds:.1f} s"


def test_a_fifo_given_as_data_is_refused_at_once(tmp_path):
    """Item 3 with no size at all: a FIFO nobody writes to, where an .npz is read (it used to block forever)."""
    path = fifo(tmp_path)
    from snapvit_cli.data.arrays import load_npz
    from snapvit_cli.errors import DataError

    with pytest.raises(DataError, match="FIFO"):
        load_npz(str(path), "train")
