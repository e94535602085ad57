"""Image folders: every image file below a folder, labelled by its first-level sub-folder."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError
from torchvision.transforms.v2.functional import pil_to_tensor

from snapvit_cli.data.imageset import SPLIT_ALIASES, ImageSet, resolve_split
from snapvit_cli.errors import DataError

IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff", ".ppm", ".pgm", ".pbm", ".jfif"}
)
SPLIT_DIRS = frozenset(name for names in SPLIT_ALIASES.values() for name in names) | {"train"}


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

    def __init__(self, folder: Path, relpaths: list[str]) -> None:
        self.folder = folder
        self.relpaths = relpaths

    def __call__(self, j: int) -> torch.Tensor:
        path = self.folder / self.relpaths[j]
        try:
            with Image.open(path) as image:
                return pil_to_tensor(image.convert("RGB"))
        except (UnidentifiedImageError, OSError) as exc:
            raise DataError(f"cannot decode image {path}: {exc}") from exc


def _split_dirs(root: Path) -> list[str]:
    """Split sub-folders (train/, test/, val/...) of ``root`` if it has ``train/``, else an empty list."""
    names = sorted(d.name for d in _subdirs(root) if d.name in SPLIT_DIRS)
    return names if "train" in names else []


def _subdirs(folder: Path) -> list[Path]:
    return [d for d in folder.iterdir() if d.is_dir() and not d.name.startswith(".")]


def _image_files(folder: Path) -> list[str]:
    """Sorted image paths relative to ``folder``, skipping hidden files and folders (``.git``...)."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        rel = Path(dirpath).relative_to(folder)
        found.extend(
            (rel / f).as_posix()
            for f in filenames
            if not f.startswith(".") and Path(f).suffix.lower() in IMAGE_SUFFIXES
        )
    return sorted(found)


def _listing_digest(folder: Path, relpaths: list[str]) -> str:
    """sha256 over (path, size) of every file: cheap, and changes when files are added, removed, replaced."""
    digest = hashlib.sha256()
    for rel in relpaths:
        digest.update(f"{rel}\0{(folder / rel).stat().st_size}\n".encode())
    return digest.hexdigest()
