"""benchmarks/README.md stays honest about where its figures come from: every block of figures names the command and
the commit that produced it, and every benchmark command it quotes still parses (its options exist)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "benchmarks" / "README.md"
COMMAND = re.compile(r"python (?:-m benchmarks\.(\w+)|benchmarks/(\w+)\.py)((?:[ \t]+[^`\n&|;#]+)?)")
COMMIT = re.compile(r"^Commit: `([0-9a-f]{7,40})(\+changes)?`", re.M)


def blocks(text: str) -> dict[str, str]:
    """``{name: text}`` of the blocks between ``<!-- NAME:begin -->`` and ``<!-- NAME:end -->``."""
    return dict(re.findall(r"<!-- ([\w-]+):begin -->\n(.*?)<!-- \1:end -->", text, re.S))


def quoted_commands(text: str) -> list[tuple[str, list[str]]]:
    """Every ``python -m benchmarks.NAME ...`` / ``python benchmarks/NAME.py ...`` as (module, option words)."""
    found = []
    for match in COMMAND.finditer(text):
        module = match.group(1) or match.group(2)
        if module == "X":  # the prose's placeholder for "any script"
            continue
        found.append((module, match.group(3).split()))
    return found


def help_texts(modules: set[str]) -> dict[str, str]:
    """Each benchmark script's ``--help``, from one process (the scripts share their heavy imports)."""
    code = (
        "import contextlib, importlib, io, json, sys\n"
        "out = {}\n"
        "for name in sys.argv[1:]:\n"
        "    module = importlib.import_module('benchmarks.' + name)\n"
        "    sys.argv, text = [name, '--help'], io.StringIO()\n"
        "    with contextlib.redirect_stdout(text), contextlib.suppress(SystemExit):\n"
        "        module.main()\n"
        "    out[name] = text.getvalue()\n"
        "print(json.dumps(out))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, *sorted(modules)], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_the_patterns_see_commands_and_blocks():
    text = "a `python -m benchmarks.slice --fractions 0.5` b `python benchmarks/export.py` c\n"
    assert quoted_commands(text) == [("slice", ["--fractions", "0.5"]), ("export", [])]
    assert blocks("<!-- a-b:begin -->\nx\n<!-- a-b:end -->") == {"a-b": "x\n"}


def test_every_block_of_figures_names_its_command_and_commit():
    found = blocks(README.read_text())
    assert len(found) >= 7, sorted(found)
    for name, text in found.items():
        commit = COMMIT.search(text)
        assert commit, f"{name}: no 'Commit: `SHA`' line"
        assert quoted_commands(text), f"{name}: names no benchmark command"
        if (ROOT / ".git").exists():
            known = subprocess.run(["git", "cat-file", "-e", f"{commit.group(1)}^{{commit}}"], cwd=ROOT)
            assert known.returncode == 0, f"{name}: commit {commit.group(1)} is not in this repository"


def test_every_quoted_benchmark_command_still_parses():
    """Each script quoted runs with --help, and every option a quoted command uses is one its --help lists."""
    commands = quoted_commands(README.read_text())
    modules = {module for module, _ in commands}
    missing = sorted(m for m in modules if not (ROOT / "benchmarks" / f"{m}.py").exists())
    assert not missing, f"benchmarks/README.md quotes scripts that do not exist: {missing}"
    helps = help_texts(modules)
    for module, words in commands:
        assert helps[module].startswith("usage:"), (module, helps[module][:200])
        for option in (w.split("=")[0] for w in words if w.startswith("--")):
            assert re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", helps[module]), (
                f"`python -m benchmarks.{module}` has no option {option} (quoted in benchmarks/README.md)"
            )


@pytest.mark.parametrize("option", ["--no-such-option"])
def test_the_option_check_catches_an_unknown_option(option):
    helps = help_texts({"slice"})
    assert "--fractions" in helps["slice"] and option not in helps["slice"]
