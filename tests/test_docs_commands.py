"""Every command in README.md and docs/*.md is checked: each ``snapvit`` command line parses against the real app
(option names, choices, types), each ``pip install`` names extras that exist, and the blocks marked
``<!-- test: runs offline -->`` run for real, in document order, in a scratch folder (once: the quick start's
own checks and the docs pages start from what that run leaves).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import typer
from typer.testing import CliRunner

from snapvit_cli.adapters import get_adapter
from snapvit_cli.api import load, load_bundle
from snapvit_cli.cli.app import app

ROOT = Path(__file__).resolve().parents[1]
RUN_MARK = "<!-- test: runs offline -->"
OPERATORS = {"&&", "||", "|", ";", ">", ">>", "<", "&"}


@dataclass(frozen=True)
class Block:
    path: Path
    line: int
    lang: str
    text: str
    runs: bool


def doc_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def blocks(path: Path) -> list[Block]:
    """The fenced code blocks of a Markdown file, with whether the line before the fence marks them runnable."""
    text = path.read_text()
    found = []
    for match in re.finditer(r"^ *```(\w*)\n(.*?)^ *```", text, re.S | re.M):
        before = text[: match.start()].rstrip("\n").rsplit("\n", 1)[-1]
        line = text.count("\n", 0, match.start()) + 1
        code = textwrap.dedent(match.group(2))
        found.append(Block(path, line, match.group(1), code, before.strip() == RUN_MARK))
    return found


def shell_segments(text: str) -> list[tuple[list[str], str | None]]:
    """Simple commands of a shell block, as (words, the file its stdout is redirected to, or None)."""
    segments: list[tuple[list[str], str | None]] = []
    for line in text.replace("\\\n", " ").splitlines():
        lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|<>")
        lexer.whitespace_split = True
        lexer.commenters = "#"
        words: list[str] = []
        file_for = None  # the operator whose file name comes next
        for token in lexer:
            if file_for:
                if file_for in (">", ">>") and segments:
                    segments[-1] = (segments[-1][0], token)
                file_for = None
            elif token in OPERATORS:
                if words:
                    segments.append((words, None))
                    words = []
                file_for = token if token in (">", ">>", "<") else None
            else:
                words.append(token)
        if words:
            segments.append((words, None))
    return segments


def snapvit_args(words: list[str]) -> list[str] | None:
    """The arguments after ``snapvit`` / ``python -m snapvit_cli`` / ``torchrun ... -m snapvit_cli``, else None."""
    if words and words[0] == "snapvit":
        return words[1:]
    for i, word in enumerate(words[:-1]):
        if word == "-m" and words[i + 1] == "snapvit_cli" and words[0] in ("python", "torchrun"):
            return words[i + 2 :]
    return None


def all_commands() -> list[tuple[str, list[str]]]:
    commands = []
    for path in doc_files():
        for block in blocks(path):
            if block.lang not in ("bash", "sh", "console"):
                continue
            for words, _ in shell_segments(block.text):
                args = snapvit_args(words)
                if args is not None:
                    commands.append((f"{path.relative_to(ROOT)}:{block.line}", args))
    return commands


def parses(args: list[str]) -> None:
    """Parse like the app does (types, choices, required arguments, callbacks of values) without running."""
    group = typer.main.get_command(app)
    with group.make_context("snapvit", list(args), resilient_parsing=False) as ctx:
        name, command, rest = group.resolve_command(ctx, [*ctx._protected_args, *ctx.args])
        assert command is not None, f"no command {name!r}"
        command.make_context(name, rest, parent=ctx).close()


COMMANDS = all_commands()


def test_the_docs_hold_commands_to_check():
    assert len(COMMANDS) >= 40
    assert {args[0] for _, args in COMMANDS} >= {"score", "slice", "eval", "export", "push", "import-scores", "models"}


@pytest.mark.parametrize("where,args", COMMANDS, ids=[f"{w}:{a[0]}" for w, a in COMMANDS])
def test_every_documented_command_parses(where, args):
    try:
        parses(args)
    except typer.Exit as exc:  # an eager option such as --help or --version
        assert exc.exit_code == 0, where
    except Exception as exc:  # click's UsageError/BadParameter carry the reason
        pytest.fail(f"{where}: snapvit {shlex.join(args)}: {exc}")


def test_the_parser_check_catches_a_wrong_command():
    with pytest.raises(Exception, match="--flopz"):
        parses(["slice", "demo.safetensors", "--flopz", "0.5"])
    with pytest.raises(Exception, match="tpu"):
        parses(["slice", "demo.safetensors", "--correct", "--device", "tpu"])


def test_pip_installs_name_existing_extras():
    section = (ROOT / "pyproject.toml").read_text().split("[project.optional-dependencies]\n", 1)[1].split("\n[", 1)[0]
    extras = set(re.findall(r"^([\w-]+) = ", section, re.M))
    assert {"test", "export"} <= extras
    seen = 0
    for path in doc_files():
        for block in blocks(path):
            for words, _ in shell_segments(block.text):
                if words[:2] == ["pip", "install"] and "-e" in words:
                    target = words[words.index("-e") + 1]
                    named = re.fullmatch(r"\.(?:\[([\w,]+)\])?", target)
                    assert named, f"{path.name}:{block.line}: {target}"
                    assert set(filter(None, (named.group(1) or "").split(","))) <= extras, f"{path.name}:{block.line}"
                    seen += 1
    assert seen >= 3


def run_block(block: Block, cwd: Path, stdout: dict[str, str] | None = None) -> None:
    """Run one marked block: snapvit commands in process, Python blocks as a script; pip and pytest are skipped.
    Each snapvit command's stdout goes to ``stdout`` (by its arguments, joined) when given."""
    where = f"{block.path.name}:{block.line}"
    if block.lang == "python":
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        result = subprocess.run(
            [sys.executable, "-c", block.text], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
        )
        assert result.returncode == 0, f"{where}: {result.stderr[-2000:]}"
        return
    for words, redirect in shell_segments(block.text):
        args = snapvit_args(words)
        if args is None:
            assert words[0] in ("pip", "python"), f"{where}: cannot run {words}"
            continue
        previous = Path.cwd()
        os.chdir(cwd)
        try:
            result = CliRunner().invoke(app, args)
        finally:
            os.chdir(previous)
        assert result.exit_code == 0, f"{where}: snapvit {shlex.join(args)}\n{result.output[-2000:]}"
        if stdout is not None:
            stdout[shlex.join(args)] = result.stdout
        if redirect:
            (cwd / redirect).write_text(result.stdout)


