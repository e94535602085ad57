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

import torch
import torch.distributed as dist


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
