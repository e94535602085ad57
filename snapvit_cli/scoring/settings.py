"""Every knob of the data-driven scoring methods, validated in one place (docs/method.md §12 for the defaults).

:class:`ScoreSettings` is what :func:`snapvit_cli.scoring.score_model` builds from its keyword arguments; each method
records the fields it used in the bundle's metadata, so a bundle says exactly how it was scored.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields

from snapvit_cli.devices import DEVICES
from snapvit_cli.elastic.defaults import DEFAULT_MIN_KEEP
from snapvit_cli.errors import SnapvitError
from snapvit_cli.models.aliases import DEMO_MODEL
from snapvit_cli.scoring.registry import DATA_METHODS, METHODS
from snapvit_cli.seeds import check_seed

# The four (MLP, head) removal ratios the released bundles were searched with (§12).
PAPER_GA_PAIRS: tuple[tuple[float, float], ...] = ((0.15, 0.0), (0.35, 0.2), (0.55, 0.4), (0.65, 0.5))
# The FLOPs fractions the default search averages its fitness over: the budgets users slice to (§5.3; the search
# study in benchmarks/README.md). Each becomes the (MLP, heads) pair that `slice --flops` resolves it to.
DEFAULT_GA_FLOPS: tuple[float, ...] = (0.9, 0.75, 0.6, 0.5)
# Named starting points for the search settings; explicit settings override them. "default": the winner of the
# search study (benchmarks/README.md): 150 evaluations on a third of the images over FLOPs-matched pairs. "paper":
# the search of the paper and of the published scores (snapvit's default until that study).
PRESETS: dict[str, dict[str, object]] = {
    "default": {},
    "paper": {
        "ga_evals": 50,
        "ga_samples": None,
        "ga_sample_fraction": 1.0,
        "ga_sigma": 0.3,
        "ga_init": (1.2, 0.8),
        "ga_population": None,
        "ga_pairs": PAPER_GA_PAIRS,
        "ga_flops": None,
        "ga_fitness": "mean",
        "ga_heads": "head",
        "ga_result": "best",
    },
}
CROP_MODES = ("independent", "legacy")
LOSSES = ("dino", "ce")
SCORE_FORMULAS = ("sqgrad", "fisher", "taylor", "snip")
# How the search runs a candidate: a physically sliced model (cost ∝ kept FLOPs) or the dense model with masks.
GA_EVALUATIONS = ("sliced", "masked")
# How the fitness combines the search pairs (§5.3): the mean of their distances (the paper: the harshest budgets,
# with the largest distances, weigh most), or the mean of each pair's distance relative to its distance at μ₀.
GA_FITNESS = ("mean", "relative")
# One multiplier per (block, head) (the paper) or one per block for all of its heads (2L instead of L + L·H values).
GA_HEADS = ("head", "block")
# What the search returns: the best candidate it evaluated (the paper), or its final distribution mean.
GA_RESULTS = ("best", "mean")

# progress(stage, done, total, best): stages "gradients" (images), "features" (images), "xnes" (evaluations;
# ``best`` is the lowest fitness so far). Library code reports through it and never prints.
Progress = Callable[[str, int, int, float | None], None]


@dataclass(frozen=True)
class ScoreSettings:
    """Settings of the gradient pass (``samples`` … ``score``) and of the xNES search (``ga_*``).

    ``samples`` images are drawn (seeded) for the gradient pass and, in a second draw with ``seed + 1``, ``ga_samples``
    (default: a third of ``samples``, so that 150 evaluations cost what the paper's 50 on ``samples`` images do) for
    the search, as the reference draws its two sets independently. ``micro_batch`` is the number of images whose
    crops go through one forward/backward pass; it bounds memory, not the result. ``preset`` names the search
    settings :meth:`from_kwargs` starts from (:data:`PRESETS`).
    """

    data: object = None  # a --data string (see snapvit_cli.data) or an ImageSet; None: not given
    samples: int = 1000
    batch_size: int = 16
    micro_batch: int = 4
    grad_checkpointing: bool = False  # recompute each block in the backward pass: activations of one block only
    seed: int = 42
    device: str = "auto"
    crops: str = "independent"
    loss: str = "dino"
    score: str = "sqgrad"
    resolution: int | None = None  # None = the size the model was built for
    preprocessing: dict | None = None  # mean/std/interpolation; None = the model's pretrained_cfg
    ga_samples: int | None = None  # None: ga_sample_fraction of samples
    ga_sample_fraction: float = 1 / 3
    ga_batch_size: int = 64
    ga_evals: int = 150
    ga_sigma: float = 0.3
    ga_bounds: tuple[float, float] | None = (0.0, 2.0)
    ga_pairs: tuple[tuple[float, float], ...] | None = None  # explicit (MLP, heads) pairs; None: from ga_flops
    ga_flops: tuple[float, ...] | None = DEFAULT_GA_FLOPS
    ga_init: tuple[float, float] = (1.2, 0.8)
    ga_population: int | None = None
    ga_evaluation: str = "sliced"
    ga_fitness: str = "mean"
    ga_heads: str = "head"
    ga_result: str = "best"
    pca_components: int = 192
    cka_init: bool = False
    snip_alpha: float = 1e-3
    min_keep: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_MIN_KEEP))
    preset: str = "default"  # recorded; its values are applied by from_kwargs
    progress: Progress | None = None

    def __post_init__(self) -> None:
        check_seed(self.seed)
        _check_choice("crops", self.crops, CROP_MODES)
        _check_choice("loss", self.loss, LOSSES)
        _check_choice("score", self.score, SCORE_FORMULAS)
        _check_choice("device", self.device, DEVICES)
        _check_choice("ga_evaluation", self.ga_evaluation, GA_EVALUATIONS)
        _check_choice("ga_fitness", self.ga_fitness, GA_FITNESS)
        _check_choice("ga_heads", self.ga_heads, GA_HEADS)
        _check_choice("ga_result", self.ga_result, GA_RESULTS)
        if self.cka_init and self.ga_heads != "head":
            raise SnapvitError("cka_init needs one multiplier per head (ga_heads='head')", param="cka_init")
        _check_choice("preset", self.preset, tuple(PRESETS))
        for name in ("samples", "batch_size", "micro_batch", "ga_batch_size", "pca_components"):
            if getattr(self, name) < 1:
                raise SnapvitError(f"{name} must be at least 1, got {getattr(self, name)}", param=name)
        if self.ga_evals < 0:
            raise SnapvitError(f"ga_evals must be 0 (no search) or positive, got {self.ga_evals}", param="ga_evals")
        if self.ga_samples is not None and self.ga_samples < 1:
            raise SnapvitError(f"ga_samples must be at least 1, got {self.ga_samples}", param="ga_samples")
        if not 0.0 < self.ga_sample_fraction <= 1.0:
            raise SnapvitError(
                f"ga_sample_fraction must lie in (0, 1], got {self.ga_sample_fraction}", param="ga_sample_fraction"
            )
        if not (self.ga_sigma > 0 and math.isfinite(self.ga_sigma)):
            raise SnapvitError(f"ga_sigma must be a positive number, got {self.ga_sigma}", param="ga_sigma")
        if self.ga_bounds is not None and not self.ga_bounds[0] < self.ga_bounds[1]:
            raise SnapvitError(f"ga_bounds must satisfy low < high, got {self.ga_bounds}", param="ga_bounds")
        for kind, value in self.min_keep.items():
            if not 0.0 <= value < 1.0:
                raise SnapvitError(f"min_keep_{kind} must lie in [0, 1), got {value}", param=f"min_keep_{kind}")
        if self.ga_pairs is not None:
            if not self.ga_pairs:
                raise SnapvitError("ga_pairs needs at least one MLP:HEADS pair", param="ga_pairs")
            for r_m, r_h in self.ga_pairs:
                if not (0.0 <= r_m < 1.0 and 0.0 <= r_h < 1.0):
                    raise SnapvitError(f"ga_pairs ratio ({r_m}, {r_h}) must lie in [0, 1)", param="ga_pairs")
        elif not self.ga_flops:
            raise SnapvitError("the search needs ga_pairs or ga_flops (FLOPs fractions to keep)", param="ga_flops")
        else:
            for fraction in self.ga_flops:
                if not 0.0 < fraction <= 1.0:
                    raise SnapvitError(f"ga_flops fraction {fraction} must lie in (0, 1]", param="ga_flops")

    def check_method(self, method: str) -> None:
        """Refuse a method these settings cannot run: unknown, or reading images while ``data`` is None."""
        if method not in METHODS:
            raise SnapvitError(f"method must be one of: {', '.join(METHODS)}; got '{method}'", param="method")
        if method in DATA_METHODS and self.data is None:
            raise SnapvitError(
                f"data is required by method '{method}', which scores with calibration images: pass an image "
                "folder, an .npz file or hf:NAME[:CONFIG] from the model's domain (demo only to try the pipeline: "
                "synthetic shapes), or choose a data-free method such as magnitude",
                param="data",
            )

    @property
    def ga_sample_count(self) -> int:
        """Search images: ``ga_samples``, else ``ga_sample_fraction`` of ``samples`` (at least one)."""
        if self.ga_samples is not None:
            return self.ga_samples
        return max(1, round(self.samples * self.ga_sample_fraction))

    def record(self, names: Sequence[str]) -> dict:
        """The named settings as JSON-ready values, for the bundle's metadata."""
        return {name: _jsonable(getattr(self, name)) for name in names}

    @classmethod
    def from_kwargs(cls, settings: dict) -> ScoreSettings:
        """Settings from keyword arguments: the ``preset``'s values (default "default"), the others over them; a
        string ``ga_pairs`` ("0.15:0,...") or ``ga_flops`` ("0.9,0.75") is parsed. Giving one of the two replaces
        the other of the defaults or the preset; giving both is an error."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(settings) - known)
        if unknown:
            raise TypeError(f"unknown scoring settings: {', '.join(unknown)}")
        preset = settings.get("preset", "default")
        _check_choice("preset", preset, tuple(PRESETS))
        values = {**PRESETS[preset], **settings}
        if isinstance(values.get("ga_pairs"), str):
            values["ga_pairs"] = parse_pairs(values["ga_pairs"])
        if isinstance(values.get("ga_flops"), str):
            values["ga_flops"] = parse_fractions(values["ga_flops"])
        if settings.get("ga_pairs") is not None:  # explicit pairs or fractions replace the preset's
            if settings.get("ga_flops") is not None:
                raise SnapvitError("give ga_pairs or ga_flops, not both", param="ga_flops")
            values["ga_flops"] = None
        elif settings.get("ga_flops") is not None:
            values["ga_pairs"] = None
        if "min_keep" in values:
            values["min_keep"] = {**DEFAULT_MIN_KEEP, **(values["min_keep"] or {})}
        return cls(**values)


def default_data(model: str) -> str | None:
    """The calibration data a model gets when none is named: the built-in images for the ``demo`` model only
    (real models must be scored on images of their own domain, so they get None and data methods refuse)."""
    return "demo" if model == DEMO_MODEL else None


def parse_pairs(text: str) -> tuple[tuple[float, float], ...]:
    """``"0.15:0,0.35:0.2"`` → ((0.15, 0.0), (0.35, 0.2)): the (MLP, heads) removal ratios the search scores."""
    pairs = []
    for item in text.split(","):
        mlp, sep, heads = item.strip().partition(":")
        try:
            if not sep:
                raise ValueError
            pairs.append((float(mlp), float(heads)))
        except ValueError:
            raise SnapvitError(
                f"ga_pairs item '{item.strip()}' is not MLP:HEADS ratios, e.g. 0.35:0.2", param="ga_pairs"
            ) from None
    return tuple(pairs)


def parse_fractions(text: str) -> tuple[float, ...]:
    """``"0.9,0.75"`` → (0.9, 0.75): the FLOPs fractions the search averages over (``--ga-flops``)."""
    try:
        return tuple(float(item) for item in text.split(","))
    except ValueError:
        raise SnapvitError(
            f"ga_flops '{text}' is not comma-separated FLOPs fractions, e.g. 0.9,0.75,0.6,0.5", param="ga_flops"
        ) from None


def format_pairs(pairs: Sequence[tuple[float, float]]) -> str:
    """The inverse of :func:`parse_pairs`: ``((0.15, 0.0),)`` → ``"0.15:0"``."""
    return ",".join(f"{mlp:g}:{heads:g}" for mlp, heads in pairs)


def _check_choice(name: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise SnapvitError(f"{name} must be one of {', '.join(choices)}; got '{value}'", param=name)


def _jsonable(value):
    if isinstance(value, tuple | list):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value
