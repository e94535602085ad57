"""Hostile score pickles for `import-scores` (issue 23, item 7): shared-reference bombs, deep nesting, compressed
records and oversized metadata end in one line, quickly, and no bundle snapvit cannot read back is ever written."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import torch

from snapvit_cli.errors import BundleError
from snapvit_cli.reference.scores import ScoreFileError, read_reference_scores
from tests.conftest import make_small_model, small_model_source
from tests.test_reference_scores import valid_contents, write_reference_file

ROOT = Path(__file__).resolve().parents[1]
PLACEHOLDER = "PLACEHOLDER-0123456789"


def with_metadata(tmp_path: Path, metadata: object, name: str = "scores.pt") -> Path:
    return write_reference_file(tmp_path / name, {**valid_contents(), "metadata": metadata})


def rewrite_pickle(path: Path, old: bytes, new: bytes, compression: int = zipfile.ZIP_STORED) -> Path:
    """Replace ``old`` by ``new`` in the archive's data.pkl (and re-store every member with ``compression``)."""
    with zipfile.ZipFile(path) as archive:
        members = [(info, archive.read(info)) for info in archive.infolist()]
    out = path.with_name(f"edited-{path.name}")
    with zipfile.ZipFile(out, "w", compression) as archive:
        for info, data in members:
            if info.filename.endswith("data.pkl"):
                assert data.count(old) == 1
                data = data.replace(old, new)
            archive.writestr(info.filename, data)
    return out


def read_in_subprocess(path: Path, timeout: float = 30) -> str:
    """read_reference_scores in a child, so that a hang fails the test (TimeoutExpired) instead of stalling it."""
    code = (
        "import sys\nfrom snapvit_cli.reference.scores import read_reference_scores\n"
        "from snapvit_cli.errors import SnapvitError\n"
        "try:\n    read_reference_scores(sys.argv[1]); print('read')\n"
        "except SnapvitError as exc:\n    print('error:', exc)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-c", code, str(path)], env=env, capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout.strip()


@pytest.mark.parametrize(("levels", "width", "message"), [(40, 2, "nests deeper than 8"), (6, 20, "more than 100000")])
def test_a_shared_list_bomb_is_refused_quickly(tmp_path, levels, width, message):
    """Lists each holding the previous one ``width`` times: a few hundred bytes of pickle, width^levels paths to
    walk (2^40, the issue's file; 20^6 = 64 million within the nesting limit)."""
    bomb: list = [0]
    for _ in range(levels):
        bomb = [bomb] * width
    path = with_metadata(tmp_path, {"bomb": bomb})
    assert path.stat().st_size < 20_000
    start = time.monotonic()
    out = read_in_subprocess(path)
    assert out.startswith("error: score file scores.pt: metadata") and message in out, out
    assert time.monotonic() - start < 20


def test_deep_nesting_is_one_line_not_a_recursion_error(tmp_path):
    """50,000 nested lists, written as pickle opcodes (Python's own pickler cannot go that deep)."""
    path = with_metadata(tmp_path, {"deep": PLACEHOLDER})
    string_op = b"X" + len(PLACEHOLDER).to_bytes(4, "little") + PLACEHOLDER.encode()
    nested = b"]" * 50_000 + b"a" * 49_999  # EMPTY_LIST x 50,000, then APPEND each into the one before
    deep = rewrite_pickle(path, string_op, nested)
    with pytest.raises(ScoreFileError, match="nests deeper than 8 levels"):
        read_reference_scores(deep)


def test_compressed_records_are_refused_before_loading(tmp_path):
    """torch.save stores records uncompressed; a deflated one (40 MB of zeros in about 40 KB here) is refused
    before torch inflates it."""
    path = with_metadata(tmp_path, {"zeros": torch.zeros(10_000_000)})
    packed = rewrite_pickle(path, b"zeros", b"zeroz", compression=zipfile.ZIP_DEFLATED)
    assert packed.stat().st_size < 1_000_000
    with pytest.raises(ScoreFileError, match="has compressed members"):
        read_reference_scores(packed)


def test_metadata_larger_than_the_bundle_reader_accepts_is_refused(tmp_path):
    """Three lists of 99,999 floats: each list passes the per-container limit, together they made a bundle
    whose metadata snapvit's own reader refuses."""
    path = with_metadata(tmp_path, {name: [0.12345678901234566] * 99_999 for name in "abc"})
    with pytest.raises(ScoreFileError, match="metadata holds more than 100000 values"):
        read_reference_scores(path)


def test_write_bundle_never_writes_metadata_its_reader_refuses(tmp_path):
    from snapvit_cli.elastic.bundle import write_bundle
    from snapvit_cli.scoreset import ScoreSet

    model = make_small_model("dino")
    settings = {name: [0.12345678901234566] * 99_999 for name in "abc"}  # over the reader's 4 MiB of metadata
    scores = ScoreSet(mlp=torch.rand(3, 96), heads=torch.rand(3, 4), method="imported", settings=settings)
    out = tmp_path / "b.safetensors"
    with pytest.raises(BundleError, match="snapvit could not read its metadata back"):
        write_bundle(out, model, small_model_source("dino", model), scores)
    assert list(tmp_path.iterdir()) == []


def test_valid_metadata_still_reads_the_same(tmp_path):
    path = with_metadata(tmp_path, {"seed": 42, "ratios": (0.15, 0.35), "counts": torch.tensor([3, 4]), "x": None})
    assert read_reference_scores(path).metadata == {"seed": 42, "ratios": [0.15, 0.35], "counts": [3, 4], "x": None}
