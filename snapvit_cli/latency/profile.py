"""Measure a :class:`~snapvit_cli.latency.model.LatencyModel`: time blocks of several widths on the device.

Only single blocks (and the model without its blocks) are built, with random weights: timings do not depend on the
values, and a block costs a fraction of the model, so a whole profile takes about as long as a few dozen dense
forward passes. Every item is timed once per round, the rounds interleave all items (a load spike on a shared
machine hits them alike), and each time is the median over rounds after one untimed warm-up round.

The block curves are then one least-absolute-deviations fit of all those medians to
``t(m, h) = T − a·(M − m) − b·(H − h)`` (slopes ``a, b ≥ 0``), not the medians joined point to point: the chooser
removes first the units whose removal the model says saves the most, so any local slope that noise has made steep
(a slow outlier at the dense width, a flat stretch where two medians swapped) is exactly where it goes, and a whole
slice then measures slower than predicted. Fitted to all points at once, robustly (a median line), one noisy median
hardly moves the line. Widths that run faster because of their alignment are the rounding probes' job (``snap``).
The dense model is timed once, as a check of the fit (``dense_ms_measured``), not as a part of it.
"""

from __future__ import annotations

import copy
import math
import platform
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np
import torch
from torch import nn

from snapvit_cli.adapters import get_adapter
from snapvit_cli.elastic.budget import block_floor
from snapvit_cli.latency.model import CLOCKS, LatencyError, LatencyModel, ProfileKey

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
#: A rounding "pays" when the aligned width runs this much faster than its unaligned neighbour.
ROUNDING_TOLERANCE = 0.05
#: A timing sample lasts at least this long: faster items are run several times per sample (at most MAX_CALLS).
MIN_SAMPLE_S = 0.05
MAX_CALLS = 200
#: Points of the MLP-width grid between the floor and the dense width (plus both ends).
MLP_POINTS = 8
#: Head counts up to this are all measured; above it, a grid of about this many.
HEAD_POINTS = 8


def device_name(device: torch.device) -> str:
    """The processor or GPU model, as part of a profile's key."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "cpu":
        try:
            with open("/proc/cpuinfo") as f:
                for line in f:
                    if line.startswith("model name"):
                        return line.split(":", 1)[1].strip()
        except OSError:
            pass
        return platform.processor() or platform.machine() or "unknown cpu"
    return device.type


def profile_key(
    skeleton: nn.Module,
    device: torch.device,
    dtype: str,
    batch_size: int,
    resolution: int | None,
    clock: str = "wall",
) -> ProfileKey:
    """The key of a profile of ``skeleton``'s architecture on this machine (no timing)."""
    adapter = get_adapter(skeleton)
    resolution = adapter.check_resolution(resolution)
    structure = adapter.structure()
    architecture = {k: structure[k] for k in ("family", "num_blocks", "embed_dim", "num_heads", "head_dim")}
    architecture.update(mlp_hidden=structure["mlp_hidden"], mlp_type=structure["mlp_type"])
    architecture["tokens"] = adapter.tokens(resolution)[1]
    return ProfileKey(
        device=str(device),
        device_name=device_name(device),
        threads=torch.get_num_threads(),
        dtype=dtype,
        batch_size=batch_size,
        resolution=resolution,
        torch=torch.__version__,
        architecture=architecture,
        clock=clock,
    )


def mlp_grid(width: int, floor: int) -> list[int]:
    """The block floor, ``MLP_POINTS`` evenly spaced widths (multiples of 8 where the width allows), the width."""
    step = 8 if width >= 8 * MLP_POINTS else 1
    points = {floor, width}
    points.update(max(floor, round(width * k / MLP_POINTS / step) * step) for k in range(1, MLP_POINTS))
    return sorted(points)


def head_grid(heads: int) -> list[int]:
    """Every head count when there are few; else about ``HEAD_POINTS`` of them, 1 and the dense count included."""
    if heads <= HEAD_POINTS:
        return list(range(1, heads + 1))
    return sorted({1, heads, *(max(1, round(heads * k / HEAD_POINTS)) for k in range(1, HEAD_POINTS))})


