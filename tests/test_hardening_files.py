"""Input files that are not what they claim (issue 23, items 3 and 8): a FIFO or device where a file is read, and
.npz archives whose headers or zip directory promise more than the file holds."""

from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from snapvit_cli.cli.app import app
from snapvit_cli.data import load_images
from snapvit_cli.errors import DataError

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()
# A FIFO with no writer makes a blocking open() wait forever: each command gets this long to refuse it.
HANG_S = 30


def run(*args: object):
    return runner.invoke(app, [str(a) for a in args])


def snapvit(*args: object, timeout: float = HANG_S) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "snapvit_cli", *map(str, args)], env=env, capture_output=True, text=True, timeout=timeout
    )


def one_error_line(result: subprocess.CompletedProcess, message: str) -> None:
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and len(lines) == 1 and message in lines[0], result.stderr


# -- item 3: FIFOs and devices are refused before they are opened ------------------------------------------------


@pytest.fixture
def fifo_folder(built, tmp_path) -> Path:
    """A sliced-model folder whose model.safetensors is a FIFO that nobody writes to."""
    _, sliced = built
    folder = tmp_path / "fifo-model"
    folder.mkdir()
    shutil.copy(sliced / "config.json", folder / "config.json")
    os.mkfifo(folder / "model.safetensors")
    return folder


@pytest.mark.parametrize(
    "command",
    [
        ["eval", "FOLDER", "--data", "demo", "--no-speed"],
        ["export", "FOLDER", "--format", "pt2", "-o", "OUT/model.pt2"],
    ],
    ids=lambda c: c[0],
)
def test_a_fifo_named_model_safetensors_is_refused_not_waited_on(fifo_folder, tmp_path, command):
    out = tmp_path / "out"
    args = [a.replace("FOLDER", str(fifo_folder)).replace("OUT", str(out)) for a in command]
    start = time.monotonic()
    result = snapvit(*args)  # on a blocking open() this never returns: subprocess.TimeoutExpired
    assert time.monotonic() - start < HANG_S
    one_error_line(result, "model.safetensors")
    assert re.search(r"FIFO|not a regular file", result.stderr), result.stderr
    assert not out.exists()


def test_load_refuses_a_fifo(fifo_folder):
    code = "\n".join(
        [
            "import snapvit_cli",
            "from snapvit_cli.errors import SnapvitError",
            "try:",
            f"    snapvit_cli.load({str(fifo_folder)!r})",
            "except SnapvitError as e:",
            "    print(e)",
        ]
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=HANG_S)
    assert result.returncode == 0 and "is a FIFO (named pipe), not a regular file" in result.stdout, result


def test_open_regular_refuses_fifos_devices_and_folders(tmp_path):
    from snapvit_cli.fileio import NotRegularFileError, open_regular

    os.mkfifo(tmp_path / "pipe")
    (tmp_path / "file").write_bytes(b"data")
    for path, kind in ((tmp_path / "pipe", "FIFO"), ("/dev/zero", "device"), (tmp_path, "folder")):
        with pytest.raises(NotRegularFileError, match=kind):
            open_regular(path)
    with open_regular(tmp_path / "file") as f:
        assert f.read() == b"data"


def test_a_fifo_swapped_in_after_the_check_is_still_refused(tmp_path, monkeypatch):
    """The race between the stat and the open: the descriptor is checked again, and opening is non-blocking."""
    from snapvit_cli.fileio import NotRegularFileError, open_regular

    (tmp_path / "x").write_bytes(b"data")
    os.mkfifo(tmp_path / "pipe")
    real_stat = os.stat

    def stat_then_swap(path, *args, **kwargs):
        return real_stat(tmp_path / "x" if path == tmp_path / "pipe" else path, *args, **kwargs)

    monkeypatch.setattr(os, "stat", stat_then_swap)
    with pytest.raises(NotRegularFileError, match="FIFO"):
        open_regular(tmp_path / "pipe")


# -- item 8: .npz archives that promise more than they hold ----------------------------------------------------


def npy_bytes(shape: tuple[int, ...], dtype: str = "|u1", data: bytes = b"", pad_to: int = 0) -> bytes:
    """An .npy file: the header numpy writes (format 1.0, padded to ``pad_to``), then ``data``."""
    header = repr({"descr": dtype, "fortran_order": False, "shape": shape}).encode()
    total = max(pad_to, 10 + len(header) + 1)
    total += -total % 64
    header = header + b" " * (total - 10 - len(header) - 1) + b"\n"
    return b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header + data


