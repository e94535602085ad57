"""Every help screen at 80 columns: no type placeholders, choices visible, no cut words, usage without braces."""

from __future__ import annotations

import re

import pytest
import typer
from rich.text import Text
from typer.testing import CliRunner

from snapvit_cli.cli._help import _choices
from snapvit_cli.cli.app import app

GROUP = typer.main.get_command(app)
COMMANDS = [[], *[[name] for name in GROUP.commands]]
BOX = str.maketrans({c: " " for c in "│╭╮╰╯─"})


def help_screen(args: list[str], columns: int = 80) -> str:
    result = CliRunner(env={"COLUMNS": str(columns)}).invoke(app, [*args, "-h"])
    assert result.exit_code == 0, result.output
    return result.stdout


def params_of(args: list[str]):
    return GROUP.params if not args else GROUP.commands[args[0]].params


@pytest.mark.parametrize("args", COMMANDS, ids=lambda a: a[0] if a else "snapvit")
def test_help_at_80_columns_is_whole(args):
    screen = help_screen(args)
    assert max(len(line) for line in screen.splitlines()) <= 80
    assert "<bool>" not in screen and "<str>" not in screen and "<int>" not in screen and "…" not in screen
    usage = screen.splitlines()[0]
    assert usage.startswith("Usage: ") and "{" not in usage and "}" not in usage
    tokens = set(screen.translate(BOX).split())
    for param in params_of(args):
        names = param.opts if param.param_type_name == "option" else [param.metavar or param.name.upper()]
        for name in names:
            assert name in tokens or f"{name}," in tokens, name
        for choice in _choices(param):
            assert re.search(rf"\b{re.escape(choice)}\b", screen), (param.name, choice)
        for word in Text.from_markup(param.help or "").plain.split():
            assert word in tokens, f"{param.name}: {word!r} is cut or missing"


@pytest.mark.parametrize("args", [["score"], ["slice"]], ids=lambda a: a[0])
def test_plain_flags_have_no_negative_twin(args):
    screen = help_screen(args)
    assert "--dry-run" in screen and "--no-dry-run" not in screen and "--no-cka-init" not in screen


def test_eval_reference_sits_in_the_model_panel():
    screen = help_screen(["eval"])
    panels = [(m.start(), m.group(1)) for m in re.finditer(r"╭─ (\w+) ─", screen)]
    where = screen.index("--reference")
    assert [title for start, title in panels if start < where][-1] == "Model"


def test_version_short_flag_and_completion():
    result = CliRunner().invoke(app, ["-V"])
    assert result.exit_code == 0 and result.stdout.startswith("snapvit ")
    screen = help_screen([])
    assert "--install-completion" in screen and "--show-completion" in screen


def test_usage_in_an_error_has_no_braces():
    result = CliRunner().invoke(app, ["slice"])
    assert result.exit_code == 2 and "slice [OPTIONS] BUNDLE" in result.output
    assert "{BUNDLE}" not in result.output


def test_shell_completion_completes_commands(tmp_path):
    """What `snapvit --install-completion` installs asks the program itself; it must answer."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    code = "import sys\nsys.argv = ['snapvit']\nfrom snapvit_cli.cli import main\nmain()\n"
    env = {**os.environ, "_SNAPVIT_COMPLETE": "complete_bash", "COMP_WORDS": "snapvit sl", "COMP_CWORD": "1",
           "PYTHONPATH": str(Path(__file__).resolve().parents[1])}  # fmt: skip
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.split() == ["slice"], done.stdout + done.stderr
