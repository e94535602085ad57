"""Evaluation preprocessing from a timm pretrained config, and deterministic batching."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torchvision.transforms.v2.functional as F
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import InterpolationMode

from snapvit_cli.data.imageset import to_rgb
from snapvit_cli.errors import DataError
from snapvit_cli.models.source import MIN_CROP_PCT

# Interpolations torchvision can apply to tensors (timm configs name them the same way).
_INTERPOLATIONS = {
    "bicubic": InterpolationMode.BICUBIC,
    "bilinear": InterpolationMode.BILINEAR,
    "nearest": InterpolationMode.NEAREST,
}


def preprocess(cfg: dict, resolution: int | None = None, *, crop_pct: float | None = None) -> EvalTransform:
    """The evaluation transform uint8 [C,H,W] -> float [3,R,R] for a timm pretrained config.

    By default the whole image is resized to the model's input size (no crop): small datasets such as CIFAR
    would lose a tenth of their pixels to timm's centre crop, and this is the protocol behind the project's
    reference kNN numbers. With ``crop_pct`` it follows timm's eval recipe instead: shorter side to
    R / crop_pct, then a centre crop of R.
    ``resolution`` overrides the config's input size.
    """
    size = (resolution, resolution) if resolution else tuple(cfg["input_size"][-2:])
    name = cfg.get("interpolation", "bicubic")
    if name not in _INTERPOLATIONS:
        known = ", ".join(sorted(_INTERPOLATIONS))
        raise DataError(f"unsupported interpolation '{name}' in the model config (known: {known})")
    if crop_pct is not None and not MIN_CROP_PCT <= crop_pct <= 1:
        raise DataError(f"crop_pct must be in [{MIN_CROP_PCT:g}, 1], got {crop_pct}")
    return EvalTransform(size, _INTERPOLATIONS[name], list(cfg["mean"]), list(cfg["std"]), crop_pct)


class EvalTransform:
    """uint8 [C,H,W] -> RGB in [0, 1], resized (or timm-cropped), normalised (a class: workers pickle it)."""

    def __init__(
        self,
        size: tuple[int, int],
        mode: InterpolationMode,
        mean: list[float],
        std: list[float],
        crop_pct: float | None,
    ) -> None:
        self.size, self.mode, self.mean, self.std, self.crop_pct = size, mode, mean, std, crop_pct

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        image = F.to_dtype(to_rgb(image), torch.float32, scale=True)
        if self.crop_pct is None:
            image = F.resize(image, list(self.size), interpolation=self.mode, antialias=True)
        else:
            image = self._resize_and_crop(image)
        return F.normalize(image, self.mean, self.std)

    def _resize_and_crop(self, image: torch.Tensor) -> torch.Tensor:
        """timm's eval resize: a square target scales the shorter side (keeping aspect), others both sides."""
        height, width = self.size
        scaled = [math.floor(height / self.crop_pct), math.floor(width / self.crop_pct)]
        size = scaled[:1] if height == width else scaled
        image = F.resize(image, size, interpolation=self.mode, antialias=True)
        return F.center_crop(image, [height, width])


class TimmTransform:
    """timm's evaluation transform (``resolve_data_config`` + ``create_transform``: resize the shorter side to
    size / crop_pct, centre crop, normalise), fed the PIL image a timm user would feed it."""

    def __init__(self, cfg: dict, resolution: int | None = None) -> None:
        from timm.data import create_transform, resolve_data_config

        args = dict(cfg)
        if resolution:
            args["input_size"] = (3, resolution, resolution)
        self.config = resolve_data_config(args)
        self.transform = create_transform(**self.config)

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        return self.transform(F.to_pil_image(to_rgb(image)))

    def describe(self) -> dict:
        config = {k: list(v) if isinstance(v, tuple) else v for k, v in self.config.items()}
        return {
            "name": "timm",
            "description": f"timm eval transform: shorter side to size / crop_pct ({config['crop_pct']:g}), "
            f"{config.get('crop_mode', 'center')} crop",
            **config,
        }


def eval_transform(name: str, cfg: dict, resolution: int | None = None):
    """The evaluation transform called ``name``: ``resize`` (the whole image resized to the input size, the
    method's kNN protocol) or ``timm`` (timm's own eval transform, crop_pct honoured)."""
    if name == "timm":
        return TimmTransform(cfg, resolution)
    if name != "resize":
        raise DataError(f"unknown transform {name!r}: resize or timm")
    return preprocess(cfg, resolution)


def describe_transform(transform) -> dict:
    """A JSON record of an evaluation transform, for reports and model cards."""
    if isinstance(transform, TimmTransform):
        return transform.describe()
    return {
        "name": "resize",
        "description": "whole image resized to the input size (no crop)",
        "input_size": [3, *transform.size],
        "interpolation": transform.mode.value,
        "mean": transform.mean,
        "std": transform.std,
    }


class _Transformed(Dataset):
    """Applies ``transform`` to the images of ``dataset``, keeping labels."""

    def __init__(self, dataset: Dataset, transform: Callable[[torch.Tensor], torch.Tensor]) -> None:
        self.dataset = dataset
        self.transform = transform

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        image, label = self.dataset[i]
        return self.transform(image), label


def make_loader(
    dataset: Dataset,
    transform: Callable[[torch.Tensor], torch.Tensor],
    batch_size: int,
    *,
    num_workers: int = 0,
    shuffle: bool = False,
    seed: int = 0,
) -> DataLoader:
    """Batches ``(float [B,3,R,R], long [B])``; the seeded generator fixes shuffling (and worker seeds)."""
    return DataLoader(
        _Transformed(dataset, transform),
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=num_workers,
        generator=torch.Generator().manual_seed(seed),
    )
