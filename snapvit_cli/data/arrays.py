"""In-memory image arrays: ``.npz`` files of uint8 NHWC (or NCHW) images (and the generated demo set)."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import torch

from snapvit_cli.data.imageset import ImageSet, resolve_split
from snapvit_cli.errors import DataError
from snapvit_cli.fileio import sha256_file

CHANNELS = (1, 2, 3, 4)  # gray, gray+alpha, RGB, RGBA


class ArrayReader:
    """Serves image ``j`` of a uint8 [N,C,H,W] tensor (often a channels-last view of an NHWC array)."""

    def __init__(self, images: torch.Tensor) -> None:
        self.images = images

    def __call__(self, j: int) -> torch.Tensor:
        return self.images[j].contiguous()


def load_npz(source: str, split: str) -> ImageSet:
    """Read ``x``/``y`` (one split, served as ``train``) or ``x_<split>``/``y_<split>`` (+ ``classes``)."""
    path = Path(source)
    try:
        npz = np.load(path, allow_pickle=False)
        if not isinstance(npz, np.lib.npyio.NpzFile):
            raise DataError(f"{path} is a single .npy array, not an .npz archive of named arrays")
        with npz:
            chosen, images, labels, class_names = _read_split(npz, split, path)
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise DataError(f"cannot read {path} as an .npz archive: {exc}") from exc
    return ImageSet(
        ArrayReader(images),
        len(images),
        source=source,
        split=chosen,
        name=path.stem,
        labels=labels,
        class_names=class_names,
        identity={"sha256": sha256_file(path)},
    )


def _read_split(
    npz: np.lib.npyio.NpzFile, split: str, path: Path
) -> tuple[str, torch.Tensor, torch.Tensor | None, list[str] | None]:
    """Pick and check the arrays of one split: (split, images [N,C,H,W], labels?, class names?)."""
    keys = set(npz.files)
    if "x" in keys:
        if split != "train":
            raise DataError(f"{path} holds a single split (arrays x/y); cannot provide split '{split}'")
        chosen, x_key, y_key = split, "x", "y"
    else:
        available = sorted(k[2:] for k in keys if k.startswith("x_"))
        if not available:
            found = ", ".join(sorted(keys)) or "nothing"
            raise DataError(f"{path} has no image array: expected 'x' or 'x_train'/'x_test' (found: {found})")
        chosen = resolve_split(split, available, str(path))
        x_key, y_key = f"x_{chosen}", f"y_{chosen}"
    images = _check_images(npz[x_key], path, x_key)
    labels = _check_labels(npz[y_key], len(images), path, y_key) if y_key in keys else None
    class_names = [str(c) for c in npz["classes"]] if "classes" in keys else None
    if class_names is not None and labels is not None and int(labels.max()) >= len(class_names):
        raise DataError(f"{path}: label {int(labels.max())} in '{y_key}' has no entry in 'classes'")
    return chosen, images, labels, class_names


def _check_images(array: np.ndarray, path: Path, key: str) -> torch.Tensor:
    """uint8 images as a [N,C,H,W] tensor: [N,H,W,C] (C in 1..4, served as a view) or [N,C,H,W] (torchvision's
    layout), told apart by which axis can hold channels; where both can, the images are at most 4 pixels wide and
    the documented [N,H,W,C] is meant. An array where neither can is refused rather than read into noise."""
    if array.dtype != np.uint8:
        raise DataError(f"{path}: '{key}' must be uint8 images, got dtype {array.dtype}")
    if array.ndim != 4 or array.shape[0] == 0:
        raise DataError(f"{path}: '{key}' must have shape [N,H,W,C] or [N,C,H,W] with N > 0; got {array.shape}")
    channels_last = array.shape[3] in CHANNELS
    if not channels_last and array.shape[1] not in CHANNELS:
        raise DataError(
            f"{path}: '{key}' must have shape [N,H,W,C] or [N,C,H,W] with 1-4 channels C; got {array.shape}"
        )
    images = torch.from_numpy(array)
    return images.permute(0, 3, 1, 2) if channels_last else images


def _check_labels(array: np.ndarray, count: int, path: Path, key: str) -> torch.Tensor:
    if not np.issubdtype(array.dtype, np.integer):
        raise DataError(f"{path}: '{key}' must hold integer class ids, got dtype {array.dtype}")
    if array.shape != (count,):
        raise DataError(f"{path}: '{key}' must have shape ({count},) to match the images, got {array.shape}")
    if count and array.min() < 0:
        raise DataError(f"{path}: '{key}' holds negative class ids")
    return torch.from_numpy(array.astype(np.int64))
