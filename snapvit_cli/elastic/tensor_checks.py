"""What a file's tensors must look like before snapvit builds or loads anything from its metadata.

Both readers (bundle and sliced folder) compare the metadata's claims with the tensor *list* of the safetensors
header first (names and shapes cost nothing to read), so that the architecture they then build on the meta device
is never larger than the file, and compare the built architecture's tensors with the file's exactly before reading
any values.
"""

from __future__ import annotations

import math
import re
from typing import Any

import torch
from torch import nn

from snapvit_cli.adapters.vit import MAX_TOKENS
from snapvit_cli.errors import BundleError

_BLOCK = re.compile(r"blocks\.(\d+)\.")


def precheck_size(structure: dict[str, Any], model_args: dict[str, Any], shapes: dict[str, tuple], prefix: str) -> None:
    """Depth, embedding width and patch size claimed by ``structure`` / ``model_args`` equal the file's."""
    n = structure["num_blocks"]
    blocks = {int(m.group(1)) for k in shapes if k.startswith(prefix) and (m := _BLOCK.match(k[len(prefix) :]))}
    if blocks != set(range(n)):
        raise BundleError(f"the file holds {len(blocks)} blocks but structure.num_blocks is {n}")
    if model_args.get("depth", n) != n:
        raise BundleError(f"model_args.depth {model_args['depth']} differs from the file's {n} blocks")
    patch = shapes.get(prefix + "patch_embed.proj.weight")
    if patch is None or len(patch) != 4:
        raise BundleError(f"the file has no patch embedding ({prefix}patch_embed.proj.weight)")
    embed, patch_size = patch[0], list(patch[2:])
    for name, claimed in (
        ("structure.embed_dim", structure["embed_dim"]),
        ("model_args.embed_dim", model_args.get("embed_dim")),
    ):
        if claimed is not None and claimed != embed:
            raise BundleError(f"{name} {claimed} differs from the file's embedding width {embed}")
    claimed = model_args.get("patch_size", structure["patch_size"])
    for name, value in (("model_args.patch_size", claimed), ("structure.patch_size", structure["patch_size"])):
        if (list(value) if isinstance(value, list) else [value, value]) != patch_size:
            raise BundleError(f"{name} {value} differs from the file's patch size {patch_size}")


def check_same_tensors(
    expected: dict[str, tuple], shapes: dict[str, tuple], allowed_extra: set[str] = frozenset()
) -> None:
    """The file holds exactly the ``expected`` tensors (plus ``allowed_extra`` names), with the expected shapes."""
    missing = sorted(set(expected) - set(shapes))
    if missing:
        raise BundleError(f"the file is missing {len(missing)} tensors the metadata implies, e.g. {missing[:3]}")
    unexpected = sorted(set(shapes) - set(expected) - set(allowed_extra))
    if unexpected:
        raise BundleError(f"the file holds {len(unexpected)} tensors the metadata does not list, e.g. {unexpected[:3]}")
    wrong = [(k, shapes[k], s) for k, s in expected.items() if tuple(shapes[k]) != tuple(s)]
    if wrong:
        name, got, want = wrong[0]
        raise BundleError(f"tensor {name} has shape {list(got)} but the metadata implies {list(want)}")


def check_finite(state: dict[str, torch.Tensor], what: str) -> None:
    """Floating-point tensors hold no NaN or infinity."""
    for name, tensor in state.items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise BundleError(f"{what}: tensor {name} contains NaN or infinity")


MAX_COMPUTED_BYTES = 256 << 20  # buffers computed at load, not stored (RoPE tables): kB for every real model


def check_computed(skeleton: nn.Module) -> None:
    """What the model would compute rather than read is bounded, checked on the meta-device skeleton before any
    weight is loaded: the patch tokens of one image (attention and RoPE scale with them, and nothing in the file
    pays for them) and the bytes of the non-persistent buffers loading recomputes."""
    grid = getattr(getattr(skeleton, "patch_embed", None), "grid_size", None)
    if grid is not None and math.prod(grid) > MAX_TOKENS:
        raise BundleError(
            f"img_size / patch_size give {math.prod(grid)} patch tokens per image ({grid[0]} x {grid[1]}); "
            f"snapvit builds models of at most {MAX_TOKENS}"
        )
    stored = set(skeleton.state_dict())
    computed = sum(b.numel() * b.element_size() for name, b in skeleton.named_buffers() if name not in stored)
    if computed > MAX_COMPUTED_BYTES:
        raise BundleError(
            f"the architecture would compute {computed / 2**20:.0f} MiB of buffers at load; at most "
            f"{MAX_COMPUTED_BYTES >> 20} MiB"
        )


# safetensors' names of the torch dtypes snapvit stores. What a file holds must be what the architecture built on
# the meta device holds (float32 weights, float64 scores, int64 orders); anything else (fp16, bf16, fp8, float64
# weights, complex) is refused before a value is read, instead of failing deep inside slicing or a forward pass.
DTYPE_NAMES = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}
EXTRA_DTYPES = frozenset(DTYPE_NAMES.values())  # method extras (raw scores, search traces): any plain real dtype


def dtype_name(dtype: torch.dtype) -> str:
    """safetensors' name of ``dtype`` (``F32``), or torch's for one snapvit never stores."""
    return DTYPE_NAMES.get(dtype, str(dtype).removeprefix("torch."))


def check_dtypes(expected: dict[str, str], dtypes: dict[str, str], allowed_extra: set[str] = frozenset()) -> None:
    """Every tensor named in ``expected`` has that safetensors dtype; those in ``allowed_extra`` a plain real one."""
    for name, want in expected.items():
        if name in dtypes and dtypes[name] != want:
            raise BundleError(f"tensor {name} is stored as {dtypes[name]}; snapvit reads it only as {want}")
    for name in sorted(allowed_extra & set(dtypes)):
        if dtypes[name] not in EXTRA_DTYPES:
            raise BundleError(f"tensor {name} is stored as {dtypes[name]}, not a plain real dtype")
