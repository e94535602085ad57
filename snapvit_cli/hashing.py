"""Content hashes of weights, independent of the file format (``ModelSource.weights_sha256``).

A leaf: models, the elastic format and the tests all hash weights the same way, and none of them owns it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import torch


def state_sha256(items: Iterable[tuple[str, torch.Tensor]]) -> str:
    """Content hash of ``(name, tensor)`` pairs given in sorted name order: names, dtypes, shapes and bytes,
    independent of the file format (``ModelSource.weights_sha256``)."""
    digest = hashlib.sha256()
    for key, tensor in items:
        tensor = tensor.detach().contiguous().cpu()
        digest.update(f"{key}|{tensor.dtype}|{tuple(tensor.shape)}\n".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())  # the buffer itself: no copy
    return digest.hexdigest()


def state_dict_sha256(state_dict: dict[str, torch.Tensor]) -> str:
    """:func:`state_sha256` of a whole state dict, in key order."""
    return state_sha256((key, state_dict[key]) for key in sorted(state_dict))
