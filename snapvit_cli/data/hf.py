"""Hugging Face datasets (``hf:NAME[:CONFIG]``), through the optional ``datasets`` package."""

from __future__ import annotations

import torch
from torchvision.transforms.v2.functional import pil_to_tensor

from snapvit_cli.data.imageset import ImageSet, resolve_split
from snapvit_cli.errors import DataError

INSTALL_HINT = "pip install datasets (the 'datasets' extra)"


def load_hf(source: str, split: str) -> ImageSet:
    """Load one split of a Hub dataset: images from the first Image column, labels from ``label``."""
    name, _, config = source.removeprefix("hf:").partition(":")
    if not name:
        raise DataError(f"bad Hugging Face dataset '{source}': use hf:NAME or hf:NAME:CONFIG")
    try:
        import datasets
    except ImportError as exc:
        raise DataError(f"reading '{source}' needs the 'datasets' package: {INSTALL_HINT}") from exc
    config = config or None
    label = f"Hugging Face dataset '{name}'" + (f" (config '{config}')" if config else "")
    try:
        builder = datasets.load_dataset_builder(name, config)
        available = list(builder.info.splits or [])
        chosen = resolve_split(split, available, label) if available else split
        ds = datasets.load_dataset(name, config, split=chosen)
    except (OSError, ValueError, datasets.exceptions.DatasetsError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"cannot load {label}: {first_line} (offline, misspelt or gated?)") from exc
    image_col = _image_column(ds.features, datasets)
    if image_col is None:
        raise DataError(f"{label} has no image column (columns: {', '.join(ds.column_names)})")
    label_col = _label_column(ds.features, datasets)
    labels = class_names = None
    if label_col is not None:
        labels = torch.tensor(list(ds[label_col]), dtype=torch.long)
        feature = ds.features[label_col]
        class_names = list(feature.names) if isinstance(feature, datasets.ClassLabel) else None
        if len(labels) and int(labels.min()) < 0:  # unlabelled splits (e.g. some test sets) store -1
            labels = class_names = None
    return ImageSet(
        HFReader(ds.select_columns([image_col]), image_col),
        len(ds),
        source=source,
        split=chosen,
        name=name,
        labels=labels,
        class_names=class_names,
        identity={"dataset": name, "config": config},
    )


class HFReader:
    """Decodes the image of row ``j`` (``datasets`` yields a PIL image) as a uint8 RGB tensor."""

    def __init__(self, ds, column: str) -> None:
        self.ds = ds
        self.column = column

    def __call__(self, j: int) -> torch.Tensor:
        return pil_to_tensor(self.ds[j][self.column].convert("RGB"))


def _image_column(features: dict, datasets) -> str | None:
    """The first column with an Image feature, else one called ``image`` or ``img``."""
    for column, feature in features.items():
        if isinstance(feature, datasets.Image):
            return column
    return next((c for c in ("image", "img") if c in features), None)


def _label_column(features: dict, datasets) -> str | None:
    """``label`` or ``labels``, else the first ClassLabel column; only columns of integer class ids count."""
    named = [c for c in ("label", "labels") if c in features]
    class_labels = [c for c, f in features.items() if isinstance(f, datasets.ClassLabel)]
    return next((c for c in named + class_labels if _holds_class_ids(features[c], datasets)), None)


def _holds_class_ids(feature, datasets) -> bool:
    if isinstance(feature, datasets.ClassLabel):
        return True
    return isinstance(feature, datasets.Value) and feature.dtype.startswith(("int", "uint"))
