"""What ``snapvit score`` will cost before it starts (``score --dry-run``): images, passes, memory and time per stage.

Closed-form, from the model's structure only (it may live on the meta device: no weight is read):

- FLOPs: a forward pass of one image costs 2 × its MACs (:meth:`ModelAdapter.cost_terms`); the gradient pass runs
  2 + 10 views of every image forward and backward (≈ 3 forwards; 4 with gradient checkpointing, which recomputes
  each block); the dense features are one forward per search image; every xNES evaluation runs each removal pair
  over the search images, at the pair's kept FLOPs when candidates are sliced, at the dense cost when masked.
- Time: those FLOPs at the device's measured matmul speed (:func:`matmul_speed`, a fraction of a second). Real
  passes also spend time in attention, norms and data preparation, so the times are lower bounds; on the CPU,
  ``benchmarks/scoring.py`` measured the stages at about 1–2× the bare passes.
- Memory: float32 weights; saved activations of one micro-batch of views (per token and block about 9 embedding
  widths and 2 MLP widths, in bf16 under CUDA autocast, float32 elsewhere; with gradient checkpointing only each
  block's input plus one block); the float64 gradient sums on the host; the search images on the device.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import torch
from torch import nn

from snapvit_cli.adapters import HEADS, MLP, ModelAdapter
from snapvit_cli.adapters.base import unit_view
from snapvit_cli.elastic.budget import removal_count
from snapvit_cli.scoring.calibration import autocast
from snapvit_cli.scoring.gradient import score_parameters
from snapvit_cli.scoring.search import search_pairs
from snapvit_cli.scoring.settings import ScoreSettings

VIEWS = 12  # 2 global + 10 local crops per image, all at the model's input size (§3.3)
SAVED_PER_TOKEN = (9, 2)  # saved activations per token and block: 9 embedding widths + 2 MLP widths


@dataclass(frozen=True)
class StageEstimate:
    stage: str
    images: int
    passes: str
    tflop: float
    device_gb: float  # peak memory on the scoring device (on the CPU: all of it)
    host_gb: float  # float64 gradient sums and their unit views, kept on the host
    seconds: float | None  # at the measured matmul speed; None when not measured

    def to_json(self) -> dict:
        return asdict(self)


def matmul_speed(device: torch.device, seconds: float = 0.3, width: int = 1024) -> float:
    """FLOP/s of a [4096, width] × [width, 4·width] matmul on ``device`` (bf16 autocast on CUDA, as scoring runs)."""
    x = torch.randn(4096, width, device=device)
    w = torch.randn(width, 4 * width, device=device)
    flop = 2 * 4096 * width * 4 * width
    with torch.no_grad(), autocast(device):
        x @ w  # warm-up
        _sync(device)
        runs, start = 0, time.perf_counter()
        while runs < 2 or time.perf_counter() - start < seconds:
            x @ w
            runs += 1
        _sync(device)
    return flop * runs / (time.perf_counter() - start)


def duration(seconds: float) -> str:
    """``seconds`` in the largest unit that keeps it readable (s, min, h, d)."""
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= 2 * size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.1f} s"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def estimate_scoring(
    model: nn.Module,
    adapter: ModelAdapter,
    settings: ScoreSettings,
    device: torch.device,
    flop_per_s: float | None,
    method: str = "snapvit",
) -> list[StageEstimate]:
    """Per stage of ``method`` (``snapvit``: all three; ``gradient`` / ``snip``: the gradient pass)."""
    cost = adapter.cost_terms(settings.resolution)
    dense = adapter.widths()
    forward = 2 * cost.macs(dense)  # FLOPs of one image
    tokens, blocks = cost.tokens, adapter.num_blocks
    embed = int(getattr(adapter, "embed_dim", 0) or getattr(model, "embed_dim", 0))
    hidden = dense.mlp[0]
    act = 2 if device.type == "cuda" else 4
    weights = 4 * sum(p.numel() for p in model.parameters())
    scored = [(spec, p) for per_kind in score_parameters(model, adapter).values() for b in per_kind for spec, p in b]
    grad_numel = sum(p.numel() for _, p in {id(p): (s, p) for s, p in scored}.values())  # .grad of whole tensors
    score_numel = sum(unit_view(p, spec).numel() for spec, p in scored)  # what the host sums hold
    size = cost.resolution

    def seconds(flop: float) -> float | None:
        return None if not flop_per_s else flop / flop_per_s

    views = settings.micro_batch * VIEWS
    per_block = SAVED_PER_TOKEN[0] * embed + SAVED_PER_TOKEN[1] * hidden
    if settings.grad_checkpointing:
        activations = views * tokens * (4 * blocks * embed + act * per_block)
    else:
        activations = views * tokens * blocks * act * per_block
    host = 8 * score_numel * (3 if settings.score == "fisher" else 2)  # sums (+ squares) and the weights' views
    grad_flop = settings.samples * VIEWS * forward * (4 if settings.grad_checkpointing else 3)
    stages = [
        StageEstimate(
            "gradient pass",
            settings.samples,
            f"{settings.samples * VIEWS} views forward + backward, {views} per pass",
            grad_flop / 1e12,
            (weights + 4 * grad_numel + activations) / 1e9,
            host / 1e9,
            seconds(grad_flop),
        )
    ]
    if method != "snapvit":
        return stages

    n = settings.ga_sample_count
    images = n * 3 * size * size * 4
    layer = settings.ga_batch_size * tokens * (3 * embed + hidden) * act  # the widest activations of one batch
    stages.append(
        StageEstimate(
            "dense features",
            n,
            f"{n} forward",
            n * forward / 1e12,
            (weights + images + layer) / 1e9,
            0.0,
            seconds(n * forward),
        )
    )
    if settings.ga_evals == 0:  # gradient scores without search
        return stages
    kept = [_kept_fraction(adapter, cost, pair) for pair in search_pairs(adapter, settings)]
    pairs = len(kept)
    if settings.ga_evaluation == "sliced":
        per_eval, extra, batch_copies = sum(kept), weights * max(kept), 1
    else:
        per_eval, extra, batch_copies = float(pairs), 0, pairs
    search_flop = settings.ga_evals * n * forward * per_eval
    stages.append(
        StageEstimate(
            f"search ({settings.ga_evaluation})",
            n,
            f"{settings.ga_evals} evaluations × {pairs} pairs × {n} forward "
            f"(kept FLOPs {min(kept):.2f}–{max(kept):.2f})",
            search_flop / 1e12,
            (weights + extra + images + batch_copies * layer) / 1e9,
            0.0,
            seconds(search_flop),
        )
    )
    return stages


def _kept_fraction(adapter: ModelAdapter, cost, pair: tuple[float, float]) -> float:
    """FLOPs fraction a removal pair keeps (the per-unit costs are the same in every block)."""
    dense = adapter.widths()
    removed = {kind: removal_count(sum(dense.of(kind)), ratio) for kind, ratio in zip((MLP, HEADS), pair, strict=True)}
    macs = cost.macs(dense)
    return (macs - removed[MLP] * cost.macs_per_neuron - removed[HEADS] * cost.macs_per_head) / macs
