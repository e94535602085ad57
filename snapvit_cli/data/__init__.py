"""Images for scoring (calibration), weight correction and evaluation, from one ``--data`` string.

Sources: an image folder, an ``.npz`` of uint8 NHWC (or NCHW) arrays, a Hugging Face dataset ``hf:NAME[:CONFIG]``, or
the generated ``demo`` set (``demo:TRAIN/TEST`` for other sizes). Every source yields an :class:`ImageSet` of
uint8 RGB images with labels (-1 when unknown); :func:`preprocess` and :func:`make_loader` make model batches.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from snapvit_cli.data.arrays import load_npz
from snapvit_cli.data.demo import DEMO_CLASSES, demo_images, load_demo
from snapvit_cli.data.folder import load_folder
from snapvit_cli.data.hf import load_hf
from snapvit_cli.data.imageset import ImageSet
from snapvit_cli.data.transforms import EvalTransform, make_loader, preprocess
from snapvit_cli.errors import DataError

__all__ = [
    "DEMO_CLASSES",
    "EvalTransform",
    "ImageSet",
    "demo_images",
    "data_kind",
    "describe",
    "load_images",
    "make_loader",
    "preprocess",
]

SOURCE_HELP = "an image folder, an .npz file, hf:NAME[:CONFIG] or demo"


def load_images(
    source: str, split: str = "train", *, samples: int | None = None, seed: int = 0, need_labels: bool = False
) -> ImageSet:
    """Open ``split`` of ``source``; ``samples`` draws a seeded random subset without replacement.

    ``demo`` always means the generated set; a folder of that name is read as ``./demo``.
    """
    dataset = _open(source, split)
    if need_labels and dataset.labels is None:
        raise DataError(
            f"data '{source}' (split '{dataset.split}') has no labels: an image folder needs one sub-folder "
            f"per class, an .npz a 'y' or 'y_{dataset.split}' array, a Hugging Face dataset a label column"
        )
    return dataset if samples is None else dataset.subset(samples, seed)


def _open(source: str, split: str) -> ImageSet:
    if source == "demo" or source.startswith("demo:"):
        return load_demo(source, split)
    if source.startswith("hf:"):
        return load_hf(source, split)
    path = Path(source).expanduser()
    if path.is_dir():
        return load_folder(str(path), split)
    if path.is_file() and path.suffix.lower() == ".npz":
        return load_npz(str(path), split)
    if path.exists():
        raise DataError(f"cannot read data from {source}: expected {SOURCE_HELP}")
    raise DataError(f"data source '{source}' not found: expected {SOURCE_HELP}")


def data_kind(source: str) -> str:
    """What kind of source ``source`` names: ``demo``, ``hf``, ``npz`` or ``folder``."""
    if source == "demo" or source.startswith("demo:"):
        return "demo"
    if source.startswith("hf:"):
        return "hf"
    return "npz" if source.lower().endswith(".npz") else "folder"


def describe(dataset: ImageSet) -> dict:
    """A JSON-serialisable record of what was read, for the metadata of bundles and evaluation reports: kind, name,
    counts and content hash (``identity``). A local file or folder is recorded by its name, never its path (files
    snapvit writes get published); an ``hf:`` id or ``demo`` spec is recorded as given, as ``source``."""
    kind = data_kind(dataset.source)
    info = {
        **({"source": dataset.source} if kind in ("demo", "hf") else {}),
        "kind": kind,
        "name": dataset.name,
        "split": dataset.split,
        "n": len(dataset),
        "num_classes": dataset.num_classes,
        "samples": dataset.samples,
        "seed": dataset.seed,
        "identity": dataset.identity,
    }
    if dataset.samples is not None:
        info["indices_sha256"] = hashlib.sha256(dataset.indices.numpy().astype("<i8").tobytes()).hexdigest()
    return info
