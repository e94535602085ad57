"""The one dataset type every source produces: uint8 RGB images with optional integer labels."""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Sequence

import torch
from torch.utils.data import Dataset

from snapvit_cli.errors import DataError, SnapvitWarning

# Names tried, in order, when a source lacks the requested split (ImageNet-style data has `val`, not `test`).
SPLIT_ALIASES = {
    "test": ("test", "val", "validation"),
    "val": ("val", "validation", "test"),
    "validation": ("validation", "val", "test"),
}


def resolve_split(split: str, available: Sequence[str], where: str) -> str:
    """Return the split of ``available`` that serves ``split`` (exact name first, then its aliases)."""
    for name in SPLIT_ALIASES.get(split, (split,)):
        if name in available:
            return name
    listed = ", ".join(available) if available else "none"
    raise DataError(f"{where} has no split '{split}' (available: {listed})")


def to_rgb(image: torch.Tensor) -> torch.Tensor:
    """Map a [C,H,W] image with 1 (gray), 2 (gray+alpha), 3 or 4 (RGBA) channels to 3 RGB channels."""
    if image.ndim != 3 or image.shape[0] not in (1, 2, 3, 4):
        raise DataError(f"expected an image tensor [C,H,W] with 1-4 channels, got shape {tuple(image.shape)}")
    channels = image.shape[0]
    if channels in (1, 2):
        return image[:1].expand(3, -1, -1).contiguous()
    return image[:3].contiguous()


class ImageSet(Dataset):
    """Images read on demand by ``reader(j)``, yielding ``(uint8 Tensor[3,H,W], label)``; label -1 if unknown.

    ``indices`` maps positions to the reader's items so that a seeded subset shares the reader instead of
    copying images; ``labels`` always lists the labels of the items in this (sub)set, in order.
    """

    def __init__(
        self,
        reader: Callable[[int], torch.Tensor],
        count: int,
        *,
        source: str,
        split: str,
        name: str,
        labels: torch.Tensor | None = None,
        class_names: list[str] | None = None,
        identity: dict | None = None,
    ) -> None:
        self._reader = reader
        self.indices = torch.arange(count)
        self.source = source
        self.split = split
        self.name = name
        self.labels = labels
        self.class_names = class_names
        self.identity = identity or {}
        self.samples: int | None = None
        self.seed: int | None = None
        if class_names is not None:
            self.num_classes: int | None = len(class_names)
        elif labels is not None and len(labels):
            self.num_classes = int(labels.max()) + 1
        else:
            self.num_classes = None

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        image = to_rgb(self._reader(int(self.indices[i])))
        label = int(self.labels[i]) if self.labels is not None else -1
        return image, label

    def subset(self, samples: int, seed: int) -> ImageSet:
        """A seeded random subset of ``samples`` images, without replacement.

        Asking for more images than there are takes them all, with a :class:`SnapvitWarning`; the subset's
        ``samples`` is then the number used, which is what metadata records.
        """
        if samples <= 0:
            raise DataError(f"the number of samples must be positive, got {samples}")
        if samples > len(self):
            warnings.warn(
                f"{samples} images asked from '{self.source}' ({self.split}), which has {len(self)}: using {len(self)}",
                SnapvitWarning,
                stacklevel=2,
            )
            samples = len(self)
        picked = copy.copy(self)
        picked.samples, picked.seed = samples, seed
        if samples == len(self):
            return picked
        order = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))[:samples]
        picked.indices = self.indices[order]
        picked.labels = self.labels[order] if self.labels is not None else None
        return picked