def rounding_probes(width: int) -> dict[str, int]:
    """Widths whose times tell whether multiples of 64 or 8 pay: a 64-aligned width near half and neighbours."""
    aligned = width // 2 // 64 * 64
    if aligned < 64:
        return {}
    return {"a": aligned, "a-1": aligned - 1, "a-8": aligned - 8, "a-9": aligned - 9}


def measure_profile(
    skeleton: nn.Module,
    *,
    min_keep_mlp: float,
    device: torch.device | str = "cpu",
    dtype: str = "float32",
    batch_size: int = 1,
    resolution: int | None = None,
    repeats: int = 5,
    clock: str = "wall",
    progress: Callable[[int, int], None] | None = None,
) -> LatencyModel:
    """Profile the architecture of ``skeleton`` (a dense model, e.g. on the meta device; it is not changed).

    ``clock="cpu"`` times with the calling thread's CPU time instead of wall time (CPU devices, one torch thread):
    on a machine shared with other processes, the work of a pass without the time others took. With more threads
    it would leave out their share (a 2-thread ViT-Tiny profile so timed predicted 1.5× for slices that ran 1.64×)."""
    started = time.perf_counter()
    device = torch.device(device)
    if clock not in CLOCKS:
        raise LatencyError(f"clock must be one of {', '.join(CLOCKS)}, got {clock!r}", param="clock")
    if clock == "cpu" and device.type != "cpu":
        raise LatencyError(f"the cpu clock times CPU devices only, not {device}", param="clock")
    if clock == "cpu" and torch.get_num_threads() > 1:
        raise LatencyError(
            f"the cpu clock times the calling thread only, and torch runs {torch.get_num_threads()} threads: their "
            "share of the work would be left out; use the wall clock, or one thread",
            param="clock",
        )
    key = profile_key(skeleton, device, dtype, batch_size, resolution, clock)
    arch = key.architecture
    width, heads = arch["mlp_hidden"], arch["num_heads"]
    widths = mlp_grid(width, block_floor(width, min_keep_mlp))
    counts = head_grid(heads)
    probes = rounding_probes(width)
    configs = sorted({*((m, heads) for m in (*widths, *probes.values())), *((width, h) for h in counts)})
    x = torch.randn(batch_size, arch["tokens"], arch["embed_dim"], generator=torch.Generator().manual_seed(0))
    x = x.to(device)
    images = torch.randn(batch_size, 3, key.resolution, key.resolution, generator=torch.Generator().manual_seed(1))
    images = images.to(device)
    items: dict[object, Callable[[], object]] = {}
    for m, h in configs:
        block = _block(skeleton, m, h, device)
        items[(m, h)] = lambda block=block: block(x)
    stem = _stem(skeleton, key.resolution, device)
    items["fixed"] = lambda: stem(images)
    dense = _materialized(copy.deepcopy(skeleton), device, key.resolution)
    items["dense"] = lambda: dense(images)
    timer = time.thread_time if clock == "cpu" else time.perf_counter
    times = _rounds(items, device, dtype, repeats, progress, timer, checks=frozenset({"dense"}))
    medians = {name: statistics.median(t) for name, t in times.items()}
    fitted = [t for name, t in times.items() if name != "dense"]
    spread = statistics.median((max(t) - min(t)) / max(statistics.median(t), 1e-12) for t in fitted)
    rounding = {}
    if probes:
        at = {name: medians[(m, heads)] for name, m in probes.items()}
        rounding = {"64_vs_8": at["a-8"] / at["a"], "8_vs_1": at["a-9"] / at["a-8"], "1_unit": at["a-1"] / at["a"]}
    snap = 1
    if rounding.get("64_vs_8", 0) > 1 + ROUNDING_TOLERANCE:
        snap = 64
    elif min(rounding.get("8_vs_1", 0), rounding.get("1_unit", 0)) > 1 + ROUNDING_TOLERANCE:
        snap = 8
    mlp_fit, head_fit = fit_curves(
        widths, [medians[(m, heads)] for m in widths], counts, [medians[(width, h)] for h in counts]
    )
    return LatencyModel(
        key=key,
        fixed_ms=medians["fixed"],
        mlp_widths=tuple(widths),
        mlp_ms=tuple(mlp_fit),
        heads=tuple(counts),
        heads_ms=tuple(head_fit),
        dense_ms_measured=medians["dense"],
        rounding={k: round(v, 4) for k, v in rounding.items()},
        snap=snap,
        repeats=repeats,
        spread=round(spread, 4),
        seconds=round(time.perf_counter() - started, 2),
    )


