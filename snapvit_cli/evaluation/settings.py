"""What determines an evaluation besides the target and the data: one validated record, without torch, so that the
CLI takes its defaults from here."""

from __future__ import annotations

from dataclasses import dataclass

from snapvit_cli.devices import DEVICES
from snapvit_cli.errors import SnapvitError
from snapvit_cli.seeds import check_seed

DEFAULT_BUDGETS = (1.0, 0.9, 0.75, 0.5)  # FLOPs fractions evaluated for a bundle
VOTES: tuple[str, ...] = ("majority", "weighted")  # kNN votes: uniform (the paper's protocol) or DINO's weighted
TRANSFORMS: tuple[str, ...] = ("resize", "timm")  # whole-image resize (the method's protocol), timm's eval recipe
DTYPES: tuple[str, ...] = ("float32", "bfloat16")  # bfloat16 = autocast, as the reference extracted features


@dataclass(frozen=True)
class EvalSettings:
    """Everything that determines an evaluation besides the target and the data source."""

    k: int = 20
    vote: str = "majority"
    temperature: float = 0.07
    probe: bool = False
    probe_epochs: int = 100
    probe_lr: float = 1e-3
    probe_val_fraction: float = 0.2
    resolution: int | None = None
    batch_size: int = 64
    workers: int = 0
    device: str = "auto"
    dtype: str = "float32"
    speed: bool = True
    speed_batch_size: int = 32
    speed_warmup: int = 2
    speed_repeats: int = 5
    samples_train: int | None = None
    samples_test: int | None = None
    seed: int = 0
    transform: str = "resize"  # "resize": whole image (the method's kNN protocol); "timm": timm's eval transform

    def __post_init__(self) -> None:
        check_seed(self.seed)
        if self.vote not in VOTES:
            raise SnapvitError(f"vote must be one of {', '.join(VOTES)}, got '{self.vote}'", param="vote")
        if self.dtype not in DTYPES:
            raise SnapvitError(f"dtype must be one of {', '.join(DTYPES)}, got '{self.dtype}'", param="dtype")
        if self.device not in DEVICES:
            raise SnapvitError(f"device must be one of {', '.join(DEVICES)}, got '{self.device}'", param="device")
        for name in ("k", "batch_size", "probe_epochs", "speed_batch_size", "speed_repeats"):
            if getattr(self, name) < 1:
                raise SnapvitError(f"{name} must be at least 1, got {getattr(self, name)}", param=name)
        for name in ("temperature", "probe_lr"):
            if not getattr(self, name) > 0:
                raise SnapvitError(f"{name} must be positive, got {getattr(self, name)}", param=name)
        for name in ("workers", "speed_warmup"):
            if getattr(self, name) < 0:
                raise SnapvitError(f"{name} cannot be negative, got {getattr(self, name)}", param=name)
        if self.transform not in TRANSFORMS:
            raise SnapvitError(
                f"transform must be one of {', '.join(TRANSFORMS)}, got '{self.transform}'", param="transform"
            )
