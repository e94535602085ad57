"""Scoring across processes with ``torch.distributed`` (launched by ``torchrun``): who does which share, and the sums.

Scoring follows the process group when one is initialised (``torchrun --nproc-per-node N -m snapvit_cli score``;
the CLI initialises it, a library user may do so before calling :func:`snapvit_cli.scoring.score_model`):

- the gradient pass gives every rank the batches ``b`` with ``b % world == rank`` and all-reduces the float64
  gradient sums, so the result is the single-process sum in another order;
- the search gives every rank a contiguous shard of the calibration images; the dense features are gathered (every
  rank fits the same PCA), each rank sums the cosine similarities of its shard and the sums are all-reduced, so every
  rank sees the same fitness and takes the same xNES step.

Without a process group every helper here is the identity, and a single process does everything.
"""

from __future__ import annotations

import contextlib
import datetime
import math
import os
from collections.abc import Iterator

import torch
import torch.distributed as dist

from snapvit_cli.errors import SnapvitError
from snapvit_cli.launcher import launched, local_rank, rank, world_size

# A rank waits this long for the others at any collective (and at the rendezvous), then the job ends in one line.
# Ranks do the same work between collectives, so a healthy job waits seconds; a download on one rank may take longer.
TIMEOUT_ENV = "SNAPVIT_COLLECTIVE_TIMEOUT_S"
DEFAULT_TIMEOUT_S = 1800.0


def active() -> bool:
    """Whether an initialised process group of more than one rank is in use."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world() -> tuple[int, int]:
    """(rank, world size); (0, 1) without a process group."""
    if not active():
        return 0, 1
    return dist.get_rank(), dist.get_world_size()


def shard(total: int) -> range:
    """This rank's contiguous share of ``total`` items (the first ``total % world`` ranks get one more)."""
    rank, size = world()
    base, extra = divmod(total, size)
    start = rank * base + min(rank, extra)
    return range(start, start + base + (1 if rank < extra else 0))


def _collective_device() -> torch.device:
    """NCCL reduces CUDA tensors only; gloo reduces CPU tensors."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_sum(tensors: list[torch.Tensor]) -> None:
    """Sum every tensor over the ranks, in place, in one collective (they are packed into one flat buffer)."""
    if not active() or not tensors:
        return
    device = _collective_device()
    flat = torch.cat([t.reshape(-1) for t in tensors]).to(device)
    dist.all_reduce(flat)
    flat = flat.cpu() if tensors[0].device.type == "cpu" else flat
    offset = 0
    for t in tensors:
        t.copy_(flat[offset : offset + t.numel()].view_as(t))
        offset += t.numel()


def gather_rows(part: torch.Tensor, total: int) -> torch.Tensor:
    """The ranks' :func:`shard` parts ``[rows, ...]`` of a ``[total, ...]`` tensor, concatenated in rank order."""
    if not active():
        return part
    _, size = world()
    device = _collective_device()
    longest = -(-total // size)
    padded = torch.zeros((longest, *part.shape[1:]), dtype=part.dtype, device=device)
    padded[: len(part)] = part.to(device)
    pieces = [torch.empty_like(padded) for _ in range(size)]
    dist.all_gather(pieces, padded)
    base, extra = divmod(total, size)
    rows = [base + (1 if r < extra else 0) for r in range(size)]
    return torch.cat([piece[:n] for piece, n in zip(pieces, rows, strict=True)]).to(part.device)


def is_secondary() -> bool:
    """A launched process other than rank 0: it computes its share but writes and prints nothing."""
    return launched() and rank() != 0


def start(device: str) -> None:
    """Join the launcher's process group: NCCL when scoring on CUDA (one GPU per local rank), gloo otherwise."""
    if not launched() or (dist.is_available() and dist.is_initialized()):
        return
    if not dist.is_available():
        raise SnapvitError("this torch build has no torch.distributed; run snapvit score without torchrun")
    timeout = collective_timeout()
    cuda = device in ("auto", "cuda") and torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(local_rank())
    try:
        dist.init_process_group(backend="nccl" if cuda else "gloo", timeout=datetime.timedelta(seconds=timeout))
    except (ValueError, RuntimeError) as exc:  # no rendezvous (MASTER_ADDR unset), or no peer within the timeout
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[-1].strip()
        raise SnapvitError(
            f"cannot join the torchrun process group of {world_size()} ranks ({reason}); start snapvit with "
            "torchrun, or unset WORLD_SIZE to run one process"
        ) from None


def collective_timeout() -> float:
    """Seconds a rank waits for the others at a collective (:data:`TIMEOUT_ENV`, default
    :data:`DEFAULT_TIMEOUT_S`): a stopped or hung rank then ends the job with one line instead of stalling it."""
    raw = os.environ.get(TIMEOUT_ENV)
    if raw is None or raw.strip() == "":
        return DEFAULT_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not 1 <= value <= 86_400:
        raise SnapvitError(f"{TIMEOUT_ENV}={raw[:30]!r} must be a number of seconds in [1, 86400]")
    return value


def stop() -> None:
    """Leave the process group (if this module's :func:`start` or the caller joined one)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


@contextlib.contextmanager
def failures_end_all_ranks() -> Iterator[None]:
    """Turn a lost peer (a collective fails because another rank died) into one :class:`SnapvitError`.

    The launcher then ends the remaining ranks; the CLI turns its SIGTERM into the same kind of error."""
    try:
        yield
    except RuntimeError as exc:
        if not (active() or launched()) or not _is_collective_failure(exc):
            raise
        if _is_timeout(exc):
            raise SnapvitError(
                f"another rank of the torchrun job did not answer within {collective_timeout():g} s (stopped or "
                f"hung?; {TIMEOUT_ENV} sets the wait); no bundle was written"
            ) from None
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SnapvitError(f"another rank of the torchrun job failed ({reason}); no bundle was written") from None


def _is_timeout(exc: BaseException) -> bool:
    text = str(exc).lower()
    return "timed out" in text or "timeout" in text


def _is_collective_failure(exc: BaseException) -> bool:
    if isinstance(exc, dist.DistError):
        return True
    text = str(exc).lower()
    return any(word in text for word in ("gloo", "nccl", "connection closed", "connection reset", "peer"))
