"""The latency model: what one profile measured, and the time it predicts for any per-block widths.

A block's time is modelled as separable in its two kinds of units, ``t(m, h) = mlp(m) − (heads(H) − heads(h))``,
where ``mlp`` is the time of a block with all ``H`` heads and ``m`` MLP neurons (piecewise linear between grid
points) and ``heads`` that of a block with the full MLP and ``h`` heads, used only for what fewer heads save (the
profile fits both to its measurements at once, see :func:`snapvit_cli.latency.profile.fit_curves`, so they agree
on the dense block; a record may hold any non-decreasing curves); a model's time is the fixed parts
(patch embedding, final norm, head) plus the sum over its blocks. The record is strict JSON like the other stored
records: known keys only, each typed and bounded, so a cache file from a stranger or an older snapvit is refused,
never run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from snapvit_cli.errors import SnapvitError
from snapvit_cli.schema import Fields

PROFILE_VERSION = 1
CLOCKS = ("wall", "cpu")
MAX_MS = 1e9
MAX_UNITS = 1 << 20


class LatencyError(SnapvitError):
    """A latency profile is missing, stale (another torch, device or architecture) or unusable."""


@dataclass(frozen=True)
class ProfileKey:
    """Everything that changes the timings: a profile measured under another key does not describe this run."""

    device: str  # "cpu", "cuda:0", ...
    device_name: str  # the processor or GPU model
    threads: int  # torch intra-op threads (CPU timings scale with them)
    dtype: str
    batch_size: int
    resolution: int
    torch: str
    architecture: dict[str, Any] = field(default_factory=dict)  # the dense structure and tokens per block
    clock: str = "wall"  # "wall", or "cpu": CPU time of the calling thread (a loaded CPU machine, one thread)

    def to_json(self) -> dict[str, Any]:
        return {
            "device": self.device,
            "device_name": self.device_name,
            "threads": self.threads,
            "dtype": self.dtype,
            "batch_size": self.batch_size,
            "resolution": self.resolution,
            "torch": self.torch,
            "architecture": dict(self.architecture),
            "clock": self.clock,
        }

    @classmethod
    def from_json(cls, data: Any, where: str = "key") -> ProfileKey:
        f = Fields(data, where)
        key = cls(
            device=f.str("device"),
            device_name=f.str("device_name"),
            threads=f.int("threads", 1, 1 << 16),
            dtype=f.str("dtype", choices=("float32", "bfloat16")),
            batch_size=f.int("batch_size", 1, 1 << 20),
            resolution=f.int("resolution", 1, 1 << 16),
            torch=f.str("torch"),
            architecture=_architecture(f.obj("architecture").data, f"{where}.architecture"),
            clock=f.str("clock", choices=CLOCKS),
        )
        f.done()
        return key

    def describe(self) -> str:
        """One line for people: ``cpu (Intel Xeon…), 2 threads, float32, batch 32, 224 px, torch 2.4.0``."""
        threads = f", {self.threads} thread{'s' if self.threads > 1 else ''}" if self.device == "cpu" else ""
        clock = ", CPU time" if self.clock == "cpu" else ""
        return (
            f"{self.device} ({self.device_name}){threads}, {self.dtype}, batch {self.batch_size}, "
            f"{self.resolution} px, torch {self.torch}{clock}"
        )


def _architecture(data: Any, where: str) -> dict[str, Any]:
    f = Fields(data, where)
    out = {
        "family": f.str("family"),
        "num_blocks": f.int("num_blocks", 1, 4096),
        "embed_dim": f.int("embed_dim", 1, MAX_UNITS),
        "num_heads": f.int("num_heads", 1, 4096),
        "head_dim": f.int("head_dim", 1, MAX_UNITS),
        "mlp_hidden": f.int("mlp_hidden", 1, MAX_UNITS),
        "mlp_type": f.str("mlp_type"),
        "tokens": f.int("tokens", 1, 1 << 24),
    }
    f.done()
    return out


@dataclass(frozen=True)
class LatencyModel:
    """One profile: block times on a grid of MLP widths and of head counts, the fixed parts, and how it was taken.

    Times are milliseconds per forward pass of a batch of ``key.batch_size`` images (medians of ``repeats``
    interleaved rounds). ``rounding`` holds measured time ratios that say whether kept MLP widths that are
    multiples of 8 or 64 run faster than their neighbours; ``snap`` is the multiple that paid (1: none did).
    """

    key: ProfileKey
    fixed_ms: float
    mlp_widths: tuple[int, ...]
    mlp_ms: tuple[float, ...]
    heads: tuple[int, ...]
    heads_ms: tuple[float, ...]
    dense_ms_measured: float
    rounding: dict[str, float]
    snap: int
    repeats: int
    spread: float  # median over the measured items of (max − min) / median across repeats
    seconds: float  # what measuring the profile cost, wall clock

    def __post_init__(self) -> None:
        for name, grid, times in (("mlp", self.mlp_widths, self.mlp_ms), ("heads", self.heads, self.heads_ms)):
            if len(grid) != len(times) or not grid:
                raise LatencyError(f"latency profile: the {name} grid and its times differ in length")
            if list(grid) != sorted(set(grid)):
                raise LatencyError(f"latency profile: the {name} grid must increase strictly")
        arch = self.key.architecture
        if arch and (self.mlp_widths[-1] != arch["mlp_hidden"] or self.heads[-1] != arch["num_heads"]):
            raise LatencyError("latency profile: the grids must end at the dense widths")

    def block_ms(self, mlp: int, heads: int) -> float:
        """Predicted time of one block with ``mlp`` neurons and ``heads`` heads."""
        saved_by_heads = self.heads_ms[-1] - _interp(heads, self.heads, self.heads_ms)
        return _interp(mlp, self.mlp_widths, self.mlp_ms) - saved_by_heads

    def predict_ms(self, mlp: tuple[int, ...] | list[int], heads: tuple[int, ...] | list[int]) -> float:
        """Predicted time of a whole model with these per-block widths."""
        return self.fixed_ms + sum(self.block_ms(m, h) for m, h in zip(mlp, heads, strict=True))

    def dense_ms(self) -> float:
        """Predicted time of the dense model (compare :attr:`dense_ms_measured`)."""
        arch = self.key.architecture
        blocks = arch["num_blocks"]
        return self.predict_ms([arch["mlp_hidden"]] * blocks, [arch["num_heads"]] * blocks)

    def to_json(self) -> dict[str, Any]:
        return {
            "profile_version": PROFILE_VERSION,
            "key": self.key.to_json(),
            "fixed_ms": self.fixed_ms,
            "mlp": {"widths": list(self.mlp_widths), "ms": list(self.mlp_ms)},
            "heads": {"counts": list(self.heads), "ms": list(self.heads_ms)},
            "dense_ms_measured": self.dense_ms_measured,
            "rounding": dict(self.rounding),
            "snap": self.snap,
            "repeats": self.repeats,
            "spread": self.spread,
            "seconds": self.seconds,
        }

    @classmethod
    def from_json(cls, data: Any, where: str = "latency profile") -> LatencyModel:
        f = Fields(data, where)
        version = f.data.get("profile_version")
        if version != PROFILE_VERSION or isinstance(version, bool):
            raise LatencyError(f"{where}: profile version {version!r}; this snapvit reads version {PROFILE_VERSION}")
        f.int("profile_version", PROFILE_VERSION, PROFILE_VERSION)
        key = ProfileKey.from_json(f.obj("key").data, f"{where}.key")
        mlp, heads = f.obj("mlp"), f.obj("heads")
        widths = mlp.ints("widths", 1, MAX_UNITS)
        counts = heads.ints("counts", 1, MAX_UNITS)
        record = cls(
            key=key,
            fixed_ms=f.float("fixed_ms", 0.0, MAX_MS),
            mlp_widths=tuple(widths),
            mlp_ms=tuple(mlp.floats("ms", 0.0, MAX_MS, len(widths))),
            heads=tuple(counts),
            heads_ms=tuple(heads.floats("ms", 0.0, MAX_MS, len(counts))),
            dense_ms_measured=f.float("dense_ms_measured", 0.0, MAX_MS),
            rounding={k: v for k, v in _rounding(f.obj("rounding").data, f"{where}.rounding").items()},
            snap=f.int("snap", 1, 1 << 16),
            repeats=f.int("repeats", 1, 1 << 16),
            spread=f.float("spread", 0.0, MAX_MS),
            seconds=f.float("seconds", 0.0, MAX_MS),
        )
        mlp.done()
        heads.done()
        f.done()
        return record


def _rounding(data: Any, where: str) -> dict[str, float]:
    f = Fields(data, where)
    out = {key: f.float(key, 0.0, 1e6) for key in sorted(f.data)}
    f.done()
    return out


def _interp(x: int, grid: tuple[int, ...], times: tuple[float, ...]) -> float:
    """Piecewise-linear in ``x``; below the first grid point, the first segment's line (never negative)."""
    if len(grid) == 1 or x >= grid[0]:
        return float(np.interp(x, grid, times))
    slope = (times[1] - times[0]) / (grid[1] - grid[0])
    return max(0.0, times[0] + slope * (x - grid[0]))
