"""Messages quote file contents (metadata keys, names, paths): control characters in them are shown as escapes,
never sent to the terminal (issue 23, item 13). An imported file's ``ESC[2J`` must not clear the user's screen, an
``ESC]0;...BEL`` must not retitle it, and a newline must not split the one error line."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
from typer.testing import CliRunner

from snapvit_cli.cli._output import note, say, user_errors
from snapvit_cli.cli.app import app
from snapvit_cli.errors import SnapvitError, SnapvitWarning
from tests.conftest import assert_one_line_error
from tests.crafted import edit_config, edit_safetensors, sliced_folder, small_bundle

runner = CliRunner()
HOSTILE = "\x1b[2J\x1b]0;pwned\x07\r\nfake: line\u202e"
SHOWN = "\\x1b[2J\\x1b]0;pwned\\x07\\x0d\\x0afake: line\\u202e"


def assert_clean(text: str) -> None:
    assert "\x1b" not in text and "\x07" not in text and "\r" not in text and "\u202e" not in text, repr(text)


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("escape")
    bundle = small_bundle(folder / "b.safetensors", "dino")
    return bundle, sliced_folder(bundle, folder / "sliced")


def test_error_messages_hold_no_control_characters():
    error = SnapvitError(f"bad key {HOSTILE}")
    assert str(error) == f"bad key {SHOWN}"
    assert SnapvitError("plain ascii and unicode: é, ü, 日本").args[0] == "plain ascii and unicode: é, ü, 日本"


def test_a_bundle_key_with_escape_sequences_is_shown_escaped(made, tmp_path):
    hostile = edit_safetensors(made[0], tmp_path / "h.safetensors", meta=lambda m: m.update({HOSTILE: 1}))
    result = runner.invoke(app, ["slice", str(hostile), "--flops", "0.5", "-o", str(tmp_path / "out")])
    assert_one_line_error(result, SHOWN)
    assert_clean(result.stderr)


def test_a_config_key_with_escape_sequences_is_shown_escaped(made, tmp_path):
    folder = sliced_folder(made[0], tmp_path / "sliced")
    edit_config(folder, lambda c: c.update({HOSTILE: 1}))
    for args in (["eval", str(folder), "--data", "demo"], ["export", str(folder), "--format", "pt2"]):
        result = runner.invoke(app, args)
        assert_one_line_error(result, SHOWN)
        assert_clean(result.stderr)


def test_paths_with_escape_sequences_are_shown_escaped(made, tmp_path):
    missing = tmp_path / f"nothing{HOSTILE}.safetensors"
    result = runner.invoke(app, ["slice", str(missing), "--flops", "0.5", "-o", str(tmp_path / "o")])
    assert_one_line_error(result, "nothing\\x1b[2J")
    assert_clean(result.stderr)
    out = tmp_path / "out\x1b[2J"
    result = runner.invoke(app, ["slice", str(made[0]), "--flops", "0.5", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "out\\x1b[2J" in result.stdout
    assert_clean(result.stdout + result.stderr)


def test_warnings_notes_and_results_are_printed_escaped(capsys):
    @user_errors
    def command() -> None:
        warnings.warn(f"adjusted {HOSTILE}", SnapvitWarning, stacklevel=1)
        note(f"note {HOSTILE}")
        say(f"said {HOSTILE}", markup=False)

    command()
    captured = capsys.readouterr()
    assert f"warning: adjusted {SHOWN}" in captured.err and f"note {SHOWN}" in captured.err
    assert f"said {SHOWN}" in captured.out
    assert_clean(captured.out + captured.err)
