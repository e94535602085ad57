"""Local ``--checkpoint`` files: say in one line what a file is when it is not weights, and name the first way a
state dict does not fit the model (its embedding width, its depth, or the first tensor whose shape differs)
instead of torch's multi-line messages.
"""

from __future__ import annotations

import os
import pickle
import re
import zipfile
from pathlib import Path
from typing import BinaryIO

import torch
from torch import nn

from snapvit_cli.errors import ModelLoadError
from snapvit_cli.fileio import descriptor_path, open_regular


def _sniff(f: BinaryIO, path: Path) -> str | None:
    """What the open file is when it cannot be a checkpoint (``None``: it may be one)."""
    head = f.read(64)
    f.seek(0)
    if not head:
        return "an empty file"
    if head.startswith(b"PK\x03\x04"):
        try:
            with zipfile.ZipFile(f) as archive:
                names = archive.namelist()
        except (zipfile.BadZipFile, OSError):
            return "a damaged zip archive"
        finally:
            f.seek(0)
        if any(n.endswith("data.pkl") for n in names):
            return None  # torch's zip format
        if names and all(n.endswith(".npy") for n in names):
            return "a NumPy .npz archive (images or arrays), not a model's weights"
        return "a zip archive, not a torch checkpoint"
    if path.suffix == ".safetensors" or head[8:9] == b"{" or head[:1] == b"\x80":  # safetensors, a pickle
        return None
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return "neither a .safetensors file nor a torch checkpoint"
    return "a text file, not a model's weights"


# Real dtypes a checkpoint's tensors may have (weights are cast to the model's float32 when loaded).
CHECKPOINT_DTYPES = frozenset(
    {torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int64, torch.int32, torch.int16, torch.int8}
    | {torch.uint8, torch.bool}
)


def read_checkpoint(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a local state dict: ``.safetensors``, or a torch file loaded with ``weights_only=True`` (no code runs)."""
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"checkpoint {path} does not exist")
    try:
        with open_regular(path) as f:  # a FIFO or device is refused before it can block
            kind = _sniff(f, path)
            if kind is None and path.suffix == ".safetensors":
                from safetensors.torch import load_file

                state = load_file(descriptor_path(f, path))
            elif kind is None:
                state = torch.load(f, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any decoding failure is a bad user file
        raise ModelLoadError(f"cannot read checkpoint {path}: {_first_line(exc)}") from None
    if kind is not None:
        raise ModelLoadError(f"checkpoint {path} is {kind}: pass a .safetensors file or a torch state dict")
    for key in ("state_dict", "model", "module"):  # common training-checkpoint wrappers
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelLoadError(f"checkpoint {path} is not a state dict of tensors")
    odd = sorted(k for k, v in state.items() if v.dtype not in CHECKPOINT_DTYPES)
    if odd:  # loading would cast them silently: complex drops its imaginary part, fp8 its scale
        raise ModelLoadError(
            f"checkpoint {path}: tensor {odd[0]} is {str(state[odd[0]].dtype).removeprefix('torch.')}; snapvit "
            "reads float32, float16, bfloat16 or float64 weights"
        )
    return {k.removeprefix("module."): v for k, v in state.items()}


def _first_line(exc: Exception) -> str:
    """torch's unpickling errors run to many lines; the first says what went wrong."""
    if isinstance(exc, pickle.UnpicklingError) or "Weights only load failed" in str(exc):
        return "it holds Python objects other than tensors, which are not unpickled (no code from a file runs)"
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _blocks(names: object) -> int:
    return len({m.group(1) for n in names if (m := re.match(r"blocks\.(\d+)\.", n))})


def check_fits(state: dict[str, torch.Tensor], model: nn.Module, checkpoint: object, model_name: str) -> None:
    """One line naming the first difference between the checkpoint and the model, before ``load_state_dict``."""
    expected = model.state_dict()
    patch = state.get("patch_embed.proj.weight")
    width = getattr(model, "embed_dim", None)
    if patch is not None and width is not None and patch.shape[0] != width:
        raise ModelLoadError(f"checkpoint {checkpoint} has embed_dim {patch.shape[0]}; {model_name} expects {width}")
    depth, model_depth = _blocks(state), _blocks(expected)
    if depth and depth != model_depth:
        raise ModelLoadError(f"checkpoint {checkpoint} has {depth} blocks; {model_name} expects {model_depth}")
    for name, tensor in state.items():
        if name in expected and tuple(tensor.shape) != tuple(expected[name].shape):
            raise ModelLoadError(
                f"checkpoint {checkpoint} does not fit {model_name}: {name} is {list(tensor.shape)} in the "
                f"checkpoint, {list(expected[name].shape)} in the model"
            )
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        first = lambda names: ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")  # noqa: E731
        raise ModelLoadError(
            f"checkpoint {checkpoint} does not fit {model_name}: {len(missing)} missing tensors "
            f"({first(missing)}), {len(unexpected)} unexpected ({first(unexpected)})"
        )
