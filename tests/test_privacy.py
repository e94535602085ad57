"""No file snapvit writes names a local path, the user's home or temp folder, or the machine's Python installation
(issue 24): score, slice, correct, eval, push --dry-run and export run on data under deliberately named folders, and
every byte of every output (the members of .pt2 archives unpacked) is searched for those names."""

from __future__ import annotations

import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import snapvit_cli
from snapvit_cli.cli.app import app

runner = CliRunner()
DATA_DIR, HOME_DIR, TMP_DIR = "data-of-ALICE-7f3", "home-of-ALICE-19c", "tmp-of-ALICE-a02"


def _all_bytes(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` (a .pt2 archive also as its unpacked members), by relative name."""
    out = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        data = path.read_bytes()
        out[str(path.relative_to(root))] = data
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                for info in archive.infolist():
                    out[f"{path.relative_to(root)}!{info.filename}"] = archive.read(info)
    return out


def test_no_output_names_a_local_path(tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime")
    real_home = str(Path.home())
    data_dir, home, tmp = tmp_path / DATA_DIR, tmp_path / HOME_DIR, tmp_path / TMP_DIR
    work = tmp_path / "out"
    for folder in (data_dir, home, tmp, work):
        folder.mkdir()
    rng = np.random.default_rng(0)
    npz = data_dir / "pets.npz"
    np.savez(
        npz,
        x_train=rng.integers(0, 255, (16, 32, 32, 3), dtype=np.uint8),
        y_train=rng.integers(0, 4, 16),
        x_test=rng.integers(0, 255, (8, 32, 32, 3), dtype=np.uint8),
        y_test=rng.integers(0, 4, 8),
    )
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("TMPDIR", str(tmp))
    monkeypatch.setattr(tempfile, "tempdir", None)  # re-read TMPDIR
    monkeypatch.chdir(work)
    data = str(npz)

    def ok(*args: str) -> str:
        result = runner.invoke(app, list(args))
        assert result.exit_code == 0, result.output
        return result.stdout

    ok("score", "--model", "demo", "--samples", "8", "--ga-evals", "31", "--data", data, "--correction-stats",
       "-o", str(work / "b.safetensors"))  # fmt: skip
    ok("slice", str(work / "b.safetensors"), "--flops", "0.5", "-o", str(work / "half"))
    ok("slice", str(work / "b.safetensors"), "--flops", "0.5", "--correct", "--data", data, "-o", str(work / "corr"))
    report = ok("eval", str(work / "corr"), "--reference", str(work / "b.safetensors"), "--data", data,
                "--knn-k", "5", "--json")  # fmt: skip
    (work / "eval.json").write_text(report)
    ok("push", str(work / "corr"), "--repo", "someone/corr", "--dry-run", str(work / "staged"), "--allow-random",
       "--eval-results", str(work / "eval.json"))  # fmt: skip
    ok("export", str(work / "corr"), "--format", "onnx", "-o", str(work / "corr.onnx"))
    ok("export", str(work / "b.safetensors"), "--flops", "0.5", "--format", "pt2", "-o", str(work / "half.pt2"))

    outputs = _all_bytes(work)
    assert {"b.safetensors", "eval.json", "staged/README.md", "staged/config.json", "corr.onnx", "half.pt2"} <= set(
        outputs
    )
    install = str(Path(snapvit_cli.__file__).resolve().parents[1])
    forbidden = [DATA_DIR, HOME_DIR, TMP_DIR, str(tmp_path), install, "site-packages", real_home]
    forbidden.append(os.path.expanduser("~"))
    for name, content in outputs.items():
        for word in forbidden:
            assert word.encode() not in content, f"{name} holds {word!r}"
    # what is recorded instead: the data set's name, kind, count and content hash
    config = (work / "corr" / "config.json").read_text()
    assert '"name": "pets"' in config and '"kind": "npz"' in config and '"sha256"' in config
