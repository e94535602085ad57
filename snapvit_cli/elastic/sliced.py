"""Sliced models on disk: a folder with ``model.safetensors`` and ``config.json``, ready to push and to load.

``config.json`` is the :class:`~snapvit_cli.elastic.records.SlicedConfig` record: the timm architecture and its
(allow-listed) arguments, per-block widths, preprocessing, the budget and its measured cost, and provenance. It is
written with sorted keys, so the same slice gives the same bytes. Loading checks ``model.safetensors`` against the
config before using it: the same tensor names and shapes as the architecture the config describes (compared on
the header, before any value is read), and finite values.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import torch
from torch import nn

from snapvit_cli._version import __version__
from snapvit_cli.adapters import Widths, get_adapter
from snapvit_cli.elastic.artifacts import CONFIG_NAME, SLICED_FILES, SLICED_KIND, WEIGHTS_NAME
from snapvit_cli.elastic.budget import SlicePlan
from snapvit_cli.elastic.records import (
    BundleMetadata,
    Cost,
    SlicedConfig,
    base_model_record,
    environment,
)
from snapvit_cli.elastic.safetensors_io import OpenFile, save_canonical
from snapvit_cli.elastic.surgery import build_model
from snapvit_cli.elastic.tensor_checks import (
    check_computed,
    check_dtypes,
    check_finite,
    check_same_tensors,
    dtype_name,
    precheck_size,
)
from snapvit_cli.errors import BundleError, SnapvitError
from snapvit_cli.fileio import atomic_dir, check_output, open_regular
from snapvit_cli.models.loading import build_architecture
from snapvit_cli.models.pretrained_cfg import honest_pretrained_cfg
from snapvit_cli.schema import MAX_JSON_CHARS, parse_json


def sliced_config(metadata: BundleMetadata, plan: SlicePlan, *, bundle_sha256: str | None = None) -> SlicedConfig:
    """The ``config.json`` record of a model cut from a bundle with ``metadata`` according to ``plan``."""
    source = metadata.source
    return SlicedConfig(
        architecture=source.architecture,
        model_args=source.model_args,
        pretrained_cfg=source.pretrained_cfg,
        base_model=base_model_record(source),
        structure=metadata.structure,
        widths=plan.widths.to_json(),
        budget=plan.budget,
        mlp_ratio=plan.mlp_ratio,
        head_ratio=plan.head_ratio,
        cost=Cost(plan.resolution, plan.gmacs, plan.params, plan.dense_gmacs, plan.dense_params),
        min_keep=metadata.min_keep,
        scoring=metadata.scoring,
        bundle_sha256=bundle_sha256,
        snapvit_version=__version__,
        environment=environment(),
    )


def save_sliced(
    out_dir: str | os.PathLike,
    state: dict[str, torch.Tensor],
    config: SlicedConfig,
    *,
    force: bool = False,
    inputs: tuple[object, ...] = (),
) -> Path:
    """Write ``model.safetensors`` + ``config.json`` into ``out_dir`` atomically (whole folder or nothing); an
    existing folder is replaced only with ``force``, only when it holds nothing but those two files (a folder
    snapvit wrote), and never when it is or contains one of ``inputs``."""
    out_dir = check_output(out_dir, force, directory=True, inputs=inputs, owned=SLICED_FILES)
    text = json.dumps(config.to_json(), indent=2, sort_keys=True, allow_nan=False) + "\n"
    with atomic_dir(out_dir, force=force, owned=SLICED_FILES) as tmp:
        save_canonical(
            {k: v.contiguous() for k, v in state.items()},
            tmp / WEIGHTS_NAME,
            {"format": "pt", "snapvit": json.dumps({"kind": SLICED_KIND})},
        )
        (tmp / CONFIG_NAME).write_text(text)
    return out_dir


def read_config(folder: str | os.PathLike) -> SlicedConfig:
    """Read and validate a sliced model's ``config.json`` (a folder, or the file itself)."""
    folder = Path(folder)
    path = folder / CONFIG_NAME if folder.is_dir() else folder
    if not path.is_file():
        raise BundleError(f"{folder} is not a sliced model: {CONFIG_NAME} not found")
    try:
        with open_regular(path) as f:
            raw = f.read(MAX_JSON_CHARS + 1)
        text = raw.decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise BundleError(f"{path} cannot be read as UTF-8 text ({exc})") from None
    try:
        return SlicedConfig.from_json(parse_json(text, CONFIG_NAME))
    except BundleError as exc:
        raise BundleError(f"{path}: {exc}") from None


def load_sliced(folder: str | os.PathLike, *, device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild a sliced model from its folder: stock timm modules resized per block, weights from safetensors.

    The weights file is checked against ``config.json`` before its values are read (tensor names and shapes of the
    architecture the config describes) and after (finite values), through one open handle.
    """
    folder = Path(folder)
    config = read_config(folder)
    weights = OpenFile(folder / WEIGHTS_NAME, f"sliced model's {WEIGHTS_NAME}")
    try:
        with weights.safe_open() as f:
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
            precheck_size(config.structure, config.model_args, shapes, "")
            skeleton, resized, widths = _skeletons(config)
            expected = resized.state_dict()
            check_same_tensors({k: tuple(v.shape) for k, v in expected.items()}, shapes)
            dtypes = {k: f.get_slice(k).get_dtype() for k in shapes}
            check_dtypes({k: dtype_name(v.dtype) for k, v in expected.items()}, dtypes)
            state = {k: f.get_tensor(k) for k in shapes}
        weights.check_unchanged()
        check_finite(state, str(weights.path))
        if str(device) != "cpu":
            state = {k: v.to(device) for k, v in state.items()}
        model = build_model(skeleton, widths, state)
    except BundleError as exc:
        raise BundleError(f"{folder}: {exc}") from None
    except SnapvitError:
        raise
    except MemoryError:  # the real reason, not a mismatch (push and eval report this line)
        raise BundleError(f"{folder}: not enough memory to build the model config.json describes") from None
    except Exception as exc:  # noqa: BLE001 - any other mismatch between the files is a bad model folder
        reason = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise BundleError(f"{folder}: weights do not match config.json ({reason})") from None
    finally:
        weights.close()
    model.pretrained_cfg = honest_pretrained_cfg(model, config.pretrained_cfg, config.source.license)
    model.snapvit_config = config
    return model


def _skeletons(config: SlicedConfig) -> tuple[nn.Module, nn.Module, Widths]:
    """The dense architecture on the meta device, and a copy resized to the config's widths: the shapes the file
    must have."""
    skeleton = build_architecture(config.source, device="meta")
    check_computed(skeleton)
    adapter = get_adapter(skeleton)
    if adapter.structure() != config.structure:
        raise BundleError("config.json's structure does not describe the architecture it names")
    widths = Widths.from_json(config.widths)
    resized = copy.deepcopy(skeleton)
    adapter = get_adapter(resized)
    for i in range(adapter.num_blocks):
        adapter.resize_block(i, widths.mlp[i], widths.heads[i])
    return skeleton, resized, widths
