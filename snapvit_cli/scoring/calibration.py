"""What the data-driven scorers share: the calibration images, the model's own preprocessing, the device.

Scoring reads images in the model's own normalisation (mean/std from its pretrained config), never ImageNet's for
every model as the reference does (docs/method.md §3.3, §13.2).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from timm.data import resolve_data_config
from torch import nn

from snapvit_cli.data import ImageSet, load_images, preprocess
from snapvit_cli.errors import DataError, SnapvitError
from snapvit_cli.scoring.settings import ScoreSettings


@dataclass(frozen=True)
class InputConfig:
    """Square input size and normalisation the model expects."""

    size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str

    def to_json(self) -> dict:
        return {"size": self.size, "mean": list(self.mean), "std": list(self.std), "interpolation": self.interpolation}

    def eval_transform(self):
        """The plain evaluation transform (whole image resized, normalised) of :func:`snapvit_cli.data.preprocess`."""
        cfg = {"input_size": [3, self.size, self.size], "interpolation": self.interpolation}
        return preprocess({**cfg, "mean": list(self.mean), "std": list(self.std)})


def input_config(model: nn.Module, settings: ScoreSettings) -> InputConfig:
    """The model's input size (the size it was built for, unless ``settings.resolution``) and normalisation.

    timm keeps the pretrained config's 224 even when a model is built with another ``img_size``, so the size is
    taken from the patch embedding when there is one.
    """
    cfg = {**resolve_data_config({}, model=model), **(settings.preprocessing or {})}
    size = settings.resolution
    if size is None:
        built = getattr(getattr(model, "patch_embed", None), "img_size", None)
        height, width = tuple(built) if built is not None else tuple(cfg["input_size"][-2:])
        if height != width:
            raise SnapvitError(f"scoring needs a square input size; the model takes {height}x{width}")
        size = int(height)
    return InputConfig(int(size), tuple(cfg["mean"]), tuple(cfg["std"]), cfg.get("interpolation", "bicubic"))


def calibration_images(settings: ScoreSettings, count: int, seed: int, need_labels: bool = False) -> ImageSet:
    """A seeded random draw of ``count`` training images from ``settings.data`` (a --data string or an ImageSet)."""
    data = settings.data
    if isinstance(data, ImageSet):
        if need_labels and data.labels is None:
            raise DataError(f"data '{data.source}' has no labels, which --loss ce needs")
        return data.subset(count, seed)
    if not isinstance(data, str):
        raise TypeError(f"data must be a --data string or an ImageSet, got {type(data).__name__}")
    return load_images(data, "train", samples=count, seed=seed, need_labels=need_labels)


def preprocessed(images: ImageSet, config: InputConfig) -> torch.Tensor:
    """All images through the evaluation transform, as one float32 tensor [N, 3, size, size] (cached once)."""
    transform = config.eval_transform()
    return torch.stack([transform(images[i][0]) for i in range(len(images))])


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast for forwards on CUDA (parameters and their gradients stay float32); nothing elsewhere."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@contextlib.contextmanager
def scoring_mode(model: nn.Module, device: torch.device) -> Iterator[None]:
    """Put ``model`` in eval mode on ``device`` for the duration; restore its device, mode, ``requires_grad`` flags
    and ``.grad`` tensors after."""
    params = list(model.parameters())
    home = params[0].device if params else torch.device("cpu")
    was_training = model.training
    saved = [(p.requires_grad, p.grad) for p in params]
    model.to(device).eval()
    try:
        yield
    finally:
        model.to(home).train(was_training)
        for param, (flag, grad) in zip(params, saved, strict=True):
            param.requires_grad_(flag)
            param.grad = grad
