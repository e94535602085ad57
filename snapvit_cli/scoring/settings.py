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

# The four (MLP, head) removal ratios the released bundles were searched with (§12).
DEFAULT_GA_PAIRS: tuple[tuple[float, float], ...] = ((0.15, 0.0), (0.35, 0.2), (0.55, 0.4), (0.65, 0.5))
CROP_MODES = ("independent", "legacy")
LOSSES = ("dino", "ce")
SCORE_FORMULAS = ("sqgrad", "fisher", "taylor")
# How the search runs a candidate: a physically sliced model (cost ∝ kept FLOPs) or the dense model with masks.
GA_EVALUATIONS = ("sliced", "masked")

# progress(stage, done, total, best): stages "gradients" (images), "features" (images), "xnes" (evaluations;
# ``best`` is the lowest fitness so far). Library code reports through it and never prints.
Progress = Callable[[str, int, int, float | None], None]


@dataclass(frozen=True)
class ScoreSettings:
    """Settings of the gradient pass (``samples`` … ``score``) and of the xNES search (``ga_*``).

    ``samples`` images are drawn (seeded) for the gradient pass and, in a second draw with ``seed + 1``, ``ga_samples``
    (default: ``samples``) for the search, as the reference draws its two sets independently. ``micro_batch`` is the
    number of images whose crops go through one forward/backward pass; it bounds memory, not the result.
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
    ga_samples: int | None = None
    ga_batch_size: int = 64
    ga_evals: int = 50
    ga_sigma: float = 0.3
    ga_bounds: tuple[float, float] | None = (0.0, 2.0)
    ga_pairs: tuple[tuple[float, float], ...] = DEFAULT_GA_PAIRS
    ga_init: tuple[float, float] = (1.2, 0.8)
    ga_population: int | None = None
    ga_evaluation: str = "sliced"
    pca_components: int = 192
    cka_init: bool = False
    snip_alpha: float = 1e-3
    min_keep: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_MIN_KEEP))
    progress: Progress | None = None

    def __post_init__(self) -> None:
        _check_choice("crops", self.crops, CROP_MODES)
        _check_choice("loss", self.loss, LOSSES)
        _check_choice("score", self.score, SCORE_FORMULAS)
        _check_choice("device", self.device, DEVICES)
        _check_choice("ga_evaluation", self.ga_evaluation, GA_EVALUATIONS)
        for name in ("samples", "batch_size", "micro_batch", "ga_batch_size", "pca_components"):
            if getattr(self, name) < 1:
                raise SnapvitError(f"{name} must be at least 1, got {getattr(self, name)}", param=name)
        if self.ga_evals < 0:
            raise SnapvitError(f"ga_evals must be 0 (no search) or positive, got {self.ga_evals}", param="ga_evals")
        if self.ga_samples is not None and self.ga_samples < 1:
            raise SnapvitError(f"ga_samples must be at least 1, got {self.ga_samples}", param="ga_samples")
        if not (self.ga_sigma > 0 and math.isfinite(self.ga_sigma)):
            raise SnapvitError(f"ga_sigma must be a positive number, got {self.ga_sigma}", param="ga_sigma")
        if self.ga_bounds is not None and not self.ga_bounds[0] < self.ga_bounds[1]:
            raise SnapvitError(f"ga_bounds must satisfy low < high, got {self.ga_bounds}", param="ga_bounds")
        if not self.ga_pairs:
            raise SnapvitError("ga_pairs needs at least one MLP:HEADS pair", param="ga_pairs")
        for kind, value in self.min_keep.items():
            if not 0.0 <= value < 1.0:
                raise SnapvitError(f"min_keep_{kind} must lie in [0, 1), got {value}", param=f"min_keep_{kind}")
        for r_m, r_h in self.ga_pairs:
            if not (0.0 <= r_m < 1.0 and 0.0 <= r_h < 1.0):
                raise SnapvitError(f"ga_pairs ratio ({r_m}, {r_h}) must lie in [0, 1)", param="ga_pairs")

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
        return self.samples if self.ga_samples is None else self.ga_samples

    def record(self, names: Sequence[str]) -> dict:
        """The named settings as JSON-ready values, for the bundle's metadata."""
        return {name: _jsonable(getattr(self, name)) for name in names}

    @classmethod
    def from_kwargs(cls, settings: dict) -> ScoreSettings:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(settings) - known)
        if unknown:
            raise TypeError(f"unknown scoring settings: {', '.join(unknown)}")
        values = dict(settings)
        if "ga_pairs" in values and isinstance(values["ga_pairs"], str):
            values["ga_pairs"] = parse_pairs(values["ga_pairs"])
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