def fit_curves(
    widths: list[int], mlp_ms: list[float], counts: list[int], heads_ms: list[float]
) -> tuple[list[float], list[float]]:
    """Both block curves from one least-absolute-deviations fit of ``t(m, h) = T − a·(M − m) − b·(H − h)``, a, b ≥ 0.

    ``mlp_ms`` are block times at ``widths`` with all heads, ``heads_ms`` at ``counts`` heads with the full MLP;
    both lists end at the dense block, which is one measurement and counted once. Returns the fitted times at the
    same points (so the model's record keeps its grids)."""
    width, heads = widths[-1], counts[-1]
    rows = [(1.0, m - width, 0.0) for m in widths] + [(1.0, 0.0, h - heads) for h in counts[:-1]]
    times = [*mlp_ms, *heads_ms[:-1]]
    design, target = np.array(rows, dtype=np.float64), np.array(times, dtype=np.float64)
    free = [1, 2]
    while True:  # a negative slope (noise on a flat curve) is fixed at zero and the rest refitted
        cols = [0, *free]
        coef = dict(zip(cols, least_absolute(design[:, cols], target), strict=True))
        negative = [c for c in free if coef[c] < 0]
        if not negative:
            break
        free = [c for c in free if c not in negative]
    dense, per_unit, per_head = coef[0], coef.get(1, 0.0), coef.get(2, 0.0)
    mlp_fit = [max(0.0, float(dense + per_unit * (m - width))) for m in widths]
    head_fit = [max(0.0, float(dense + per_head * (h - heads))) for h in counts]
    return mlp_fit, head_fit


def least_absolute(design: np.ndarray, target: np.ndarray, iterations: int = 200) -> np.ndarray:
    """Coefficients that minimise the sum of absolute residuals (iteratively reweighted least squares): the
    regression counterpart of a median, so that one slow median (a load spike) barely moves the line."""
    scale = max(float(np.abs(target).max()), 1e-12)
    weights = np.ones_like(target)
    coef = np.zeros(design.shape[1])
    for _ in range(iterations):
        root = np.sqrt(weights)
        coef, *_ = np.linalg.lstsq(design * root[:, None], target * root, rcond=None)
        weights = 1.0 / np.maximum(np.abs(target - design @ coef), 1e-9 * scale)
    return coef


def _rounds(
    items: dict[object, Callable[[], object]],
    device: torch.device,
    dtype: str,
    repeats: int,
    progress: Callable[[int, int], None] | None,
    timer: Callable[[], float] = time.perf_counter,
    checks: frozenset[object] = frozenset(),
) -> dict[object, list[float]]:
    """Milliseconds of every item in each of ``repeats`` rounds, after one untimed warm-up round.

    An item faster than ``MIN_SAMPLE_S`` is run several times per sample (as many as the warm-up pass says fill
    it) and the sample is their mean: a pass of a few milliseconds is otherwise at the mercy of one scheduler
    time slice on a busy machine. Items in ``checks`` (the dense model: a check, not part of the fit, and the
    costliest item) get one sample, in the last round, with no warm-up of their own: the blocks' warm-up has run
    every shape they use."""
    times: dict[object, list[float]] = {name: [] for name in items}
    calls = dict.fromkeys(items, 1)
    total, done = repeats * len(items) + len(items) - len(checks), 0
    with _inference(device, dtype):
        for round_ in range(repeats + 1):
            for name, run in items.items():
                if name in checks:
                    if round_ == repeats:
                        times[name].append(_one_sample(run, device, timer))
                        done += 1
                        if progress is not None:
                            progress(done, total)
                    continue
                _synchronize(device)
                start = timer()
                for _ in range(calls[name]):
                    run()
                _synchronize(device)
                seconds = (timer() - start) / calls[name]
                if round_:
                    times[name].append(seconds * 1000.0)
                else:
                    calls[name] = _calls(seconds)
                done += 1
                if progress is not None:
                    progress(done, total)
    return times


