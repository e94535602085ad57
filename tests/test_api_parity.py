"""The Python API matches the command line: what `dir()` shows, the root calls, defaults and error wording."""

from __future__ import annotations

import inspect
import subprocess
import sys

import pytest
import typer
from typer.testing import CliRunner

import snapvit_cli
from snapvit_cli.cli.app import app
from snapvit_cli.errors import SnapvitError


def test_dir_lists_the_lazy_api_without_importing_torch():
    code = "import sys, snapvit_cli; print(' '.join(dir(snapvit_cli))); print('torch' in sys.modules)"
    printed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout
    names, torch_loaded = printed.split("\n")[:2]
    for name in ("load", "load_bundle", "score_model", "write_bundle", "evaluate", "push", "export_model",
                 "import_scores", "describe", "ScoreSettings"):  # fmt: skip
        assert name in names.split(), name
    assert torch_loaded == "False"


def test_every_command_that_writes_has_a_root_call():
    for name in ("score_model", "write_bundle", "load_bundle", "export_model", "import_scores", "push", "describe"):
        assert callable(getattr(snapvit_cli, name)), name


def test_score_model_defaults_to_the_cli_method():
    score = typer.main.get_command(app).commands["score"]
    cli_default = next(p.default for p in score.params if p.name == "method")
    assert inspect.signature(snapvit_cli.score_model).parameters["method"].default == cli_default == "snapvit"
    model, _ = snapvit_cli.load_model("demo")
    with pytest.raises(SnapvitError, match="data is required by method 'snapvit'") as info:
        snapvit_cli.score_model(model)  # the paper's method reads images: never on images it was not given
    assert info.value.param == "data"


def test_import_scores_refuses_a_missing_file(tmp_path):
    with pytest.raises(SnapvitError, match="nope.pt"):
        snapvit_cli.import_scores(tmp_path / "nope.pt", tmp_path / "x.safetensors", "deit3_small", pretrained=False)
    assert not (tmp_path / "x.safetensors").exists()


def test_library_says_force_true_and_the_cli_says_force(tmp_path):
    from snapvit_cli.fileio import check_output

    (tmp_path / "x.safetensors").write_text("x")
    with pytest.raises(SnapvitError, match=r"pass force=True to overwrite it"):
        check_output(tmp_path / "x.safetensors", False)
    args = ["score", "-m", "demo", "--method", "magnitude", "-o", str(tmp_path / "x.safetensors")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1 and "pass --force to overwrite it" in result.stderr
    assert "force=True" not in result.stderr
