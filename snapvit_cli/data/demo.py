"""The built-in ``demo`` data: a procedurally generated, labelled set of shapes and textures.

It ships as code (no files, no downloads) so that the README's walkthrough runs offline. Each of the 10
classes is a shape or texture drawn with random position, size, period, phase, brightness and polarity (light
on dark or dark on light), plus per-channel pixel noise. The two tones are grey on purpose: random hues
dominate the features of an untrained ViT and drown the shapes (1-NN top-1 of a random-init ViT-Tiny at 224
px, 500 train / 200 test images: 0.24 with random colours, 0.67 with grey tones; chance is 0.1).
"""

from __future__ import annotations

import torch

from snapvit_cli.data.arrays import ArrayReader
from snapvit_cli.data.imageset import ImageSet, resolve_split
from snapvit_cli.errors import DataError

DEMO_CLASSES = (
    "circle",
    "square",
    "triangle",
    "ring",
    "vertical-stripes",
    "horizontal-stripes",
    "diagonal-stripes",
    "antidiagonal-stripes",
    "checkerboard",
    "dots",
)
DEMO_COUNTS = {"train": 500, "test": 200}
DEMO_SIZE = 64
# Bump when the drawing code changes, so that stored descriptions of demo data stay truthful.
DEMO_VERSION = 1
_SPLIT_SEEDS = {"train": 0, "test": 1}
_CHUNK = 100  # a multiple of the number of classes, so every chunk is balanced
_STRIPE_ANGLES = {4: 0.0, 5: 90.0, 6: 45.0, 7: 135.0}


def load_demo(source: str, split: str) -> ImageSet:
    """``demo`` (500 train / 200 test images) or ``demo:TRAIN/TEST`` for other sizes (``demo:2000/400``)."""
    counts = _parse_counts(source)
    chosen = resolve_split(split, list(counts), "demo data")
    seed = _SPLIT_SEEDS[chosen]
    images, labels = demo_images(counts[chosen], seed)
    return ImageSet(
        ArrayReader(images),
        len(images),
        source=source,
        split=chosen,
        name="demo",
        labels=labels,
        class_names=list(DEMO_CLASSES),
        identity={"generator": f"snapvit-demo-v{DEMO_VERSION}", "seed": seed, "size": DEMO_SIZE},
    )


def _parse_counts(source: str) -> dict[str, int]:
    if source == "demo":
        return dict(DEMO_COUNTS)
    try:
        train, test = (int(part) for part in source.removeprefix("demo:").split("/"))
    except ValueError:
        train = test = 0
    if train <= 0 or test <= 0:
        raise DataError(f"bad demo data '{source}': use 'demo' or 'demo:TRAIN/TEST' with positive counts")
    return {"train": train, "test": test}


def demo_images(count: int, seed: int, size: int = DEMO_SIZE) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` uint8 images [N,3,size,size] and labels (image i has class ``i % 10``), fixed by ``seed``.

    Images come in chunks with seeds of their own, so image i does not depend on ``count`` (``demo:1000/200``
    extends the default train split instead of replacing it).
    """
    chunks = [_demo_chunk(seed * 1_000_000 + c, size) for c in range(-(-count // _CHUNK))]
    images, labels = (torch.cat(parts)[:count] for parts in zip(*chunks, strict=True))
    return images, labels


def _demo_chunk(seed: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(_CHUNK) % len(DEMO_CLASSES)
    params = _draw_params(_CHUNK, size, gen)
    grid = torch.arange(size, dtype=torch.float32) + 0.5
    y, x = grid.view(1, size, 1), grid.view(1, 1, size)
    mask = torch.empty(_CHUNK, size, size)
    for cls in range(len(DEMO_CLASSES)):
        pick = labels == cls
        mask[pick] = _class_mask(cls, y, x, {k: v[pick] for k, v in params.items()}).float()
    fg, bg = params["fg"], params["bg"]
    images = bg + (fg - bg) * mask.unsqueeze(1)
    images = images + 0.06 * torch.randn(_CHUNK, 3, size, size, generator=gen)
    return (images * 255).round().clamp(0, 255).to(torch.uint8), labels


def _draw_params(count: int, size: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """Per-image geometry and tones, drawn for every image whatever its class, so the stream is fixed."""

    def uniform(low: float, high: float, *shape: int) -> torch.Tensor:
        return low + (high - low) * torch.rand(count, *shape, generator=gen)

    def col(values: torch.Tensor) -> torch.Tensor:  # a per-image scalar, broadcast over the pixel grid
        return values.view(count, 1, 1)

    level = uniform(0.0, 0.2)
    light, dark = 0.7 + level, 0.1 + level
    swap = (torch.rand(count, generator=gen) < 0.5).float()
    return {
        "cy": col(uniform(0.3, 0.7) * size),
        "cx": col(uniform(0.3, 0.7) * size),
        "r": col(uniform(0.15, 0.3) * size),
        "period": col(uniform(5.0, 12.0)),
        "py": col(uniform(0.0, 1.0)),
        "px": col(uniform(0.0, 1.0)),
        "tilt": col(uniform(-5.0, 5.0)),
        "fg": (swap * dark + (1 - swap) * light).view(count, 1, 1, 1),  # grey: the same in every channel
        "bg": (swap * light + (1 - swap) * dark).view(count, 1, 1, 1),
    }


def _class_mask(cls: int, y: torch.Tensor, x: torch.Tensor, p: dict[str, torch.Tensor]) -> torch.Tensor:
    """Boolean foreground [m,S,S] of class ``cls`` for the m images whose parameters are in ``p``."""
    dy, dx, r = y - p["cy"], x - p["cx"], p["r"]
    if cls in (0, 3):
        dist2 = dy**2 + dx**2
        disc = dist2 <= r**2
        return disc if cls == 0 else disc & (dist2 >= (0.55 * r) ** 2)
    if cls == 1:
        return torch.maximum(dy.abs(), dx.abs()) <= 0.85 * r
    if cls == 2:
        return (dy >= -r) & (dy <= 0.6 * r) & (dx.abs() <= 0.6 * (dy + r))
    if cls in _STRIPE_ANGLES:
        theta = torch.deg2rad(_STRIPE_ANGLES[cls] + p["tilt"])
        along = x * torch.cos(theta) + y * torch.sin(theta)
        return (along / p["period"] + p["px"]).remainder(1.0) < 0.5
    if cls == 8:
        cells = torch.floor(x / p["period"] + p["px"]) + torch.floor(y / p["period"] + p["py"])
        return cells.remainder(2) == 0
    fy = (y / (1.3 * p["period"]) + p["py"]).remainder(1.0) - 0.5
    fx = (x / (1.3 * p["period"]) + p["px"]).remainder(1.0) - 0.5
    return fy**2 + fx**2 < 0.3**2
