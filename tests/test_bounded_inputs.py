"""Bounded inputs: image folders with link loops, FIFOs and decompression bombs; one --resolution check for
slice, eval and the library."""

from __future__ import annotations

import os
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from snapvit_cli.adapters import get_adapter
from snapvit_cli.cli.app import app
from snapvit_cli.data import load_images
from snapvit_cli.data.folder import PIXELS_ENV
from snapvit_cli.errors import DataError, SnapvitError
from tests.conftest import assert_one_line_error, make_small_model

runner = CliRunner()


def run(*args: object):
    return runner.invoke(app, [str(a) for a in args])


def save_image(path: Path, value: int, size: tuple[int, int] = (8, 6)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size[1], size[0], 3), value, np.uint8)).save(path)


def png_header_only(path: Path, width: int, height: int) -> None:
    """A valid PNG signature and IHDR declaring ``width`` x ``height`` RGB, with almost no pixel data: what a
    decompression bomb looks like to a reader that trusts the header."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")
    )


# -- image folders ----------------------------------------------------------------------------------------------


def test_symlink_loops_end_and_each_folder_is_read_once(tmp_path):
    root = tmp_path / "data"
    save_image(root / "cat" / "a.png", 10)
    save_image(root / "dog" / "b.png", 20)
    (root / "cat" / "again").symlink_to(root, target_is_directory=True)  # a loop through the root
    (root / "dog" / "self").symlink_to(".", target_is_directory=True)  # a loop onto itself
    (root / "zebra").symlink_to(root / "dog", target_is_directory=True)  # a second name for dog/
    started = time.monotonic()
    images = load_images(str(root))
    assert time.monotonic() - started < 5
    assert len(images) == 2 and images.class_names == ["cat", "dog", "zebra"]
    assert [int(images[i][0][0, 0, 0]) for i in range(2)] == [10, 20]
    assert images.labels.tolist() == [0, 1]  # dog/ is read under its first name, not again as zebra/


def test_links_to_files_are_followed_and_fifos_skipped(tmp_path):
    root = tmp_path / "data"
    save_image(tmp_path / "elsewhere.png", 30)
    (root / "cls").mkdir(parents=True)
    (root / "cls" / "linked.png").symlink_to(tmp_path / "elsewhere.png")
    os.mkfifo(root / "cls" / "pipe.png")  # opening it for reading would block forever
    (root / "cls" / "dangling.png").symlink_to(tmp_path / "missing.png")
    images = load_images(str(root))
    assert len(images) == 1 and int(images[0][0][0, 0, 0]) == 30


def test_pixel_limit_is_one_data_error(tmp_path, monkeypatch):
    save_image(tmp_path / "data" / "big.png", 1, size=(40, 30))
    images = load_images(str(tmp_path / "data"))
    monkeypatch.setenv(PIXELS_ENV, "1000")
    with pytest.raises(DataError, match=r"big.png is 40x30 = 1200 pixels, above the limit of 1000"):
        load_images(str(tmp_path / "data"))[0]
    assert images[0][0].shape == (3, 30, 40)  # read before the limit was lowered
    monkeypatch.setenv(PIXELS_ENV, "lots")
    with pytest.raises(DataError, match=f"{PIXELS_ENV} must be a positive integer"):
        load_images(str(tmp_path / "data"))


@pytest.mark.parametrize(
    ("width", "height", "message"),
    [
        (10_000, 10_000, "100000000 pixels, above the limit of 89478485"),  # our limit, checked before decoding
        (40_000, 40_000, "too large to decode safely"),  # Pillow's DecompressionBombError, caught
    ],
)
def test_decompression_bombs_are_refused_before_decoding(tmp_path, width, height, message):
    (tmp_path / "data").mkdir()
    png_header_only(tmp_path / "data" / "bomb.png", width, height)
    images = load_images(str(tmp_path / "data"))
    with pytest.raises(DataError, match=message):
        images[0]


def test_a_bomb_in_calibration_data_is_one_line(tmp_path):
    (tmp_path / "data").mkdir()
    png_header_only(tmp_path / "data" / "bomb.png", 20_000, 20_000)
    out = tmp_path / "never.safetensors"
    result = run(
        "score",
        "--model",
        "demo",
        "--method",
        "gradient",
        "--data",
        tmp_path / "data",
        "--samples",
        "1",
        "-o",
        out,
        "--quiet",
    )
    assert_one_line_error(result, "bomb.png is too large to decode safely")
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["data"]


# -- resolution ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["dino", "dinov2-registers", "dinov3"])
def test_check_resolution_is_one_rule(name):
    adapter = get_adapter(make_small_model(name))
    patch = adapter.model.patch_embed.patch_size[0]
    native = adapter.model.patch_embed.img_size[0]
    assert adapter.check_resolution(None) == native
    assert adapter.check_resolution(patch) == patch
    assert adapter.check_resolution(4 * native) == 4 * native
    for bad in (0, -patch, patch - 1, patch + 1, 4 * native + patch, True, 32.0):
        with pytest.raises(SnapvitError, match="resolution"):
            adapter.check_resolution(bad)
    assert adapter.cost_terms(2 * patch).tokens == 4 + adapter.model.num_prefix_tokens
    with pytest.raises(SnapvitError, match="not a multiple of the patch size"):
        adapter.cost_terms(patch + 1)


@pytest.fixture
def bundle(built) -> Path:
    return built[0]


@pytest.mark.parametrize(
    ("resolution", "message"),
    [("0", "resolution 0 is not supported"), ("7", "resolution 7 is not supported"), ("12", "use 8 or 16 px")],
)
def test_slice_and_eval_refuse_the_same_resolutions(tmp_path, bundle, resolution, message):
    out = tmp_path / "never"
    assert_one_line_error(run("slice", bundle, "--flops", "0.5", "--resolution", resolution, "-o", out), message)
    result = run("eval", bundle, "--data", "demo", "--budgets", "1.0", "--no-speed", "--resolution", resolution)
    assert_one_line_error(result, message)
    assert not out.exists()