def write_npz(path: Path, members: dict[str, bytes], compression: int = zipfile.ZIP_STORED) -> Path:
    with zipfile.ZipFile(path, "w", compression) as archive:
        for name, content in members.items():
            archive.writestr(f"{name}.npy", content)
    return path


def good_labels(n: int) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.zeros(n, np.int64))
    return buffer.getvalue()


def test_an_npy_header_claiming_exabytes_is_one_line(tmp_path):
    """A 1 KB file whose header claims 2^62 bytes: numpy would try to allocate them (MemoryError traceback)."""
    npz = write_npz(tmp_path / "liar.npz", {"x": npy_bytes((1 << 40, 1 << 10, 1 << 10, 3), data=b"\0" * 64)})
    assert npz.stat().st_size < 2000
    result = run("eval", "demo", "--data", npz, "--no-speed")
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.exception
    lines = [line for line in result.stderr.splitlines() if not re.match(r"\d\d:\d\d:\d\d ", line)]
    assert len(lines) == 1 and "declares shape" in lines[0], result.stderr


def test_a_too_large_npy_header_is_one_line(tmp_path):
    """numpy refuses headers above 10,000 bytes with a three-line message; snapvit says it in one."""
    npz = write_npz(tmp_path / "long.npz", {"x": npy_bytes((1, 4, 4, 3), data=b"\0" * 48, pad_to=20_000)})
    result = run("eval", "demo", "--data", npz, "--no-speed")
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.exception
    lines = [line for line in result.stderr.splitlines() if not re.match(r"\d\d:\d\d:\d\d ", line)]
    assert len(lines) == 1 and "Header info length" in lines[0], result.stderr


def test_a_deflate_bomb_is_refused_before_it_is_decompressed(tmp_path):
    """1.1 GiB of zeros deflated to about a megabyte: more than 2·S + 1 GiB, refused from the zip directory."""
    shape = (1100, 1024, 1024, 1)
    path = tmp_path / "bomb.npz"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        with archive.open("x.npy", "w", force_zip64=True) as member:
            member.write(npy_bytes(shape))
            zeros = bytes(1 << 24)
            for _ in range(int(np.prod(shape)) >> 24):
                member.write(zeros)
        archive.writestr("y.npy", good_labels(shape[0]))
    assert path.stat().st_size < 8 << 20
    start = time.monotonic()
    with pytest.raises(DataError, match="would take 11408[0-9]{5} bytes, more than a file of its size may"):
        load_images(str(path))
    assert time.monotonic() - start < 5


def test_the_largest_label_is_bounded(tmp_path):
    buffer = io.BytesIO()
    np.save(buffer, np.array([0, 10**12], np.int64))
    npz = write_npz(tmp_path / "labels.npz", {"x": npy_bytes((2, 4, 4, 3), data=b"\0" * 96), "y": buffer.getvalue()})
    with pytest.raises(DataError, match="holds class id 1000000000000; class ids must be below 131072"):
        load_images(str(npz))


def test_npy_data_shorter_or_longer_than_its_header_and_object_arrays(tmp_path):
    short = write_npz(tmp_path / "short.npz", {"x": npy_bytes((2, 4, 4, 3), data=b"\0" * 95)})
    with pytest.raises(DataError, match="declares shape"):
        load_images(str(short))
    objects = write_npz(tmp_path / "objects.npz", {"x": npy_bytes((2,), dtype="|O", data=b"\0" * 16)})
    with pytest.raises(DataError, match="Python objects"):
        load_images(str(objects))


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("version", 255, "zip file version"),  # found by fuzzing: zipfile's NotImplementedError
        ("method", 99, "compression"),
        ("flags", 1, "encrypted"),
    ],
)
def test_zip_features_the_reader_lacks_are_one_line(tmp_path, field, value, message):
    """A central-directory entry edited to need a zip version, compression method or password zipfile lacks."""
    buffer = io.BytesIO()
    np.savez(buffer, x=np.zeros((2, 4, 4, 3), np.uint8))
    blob = bytearray(buffer.getvalue())
    offset = {"version": 6, "flags": 8, "method": 10}[field]  # in the central directory's file header
    for start in (i for i in range(len(blob)) if blob[i : i + 4] == b"PK\x01\x02"):
        blob[start + offset : start + offset + 2] = value.to_bytes(2, "little")
        if field != "version":  # the local header repeats flags and method, 2 bytes earlier
            local = int.from_bytes(blob[start + 42 : start + 46], "little")
            blob[local + offset - 2 : local + offset] = value.to_bytes(2, "little")
    path = tmp_path / "odd.npz"
    path.write_bytes(bytes(blob))
    result = run("eval", "demo", "--data", path, "--no-speed")
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.exception
    lines = [line for line in result.stderr.splitlines() if not re.match(r"\d\d:\d\d:\d\d ", line)]
    assert len(lines) == 1 and "as an .npz archive" in lines[0] and message in lines[0].lower(), result.stderr


