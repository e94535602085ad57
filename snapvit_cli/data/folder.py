"""Image folders: every image file below a folder, labelled by its first-level sub-folder.

Folders may come from anywhere, so reading them is bounded: symbolic links are followed (datasets are often laid
out with them) but a folder reached twice is not walked again, so a link loop cannot hang the walk; only regular
files are read (a FIFO named ``x.png`` would block); and an image whose header declares more than
``MAX_IMAGE_PIXELS`` pixels is refused before it is decoded (Pillow's own decompression-bomb check also ends as one
line).
"""

from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError
from torchvision.transforms.v2.functional import pil_to_tensor

from snapvit_cli.data.imageset import SPLIT_ALIASES, ImageSet, resolve_split
from snapvit_cli.errors import DataError
from snapvit_cli.fileio import open_regular

IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff", ".ppm", ".pgm", ".pbm", ".jfif"}
)
SPLIT_DIRS = frozenset(name for names in SPLIT_ALIASES.values() for name in names) | {"train"}
# Decoded pixels allowed per image: Pillow's own warning threshold (89.5 M pixels, 256 MiB as RGB), far above any
# dataset image a ViT sees; SNAPVIT_MAX_IMAGE_PIXELS changes it for unusual data.
MAX_IMAGE_PIXELS = 89_478_485
PIXELS_ENV = "SNAPVIT_MAX_IMAGE_PIXELS"


def max_image_pixels() -> int:
    """The per-image pixel limit: ``SNAPVIT_MAX_IMAGE_PIXELS`` if set (a positive integer), else the default."""
    value = os.environ.get(PIXELS_ENV)
    if value is None:
        return MAX_IMAGE_PIXELS
    try:
        limit = int(value)
    except ValueError:
        limit = 0
    if limit < 1:
        raise DataError(f"{PIXELS_ENV} must be a positive integer, got {value!r}")
    return limit


def load_folder(source: str, split: str) -> ImageSet:
    """Read a folder; one with a ``train/`` sub-folder (and ``test/`` or ``val/``) provides those splits."""
    root = Path(source)
    splits = _split_dirs(root)
    if splits:
        chosen = resolve_split(split, splits, f"folder {root}")
        folder = root / chosen
        class_names = sorted({d.name for s in splits for d in _subdirs(root / s)})
    elif split == "train":
        chosen, folder = split, root
        class_names = sorted(d.name for d in _subdirs(root))
    else:
        raise DataError(
            f"folder {root} has a single split (no train/, test/ or val/ sub-folders); cannot provide split '{split}'"
        )
    relpaths = _image_files(folder)
    if not relpaths:
        raise DataError(f"no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) found under {folder}")
    labels = None
    if class_names and all(len(Path(p).parts) > 1 for p in relpaths):
        ids = {name: i for i, name in enumerate(class_names)}
        labels = torch.tensor([ids[Path(p).parts[0]] for p in relpaths], dtype=torch.long)
    else:
        class_names = None
    return ImageSet(
        FolderReader(folder, relpaths),
        len(relpaths),
        source=source,
        split=chosen,
        name=root.resolve().name,
        labels=labels,
        class_names=class_names,
        identity={"files_sha256": _listing_digest(folder, relpaths)},
    )


class FolderReader:
    """Decodes one image file with PIL (every common format; palette, gray and RGBA all become RGB)."""

    def __init__(self, folder: Path, relpaths: list[str], max_pixels: int | None = None) -> None:
        self.folder = folder
        self.relpaths = relpaths
        self.max_pixels = max_image_pixels() if max_pixels is None else max_pixels

    def __call__(self, j: int) -> torch.Tensor:
        path = self.folder / self.relpaths[j]
        try:
            with warnings.catch_warnings():
                # Our limit is checked below, before decoding; Pillow's own (global) one still raises above 2x its
                # threshold, caught here.
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                with open_regular(path) as file, Image.open(file) as image:
                    pixels = image.width * image.height
                    if pixels > self.max_pixels:
                        raise DataError(
                            f"image {path} is {image.width}x{image.height} = {pixels} pixels, above the limit of "
                            f"{self.max_pixels} (set {PIXELS_ENV} to allow more)"
                        )
                    return pil_to_tensor(image.convert("RGB"))
        except Image.DecompressionBombError as exc:
            raise DataError(f"image {path} is too large to decode safely: {exc}") from None
        except (UnidentifiedImageError, OSError) as exc:
            raise DataError(f"cannot decode image {path}: {exc}") from exc


def _split_dirs(root: Path) -> list[str]:
    """Split sub-folders (train/, test/, val/...) of ``root`` if it has ``train/``, else an empty list."""
    names = sorted(d.name for d in _subdirs(root) if d.name in SPLIT_DIRS)
    return names if "train" in names else []


def _subdirs(folder: Path) -> list[Path]:
    return [d for d in folder.iterdir() if d.is_dir() and not d.name.startswith(".")]


def _image_files(folder: Path) -> list[str]:
    """Sorted image paths relative to ``folder``, skipping hidden files and folders (``.git``...) and anything that
    is not a regular file. Symbolic links are followed, but each real folder is walked once (no link loops)."""
    found: list[str] = []
    visited: set[tuple[int, int]] = set()
    pending = [(str(folder), "")]
    while pending:
        path, rel = pending.pop()
        try:
            info = os.stat(path)
            if (info.st_dev, info.st_ino) in visited:
                continue
            visited.add((info.st_dev, info.st_ino))
            with os.scandir(path) as scan:
                entries = sorted(scan, key=lambda e: e.name)
            subdirs = []
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                name = f"{rel}/{entry.name}" if rel else entry.name
                if entry.is_dir():
                    subdirs.append((entry.path, name))
                elif entry.is_file() and Path(entry.name).suffix.lower() in IMAGE_SUFFIXES:
                    found.append(name)
            pending.extend(reversed(subdirs))  # depth first in name order: the same folder wins on every system
        except OSError as exc:  # a dangling link, a folder without read permission
            raise DataError(f"cannot list {path}: {exc.strerror or exc}") from None
    return sorted(found)


def _listing_digest(folder: Path, relpaths: list[str]) -> str:
    """sha256 over (path, size) of every file: cheap, and changes when files are added, removed, replaced."""
    digest = hashlib.sha256()
    for rel in relpaths:
        digest.update(f"{rel}\0{(folder / rel).stat().st_size}\n".encode())
    return digest.hexdigest()