@dataclass(frozen=True)
class ReadmeRun:
    folder: Path  # where the README's blocks ran
    stdout: dict[str, str]  # each snapvit command's stdout, by its arguments joined


@pytest.fixture(scope="module")
def readme_run(tmp_path_factory) -> ReadmeRun:
    """The README's marked blocks, run from an empty folder as a newcomer would."""
    run = ReadmeRun(tmp_path_factory.mktemp("readme"), {})
    for block in blocks(ROOT / "README.md"):
        if block.runs:
            run_block(block, run.folder, run.stdout)
    return run


def test_the_readme_runs_offline_as_written(readme_run):
    marked = [b for b in blocks(ROOT / "README.md") if b.runs]
    assert len(marked) >= 5 and "snapvit score --model demo" in marked[0].text
    for folder in ("demo-half", "demo-flops0.5", "demo-grid/flops0.25", "demo-half-corrected"):
        assert (readme_run.folder / folder / "model.safetensors").is_file(), folder
    assert (readme_run.folder / "demo-half.onnx").is_file() and (readme_run.folder / "demo-half.pt2").is_file()
    assert (readme_run.folder / "staged" / "README.md").is_file()


def quickstart_commands() -> list[list[str]]:
    """The `snapvit ...` commands of the README's first install line, as argument lists."""
    line = next(
        line for line in (ROOT / "README.md").read_text().splitlines() if line.startswith("pip install -e . && snapvit")
    )
    commands = [args for words, _ in shell_segments(line) if (args := snapvit_args(words)) is not None]
    assert [c[0] for c in commands] == ["score", "slice"], line
    return commands