def test_valid_archives_still_read_the_same(tmp_path):
    """Stored, compressed and Fortran-ordered arrays give the pixels numpy itself reads."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, (6, 5, 7, 3), dtype=np.uint8)
    y = np.arange(6, dtype=np.uint8)
    np.savez(tmp_path / "plain.npz", x=x, y=y)
    np.savez_compressed(tmp_path / "packed.npz", x=np.asfortranarray(x), y=y, classes=np.array(list("abcdef")))
    for name in ("plain.npz", "packed.npz"):
        data = load_images(str(tmp_path / name))
        assert len(data) == 6 and data.labels.tolist() == list(range(6))
        for i in range(6):
            assert np.array_equal(data[i][0].numpy(), x[i].transpose(2, 0, 1))
    assert load_images(str(tmp_path / "packed.npz")).class_names == list("abcdef")


# -- item 5: a bundle truncated in place while it is sliced ------------------------------------------------------

TRUNCATE_BETWEEN_SLICES = """
import os, shutil, sys
from snapvit_cli.api import load_bundle
from snapvit_cli.errors import SnapvitError
bundle = load_bundle(sys.argv[1])
bundle.slice(flops=0.9)
os.truncate(sys.argv[1], 4096)  # `cp other.safetensors` over it: same inode, shorter
try:
    model = bundle.slice(flops=0.5)
    print("sliced", sum(p.numel() for p in model.parameters()))
except SnapvitError as exc:
    print("error:", exc)
"""


def test_slicing_again_after_the_bundle_was_truncated_in_place(built, tmp_path):
    """ElasticBundle keeps the weights it read; they were memory-mapped, so the second slice touched pages past the
    new end of the file and the process died of SIGBUS (exit 135, no message)."""
    bundle, _ = built
    mine = tmp_path / "bundle.safetensors"
    shutil.copy(bundle, mine)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    args = [sys.executable, "-c", TRUNCATE_BETWEEN_SLICES, str(mine)]
    result = subprocess.run(args, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, (result.returncode, result.stderr[-2000:])
    assert result.stdout.startswith("sliced "), result.stdout


def test_a_multi_budget_slice_survives_the_bundle_truncated_mid_run(built, tmp_path):
    """`slice --flops 0.5,0.7`: the bundle is truncated in place while the first folder is being written (the test
    hook holds the write). The weights were read and verified before: both folders are written from them, exactly
    as an undisturbed run writes them."""
    from snapvit_cli import fileio

    bundle, _ = built
    mine, marker = tmp_path / "bundle.safetensors", tmp_path / "marker"
    shutil.copy(bundle, mine)
    reference = snapvit("slice", mine, "--flops", "0.5,0.7", "-o", tmp_path / "reference", timeout=300)
    assert reference.returncode == 0, reference.stderr
    env = {**os.environ, "PYTHONPATH": str(ROOT), fileio.PAUSE_ENV: f"staged:{marker}"}
    paused = str(ROOT / "tests" / "_paused.py")  # `snapvit` with the test hook on
    args = [sys.executable, paused, "slice", str(mine), "--flops", "0.5,0.7", "-o", str(tmp_path / "out")]
    process = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not marker.exists():
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.01)
    os.truncate(mine, 4096)
    marker.unlink()  # releases the first write; the second one pauses (30 s at most) unless released too
    while process.poll() is None:
        with contextlib.suppress(FileNotFoundError):
            marker.unlink()
        time.sleep(0.01)
    _, stderr = process.communicate()
    assert process.returncode == 0, (process.returncode, stderr)
    for tag in ("flops0.5", "flops0.7"):
        for name in ("config.json", "model.safetensors"):
            assert (tmp_path / "out" / tag / name).read_bytes() == (tmp_path / "reference" / tag / name).read_bytes()
