"""How the CLI reads in a pipe and in a terminal's help: whole unwrapped lines off a terminal, progress lines on a
piped stderr while a command runs (none with --quiet), help with examples and panels, -h everywhere, exit codes."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import get_args

import pytest
import typer
from typer.testing import CliRunner

from snapvit_cli.cli import _options
from snapvit_cli.cli.app import app

runner = CliRunner()
PROGRESS_LINE = re.compile(r"^\d\d:\d\d:\d\d \S")


def snapvit(*args: str, **kwargs) -> subprocess.CompletedProcess:
    """The real console script in a subprocess: stdout and stderr are pipes, the terminal is 40 columns."""
    env = {**os.environ, "COLUMNS": "40", "NO_COLOR": "1", **kwargs.pop("env", {})}
    return subprocess.run(
        [sys.executable, "-m", "snapvit_cli", *args], capture_output=True, text=True, env=env, timeout=300, **kwargs
    )


@pytest.fixture(scope="module")
def demo_bundle(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("presentation") / "demo.safetensors"
    result = runner.invoke(app, ["score", "--method", "magnitude", "-o", str(path), "--quiet"])
    assert result.exit_code == 0, result.output
    return path


def test_models_in_a_pipe_keeps_whole_records():
    done = snapvit("models")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert sum("vit_base_patch14_dinov2.lvd142m" in line for line in lines) >= 1  # `| grep -c` finds it
    row = next(line for line in lines if line.split("\t")[1:2] == ["vit_base_patch14_dinov2.lvd142m"])
    assert "dinov2_vitb14" in row.split("\t")[2]  # the alias is on the same line as its timm name
    assert "\x1b[" not in done.stdout and "─" not in done.stdout  # no colour codes, no box drawing


def test_slice_dry_run_last_line_is_whole(demo_bundle):
    done = snapvit("slice", str(demo_bundle), "--flops", "0.5", "--dry-run")
    assert done.returncode == 0, done.stderr
    last = done.stdout.splitlines()[-1]
    assert last.startswith("GMACs @ 64px:") and "removed:" in last and last.endswith("of heads")
    widths = [line.split("\t") for line in done.stdout.splitlines()[1:-1]]
    assert widths and all(len(row) == 3 and row[0].isdigit() for row in widths)


def read_progress_while_running(args: list[str]) -> tuple[list[str], int]:
    """Start the CLI with stderr piped and read it line by line; the first progress line must arrive while the
    process is still running. Returns all stderr lines and the exit code."""
    env = {**os.environ, "COLUMNS": "40"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "snapvit_cli", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    lines, alive_at_first = [], None
    try:
        for line in proc.stderr:
            lines.append(line.rstrip("\n"))
            if alive_at_first is None and PROGRESS_LINE.match(line) and "/" in line:
                alive_at_first = proc.poll() is None
        code = proc.wait(timeout=300)
    finally:
        proc.kill()
    assert alive_at_first, f"no progress line before the process ended: {lines}"
    return lines, code


def test_score_progress_reaches_a_piped_stderr_while_running(tmp_path):
    out = tmp_path / "g.safetensors"
    args = ["score", "--method", "gradient", "--samples", "8", "--batch-size", "1", "-o", str(out)]
    lines, code = read_progress_while_running(args)
    assert code == 0, lines
    progress = [line for line in lines if "gradient pass" in line]
    assert progress and all(PROGRESS_LINE.match(line) for line in progress)
    assert "8/8 100%" in progress[-1] and "eta" in progress[-1]
    assert len(progress) <= 11  # bounded: about one per 10 %, not one per step


def test_eval_progress_reaches_a_piped_stderr_while_running(demo_bundle):
    args = [
        "eval", str(demo_bundle), "-d", "demo:200/100", "--budgets", "1.0,0.5", "--batch-size", "8",
        "--speed-repeats", "1", "--speed-batch-size", "2",
    ]  # fmt: skip
    lines, code = read_progress_while_running(args)
    assert code == 0, lines
    assert any("features" in line and "train" in line for line in lines)
    assert any(line.split(" ", 1)[1].startswith("speed") for line in lines if PROGRESS_LINE.match(line))


def test_quiet_silences_progress(tmp_path, demo_bundle):
    score = snapvit("score", "--method", "gradient", "--samples", "2", "-o", str(tmp_path / "q.safetensors"), "-q")
    assert score.returncode == 0 and score.stderr == "", score.stderr
    evaluate = snapvit("eval", str(demo_bundle), "-d", "demo:40/20", "--budgets", "0.5", "--no-speed", "--quiet")
    assert evaluate.returncode == 0 and evaluate.stderr == "", evaluate.stderr


def test_help_has_examples_and_panels():
    result = runner.invoke(app, ["score", "-h"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    for heading in ("Examples", "Model", "Data", "Scoring", "Search", "Output"):
        assert heading in result.stdout, heading
    assert "Choices: snapvit, gradient, magnitude, random, snip, lamp." in result.stdout
    assert result.stdout.count("$ snapvit score") >= 2


def test_every_command_accepts_h_and_shows_examples():
    commands = typer.main.get_command(app).commands
    assert runner.invoke(app, ["-h"]).exit_code == 0
    for name in commands:
        result = runner.invoke(app, [name, "-h"], env={"COLUMNS": "120"})
        assert result.exit_code == 0, name
        examples = result.stdout.count(f"$ snapvit {name}")
        assert 2 <= examples <= 4 and "Examples" in result.stdout, name


def test_short_flags_mean_one_thing():
    """-m is --model wherever it exists (push's --message has no short flag), -d --data, -o --output."""
    for name, command in typer.main.get_command(app).commands.items():
        for param in command.params:
            for flag, long in (("-m", "--model"), ("-d", "--data"), ("-o", "--output"), ("-q", "--quiet")):
                if flag in param.opts:
                    assert long in param.opts, (name, param.opts)


def test_choices_match_the_library():
    from snapvit_cli.devices import DEVICES
    from snapvit_cli.evaluation.settings import DTYPES, VOTES
    from snapvit_cli.scoring import METHODS
    from snapvit_cli.scoring.settings import CROP_MODES, LOSSES, PRESETS, SCORE_FORMULAS

    assert get_args(_options.Method) == METHODS and get_args(_options.Device) == DEVICES
    assert get_args(_options.Crops) == CROP_MODES and get_args(_options.Loss) == LOSSES
    assert get_args(_options.ScoreFormula) == SCORE_FORMULAS and get_args(_options.Preset) == tuple(PRESETS)
    assert get_args(_options.Vote) == VOTES and get_args(_options.Dtype) == DTYPES
    from snapvit_cli.correction.settings import TOKEN_MODES
    from snapvit_cli.evaluation.settings import TRANSFORMS
    from snapvit_cli.export import FORMATS

    assert get_args(_options.Transform) == TRANSFORMS and get_args(_options.Tokens) == TOKEN_MODES
    assert get_args(_options.ExportFormat) == FORMATS


@pytest.mark.parametrize(
    ("args", "code"),
    [
        (["models", "--json"], 0),
        (["score", "--bogus"], 2),  # usage: unknown option
        (["score", "--method", "best"], 2),  # usage: not one of the choices
        (["slice"], 2),  # usage: missing argument
        (["slice", "missing.safetensors", "--flops", "0.5"], 1),  # runtime: bad input
    ],
)
def test_exit_codes(args, code, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, args)
    assert result.exit_code == code, result.output


def test_device_errors_are_one_short_line(demo_bundle, tmp_path):
    from snapvit_cli.devices import resolve_device
    from snapvit_cli.errors import SnapvitError

    for name in ("xyz", "cuda:7", "mps"):  # no machine has all of these: each must be refused
        try:
            resolve_device(name)
        except SnapvitError as exc:
            assert len(str(exc)) < 120 and "\n" not in str(exc) and "privateuseone" not in str(exc)
            assert str(exc).startswith(f"device {name} is not ")
        else:
            if not present(name):
                pytest.fail(f"resolve_device({name!r}) accepted a device this machine does not have")
    result = runner.invoke(app, ["slice", str(demo_bundle), "--flops", "0.5", "--correct", "-d", "demo",
                                 "--device", "tpu", "-o", str(tmp_path / "x")])  # fmt: skip
    assert result.exit_code == 2 and "tpu" in result.output


def present(name: str) -> bool:
    """Whether this machine really has device ``name`` (``cuda:N`` or ``mps``; anything else: no)."""
    import torch

    if name.startswith("cuda:"):
        return torch.cuda.is_available() and int(name.split(":")[1]) < torch.cuda.device_count()
    return name == "mps" and torch.backends.mps.is_available()


def test_json_is_unchanged_off_a_terminal(tmp_path):
    result = runner.invoke(app, ["models", "--json"])
    assert json.loads(result.stdout)["demo"] == "demo"


def test_plain_progress_lines_are_rate_bounded(monkeypatch):
    """Off a terminal, 1000 steps of one stage give about one line per 10 %, plus one per 30 s of silence."""
    import io

    from snapvit_cli.cli import _output, _progress

    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    clock = [0.0]
    monkeypatch.setattr(_progress.time, "monotonic", lambda: clock[0])
    with _progress.progress_bars(True, {"s": "stage"}) as update:
        for done in range(1, 1001):
            update("s", done, 1000)
        for done in range(1, 5):
            clock[0] += 31.0  # a slow stage: a line every 30 s even without 10 % of progress
            update("slow", done, 1000)
    lines = stream.getvalue().splitlines()
    assert _output.err.file is stream
    assert 10 <= sum(" stage " in f" {line} " for line in lines) <= 12
    assert sum(" slow " in f" {line} " for line in lines) == 4


def test_slice_correct_shows_progress_off_a_terminal(demo_bundle, tmp_path):
    args = ["slice", str(demo_bundle), "--flops", "0.5", "--correct", "-d", "demo:40/10", "--correct-samples", "16"]
    result = runner.invoke(app, [*args, "--batch-size", "8", "-o", str(tmp_path / "c")])
    assert result.exit_code == 0, result.output
    blocks = [line for line in result.stderr.splitlines() if "correction: blocks" in line]
    assert blocks and all(PROGRESS_LINE.match(line) for line in blocks) and "12/12 100%" in blocks[-1]
    quiet = runner.invoke(app, [*args, "-q", "-o", str(tmp_path / "q")])
    assert quiet.exit_code == 0 and quiet.stderr == "", quiet.stderr
