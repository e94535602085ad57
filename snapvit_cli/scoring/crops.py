"""DINO-style multi-crop views of one image (method §3.3).

The reference feeds the teacher ``n_global`` "global" crops and the student those plus ``n_local`` "local"
crops of every image. Its transform crops a *stacked* tensor of copies, so torchvision draws one set of crop
parameters per group: all global views are identical and all local views are identical (mode ``"legacy"``).
The default mode ``"independent"`` draws parameters for every view, which is what the method intends.

All randomness comes from the ``torch.Generator`` passed per call, so views are reproducible from a seed
and do not depend on (or disturb) the global torch RNG.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF

CropBox = tuple[int, int, int, int]  # top, left, height, width


def sample_crop_box(
    height: int,
    width: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    generator: torch.Generator,
) -> CropBox:
    """Draw ``RandomResizedCrop`` parameters with ``generator``.

    Same algorithm and draw order as torchvision's ``RandomResizedCrop`` (10 tries of area / log-aspect-ratio
    sampling, then a central crop clamped to ``ratio``); reimplemented only because torchvision samples from
    the global RNG.
    """
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * torch.empty(1).uniform_(scale[0], scale[1], generator=generator).item()
        aspect = math.exp(torch.empty(1).uniform_(log_ratio[0], log_ratio[1], generator=generator).item())
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, (1,), generator=generator).item())
            left = int(torch.randint(0, width - w + 1, (1,), generator=generator).item())
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        w, h = int(round(height * max(ratio))), height
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


class MultiCrop:
    """Global and local random-resized crops of one image, scaled to [0, 1] and normalised.

    Args:
        size: side of the global crops (the model's input size).
        mean, std: the model's own normalisation constants (e.g. from ``timm.data.resolve_data_config``); the
            reference hard-codes ImageNet values for every model, which is wrong for 0.5/0.5 checkpoints.
        local_size: side of the local crops; ``None`` (reference) uses ``size``.
        n_global, n_local: number of views of each kind (reference: 2 and 10).
        global_scale, local_scale: area fractions for ``RandomResizedCrop``.
        ratio: aspect-ratio range for ``RandomResizedCrop``.
        mode: ``"independent"`` draws crop parameters per view; ``"legacy"`` draws once per group as the
            reference does (all global views identical, all local views identical).
        interpolation: resize interpolation; antialiasing is always on.

    The pipeline follows the reference order: crop+resize the input (uint8, or float already in [0, 1]), scale
    to float32 in [0, 1], normalise.
    """

    def __init__(
        self,
        size: int,
        *,
        mean: Sequence[float],
        std: Sequence[float],
        local_size: int | None = None,
        n_global: int = 2,
        n_local: int = 10,
        global_scale: tuple[float, float] = (0.25, 1.0),
        local_scale: tuple[float, float] = (0.05, 0.25),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        mode: Literal["independent", "legacy"] = "independent",
        interpolation: str = "bilinear",
    ) -> None:
        if mode not in ("independent", "legacy"):
            raise ValueError(f"mode must be 'independent' or 'legacy', got {mode!r}")
        if n_global < 1 or n_local < 0:
            raise ValueError(f"need n_global >= 1 and n_local >= 0, got {n_global} and {n_local}")
        if len(mean) != len(std):
            raise ValueError(f"mean and std differ in length: {len(mean)} vs {len(std)}")
        for name, (lo, hi) in (
            ("global_scale", global_scale),
            ("local_scale", local_scale),
            ("ratio", ratio),
        ):
            if not 0 < lo <= hi:
                raise ValueError(f"{name} must satisfy 0 < min <= max, got {(lo, hi)}")
        self.size = size
        self.local_size = local_size or size
        self.n_global = n_global
        self.n_local = n_local
        self.global_scale = global_scale
        self.local_scale = local_scale
        self.ratio = ratio
        self.mode = mode
        self.mean = [float(m) for m in mean]
        self.std = [float(s) for s in std]
        self.interpolation = InterpolationMode(interpolation)

    @property
    def n_views(self) -> int:
        return self.n_global + self.n_local

    def __call__(self, image: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """All views of ``image`` [C, H, W] as one float32 tensor [n_global + n_local, C, size, size].

        Global views come first, so view ``a < n_global`` is the one the teacher sees as view ``a``. Only
        valid when ``local_size == size``; otherwise use :meth:`global_local` (the groups differ in shape).
        """
        if self.local_size != self.size:
            raise ValueError(
                f"local_size {self.local_size} != size {self.size}: views differ in shape, use global_local()"
            )
        return torch.cat(self.global_local(image, generator))

    def global_local(self, image: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Global views [n_global, C, size, size] and local views [n_local, C, local_size, local_size]."""
        if image.ndim != 3 or image.shape[0] != len(self.mean):
            raise ValueError(f"expected an image [{len(self.mean)}, H, W], got shape {tuple(image.shape)}")
        global_views = self._views(image, self.n_global, self.global_scale, self.size, generator)
        local_views = self._views(image, self.n_local, self.local_scale, self.local_size, generator)
        return global_views, local_views

    def _views(
        self,
        image: torch.Tensor,
        count: int,
        scale: tuple[float, float],
        size: int,
        generator: torch.Generator,
    ) -> torch.Tensor:
        """``count`` crops of one group; in legacy mode a single crop repeated (bit-identical views)."""
        height, width = image.shape[-2:]
        n_draws = min(count, 1) if self.mode == "legacy" else count
        crops = [
            TF.resized_crop(
                image,
                *sample_crop_box(height, width, scale, self.ratio, generator),
                size=[size, size],
                interpolation=self.interpolation,
                antialias=True,
            )
            for _ in range(n_draws)
        ]
        if not crops:
            return torch.empty(0, image.shape[0], size, size, device=image.device)
        views = TF.normalize(TF.to_dtype(torch.stack(crops), torch.float32, scale=True), mean=self.mean, std=self.std)
        return views.repeat(count, 1, 1, 1) if len(crops) < count else views
