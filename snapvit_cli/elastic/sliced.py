"""Sliced models on disk: a folder with ``model.safetensors`` and ``config.json``, ready to push and to load.

``config.json`` records everything needed to rebuild the model from stock timm modules without the bundle: the timm
architecture and arguments, per-block widths, preprocessing, the budget and its measured cost, and provenance.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from snapvit_cli._version import __version__
from snapvit_cli.adapters import Widths
from snapvit_cli.elastic.artifacts import CONFIG_NAME, SLICED_KIND, WEIGHTS_NAME
from snapvit_cli.elastic.budget import SlicePlan
from snapvit_cli.elastic.surgery import build_model
from snapvit_cli.errors import BundleError, SnapvitError
from snapvit_cli.fileio import atomic_dir, check_output
from snapvit_cli.models.loading import ModelSource, build_architecture

FORMAT_VERSION = 1


def sliced_config(metadata: dict[str, Any], plan: SlicePlan, *, bundle_sha256: str | None = None) -> dict[str, Any]:
    """``config.json`` content for a model cut from a bundle with ``metadata`` according to ``plan``."""
    source = metadata["source"]
    return {
        "snapvit_format_version": FORMAT_VERSION,
        "kind": SLICED_KIND,
        "architecture": source["architecture"],
        "model_args": source["model_args"],
        "pretrained_cfg": source["pretrained_cfg"],
        "base_model": {
            key: source.get(key)
            for key in (
                "model_id",
                "timm_name",
                "hf_hub_id",
                "revision",
                "weights_sha256",
                "license",
                "checkpoint",
            )
        },
        "structure": metadata["structure"],
        "widths": plan.widths.to_json(),
        "head_dim": metadata["structure"]["head_dim"],
        "budget": {**plan.budget, "mlp_ratio": plan.mlp_ratio, "head_ratio": plan.head_ratio},
        "cost": {
            "resolution": plan.resolution,
            "gmacs": plan.gmacs,
            "params": plan.params,
            "dense_gmacs": plan.dense_gmacs,
            "dense_params": plan.dense_params,
            "flops_fraction": plan.flops_fraction,
            "params_fraction": plan.params_fraction,
        },
        "min_keep": metadata["min_keep"],
        "scoring": metadata["scoring"],
        "bundle_sha256": bundle_sha256,
        "snapvit_version": __version__,
    }


def save_sliced(
    out_dir: str | os.PathLike, state: dict[str, torch.Tensor], config: dict[str, Any], *, force: bool = False
) -> Path:
    """Write ``model.safetensors`` + ``config.json`` into ``out_dir`` atomically (whole folder or nothing)."""
    out_dir = check_output(out_dir, force)
    with atomic_dir(out_dir) as tmp:
        save_file(
            {k: v.contiguous() for k, v in state.items()},
            str(tmp / WEIGHTS_NAME),
            metadata={"format": "pt", "snapvit": json.dumps({"kind": SLICED_KIND})},
        )
        (tmp / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
    return out_dir


def read_config(folder: str | os.PathLike) -> dict[str, Any]:
    """Read and check a sliced model's ``config.json``."""
    folder = Path(folder)
    path = folder / CONFIG_NAME if folder.is_dir() else folder
    if not path.is_file():
        raise BundleError(f"{folder} is not a sliced model: {CONFIG_NAME} not found")
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"{path} is not valid JSON ({exc})") from None
    if config.get("kind") != SLICED_KIND:
        raise BundleError(f"{path} does not describe a snapvit sliced model")
    version = config.get("snapvit_format_version")
    if version != FORMAT_VERSION:
        raise BundleError(f"{path} has format version {version!r}; this snapvit reads version {FORMAT_VERSION}")
    for key in ("architecture", "model_args", "widths"):
        if key not in config:
            raise BundleError(f"{path} lacks '{key}'")
    return config


def load_sliced(folder: str | os.PathLike, *, device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild a sliced model from its folder: stock timm modules resized per block, weights from safetensors."""
    folder = Path(folder)
    config = read_config(folder)
    weights = folder / WEIGHTS_NAME
    if not weights.is_file():
        raise BundleError(f"{folder} is not a sliced model: {WEIGHTS_NAME} not found")
    source = ModelSource(
        model_id=config.get("base_model", {}).get("model_id", ""),
        timm_name=config["architecture"],
        architecture=config["architecture"],
        model_args=config["model_args"],
        pretrained_cfg=config.get("pretrained_cfg", {}),
        weights_sha256="",
    )
    try:
        widths = Widths.from_json(config["widths"])
        skeleton = build_architecture(source, device="meta")
        with safe_open(str(weights), framework="pt", device=str(device)) as f:
            state = {k: f.get_tensor(k) for k in f.keys()}
        model = build_model(skeleton, widths, state)
    except SnapvitError:
        raise
    except Exception as exc:  # noqa: BLE001 - any mismatch between files is a bad model folder
        raise BundleError(f"{folder}: weights do not match config.json ({exc})") from None
    model.pretrained_cfg = {**getattr(model, "pretrained_cfg", {}), **source.pretrained_cfg}
    model.snapvit_config = config
    return model
