"""Writes that cannot lose data: atomic replacement under SIGINT / SIGTERM / SIGKILL at every step, stale
temporaries, permissions under the umask, inputs never replaced, and one-line errors when the system refuses.

The interrupt matrix runs a minimal command (tests/_writer.py: the CLI's own error and signal handling around
``atomic_dir`` / ``atomic_path``) in a subprocess that the test hook ``SNAPVIT_TEST_PAUSE`` stops at a known step;
two end-to-end runs interrupt the real ``snapvit slice --force``.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from snapvit_cli import fileio
from snapvit_cli.cli.app import app
from snapvit_cli.errors import OutputError, OutputExistsError
from tests.conftest import assert_one_line_error

ROOT = Path(__file__).resolve().parents[1]
WRITER = Path(__file__).with_name("_writer.py")
PAUSED = Path(__file__).with_name("_paused.py")  # `snapvit` with the write-pause test hook on
runner = CliRunner()


def run(*args: object):
    return runner.invoke(app, [str(a) for a in args])


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def temporaries(folder: Path, name: str) -> list[str]:
    return [n for n in listing(folder) if n.startswith(f".{name}.")]


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


# -- the interrupt matrix ---------------------------------------------------------------------------------------


PARTS = ("part0.txt", "part1.txt", "part2.txt")  # what tests/_writer.py writes into a folder


def make_output(target: Path, content: str, kind: str) -> None:
    if kind == "dir":
        target.mkdir()
        for i in range(3):
            (target / f"part{i}.txt").write_text(f"{content} {i}\n")
    else:
        target.write_text(f"{content}\n")


def read_output(target: Path, kind: str) -> str:
    """``content`` if ``target`` is exactly what make_output (or the writer) made with it, else what is there."""
    if kind == "file":
        return target.read_text().strip() if target.is_file() else "missing"
    if not target.is_dir():
        return "missing"
    parts = {p.name: p.read_text() for p in target.iterdir()}
    contents = {text.rsplit(" ", 1)[0] for text in parts.values()}
    complete = sorted(parts) == ["part0.txt", "part1.txt", "part2.txt"] and len(contents) == 1
    return contents.pop() if complete else f"mixed: {parts}"


def start_writer(target: Path, content: str, kind: str, pause: str | None, marker: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop(fileio.PAUSE_ENV, None)
    if pause is not None:
        env[fileio.PAUSE_ENV] = f"{pause}:{marker}"
    args = [sys.executable, str(WRITER), str(target), content, "--kind", kind, "--force"]
    return subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(marker: Path, process: subprocess.Popen, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not marker.exists():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "the writer never reached its pause point"
        time.sleep(0.01)


BEFORE = ("staged", "written", "synced")  # the old output must survive an interrupt here
AFTER = ("committed", "cleanup")  # the new output is in place
SIGNALS = {"SIGINT": (signal.SIGINT, 130, "interrupted"), "SIGTERM": (signal.SIGTERM, 143, "terminated")}
assert set(BEFORE + AFTER) == set(fileio.PAUSE_POINTS)


@pytest.mark.parametrize("kind", ["dir", "file"])
@pytest.mark.parametrize("point", fileio.PAUSE_POINTS)
@pytest.mark.parametrize("sig", sorted(SIGNALS))
def test_interrupt_leaves_old_or_new_and_says_which(tmp_path, kind, point, sig):
    signum, code, word = SIGNALS[sig]
    target, marker = tmp_path / "out", tmp_path / "marker"
    make_output(target, "old", kind)
    process = start_writer(target, "new", kind, point, marker)
    wait_for(marker, process)
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=30)
    expected = "new" if point in AFTER else "old"
    assert read_output(target, kind) == expected
    assert process.returncode == code, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    says = "was replaced (the new output is complete)" if expected == "new" else "left as it was (the old output is"
    assert lines[0].startswith(f"{word}; {target} ") and says in lines[0], lines[0]
    assert temporaries(tmp_path, "out") == []  # a handled interrupt removes its own temporaries


@pytest.mark.parametrize("kind", ["dir", "file"])
@pytest.mark.parametrize("point", fileio.PAUSE_POINTS)
def test_sigkill_leaves_old_or_new_and_the_next_run_cleans_up(tmp_path, kind, point):
    target, marker = tmp_path / "out", tmp_path / "marker"
    make_output(target, "old", kind)
    process = start_writer(target, "new", kind, point, marker)
    wait_for(marker, process)
    process.kill()
    process.communicate(timeout=30)
    assert read_output(target, kind) == ("new" if point in AFTER else "old")
    if (
        kind == "dir" or point in BEFORE
    ):  # SIGKILL cannot clean up (the old folder, or the new output): the next run must
        assert temporaries(tmp_path, "out")
    again = start_writer(target, "third", kind, None, marker)
    _, stderr = again.communicate(timeout=30)
    assert again.returncode == 0, stderr
    assert read_output(target, kind) == "third"
    assert temporaries(tmp_path, "out") == []


def test_first_write_interrupted_says_nothing_was_written(tmp_path):
    target, marker = tmp_path / "out", tmp_path / "marker"
    process = start_writer(target, "new", "dir", "synced", marker)
    wait_for(marker, process)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == 130 and stderr.strip() == f"interrupted; {target} was not written"
    assert listing(tmp_path) == ["marker"]


def slice_subprocess(bundle: Path, out: Path, flops: float, pause: str, marker: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), fileio.PAUSE_ENV: f"{pause}:{marker}"}
    args = [sys.executable, str(PAUSED), "slice", str(bundle), "--flops", str(flops), "-o", str(out)]
    return subprocess.Popen([*args, "--force"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.parametrize(("point", "sig", "replaced"), [("written", "SIGTERM", False), ("committed", "SIGINT", True)])
def test_snapvit_slice_force_interrupted(tmp_path, built, point, sig, replaced):
    bundle, _ = built
    out, marker = tmp_path / "half", tmp_path / "marker"
    assert run("slice", bundle, "--flops", "0.8", "-o", out).exit_code == 0
    old = {p.name: p.read_bytes() for p in out.iterdir()}
    process = slice_subprocess(bundle, out, 0.5, point, marker)
    wait_for(marker, process, timeout=120)
    signum, code, word = SIGNALS[sig]
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == code and len(stderr.strip().splitlines()) == 1, stderr
    now = {p.name: p.read_bytes() for p in out.iterdir()}
    assert sorted(now) == ["config.json", "model.safetensors"]
    budget = json.loads(now["config.json"])["budget"]["target"]
    if replaced:
        assert budget == 0.5 and "was replaced (the new output is complete)" in stderr
    else:
        assert now == old and budget == 0.8 and "left as it was (the old output is intact)" in stderr
    assert temporaries(tmp_path, "half") == []


# -- the replacement itself -------------------------------------------------------------------------------------


def test_folder_swap_uses_renameat2_exchange_on_linux(tmp_path, monkeypatch):
    if not sys.platform.startswith("linux"):
        pytest.skip("renameat2 is Linux only")
    calls = []
    real = fileio._renameat2
    monkeypatch.setattr(fileio, "_renameat2", lambda src, dst, flags: calls.append(flags) or real(src, dst, flags))
    target = tmp_path / "out"
    make_output(target, "old", "dir")
    with fileio.atomic_dir(target, force=True, owned=PARTS) as tmp:
        for i in range(3):
            (tmp / f"part{i}.txt").write_text(f"new {i}\n")
    assert read_output(target, "dir") == "new" and listing(tmp_path) == ["out"]
    assert calls == [fileio.RENAME_EXCHANGE]
    assert fileio.renameat2_available(fileio.RENAME_EXCHANGE)  # this machine did exchange, not fall back


def test_fallback_without_renameat2_replaces_and_restores_after_a_kill(tmp_path, monkeypatch):
    monkeypatch.setattr(fileio, "_renameat2", lambda src, dst, flags: False)
    target = tmp_path / "out"
    make_output(target, "old", "dir")
    with fileio.atomic_dir(target, force=True, owned=PARTS) as tmp:
        for i in range(3):
            (tmp / f"part{i}.txt").write_text(f"new {i}\n")
    assert read_output(target, "dir") == "new" and listing(tmp_path) == ["out"]
    # a run killed between the fallback's two renames: only .out.old-PID is left, and no target
    dead = dead_pid()
    target.rename(tmp_path / f".out.old-{dead}")
    (tmp_path / f".out.{dead}-abcd1234.tmp").mkdir()
    restored = fileio.clean_stale_temporaries(target)
    assert len(restored) == 2 and read_output(target, "dir") == "new" and listing(tmp_path) == ["out"]


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_stale_temporaries_of_live_processes_and_other_targets_are_kept(tmp_path):
    target = tmp_path / "out"
    dead = dead_pid()
    stale = [f".out.{dead}-abcd1234.tmp", ".out.k3j4h5g6.tmp", f".out.old-{dead}"]  # (second: older naming)
    kept = [f".out.{os.getppid()}-abcd1234.tmp", f".out.x.{dead}-abcd1234.tmp", ".outer.abcd1234.tmp", "out2"]
    make_output(target, "old", "file")
    for name in stale + kept:
        (tmp_path / name).mkdir()
    removed = fileio.clean_stale_temporaries(target)
    assert sorted(p.name for p in removed) == sorted(stale)
    assert listing(tmp_path) == sorted(["out", *kept])


def test_outputs_honour_the_umask(tmp_path, built, umask_022):
    bundle, _ = built
    out = tmp_path / "half"
    assert run("slice", bundle, "--flops", "0.5", "-o", out).exit_code == 0
    assert stat.S_IMODE(out.stat().st_mode) == 0o755
    assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in out.iterdir()} == {
        "config.json": 0o644,
        "model.safetensors": 0o644,
    }
    assert run("slice", bundle, "--flops", "0.6", "-o", out, "--force").exit_code == 0  # the replaced folder too
    assert stat.S_IMODE(out.stat().st_mode) == 0o755
    assert {stat.S_IMODE(p.stat().st_mode) for p in out.iterdir()} == {0o644}
    with fileio.atomic_path(tmp_path / "file.bin") as tmp:
        tmp.write_bytes(b"x")
    assert stat.S_IMODE((tmp_path / "file.bin").stat().st_mode) == 0o644
    os.umask(0o077)
    with fileio.atomic_dir(tmp_path / "private") as tmp:
        (tmp / "a").write_text("a")
    assert stat.S_IMODE((tmp_path / "private").stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "private" / "a").stat().st_mode) == 0o600


def test_a_failed_write_keeps_the_old_output_and_is_one_line(tmp_path):
    target = tmp_path / "out"
    make_output(target, "old", "dir")
    message = "cannot write .*out: No space left on device; the existing output was"
    with pytest.raises(OutputError, match=message), fileio.atomic_dir(target, force=True, owned=PARTS) as tmp:
        (tmp / "part0.txt").write_text("new 0\n")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    assert read_output(target, "dir") == "old" and listing(tmp_path) == ["out"]


# -- user errors: one line, exit 1, nothing written ---------------------------------------------------------------


def test_force_never_replaces_an_input(tmp_path, built):
    bundle, sliced = built
    before = listing(bundle.parent)
    assert_one_line_error(run("slice", bundle, "--flops", "0.5", "-o", bundle, "--force"), "it is the input")
    assert_one_line_error(
        run("slice", bundle, "--flops", "0.5", "-o", bundle.parent, "--force"), "it contains the input"
    )
    data = tmp_path / "images"
    data.mkdir()
    assert_one_line_error(run("score", "--data", data, "-o", data, "--force"), "it is the input")
    assert_one_line_error(
        run("push", sliced, "--repo", "a/b", "--dry-run", sliced.parent, "--force", "--quiet"), "it contains the input"
    )
    assert listing(bundle.parent) == before and bundle.is_file()


def test_output_kind_and_current_directory_errors(tmp_path, built, monkeypatch):
    bundle, _ = built
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    (cwd / "folder").mkdir()
    (cwd / "file").write_text("mine")
    assert_one_line_error(run("score", "--method", "magnitude", "-o", "folder", "--force"), "folder is a directory")
    assert_one_line_error(run("slice", bundle, "--flops", "0.5", "-o", "file", "--force"), "is not a folder")
    for where in (".", str(cwd), str(tmp_path)):
        assert_one_line_error(run("slice", bundle, "--flops", "0.5", "-o", where, "--force"), "current directory")
    assert listing(cwd) == ["file", "folder"] and (cwd / "file").read_text() == "mine"


def test_a_directory_given_as_bundle(tmp_path):
    assert_one_line_error(run("slice", tmp_path, "--flops", "0.5"), f"{tmp_path} is a directory")


def test_device_mps_without_one(tmp_path):
    import torch

    if torch.backends.mps.is_available():
        pytest.skip("this machine has MPS")
    out = tmp_path / "never.safetensors"
    result = run("score", "--model", "demo", "--method", "gradient", "--device", "mps", "-o", out)
    assert_one_line_error(result, "--device mps is not usable on this machine (MPS is not available)")
    assert list(tmp_path.iterdir()) == []


def test_check_output_refuses_without_force(tmp_path):
    (tmp_path / "x").write_text("x")
    with pytest.raises(OutputExistsError, match="pass force=True"):  # the CLI says --force (test_cli)
        fileio.check_output(tmp_path / "x", False)
    assert fileio.check_output(tmp_path / "x", True) == tmp_path / "x"
    assert fileio.check_output(tmp_path / "y", False, inputs=("hf-hub:a/b", "demo", None)) == tmp_path / "y"


def test_disk_full_during_slice_is_one_line_and_keeps_the_old_output(tmp_path, built):
    """A real write failure: RLIMIT_FSIZE (Python ignores SIGXFSZ, so the write fails with EFBIG as it would with
    ENOSPC on a full disk) below the size of model.safetensors."""
    bundle, _ = built
    out = tmp_path / "half"
    assert run("slice", bundle, "--flops", "0.8", "-o", out).exit_code == 0
    old = {p.name: p.read_bytes() for p in out.iterdir()}
    limit = len(old["model.safetensors"]) // 2
    code = (
        f"import resource, sys; resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit})); "
        "sys.argv[0] = 'snapvit'; from snapvit_cli.cli import main; main()"
    )
    args = ["slice", str(bundle), "--flops", "0.5", "-o", str(out), "--force"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1, result.stderr
    assert result.stderr.strip() == f"error: cannot write {out}: File too large; the existing output was left as it was"
    assert {p.name: p.read_bytes() for p in out.iterdir()} == old
    assert temporaries(tmp_path, "half") == []


def test_read_only_output_directory(tmp_path, built):
    """Permissions do not stop root, so as root the folder is made immutable (chattr +i) instead."""
    bundle, _ = built
    ro = tmp_path / "ro"
    ro.mkdir()
    if os.geteuid() == 0:
        if subprocess.run(["chattr", "+i", str(ro)], capture_output=True).returncode != 0:
            pytest.skip("running as root on a filesystem without chattr +i: no folder is read-only to root")
        undo = ["chattr", "-i", str(ro)]
    else:
        ro.chmod(0o555)
        undo = ["chmod", "755", str(ro)]
    try:
        result = run("slice", bundle, "--flops", "0.5", "-o", ro / "half")
        assert_one_line_error(result, f"error: cannot write {ro / 'half'}: ")
        assert result.stderr.strip().endswith("; nothing was written")
        assert listing(ro) == []
    finally:
        subprocess.run(undo, check=True)


def test_write_log_records_one_command_in_its_own_thread_only(tmp_path):
    """The interrupt report covers the writes of the command it wraps: not a library caller's earlier writes (which
    are recorded nowhere), not another thread's."""
    import threading

    with fileio.atomic_path(tmp_path / "library.txt") as tmp:  # outside any log: recorded nowhere
        tmp.write_text("x")
    theirs: list = []

    def other_command() -> None:
        with fileio.write_log() as log, fileio.atomic_path(tmp_path / "thread.txt") as tmp:
            tmp.write_text("y")
        theirs.extend(log)

    with fileio.write_log() as mine:
        worker = threading.Thread(target=other_command)
        worker.start()
        worker.join()
        with fileio.atomic_path(tmp_path / "main.txt") as tmp:
            tmp.write_text("z")
    assert [record.path.name for record in mine] == ["main.txt"]
    assert [record.path.name for record in theirs] == ["thread.txt"]
    assert fileio.interrupt_message(mine) == f"{tmp_path / 'main.txt'} was written (the new output is complete)"
    assert fileio.interrupt_message([]) == "nothing was written"