def _calls(seconds: float) -> int:
    """How many passes of ``seconds`` each fill one sample of ``MIN_SAMPLE_S``."""
    return min(MAX_CALLS, max(1, math.ceil(MIN_SAMPLE_S / max(seconds, 1e-9))))


def _one_sample(run: Callable[[], object], device: torch.device, timer: Callable[[], float]) -> float:
    """Milliseconds of one pass of ``run``; when that first pass is shorter than ``MIN_SAMPLE_S`` it served as the
    warm-up, and the sample is the mean of as many more passes as fill it."""
    calls, seconds = 1, 0.0
    for attempt in range(2):
        _synchronize(device)
        start = timer()
        for _ in range(calls):
            run()
        _synchronize(device)
        seconds = (timer() - start) / calls
        if attempt == 0 and seconds >= MIN_SAMPLE_S:
            break
        calls = _calls(seconds)
    return seconds * 1000.0


@contextmanager
def _inference(device: torch.device, dtype: str) -> Iterator[None]:
    """No autograd, and autocast for bfloat16: how ``snapvit eval`` runs a model."""
    with torch.inference_mode():
        if dtype == "float32":
            yield
        else:
            with torch.autocast(device.type, dtype=DTYPES[dtype]):
                yield


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _block(skeleton: nn.Module, mlp: int, heads: int, device: torch.device) -> nn.Module:
    """Block 0 of ``skeleton`` resized to ``mlp`` neurons and ``heads`` heads, with random weights on ``device``."""
    shell = copy.copy(skeleton)  # a shallow copy whose blocks are one fresh copy of block 0
    shell._modules = dict(skeleton._modules)
    shell.blocks = nn.Sequential(copy.deepcopy(skeleton.blocks[0]))
    get_adapter(shell).resize_block(0, mlp, heads)
    return _materialized(shell.blocks[0], device)


def _stem(skeleton: nn.Module, resolution: int, device: torch.device) -> nn.Module:
    """The model without its blocks: patch embedding, position embedding, final norm, pooling and classifier."""
    stem = copy.copy(skeleton)
    stem._modules = {k: copy.deepcopy(v) for k, v in skeleton._modules.items() if k != "blocks"}
    stem._parameters = {k: copy.deepcopy(v) for k, v in skeleton._parameters.items()}
    stem._buffers = {k: copy.deepcopy(v) for k, v in skeleton._buffers.items()}
    stem.blocks = nn.Sequential()
    return _materialized(stem, device, resolution)


def _materialized(module: nn.Module, device: torch.device, resolution: int | None = None) -> nn.Module:
    """``module`` allocated on ``device`` with small random values (timings do not depend on them)."""
    module = module.to_empty(device=device)
    generator = torch.Generator(device=device).manual_seed(0)
    with torch.no_grad():
        for tensor in (*module.parameters(), *module.buffers()):
            if tensor.is_floating_point():
                tensor.normal_(0.0, 0.02, generator=generator)
    resized = resolution is not None and hasattr(module, "set_input_size")
    if resized and max(module.patch_embed.img_size) != resolution:
        module.set_input_size(img_size=(resolution, resolution))
    return module.eval()
