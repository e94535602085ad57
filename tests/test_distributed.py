"""``torchrun --nproc-per-node 2 -m snapvit_cli score`` (gloo on the CPU): the single-process result, rank 0 alone
writes and speaks, and a rank that dies ends the job with one line and no bundle."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from typer.testing import CliRunner

from snapvit_cli.cli import app
from snapvit_cli.scoring import distributed

SCORE = ["score", "--model", "demo", "--no-pretrained", "--samples", "8", "--batch-size", "2", "--micro-batch", "2"]
SEARCH = ["--ga-samples", "6"]

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch built without distributed")


def _torchrun(log_dir: Path, *args: str, **popen) -> subprocess.Popen:
    """``torchrun --standalone --nproc-per-node 2 -m snapvit_cli ARGS`` with each rank's output in ``log_dir``."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    command += ["--redirects", "3", "--log-dir", str(log_dir), "-m", "snapvit_cli", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, **popen)


def _rank_output(log_dir: Path, rank: int, stream: str) -> str:
    return "".join(p.read_text() for p in log_dir.rglob(f"{rank}/{stream}.log"))


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    with safe_open(path, "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys() if not k.startswith("model.")}


def test_two_ranks_give_the_single_process_bundle(tmp_path):
    run = _torchrun(tmp_path / "logs", *SCORE, *SEARCH, "--ga-evals", "31", "-o", str(tmp_path / "two.st"), "--json")
    out, err = run.communicate(timeout=300)
    assert run.returncode == 0, err
    report = json.loads(_rank_output(tmp_path / "logs", 0, "stdout"))
    assert report["written"] == [str(tmp_path / "two.st")] and report["results"][0]["path"] == str(tmp_path / "two.st")
    assert _rank_output(tmp_path / "logs", 1, "stdout") == _rank_output(tmp_path / "logs", 1, "stderr") == ""

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as torchrun's ranks
    try:
        single = CliRunner().invoke(app, [*SCORE, *SEARCH, "--ga-evals", "31", "-o", str(tmp_path / "one.st"), "-q"])
    finally:
        torch.set_num_threads(threads)
    assert single.exit_code == 0, single.output
    two, one = _tensors(tmp_path / "two.st"), _tensors(tmp_path / "one.st")
    assert two.keys() == one.keys()
    for kind in ("mlp", "heads"):
        assert torch.equal(two[f"order.{kind}"], one[f"order.{kind}"])  # the same unit ranking
        for name in (f"scores.{kind}", f"raw.{kind}"):
            torch.testing.assert_close(two[name], one[name], rtol=1e-6, atol=0)
    torch.testing.assert_close(two["ga.fitness_trace"], one["ga.fitness_trace"], rtol=1e-6, atol=0)
    assert not torch.equal(two["ga.mlp_weight"], torch.ones_like(two["ga.mlp_weight"]))


def _children(pid: int) -> list[int]:
    return [int(c) for task in Path(f"/proc/{pid}/task").iterdir() for c in (task / "children").read_text().split()]


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def _rank_of(pid: int) -> int | None:
    for item in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
        if item.startswith(b"RANK="):
            return int(item[5:])
    return None


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="finds the ranks through /proc")
def test_a_dead_rank_ends_the_job_with_one_line_and_no_bundle(tmp_path):
    bundle = tmp_path / "out" / "never.st"
    bundle.parent.mkdir()
    run = _torchrun(tmp_path / "logs", *SCORE, *SEARCH, "--ga-evals", "1000000", "-o", str(bundle), "-q")
    ranks: dict[int, int] = {}
    deadline = time.monotonic() + 240
    while len(ranks) < 2 and time.monotonic() < deadline:
        ranks = {r: pid for pid in _children(run.pid) if (r := _rank_of(pid)) is not None}
        time.sleep(0.1)
    # Well into the work (imported, joined the group, scoring), however busy the machine: CPU time, not wall time.
    while min(_cpu_seconds(pid) for pid in ranks.values()) < 6 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert run.poll() is None, run.communicate()
    os.kill(ranks[1], signal.SIGKILL)
    _, launcher = run.communicate(timeout=120)
    assert run.returncode != 0
    said = [
        line
        for r in (0, 1)
        for s in ("stdout", "stderr")
        for line in _rank_output(tmp_path / "logs", r, s).splitlines()
    ]
    assert len(said) == 1 and said[0].startswith("error: ") and "another rank" in said[0], (said, launcher)
    assert list(bundle.parent.iterdir()) == []  # no bundle, no partial file


def test_without_a_process_group_everything_is_local():
    assert distributed.world() == (0, 1)
    assert distributed.shard(7) == range(7)
    part = torch.arange(6.0).view(3, 2)
    assert distributed.gather_rows(part, 3) is part
    values = [torch.ones(3)]
    distributed.all_reduce_sum(values)
    assert torch.equal(values[0], torch.ones(3))
