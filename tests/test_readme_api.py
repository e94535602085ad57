"""The Python API example (docs/python-api.md, linked from the README) runs as printed."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def python_api_example() -> str:
    page = ROOT.joinpath("docs", "python-api.md").read_text()
    match = re.search(r"```python\n(.*?)```", page, re.S)
    assert match, "no python block in docs/python-api.md"
    assert "docs/python-api.md" in ROOT.joinpath("README.md").read_text()
    return match.group(1)


def test_readme_python_api_example_runs(tmp_path):
    code = python_api_example()
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    knn = float(result.stdout.strip().splitlines()[-1])
    assert 0.0 <= knn <= 1.0
    for folder in ("demo-half", "demo-half-corrected"):
        assert (tmp_path / folder / "model.safetensors").is_file() and (tmp_path / folder / "config.json").is_file()
    assert "correction" in (tmp_path / "demo-half-corrected" / "config.json").read_text()
