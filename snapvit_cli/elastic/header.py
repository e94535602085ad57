"""Byte-stable safetensors files: the same tensors and metadata always give the same bytes.

safetensors keeps ``__metadata__`` in a hash map, so ``save_file`` writes its keys in a different order from run to
run (and two identical sliced models would differ by those bytes). :func:`sort_metadata` rewrites the header of a
written file in place with the metadata keys sorted: same length, same offsets, so only the order changes.
"""

from __future__ import annotations

import json
import os
import struct


def sort_metadata(path: str | os.PathLike) -> None:
    """Reorder the ``__metadata__`` keys of the safetensors file at ``path`` alphabetically, in place."""
    with open(path, "r+b") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        raw = f.read(length)
        text = raw.rstrip(b" ").decode("utf-8")
        header = json.loads(text, object_pairs_hook=dict)
        metadata = header.get("__metadata__")
        if not isinstance(metadata, dict) or len(metadata) < 2:
            return
        header["__metadata__"] = dict(sorted(metadata.items()))
        rewritten = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        if len(rewritten) != len(text.encode("utf-8")):  # a formatting we do not reproduce: keep the file as is
            return
        f.seek(8)
        f.write(rewritten)
