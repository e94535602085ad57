"""The environment and the command line as input (issue 23, items 14 and 15): launcher variables that are not
integers, a rendezvous that is not there, a rank that stops answering, the write-pause test hook outside the test
suite, seeds beyond what the generators take and ``--round-to`` beyond what a record stores."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from snapvit_cli.cli.app import app
from tests.conftest import assert_one_line_error
from tests.crafted import small_bundle

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()
SCORE = ["score", "--model", "demo", "--no-pretrained", "--samples", "8", "--batch-size", "2", "--micro-batch", "2"]


def snapvit(*args: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
    """``python -m snapvit_cli ARGS`` in a clean environment plus ``env``."""
    base = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR")}
    full = {**base, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **env}
    command = [sys.executable, "-m", "snapvit_cli", *args]
    return subprocess.run(command, env=full, capture_output=True, text=True, timeout=timeout)


def assert_one_error_line(result: subprocess.CompletedProcess, message: str) -> None:
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return small_bundle(tmp_path_factory.mktemp("env") / "b.safetensors", "dino")


@pytest.mark.parametrize(
    ("env", "args", "message"),
    [
        ({"WORLD_SIZE": "abc"}, ["models"], "WORLD_SIZE='abc' is not an integer"),
        ({"WORLD_SIZE": "0"}, ["models"], "WORLD_SIZE='0' is not an integer in [1, 65536]"),
        ({"WORLD_SIZE": "2", "RANK": "x"}, [*SCORE, "--method", "magnitude"], "RANK='x' is not an integer in [0, 1]"),
        ({"WORLD_SIZE": "2", "RANK": "0"}, [*SCORE, "--method", "magnitude"], "cannot join the torchrun process group"),
    ],
)
def test_a_bad_launcher_environment_is_one_line(tmp_path, env, args, message):
    result = snapvit(*args, "-o", str(tmp_path / "b.st"), env=env) if args[0] == "score" else snapvit(*args, env=env)
    assert_one_error_line(result, message)
    assert not (tmp_path / "b.st").exists()


def test_the_write_pause_hook_is_inert_outside_the_test_suite(bundle, tmp_path):
    """Any user can set SNAPVIT_TEST_PAUSE; it must neither write its marker nor make snapvit wait."""
    marker = tmp_path / "marker"
    started = time.monotonic()
    args = ["slice", str(bundle), "--flops", "0.5", "-o", str(tmp_path / "out")]
    result = snapvit(*args, env={"SNAPVIT_TEST_PAUSE": f"staged:{marker}"})
    assert result.returncode == 0, result.stderr
    assert not marker.exists() and time.monotonic() - started < 25
    assert (tmp_path / "out" / "model.safetensors").is_file()


@pytest.mark.parametrize("dry_run", [True, False])
def test_round_to_beyond_what_a_record_stores_is_refused_up_front(bundle, tmp_path, dry_run):
    out = tmp_path / "out"
    tail = ["--dry-run"] if dry_run else ["-o", str(out)]
    result = runner.invoke(app, ["slice", str(bundle), "--mlp", "0", "--heads", "0.5", "--round-to", "70000", *tail])
    assert_one_line_error(result, "--round-to must lie in [1, 65536], got 70000")
    assert not out.exists()


@pytest.mark.parametrize(
    "args",
    [
        [*SCORE, "--method", "random", "--seed", str(10**23)],
        [*SCORE, "--method", "random", "--seed", "-1"],
        ["eval", "demo", "--data", "demo", "--no-speed", "--seed", str(2**64)],
    ],
)
def test_seeds_outside_what_the_generators_take_are_one_line(tmp_path, args):
    result = runner.invoke(app, [*args, *(["-o", str(tmp_path / "b.st")] if args[0] == "score" else [])])
    assert_one_line_error(result, "--seed must be an integer in [0, 4294967295]")
    assert not (tmp_path / "b.st").exists()


def _children(pid: int) -> list[int]:
    return [int(c) for task in Path(f"/proc/{pid}/task").iterdir() for c in (task / "children").read_text().split()]


def _rank_of(pid: int) -> int | None:
    """The RANK a process was started with; None without one, or when it has already exited (a short-lived
    child of the launcher can end between listing and reading)."""
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes()
    except (ProcessLookupError, FileNotFoundError):
        return None
    for item in environ.split(b"\0"):
        if item.startswith(b"RANK="):
            return int(item[5:])
    return None


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch built without distributed")
@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="finds the ranks through /proc")
def test_a_stopped_rank_ends_the_job_after_the_collective_timeout(tmp_path):
    """SIGSTOP one of two torchrun ranks in the middle of the search: the other gives up after
    SNAPVIT_COLLECTIVE_TIMEOUT_S (5 s here) with one line, instead of waiting forever; no bundle is written."""
    bundle = tmp_path / "out" / "never.st"
    bundle.parent.mkdir()
    logs = tmp_path / "logs"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    command += ["--redirects", "3", "--log-dir", str(logs), "-m", "snapvit_cli", *SCORE]
    command += ["--ga-samples", "6", "--ga-evals", "1000000", "-o", str(bundle), "-q"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "SNAPVIT_COLLECTIVE_TIMEOUT_S": "5"}
    run = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    ranks: dict[int, int] = {}
    try:
        deadline = time.monotonic() + 240
        while len(ranks) < 2 and time.monotonic() < deadline:
            ranks = {r: pid for pid in _children(run.pid) if (r := _rank_of(pid)) is not None}
            time.sleep(0.1)
        while min(_cpu_seconds(pid) for pid in ranks.values()) < 6 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert run.poll() is None, run.communicate()
        os.kill(ranks[1], signal.SIGSTOP)
        stopped = time.monotonic()
        _, launcher = run.communicate(timeout=150)
        assert run.returncode != 0
        rank0 = "".join(p.read_text() for p in logs.rglob("0/stderr.log")).strip().splitlines()
        assert len(rank0) == 1 and rank0[0].startswith("error: "), (rank0, launcher)
        assert "did not answer within 5 s" in rank0[0] and "no bundle was written" in rank0[0]
        assert time.monotonic() - stopped < 120
        assert list(bundle.parent.iterdir()) == []
    finally:
        for pid in ranks.values():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if run.poll() is None:
            run.kill()
