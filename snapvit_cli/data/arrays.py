"""In-memory image arrays: ``.npz`` files of uint8 NHWC (or NCHW) images (and the generated demo set)."""

from __future__ import annotations

import os
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np
import torch

from snapvit_cli.data.imageset import ImageSet, resolve_split
from snapvit_cli.errors import DataError
from snapvit_cli.fileio import open_regular, sha256_stream

CHANNELS = (1, 2, 3, 4)  # gray, gray+alpha, RGB, RGBA
# The largest class count an .npz may imply (its largest label + 1): ImageNet-21k's 21,843 fits; a label of 10^12
# would make evaluation allocate per-class tensors of terabytes.
MAX_CLASSES = 1 << 17
NPY_MAGIC = b"\x93NUMPY"
# What zipfile, zlib and numpy raise for a damaged archive (several found by tests/test_fuzz_readers.py): a zip
# version or compression method it does not implement, an encrypted member, a corrupt deflate stream...
UNREADABLE = (
    OSError, ValueError, EOFError, RuntimeError, NotImplementedError, struct.error, zlib.error,
    zipfile.BadZipFile, zipfile.LargeZipFile,
)  # fmt: skip


class ArrayReader:
    """Serves image ``j`` of a uint8 [N,C,H,W] tensor (often a channels-last view of an NHWC array)."""

    def __init__(self, images: torch.Tensor) -> None:
        self.images = images

    def __call__(self, j: int) -> torch.Tensor:
        return self.images[j].contiguous()


def load_npz(source: str, split: str) -> ImageSet:
    """Read ``x``/``y`` (one split, served as ``train``) or ``x_<split>``/``y_<split>`` (+ ``classes``).

    A file from a stranger cannot make this allocate more than it holds: every member's size in the zip directory
    and its npy header (shape, dtype) are read and checked first, and the members read may together decompress to
    at most :func:`read_budget` bytes; each array is then read into one buffer of exactly its size.
    """
    path = Path(source)
    try:
        with open_regular(path) as file:
            budget = read_budget(os.fstat(file.fileno()).st_size)
            if file.read(len(NPY_MAGIC)) == NPY_MAGIC:
                raise DataError(f"{path} is a single .npy array, not an .npz archive of named arrays")
            with zipfile.ZipFile(file) as archive:
                chosen, images, labels, class_names = _read_split(archive, split, path, budget)
            file.seek(0)
            digest = sha256_stream(file)  # the version read, not whatever the path names by now
    except UNREADABLE as exc:
        reason = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise DataError(f"cannot read {path} as an .npz archive: {reason}") from None
    return ImageSet(
        ArrayReader(images),
        len(images),
        source=source,
        split=chosen,
        name=path.stem,
        labels=labels,
        class_names=class_names,
        identity={"sha256": digest},
    )


def read_budget(size: int) -> int:
    """How many bytes the arrays read from an .npz of ``size`` bytes may take: the resource rule's 2·S + 1 GiB
    (a stored archive holds its arrays as they are; a compressed one may expand that far, no further)."""
    return 2 * size + (1 << 30)


def _read_split(
    archive: zipfile.ZipFile, split: str, path: Path, budget: int
) -> tuple[str, torch.Tensor, torch.Tensor | None, list[str] | None]:
    """Pick and check the arrays of one split: (split, images [N,C,H,W], labels?, class names?)."""
    members = {name.removesuffix(".npy"): name for name in archive.namelist() if name.endswith(".npy")}
    keys = set(members)
    if not keys:
        raise DataError(f"{path} is not an .npz archive of named arrays (no .npy member in it)")
    if "x" in keys:
        if split != "train":
            raise DataError(f"{path} holds a single split (arrays x/y); cannot provide split '{split}'")
        chosen, x_key, y_key = split, "x", "y"
    else:
        available = sorted(k[2:] for k in keys if k.startswith("x_"))
        if not available:
            found = ", ".join(sorted(keys)[:20]) or "nothing"
            raise DataError(f"{path} has no image array: expected 'x' or 'x_train'/'x_test' (found: {found})")
        chosen = resolve_split(split, available, str(path))
        x_key, y_key = f"x_{chosen}", f"y_{chosen}"
    wanted = [key for key in (x_key, y_key, "classes") if key in keys]
    claimed = sum(archive.getinfo(members[key]).file_size for key in wanted)
    if claimed > budget:
        raise DataError(
            f"{path}: its arrays {', '.join(wanted)} would take {claimed} bytes, more than a file of its size may "
            f"({budget} bytes: twice the file plus 1 GiB); refusing to decompress them"
        )
    images = _check_images(_read_member(archive, members[x_key], path, x_key), path, x_key)
    labels = None
    if y_key in keys:
        labels = _check_labels(_read_member(archive, members[y_key], path, y_key), len(images), path, y_key)
    class_names = None
    if "classes" in keys:
        classes = _read_member(archive, members["classes"], path, "classes")
        if classes.dtype.kind not in "US" or classes.ndim != 1:
            raise DataError(f"{path}: 'classes' must be a 1-D array of strings, got {classes.dtype} {classes.shape}")
        class_names = [str(c) for c in classes]
    if class_names is not None and labels is not None and int(labels.max()) >= len(class_names):
        raise DataError(f"{path}: label {int(labels.max())} in '{y_key}' has no entry in 'classes'")
    return chosen, images, labels, class_names


def _read_member(archive: zipfile.ZipFile, member: str, path: Path, key: str) -> np.ndarray:
    """One ``.npy`` member: its header (bounded by numpy) and size checked against each other before the data is
    read into one buffer of exactly the size the header declares."""
    info = archive.getinfo(member)
    with archive.open(info) as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        elif version in ((2, 0), (3, 0)):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            raise DataError(f"{path}: '{key}' has an unsupported npy format version {version}")
        if dtype.hasobject:
            raise DataError(f"{path}: '{key}' holds Python objects (dtype {dtype}); only plain arrays are read")
        count = int(np.prod(shape, dtype=object))
        nbytes = count * dtype.itemsize
        if nbytes != info.file_size - f.tell():
            raise DataError(
                f"{path}: '{key}' declares shape {shape} of {dtype} ({nbytes} bytes) but holds "
                f"{info.file_size - f.tell()} bytes"
            )
        buffer = bytearray(nbytes)
        if f.readinto(buffer) != nbytes:
            raise DataError(f"{path}: '{key}' is truncated")
    array = np.frombuffer(buffer, dtype=dtype, count=count)
    return array.reshape(shape[::-1]).transpose() if fortran else array.reshape(shape)


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
    if count and array.max() >= MAX_CLASSES:
        raise DataError(f"{path}: '{key}' holds class id {int(array.max())}; class ids must be below {MAX_CLASSES}")
    return torch.from_numpy(array.astype(np.int64))
