"""Writes under races and unlucky disks (issue 23, items 4, 10, 11 and 12): without --force nothing is replaced
even by a run that started later, --force replaces only what snapvit wrote, a disk that fills in a multi-budget
run is reported per output, and push stages exactly the bytes it validated."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from snapvit_cli import fileio
from snapvit_cli.cli.app import app
from snapvit_cli.errors import BundleError, OutputError, OutputExistsError
from tests.conftest import assert_one_line_error

ROOT = Path(__file__).resolve().parents[1]
WRITER = Path(__file__).with_name("_writer.py")
PARTS = ("part0.txt", "part1.txt", "part2.txt")  # what tests/_writer.py writes into a folder
runner = CliRunner()


def run(*args: object):
    return runner.invoke(app, [str(a) for a in args])


def env_with(pause: str | None = None, marker: Path | None = None) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop(fileio.PAUSE_ENV, None)
    if pause is not None:
        env[fileio.PAUSE_ENV] = f"{pause}:{marker}"
    return env


def wait_for(marker: Path, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not marker.exists():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "the writer never reached its pause point"
        time.sleep(0.01)


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def read(target: Path) -> str:
    if target.is_dir():
        return " | ".join(f"{p.name}={p.read_text().strip()}" for p in sorted(target.iterdir()))
    return target.read_text().strip()


# -- item 4: two writers, no --force: the later commit never replaces the earlier one --------------------------


@pytest.mark.parametrize("kind", ["file", "dir"])
def test_two_writers_without_force_never_replace_each_other(tmp_path, kind):
    """Writer A is held after writing (the test hook), writer B writes the same target meanwhile; when A resumes
    it must fail in one line and leave B's output, not silently replace it."""
    target, marker = tmp_path / "out", tmp_path / "marker"
    first = subprocess.Popen(
        [sys.executable, str(WRITER), str(target), "first", "--kind", kind],
        env=env_with("synced", marker),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for(marker, first)
    second = subprocess.run(
        [sys.executable, str(WRITER), str(target), "second", "--kind", kind],
        env=env_with(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert second.returncode == 0, second.stderr
    marker.unlink()  # releases writer A
    _, stderr = first.communicate(timeout=60)
    assert first.returncode == 1, stderr
    assert stderr.strip() == f"error: {target} appeared while writing; nothing replaced"
    assert "second" in read(target) and "first" not in read(target)
    assert leftovers(tmp_path) == []


def test_two_slices_to_one_folder_without_force(tmp_path, built):
    """The issue's repro: `slice --flops 0.5 -o D` and `--flops 0.7 -o D` both ended with exit 0."""
    bundle, _ = built
    out, marker = tmp_path / "D", tmp_path / "marker"
    args = [sys.executable, str(ROOT / "tests" / "_paused.py"), "slice", str(bundle), "-o", str(out)]  # hook on
    pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True}
    first = subprocess.Popen([*args, "--flops", "0.5"], env=env_with("synced", marker), **pipes)
    wait_for(marker, first)
    second = subprocess.run([*args, "--flops", "0.7"], env=env_with(), capture_output=True, text=True, timeout=120)
    assert second.returncode == 0, second.stderr
    marker.unlink()
    _, stderr = first.communicate(timeout=120)
    assert first.returncode == 1 and stderr.strip() == f"error: {out} appeared while writing; nothing replaced"
    assert json.loads((out / "config.json").read_text())["budget"]["target"] == 0.7
    assert leftovers(tmp_path) == []


def test_an_output_appearing_during_a_library_write_is_kept(tmp_path):
    target = tmp_path / "bundle.safetensors"
    appeared = pytest.raises(OutputExistsError, match="appeared while writing; nothing replaced")
    with appeared, fileio.atomic_path(target) as tmp:
        tmp.write_text("mine")
        target.write_text("theirs")
    assert target.read_text() == "theirs" and leftovers(tmp_path) == []


def test_no_replace_fallbacks_without_renameat2(tmp_path, monkeypatch):
    """Where renameat2 is missing: link + unlink for a file, mkdir + rename for a folder; both never replace."""
    monkeypatch.setattr(fileio, "_renameat2", lambda src, dst, flags: False)
    for directory in (False, True):
        target = tmp_path / f"out-{directory}"
        writer = fileio.atomic_dir if directory else fileio.atomic_path
        with pytest.raises(OutputExistsError, match="appeared while writing"), writer(target) as tmp:
            (tmp / "a").write_text("mine") if directory else tmp.write_text("mine")
            (target.mkdir(), (target / "b").write_text("theirs")) if directory else target.write_text("theirs")
        assert read(target) == ("b=theirs" if directory else "theirs")
        with writer(tmp_path / f"new-{directory}") as tmp:  # and a free target is written
            (tmp / "a").write_text("mine") if directory else tmp.write_text("mine")
        assert read(tmp_path / f"new-{directory}") == ("a=mine" if directory else "mine")
    assert leftovers(tmp_path) == []


# -- item 10: --force replaces only snapvit's own outputs --------------------------------------------------------


def test_force_refuses_a_folder_with_other_files(tmp_path, built):
    bundle, sliced = built
    folder = tmp_path / "P"
    folder.mkdir()
    (folder / "thesis.tex").write_text("four years")
    result = run("slice", bundle, "--flops", "0.5", "-o", folder, "--force")
    assert_one_line_error(result, f"refusing to replace {folder}: it holds thesis.tex")
    result = run("push", sliced, "--repo", "a/b", "--dry-run", folder, "--force", "--quiet")
    assert_one_line_error(result, f"refusing to replace {folder}: it holds thesis.tex")
    (folder / "model.safetensors").write_text("not even snapvit's")  # a known name beside a foreign file
    assert_one_line_error(run("slice", bundle, "--flops", "0.5", "-o", folder, "--force"), "thesis.tex")
    grid = tmp_path / "grid"
    (grid / "flops0.5" / "notes").mkdir(parents=True)
    result = run("slice", bundle, "--flops", "0.5,0.7", "-o", grid, "--force")
    assert_one_line_error(result, f"refusing to replace {grid / 'flops0.5'}: it holds notes")
    assert (folder / "thesis.tex").read_text() == "four years" and (grid / "flops0.5" / "notes").is_dir()


def test_force_still_replaces_snapvits_own_outputs(tmp_path, built):
    bundle, sliced = built
    out, preview = tmp_path / "half", tmp_path / "preview"
    assert run("slice", bundle, "--flops", "0.8", "-o", out).exit_code == 0
    assert run("slice", bundle, "--flops", "0.5", "-o", out, "--force").exit_code == 0
    assert json.loads((out / "config.json").read_text())["budget"]["target"] == 0.5
    for _ in range(2):  # a dry run over an earlier dry run of the same push
        assert run("push", out, "--repo", "a/b", "--dry-run", preview, "--force", "--quiet").exit_code == 0
    assert sorted(p.name for p in preview.iterdir()) == ["README.md", "config.json", "model.safetensors"]


def test_a_file_put_into_the_folder_during_a_forced_write_survives(tmp_path):
    """check_output passed (the folder held only snapvit's files); a file added while the new output was
    written must not be deleted by the exchange."""
    target = tmp_path / "out"
    target.mkdir()
    (target / "part0.txt").write_text("old")
    fileio.check_output(target, True, directory=True, owned=PARTS)
    refused = pytest.raises(OutputError, match="it holds thesis.tex")
    with refused, fileio.atomic_dir(target, force=True, owned=PARTS) as tmp:
        (tmp / "part0.txt").write_text("new")
        (target / "thesis.tex").write_text("four years")
    assert read(target) == "part0.txt=old | thesis.tex=four years" and leftovers(tmp_path) == []


# -- item 11: a disk that fills in a multi-budget run --------------------------------------------------------------


def test_disk_full_in_a_multi_budget_run_says_which_outputs_were_written(tmp_path, built):
    """RLIMIT_FSIZE (EFBIG, as ENOSPC on a full disk) between the sizes of the two models: the first budget's folder
    is written, the second's is not, and the message says so instead of "nothing was written"."""
    bundle, _ = built
    probe = tmp_path / "probe"
    for flops in (0.5, 0.9):
        assert run("slice", bundle, "--flops", flops, "-o", probe / str(flops)).exit_code == 0
    small, large = ((probe / str(f) / "model.safetensors").stat().st_size for f in (0.5, 0.9))
    assert small < large
    limit = (small + large) // 2
    code = (
        f"import resource, sys; resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit})); "
        "sys.argv[0] = 'snapvit'; from snapvit_cli.cli import main; main()"
    )
    out = tmp_path / "grid"
    args = ["slice", str(bundle), "--flops", "0.5,0.9,0.7", "-o", str(out)]
    result = subprocess.run(
        [sys.executable, "-c", code, *args], env=env_with(), capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 1, result.stderr
    first, second, third = out / "flops0.5", out / "flops0.9", out / "flops0.7"
    assert result.stderr.strip() == (
        f"error: cannot write {second}: File too large; {first} was written (the new output is complete); "
        f"{second} was not written; {third} was not written"
    )
    assert sorted(p.name for p in out.iterdir()) == ["flops0.5"]


# -- item 12: push sends exactly what it validated ----------------------------------------------------------------


def test_push_stages_the_validated_files_even_if_a_slice_force_replaces_them(built, tmp_path, monkeypatch):
    """A `slice --force` that replaces the folder right after push validated it (simulated by swapping the folder
    for a 0.75 slice the moment validation returns) must not put the 0.75 model beside a card and config of 0.5."""
    from snapvit_cli.elastic import sliced as sliced_module
    from snapvit_cli.hub.push import push

    bundle, sliced = built
    model, other = tmp_path / "model", tmp_path / "other"
    assert run("slice", bundle, "--flops", "0.5", "-o", model).exit_code == 0
    assert run("slice", bundle, "--flops", "0.75", "-o", other).exit_code == 0
    validated = {p.name: p.read_bytes() for p in model.iterdir()}
    real_load = sliced_module.load_sliced
    swapped = []

    def load_then_replace(folder, **kwargs):
        loaded = real_load(folder, **kwargs)
        if not swapped:  # what `slice --force` does: the new folder takes the old one's place
            model.rename(tmp_path / "model.old")
            other.rename(model)
            swapped.append(folder)
        return loaded

    monkeypatch.setattr(sliced_module, "load_sliced", load_then_replace)
    preview = tmp_path / "preview"
    push(model, "owner/model", dry_run_dir=preview, allow_random=True)
    assert swapped, "validation never ran"
    staged = {p.name: p.read_bytes() for p in preview.iterdir() if p.name != "README.md"}
    assert staged == validated  # the card was rendered from these: model, config and card agree
    assert json.loads(staged["config.json"])["budget"]["target"] == 0.5


def test_disk_full_in_a_multi_budget_export_says_which_files_were_written(tmp_path, built):
    """The same for `export --flops A,B,C --format pt2`, whose archive writer also used to abort the process
    (std::terminate, exit 134) when the disk filled under it."""
    bundle, _ = built
    probe = tmp_path / "probe"
    result = subprocess.run(
        [sys.executable, "-m", "snapvit_cli", "export", str(bundle), "--flops", "0.5,0.9", "--format", "pt2",
         "-o", str(probe)],
        env=env_with(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    small, large = ((probe / f"flops{f}.pt2").stat().st_size for f in (0.5, 0.9))
    assert small < large
    limit = (small + large) // 2
    code = (
        f"import resource, sys; resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit})); "
        "sys.argv[0] = 'snapvit'; from snapvit_cli.cli import main; main()"
    )
    out = tmp_path / "files"
    args = ["export", str(bundle), "--flops", "0.5,0.9,0.7", "--format", "pt2", "-o", str(out), "--json", "--quiet"]
    result = subprocess.run(
        [sys.executable, "-c", code, *args], env=env_with(), capture_output=True, text=True, timeout=300
    )
    first, second, third = (out / f"flops{f}.pt2" for f in ("0.5", "0.9", "0.7"))
    assert result.returncode == 1, result.stderr[-3000:]
    assert result.stderr.strip() == (
        f"error: cannot write {second}: File too large; {first} was written (the new output is complete); "
        f"{second} was not written; {third} was not written"
    )
    assert sorted(p.name for p in out.iterdir()) == ["flops0.5.pt2"]


def test_push_names_a_file_that_became_a_fifo_after_it_was_listed(built, tmp_path, monkeypatch):
    """A file of the folder replaced by a FIFO between listing and staging: refused, naming the file (it was
    "cannot write PREVIEW: ... named pipe", as if the output were at fault)."""
    from snapvit_cli.hub import push as push_module

    _, sliced = built
    model = tmp_path / "model"
    shutil.copytree(sliced, model)
    (model / "notes.txt").write_text("notes")
    real_files = push_module.folder_files

    def list_then_swap(root, **kwargs):
        files = real_files(root, **kwargs)
        (model / "notes.txt").unlink()
        os.mkfifo(model / "notes.txt")
        return files

    monkeypatch.setattr(push_module, "folder_files", list_then_swap)
    with pytest.raises(BundleError, match=r"notes.txt cannot be staged .*; not pushed"):
        push_module.push(model, "owner/model", dry_run_dir=tmp_path / "preview", allow_random=True)
    assert not (tmp_path / "preview").exists()