def test_the_readme_quickstart_searches_with_two_updates(readme_run):
    """The quick start's search updates xNES at least twice and finds better; its folder loads as the bundle's
    slice (the later README blocks only read demo.safetensors and demo-half/)."""
    score, slice_ = quickstart_commands()
    bundle = load_bundle(readme_run.folder / score[score.index("-o") + 1])
    search = bundle.metadata.scoring.settings["xnes"]
    trace = bundle.read_tensor("ga.fitness_trace")  # every evaluation's fitness, μ₀ first
    assert search["evaluations"] == len(trace) == int(score[score.index("--ga-evals") + 1])
    assert trace[0].item() == search["initial_fitness"] and trace.min().item() == search["best_fitness"]
    assert search["updates"] >= 2 and search["best_fitness"] < search["initial_fitness"]  # the search found better
    assert f"in {search['updates']} updates" in readme_run.stdout[shlex.join(score)]
    model = load(readme_run.folder / slice_[slice_.index("-o") + 1])
    fraction = float(slice_[slice_.index("--flops") + 1])
    plan = bundle.plan(flops=fraction)
    assert get_adapter(model).widths() == plan.widths and abs(plan.flops_fraction - fraction) < 0.01 * fraction
    assert sum(p.numel() for p in model.parameters()) == plan.params
    x = torch.linspace(-1, 1, 3 * 64 * 64).reshape(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), bundle.slice(plan)(x))  # the folder holds the bundle's slice, as loaded


DOCS_WITH_RUNS = [p for p in sorted((ROOT / "docs").glob("*.md")) if any(b.runs for b in blocks(p))]


@pytest.mark.parametrize("path", DOCS_WITH_RUNS, ids=lambda p: p.name)
def test_docs_marked_blocks_run_offline(path, readme_run, tmp_path):
    """A docs page starts from what the README's quick start leaves: demo.safetensors and demo-half/."""
    shutil.copy(readme_run.folder / "demo.safetensors", tmp_path)
    shutil.copytree(readme_run.folder / "demo-half", tmp_path / "demo-half")
    for block in blocks(path):
        if block.runs:
            run_block(block, tmp_path)


def test_docs_cli_reference_is_generated_from_the_app():
    """docs/cli.md's reference equals what the app generates now: a new option or help text makes it stale."""
    from snapvit_cli.cli.reference import END, START, cli_reference_markdown

    page = (ROOT / "docs" / "cli.md").read_text()
    assert START in page and END in page
    stored = page.split(START + "\n", 1)[1].split(END, 1)[0]
    assert stored == cli_reference_markdown(), "docs/cli.md is stale: python -m snapvit_cli.cli.reference docs/cli.md"
    for command in ("score", "slice", "import-scores", "push", "eval", "export", "models"):
        assert f"## `snapvit {command}`" in stored


def test_readme_is_short_with_contents_and_two_setup_commands():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 200
    assert "**Contents:**" in readme
    first = blocks(ROOT / "README.md")[0]
    assert first.runs and len(first.text.strip().splitlines()) == 2
    assert "../shared" not in readme
    first_two_screens = "\n".join(readme.splitlines()[:50])  # a newcomer's path: set up, run, load in Python
    assert first.line < 50 and 'snapvit_cli.load("demo-half")' in first_two_screens


def test_ci_installs_and_tests_as_the_readme_says():
    """.ci/run runs the README's second set-up line: the same install, the same test command."""
    install, test = blocks(ROOT / "README.md")[0].text.strip().splitlines()[1].split(" && ")
    ci = (ROOT / ".ci" / "run").read_text()
    assert f"python -m {install}" in ci and test in ci.splitlines()


def test_relative_links_in_readme_and_docs_resolve():
    """Every relative Markdown link of README.md and docs/*.md names a file that exists (anchors aside)."""
    checked = 0
    for path in doc_files():
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", path.read_text()):
            if "://" in target or target.startswith("mailto:"):
                continue
            assert (path.parent / target).exists(), f"{path.relative_to(ROOT)} links to missing {target}"
            checked += 1
    assert checked >= 30
